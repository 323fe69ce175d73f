"""The `spatial_probe` task: linear, pooled and dense probes on frozen tokens, with floors and ceilings.

A split's tokens are a tensor in memory or a `TokenSource` read shard by shard; no probe makes a float64
copy of a whole design matrix:
- linear: the dual ridge from the Gram matrices of the flattened tokens (`gram.centered_grams`), exact
  (the same alphas, leave-one-out and predictions as on the tokens). Where the images outnumber the
  features (d < n) the n x d design, smaller than a Gram matrix, is held and fitted as before.
- pooled: the per-image means [n, C], streamed, then the same ridge as before.
- dense: the exact leave-one-image-out fit up to `dense_stream.EXACT_NUMBERS` training numbers; above it
  a grouped K-fold fit from accumulators (`dense_stream`), recorded in the row as `fit`.
Bootstrap refits (`resamples`) pick rows of what was read once (a Gram matrix, pooled features, the
exact dense fit's tokens); the dense K-fold fit has none, so `probe_resamples` is refused there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import cache, cached_property
from statistics import NormalDist
from typing import Callable

import numpy as np
import torch

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from ..store.sources import InMemorySource, TokenSource
from .bounds import ceilings, floors, perfect_scores
from .scoring import Scored, score

PROBES = ("linear", "pooled", "dense")


@dataclass
class ProbeSplit:
    #: [n, N, C] in memory, or a TokenSource read shard by shard (its footprints are not read: the
    #: fields below are the split's, held in memory -- small beside the tokens)
    tokens: torch.Tensor | TokenSource
    footprints: torch.Tensor  # [n, N, 4] normalized xyxy in the original image
    boxes: torch.Tensor  # [n, 4] normalized xyxy target box
    masks: torch.Tensor  # [n, H, W] bool target mask
    #: [n, C] mean of the stage's placeless tokens (e.g. Kosmos-2's 64 resampled queries); the pooled
    #: probe reads it when the stage has no spatial tokens at all (from a source: read from its shards'
    #: extras when not given)
    placeless_mean: torch.Tensor | None = None

    @property
    def streamed(self) -> bool:
        return not isinstance(self.tokens, torch.Tensor)

    @cached_property
    def token_shape(self) -> tuple[int, int]:
        """(N tokens, C channels) per image; from a source, read off its first shard."""
        if not self.streamed:
            return tuple(self.tokens.shape[1:])
        return tuple(next(iter(self.tokens.shards())).tokens.shape[1:])

    @property
    def has_spatial_tokens(self) -> bool:
        return self.token_shape[0] > 0

    def source(self) -> TokenSource:
        """The tokens shard by shard (an in-memory split served in shards of its own tensors, no copy)."""
        if self.streamed:
            return self.tokens
        return InMemorySource(TokenFeatures(self.tokens, self.footprints))

    def in_memory(self) -> "ProbeSplit":
        """The split with its tokens joined in memory as float32 (what the exact fits read)."""
        if not self.streamed:
            return self
        tokens = torch.cat([shard.tokens.float() for shard in self.tokens.shards()])
        return ProbeSplit(tokens, self.footprints, self.boxes, self.masks, self.placeless_mean)

    def pooled(self) -> torch.Tensor:
        if self.has_spatial_tokens:
            if not self.streamed:
                return self.tokens.mean(1)
            return torch.cat([shard.tokens.float().mean(1) for shard in self.tokens.shards()])
        if self.placeless_mean is None and self.streamed:
            return torch.cat([placeless_mean(shard) for shard in self.tokens.shards()])
        if self.placeless_mean is None:
            raise ValueError("a stage with neither spatial nor placeless tokens cannot be probed")
        return self.placeless_mean


def placeless_mean(feats: TokenFeatures) -> torch.Tensor:
    """[B, C] mean of a batch's placeless tokens (all its extras together)."""
    if not feats.extra:
        raise ValueError("a stage with neither spatial nor placeless tokens cannot be probed")
    return torch.cat(list(feats.extra.values()), dim=1).float().mean(1)


class ShuffledSource:
    """A source's tokens permuted per image, in shards: the permutations `shuffle_tokens` draws for the same
    images in memory (one generator over the images in order, restarted on every pass)."""

    def __init__(self, source: TokenSource, seed: int) -> None:
        self.inner, self.seed = source, seed

    def __len__(self) -> int:
        return len(self.inner)

    def shards(self):
        generator = torch.Generator().manual_seed(self.seed)
        for shard in self.inner.shards():
            yield shard.with_tokens(permuted(shard.tokens, generator))


def permuted(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's tokens [b, N, C] in a random order drawn from `generator`, image after image."""
    order = torch.stack([torch.randperm(tokens.shape[1], generator=generator) for _ in range(len(tokens))])
    return torch.gather(tokens, 1, order[..., None].expand_as(tokens))


def shuffle_tokens(split: ProbeSplit, seed: int) -> ProbeSplit:
    """The shuffled-order control: tokens permuted per image, footprints left where they are."""
    if split.streamed:
        return replace(split, tokens=ShuffledSource(split.tokens, seed))
    tokens = permuted(split.tokens, torch.Generator().manual_seed(seed))
    return ProbeSplit(tokens, split.footprints, split.boxes, split.masks, split.placeless_mean)


def probes_for(split: ProbeSplit, probes=PROBES) -> tuple[str, ...]:
    """The probes a stage supports: without spatial tokens only `pooled` (over its placeless tokens)."""
    return tuple(probes) if split.has_spatial_tokens else tuple(p for p in probes if p == "pooled")


def dense_fits_exact(split: ProbeSplit) -> bool:
    """Whether the dense probe's exact LOIO fit is used: n * N * C at most `dense_stream.EXACT_NUMBERS`."""
    from .dense_stream import EXACT_NUMBERS

    return len(split.boxes) * split.token_shape[0] * split.token_shape[1] <= EXACT_NUMBERS


Prediction = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", dict]


def fitter(probe: str, train: ProbeSplit, test: ProbeSplit) -> Callable[[torch.Tensor | None], Prediction]:
    """`rows -> predict(probe, ...)` fitted on the training images `rows` (None: all of them). The tokens
    are read once, here: the linear probe's Gram matrices, the pooled features, the exact dense fit's
    tokens in memory; a bootstrap refit then picks its rows from them."""
    from .box import box_probe, gram_box_probe
    from .gram import center, centered_grams

    if probe == "dense":
        return dense_fitter(train, test)
    if probe == "pooled":
        train_x, test_x = train.pooled(), test.pooled()
        return lambda rows: (*box_probe(pick(train_x, rows), pick(train.boxes, rows), test_x), None, {})
    tokens, channels = train.token_shape
    if tokens * channels < len(train.boxes):  # primal form: the n x d design is smaller than the Gram matrix
        train_x, test_x = train.in_memory().tokens.flatten(1), test.in_memory().tokens.flatten(1)
        return lambda rows: (*box_probe(pick(train_x, rows), pick(train.boxes, rows), test_x), None, {})
    gram, cross, d = centered_grams(train.source(), test.source())

    def dual(rows):
        picked = (gram, cross) if rows is None else center(gram[rows][:, rows], cross[:, rows])
        return (*gram_box_probe(*picked, d, pick(train.boxes, rows)), None, {})
    return dual


def dense_fitter(train: ProbeSplit, test: ProbeSplit) -> Callable[[torch.Tensor | None], Prediction]:
    """The dense probe: its exact LOIO fit in memory where the training split fits `dense_stream.EXACT_NUMBERS`,
    else the K-fold fit from shards (no bootstrap refits). Rows say which fit (`fit`) and score (`score`)."""
    from .dense import dense_probe, dense_probe_exact_streaming, dense_probe_streaming
    from .dense_stream import FIT_NAME

    if dense_fits_exact(train):
        tokens, channels = train.token_shape
        streamed_exact = len(train.boxes) * tokens > channels  # the solver's primal form

        def exact(rows):
            if rows is None and streamed_exact:
                return dense_prediction(dense_probe_exact_streaming(train, test), "exact-loio")
            # bootstrap refits (opt-in) and the dual form (fewer token rows than channels) join the tokens
            joined_train, joined_test = joined()
            return dense_prediction(dense_probe(joined_train if rows is None else images_of(joined_train, rows),
                                                joined_test), "exact-loio")
        @cache
        def joined() -> tuple[ProbeSplit, ProbeSplit]:
            return train.in_memory(), test.in_memory()
        return exact

    def streamed(rows):
        if rows is not None:
            raise ValueError("bootstrap refits of the dense probe need its exact fit (dense_stream.EXACT_NUMBERS)")
        return dense_prediction(dense_probe_streaming(train, test), FIT_NAME)
    return streamed


def pick(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return values if rows is None else values[rows]


def dense_prediction(result: tuple, fit: str) -> Prediction:
    """A dense probe's (masks, boxes, scores, score kind) as (boxes, scores, masks, row fields)."""
    masks, boxes, scores, kind = result
    return boxes, scores, masks, {"score": kind, "fit": fit}  # which score ranked its boxes, which fit


def predict(probe: str, train: ProbeSplit, test: ProbeSplit) -> Prediction:
    """`probe` fitted on train: the test images' boxes, scores, masks (dense only) and extra row fields."""
    return fitter(probe, train, test)(None)


def images_of(split: ProbeSplit, rows: torch.Tensor) -> ProbeSplit:
    """The split restricted to (or resampled at) image rows; every field is per image."""
    return replace(split, **{f.name: getattr(split, f.name)[rows] for f in fields(split)
                             if getattr(split, f.name) is not None})


def training_spread(probe: str, train: ProbeSplit, test: ProbeSplit, resamples: int, seed: int) -> dict[str, float]:
    """metric -> standard deviation of its test value over `resamples` refits on bootstrap resamples
    of the training images: the probe's variability from its training sample alone (the test set is fixed)."""
    return spread_of(fitter(probe, train, test), len(train.boxes), test, resamples, seed)


def spread_of(fit: Callable[[torch.Tensor | None], Prediction], n_train: int, test: ProbeSplit, resamples: int,
              seed: int) -> dict[str, float]:
    """`training_spread` of a probe's fitter (`fitter`): refits on bootstrap rows of its training images."""
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, list[float]] = {}
    for _ in range(resamples):
        rows = torch.randint(n_train, (n_train,), generator=generator)
        boxes, scores, masks, _ = fit(rows)
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
    chosen = probes_for(train, probes)
    if resamples and "dense" in chosen and not dense_fits_exact(train):
        raise SpatialProbeError(f"probe_resamples: {resamples} needs the dense probe's exact fit, and this stage's "
                                f"training tokens ({len(train.boxes)} images x {train.token_shape[0]} x "
                                f"{train.token_shape[1]}) exceed its limit; set probe_resamples: 0")
    floor = floors(train, test)
    ceiling = ceilings(test) if train.has_spatial_tokens else perfect_scores(test)
    covers = "train+test" if resamples else "test"
    records = []
    for probe in chosen:
        fit = fitter(probe, train, test)
        boxes, scores, masks, extra = fit(None)
        scored = score(boxes, scores, test, masks, n_boot, seed)
        if resamples:
            spread = spread_of(fit, len(train.boxes), test, resamples, seed)
            scored = {metric: with_training_spread(s, spread[metric]) for metric, s in scored.items()}
        for metric, s in scored.items():
            records.append({"probe": probe, "metric": metric, "value": s.value, "ci_low": s.low, "ci_high": s.high,
                            "ci_covers": covers, **({"ci_note": s.note} if s.note else {}),
                            "floor": floor[metric], "ceiling": ceiling[metric], "n": len(test.boxes), **extra})
    return records
