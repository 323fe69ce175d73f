"""The `spatial_probe` task: linear, pooled and dense probes on frozen tokens, with floors and ceilings."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from statistics import NormalDist

import numpy as np
import torch

from .bounds import ceilings, floors, perfect_scores
from .scoring import Scored, score

PROBES = ("linear", "pooled", "dense")


@dataclass
class ProbeSplit:
    tokens: torch.Tensor  # [n, N, C]
    footprints: torch.Tensor  # [n, N, 4] normalized xyxy in the original image
    boxes: torch.Tensor  # [n, 4] normalized xyxy target box
    masks: torch.Tensor  # [n, H, W] bool target mask
    #: [n, C] mean of the stage's placeless tokens (e.g. Kosmos-2's 64 resampled queries); the pooled
    #: probe reads it when the stage has no spatial tokens at all
    placeless_mean: torch.Tensor | None = None

    @property
    def has_spatial_tokens(self) -> bool:
        return self.tokens.shape[1] > 0

    def pooled(self) -> torch.Tensor:
        if self.has_spatial_tokens:
            return self.tokens.mean(1)
        if self.placeless_mean is None:
            raise ValueError("a stage with neither spatial nor placeless tokens cannot be probed")
        return self.placeless_mean


def shuffle_tokens(split: ProbeSplit, seed: int) -> ProbeSplit:
    """The shuffled-order control: tokens permuted per image, footprints left where they are."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(split.tokens.shape[1], generator=generator) for _ in range(len(split.tokens))])
    tokens = torch.gather(split.tokens, 1, order[..., None].expand_as(split.tokens))
    return ProbeSplit(tokens, split.footprints, split.boxes, split.masks, split.placeless_mean)


def probes_for(split: ProbeSplit, probes=PROBES) -> tuple[str, ...]:
    """The probes a stage supports: without spatial tokens only `pooled` (over its placeless tokens)."""
    return tuple(probes) if split.has_spatial_tokens else tuple(p for p in probes if p == "pooled")


def predict(probe: str, train: ProbeSplit, test: ProbeSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """`probe` fitted on train: the test images' boxes, scores, masks (dense only) and extra row fields."""
    from .box import box_probe
    from .dense import dense_probe

    if probe == "dense":
        masks, boxes, scores, score_kind = dense_probe(train, test)
        return boxes, scores, masks, {"score": score_kind}  # which score ranked its boxes
    pick = (lambda s: s.tokens.flatten(1)) if probe == "linear" else ProbeSplit.pooled
    boxes, scores = box_probe(pick(train), train.boxes, pick(test))
    return boxes, scores, None, {}


def images_of(split: ProbeSplit, rows: torch.Tensor) -> ProbeSplit:
    """The split restricted to (or resampled at) image rows; every field is per image."""
    return replace(split, **{f.name: getattr(split, f.name)[rows] for f in fields(split)
                             if getattr(split, f.name) is not None})


def training_spread(probe: str, train: ProbeSplit, test: ProbeSplit, resamples: int, seed: int) -> dict[str, float]:
    """metric -> standard deviation of its test value over `resamples` refits on bootstrap resamples
    of the training images: the probe's variability from its training sample alone (the test set is fixed)."""
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, list[float]] = {}
    for _ in range(resamples):
        rows = torch.randint(len(train.boxes), (len(train.boxes),), generator=generator)
        boxes, scores, masks, _ = predict(probe, images_of(train, rows), test)
        for metric, s in score(boxes, scores, test, masks, with_ci=False).items():
            values.setdefault(metric, []).append(s.value)
    return {metric: float(np.std(v, ddof=1)) for metric, v in values.items()}


def with_training_spread(s: Scored, spread: float) -> Scored:
    """The test interval widened by the training spread: train and test samples are independent, so
    their variances add; each end moves away from the value by what adding (z * spread)^2 in
    quadrature to its distance from the value adds. Centred on the full fit's value, so the small bias
    of fits on resamples (about 63% distinct images) does not shift it. Spatial metrics lie in [0, 1]."""
    extra = NormalDist().inv_cdf(0.975) * spread
    low_gap, high_gap = abs(s.value - s.low), abs(s.high - s.value)
    low = max(0.0, s.low - (math.hypot(low_gap, extra) - low_gap))
    high = min(1.0, s.high + (math.hypot(high_gap, extra) - high_gap))
    return replace(s, low=low, high=high)


def run_spatial_probes(train: ProbeSplit, test: ProbeSplit, probes=PROBES, n_boot: int = 1000,
                       seed: int = 0, resamples: int = 0) -> list[dict]:
    """One record per (probe, metric): value, 95% interval, what it covers, floor, ceiling, n.

    The interval covers the test images (`ci_covers: test`); with `resamples` K >= 2 each probe is also
    refitted on K bootstrap resamples of the training images (K extra fits per probe) and the interval
    widened by their spread (`ci_covers: train+test`). Values always come from the fit on all images.
    A rare-event mAP row whose interval comes from its hit count says so in `ci_note`.

    A stage without spatial tokens gets only the pooled probe; no token grid limits a box regressor
    there, so its box ceilings are those of a perfect prediction."""
    if resamples == 1:
        raise ValueError("resamples: 0 (off) or at least 2, for a spread")
    floor = floors(train, test)
    ceiling = ceilings(test) if train.has_spatial_tokens else perfect_scores(test)
    covers = "train+test" if resamples else "test"
    records = []
    for probe in probes_for(train, probes):
        boxes, scores, masks, extra = predict(probe, train, test)
        scored = score(boxes, scores, test, masks, n_boot, seed)
        if resamples:
            spread = training_spread(probe, train, test, resamples, seed)
            scored = {metric: with_training_spread(s, spread[metric]) for metric, s in scored.items()}
        for metric, s in scored.items():
            records.append({"probe": probe, "metric": metric, "value": s.value, "ci_low": s.low, "ci_high": s.high,
                            "ci_covers": covers, **({"ci_note": s.note} if s.note else {}),
                            "floor": floor[metric], "ceiling": ceiling[metric], "n": len(test.boxes), **extra})
    return records
