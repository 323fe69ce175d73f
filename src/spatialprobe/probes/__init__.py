"""The `spatial_probe` task: linear, pooled and dense probes on frozen tokens, with floors and ceilings."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bounds import ceilings, floors, perfect_scores
from .scoring import evaluate

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


def run_spatial_probes(train: ProbeSplit, test: ProbeSplit, probes=PROBES, n_boot: int = 1000,
                       seed: int = 0) -> list[dict]:
    """One record per (probe, metric): value, bootstrap 95% interval, floor, ceiling, n.

    A stage without spatial tokens gets only the pooled probe; no token grid limits a box regressor
    there, so its box ceilings are those of a perfect prediction."""
    from .box import box_probe
    from .dense import dense_probe

    floor = floors(train, test)
    ceiling = ceilings(test) if train.has_spatial_tokens else perfect_scores(test)
    records = []
    for probe in probes_for(train, probes):
        if probe == "dense":
            masks, boxes, scores = dense_probe(train, test)
        else:
            pick = (lambda s: s.tokens.flatten(1)) if probe == "linear" else ProbeSplit.pooled
            boxes, scores = box_probe(pick(train), train.boxes, pick(test))
            masks = None
        for metric, (value, low, high) in evaluate(boxes, scores, test, masks, n_boot, seed).items():
            records.append({"probe": probe, "metric": metric, "value": value, "ci_low": low, "ci_high": high,
                            "floor": floor[metric], "ceiling": ceiling[metric], "n": len(test.boxes)})
    return records
