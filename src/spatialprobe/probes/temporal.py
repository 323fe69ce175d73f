"""Temporal probes on a clip stage's tokens: motion direction, the arrow of time, and frame order.

Nothing here ever pools over time: a mean over time is the same for a clip and its reverse, so it would
put ordering at chance by construction. Two probes read the tokens:
- linear: tokens pooled per time step (a mean over the tokens of that step only; `TimeSteps`, which a caller may
  build shard by shard so that the tokens are never all in memory), the steps concatenated
  in time order, then a ridge classifier (closed form, `probes.ridge`) whose alpha is chosen by exact
  leave-one-clip-out error on train only.
- attentive: a V-JEPA-style cross-attention pooler (`probes.attentive`) over all tokens, each with
  sinusoidal codes of its footprint centre and time centre, trained with a fixed, seeded budget.

Metrics, each a `Scored` with a seeded bootstrap 95% interval over test clips (`metrics.mean_ci`):
- direction_accuracy: k-way accuracy of the clip's label.
- ordering_accuracy: each test clip is seen forward (label 1) and reversed (label 0); a clip scores the
  mean of its two views, so resampling clips keeps both views together. Balanced: chance 0.5.
- pairwise_order_accuracy: for seeded pairs of time steps (i, j) of a clip, whether i comes first, from
  the per-step pooled features [f_i, f_j]; both orders of every pair are present, so chance is 0.5.

Floor: the majority-class rate on test (chance 1/k when the classes are balanced): what a constant
answer reaches at best. Ceiling (`temporal_ceiling`): what the stage's time resolution allows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from ..metrics import mean_ci
from .attentive import fit_attentive, require_times
from .ridge import RidgeFit, RidgeSolver
from .scoring import Scored

PROBES = ("linear", "attentive")
METRICS = ("direction_accuracy", "ordering_accuracy", "pairwise_order_accuracy")
#: times are computed per token; equal intervals are compared after rounding to this many decimals
TIME_DECIMALS = 5
CHANCE = 0.5  # ordering and pairwise order are balanced two-way choices


# --- time steps --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeSteps:
    intervals: torch.Tensor  # [T, 2] the stage's distinct token intervals t0, t1, in time order
    pooled: torch.Tensor  # [B, T, C] per clip, the mean of the tokens of each time step only

    def flat(self) -> torch.Tensor:
        """[B, T*C]: the steps' pooled tokens concatenated in time order (what the linear probe reads)."""
        return self.pooled.flatten(1)

    @property
    def tokens(self) -> torch.Tensor:  # what the probes count clips by, as in TokenFeatures
        return self.pooled

    @staticmethod
    def concat(parts: list["TimeSteps"]) -> "TimeSteps":
        """Clips of several shards (or views), which must share one time layout."""
        for part in parts[1:]:
            if not torch.equal(part.intervals, parts[0].intervals):
                raise SpatialProbeError(f"temporal probe: clips of time steps {part.intervals.tolist()} and "
                                        f"{parts[0].intervals.tolist()}; clips must share a time layout")
        return TimeSteps(parts[0].intervals, torch.cat([p.pooled for p in parts]))


#: what the linear probes read: a stage's tokens, or (streamed shard by shard, never holding the tokens) their steps
Clips = TokenFeatures | TimeSteps


def steps_of(clips: Clips) -> TimeSteps:
    return clips if isinstance(clips, TimeSteps) else time_steps(clips)


def joined(parts: list[Clips]) -> Clips:
    return TimeSteps.concat(parts) if isinstance(parts[0], TimeSteps) else TokenFeatures.concat(parts)


def check_times(clips: Clips) -> None:
    if isinstance(clips, TokenFeatures):
        require_times(clips)


def step_index(features: TokenFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct intervals [T, 2] in time order (by start, then end) and each token's step [B, N]."""
    times = torch.round(require_times(features).double(), decimals=TIME_DECIMALS)
    intervals, index = torch.unique(times.reshape(-1, 2), dim=0, return_inverse=True)  # lexicographic: time order
    return intervals.float(), index.reshape(times.shape[:2])


def time_steps(features: TokenFeatures) -> TimeSteps:
    """Per clip, the tokens of each distinct `times` interval pooled (mean over that step's tokens only)."""
    intervals, index = step_index(features)
    membership = torch.nn.functional.one_hot(index, len(intervals)).double()  # [B, N, T]
    counts = membership.sum(1)  # [B, T]
    empty = (counts == 0).nonzero()
    if len(empty):
        clip, step = empty[0].tolist()
        raise SpatialProbeError(f"temporal probe: clip {clip} has no tokens in time step "
                                f"{intervals[step].tolist()} that other clips have; clips must share a time layout")
    pooled = torch.einsum("bnt,bnc->btc", membership, features.tokens.double()) / counts[..., None]
    return TimeSteps(intervals, pooled.float())


# --- floor and ceiling -------------------------------------------------------------------------------
def temporal_floor(test_labels, classes: int | None = None) -> tuple[float, str]:
    """The majority-class rate on test (the best a constant answer reaches) and what it is."""
    labels = np.asarray(test_labels)
    counts = np.bincount(labels, minlength=classes or 0)
    k = len(counts)
    majority = counts.max() / len(labels)
    if counts.min() == counts.max():
        return float(majority), f"chance: {k} balanced classes"
    return float(majority), f"majority class {int(counts.argmax())}: {counts.max()} of {len(labels)} test clips"


def temporal_ceiling(features: Clips, metric: str) -> tuple[float, str]:
    """The best `metric` the stage's time resolution allows, and why. One time step (every token spans the
    same interval, e.g. the whole clip): no token's place in time can tell what comes first, so ordering
    and pairwise order are bounded by chance. A probe above that would read order from inside the tokens'
    content (e.g. a tubelet spanning the clip), which the report should then flag."""
    if metric not in METRICS:
        raise SpatialProbeError(f"temporal probe: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    steps = len(features.intervals if isinstance(features, TimeSteps) else step_index(features)[0])
    if metric == "direction_accuracy":
        return 1.0, f"{steps} time step(s): the time layout does not bound direction"
    if steps == 1:
        return CHANCE, "one time step: every token spans the same interval of the clip, so order is at chance"
    return 1.0, f"{steps} time steps: their order is within the stage's time resolution"


# --- metrics -----------------------------------------------------------------------------------------
def scored_accuracy(per_clip: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Scored:
    """The mean of per-clip scores with a seeded bootstrap 95% interval over clips."""
    per_clip = np.asarray(per_clip, dtype=np.float64)
    return Scored(float(per_clip.mean()), *mean_ci(per_clip, n_boot, seed))


def direction_accuracy(predicted, truth, n_boot: int = 1000, seed: int = 0) -> Scored:
    return scored_accuracy(np.asarray(predicted) == np.asarray(truth), n_boot, seed)


def ordering_accuracy(forward_predicted, reversed_predicted, n_boot: int = 1000, seed: int = 0) -> Scored:
    """Per clip, the mean of (its forward view called 1, its reversed view called 0)."""
    right = (np.asarray(forward_predicted) == 1).astype(float) + (np.asarray(reversed_predicted) == 0)
    return scored_accuracy(right / 2, n_boot, seed)


def pairwise_order_accuracy(predicted, truth, clip_of_pair, n_boot: int = 1000, seed: int = 0) -> Scored:
    """Per clip, the share of its pairs ordered right; the bootstrap resamples clips (pairs of one clip
    are not independent)."""
    right = (np.asarray(predicted) == np.asarray(truth)).astype(float)
    clips = np.asarray(clip_of_pair)
    pairs = np.bincount(clips)
    present = pairs > 0
    return scored_accuracy(np.bincount(clips, weights=right)[present] / pairs[present], n_boot, seed)


# --- the linear probe --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearClassifier:
    """A ridge classifier: one-hot targets regressed in closed form (`probes.ridge`), the class with the
    largest output predicted; alpha chosen by exact leave-one-group-out error on the training rows only."""
    fit: RidgeFit
    classes: np.ndarray

    def predict(self, x: torch.Tensor) -> np.ndarray:
        return self.classes[self.fit.predict(x).argmax(1).numpy()]


def fit_linear(x: torch.Tensor, y, groups=None) -> LinearClassifier:
    """Ridge classifier on (x, y). `groups` (one id per row, every group the same size) are left out
    together when alpha is chosen: rows of one clip (its forward and reversed view, its pairs of steps)
    would otherwise vouch for each other and favour too little shrinkage."""
    y = np.asarray(y)
    if np.bincount(y)[np.bincount(y) > 0].min() < 2:
        raise SpatialProbeError("temporal probe: a class has fewer than 2 training clips; the linear probe cannot choose alpha")
    classes, encoded = np.unique(y, return_inverse=True)
    order, group_size = group_order(groups, len(y))
    targets = torch.nn.functional.one_hot(torch.from_numpy(encoded), len(classes)).double()
    solver = RidgeSolver(torch.as_tensor(x, dtype=torch.float64)[order])
    return LinearClassifier(solver.fit(targets[order], group_size=group_size), classes)


def group_order(groups, rows: int) -> tuple[torch.Tensor, int]:
    """The row order that makes each group a contiguous block, and the groups' common size."""
    if groups is None:
        return torch.arange(rows), 1
    groups = np.asarray(groups)
    sizes = np.unique(np.unique(groups, return_counts=True)[1])
    if len(sizes) != 1:
        raise SpatialProbeError(f"temporal probe: groups of the linear probe differ in size ({sizes.tolist()})")
    return torch.from_numpy(np.argsort(groups, kind="stable")), int(sizes[0])


def linear_predictions(train: torch.Tensor, train_y, test: torch.Tensor, groups=None) -> np.ndarray:
    return fit_linear(train, train_y, groups).predict(test)


# --- probes -> results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemporalResult:
    metric: str
    probe: str
    score: Scored
    floor: float
    floor_reason: str
    ceiling: float
    ceiling_reason: str
    #: the probe's answers on test: [n] labels (direction), [n, 2] labels of the forward and reversed
    #: views (ordering), [pairs] 1 = first step earlier (pairwise order)
    predictions: np.ndarray


def classify(probe: str, train: Clips, train_y, test: Clips, seed: int, budget: dict | None,
             groups=None) -> np.ndarray:
    """Labels predicted for `test` by `probe` fitted on `train` (budget: `fit_attentive` keywords; groups:
    the linear probe's clip of each training row, see `fit_linear`)."""
    if probe == "linear":
        return linear_predictions(steps_of(train).flat(), train_y, steps_of(test).flat(), groups)
    if probe == "attentive":
        if isinstance(train, TimeSteps):
            raise SpatialProbeError("temporal probe: the attentive probe reads every token, not time steps pooled")
        return fit_attentive(train, train_y, seed=seed, **(budget or {})).predict(test)
    raise SpatialProbeError(f"temporal probe: unknown probe {probe!r}; expected one of {', '.join(PROBES)}")


def probe_direction(train: Clips, train_labels, test: Clips, test_labels, probe: str = "linear",
                    classes: int | None = None, seed: int = 0, n_boot: int = 1000,
                    budget: dict | None = None) -> TemporalResult:
    """direction_accuracy of `probe` fitted on the train clips' labels, scored on the test clips."""
    for features in (train, test):
        check_times(features)
    predicted = classify(probe, train, np.asarray(train_labels), test, seed, budget)
    floor, floor_reason = temporal_floor(test_labels, classes)
    ceiling, ceiling_reason = temporal_ceiling(test, "direction_accuracy")
    return TemporalResult("direction_accuracy", probe, direction_accuracy(predicted, test_labels, n_boot, seed),
                          floor, floor_reason, ceiling, ceiling_reason, np.asarray(predicted))


def probe_ordering(train_forward: Clips, train_reversed: Clips, test_forward: Clips,
                   test_reversed: Clips, probe: str = "linear", seed: int = 0, n_boot: int = 1000,
                   budget: dict | None = None) -> TemporalResult:
    """ordering_accuracy: each clip's forward view is label 1, its reversed view label 0 (the caller
    extracts both views, clip i of each in the same place)."""
    for name, (forward, backward) in (("train", (train_forward, train_reversed)), ("test", (test_forward, test_reversed))):
        for features in (forward, backward):
            check_times(features)
        if len(forward.tokens) != len(backward.tokens):
            raise SpatialProbeError(f"temporal probe: {name} forward and reversed views hold different numbers of clips")
    n_train, n_test = len(train_forward.tokens), len(test_forward.tokens)
    train, test = joined([train_forward, train_reversed]), joined([test_forward, test_reversed])
    labels = np.r_[np.ones(n_train, int), np.zeros(n_train, int)]
    clip_of_row = np.r_[np.arange(n_train), np.arange(n_train)]
    predicted = classify(probe, train, labels, test, seed, budget, clip_of_row).reshape(2, n_test)
    ceiling, ceiling_reason = temporal_ceiling(test, "ordering_accuracy")
    return TemporalResult("ordering_accuracy", probe, ordering_accuracy(predicted[0], predicted[1], n_boot, seed),
                          CHANCE, "chance: every clip is seen forward and reversed", ceiling, ceiling_reason,
                          predicted.T.copy())


def step_pairs(clips: int, steps: int, pairs_per_clip: int, rng: np.random.Generator) -> np.ndarray:
    """Rows (clip, i, j, label): per clip, `pairs_per_clip` distinct unordered pairs of steps drawn from
    `rng` (all of them if fewer), each in both orders; label 1 when i comes first."""
    first, second = np.triu_indices(steps, k=1)
    rows = []
    for clip in range(clips):
        chosen = rng.choice(len(first), size=min(pairs_per_clip, len(first)), replace=False)
        i, j = first[chosen], second[chosen]
        rows += [np.stack([np.full_like(i, clip), i, j, np.ones_like(i)], 1),
                 np.stack([np.full_like(i, clip), j, i, np.zeros_like(i)], 1)]
    return np.concatenate(rows)


def pair_features(pooled: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    """[f_i, f_j] per pair row (clip, i, j, label) from per-step pooled tokens [B, T, C]."""
    clip, i, j = (torch.from_numpy(pairs[:, k]) for k in range(3))
    return torch.cat([pooled[clip, i], pooled[clip, j]], 1)


def probe_pairwise_order(train: Clips, test: Clips, pairs_per_clip: int = 8, seed: int = 0,
                         n_boot: int = 1000) -> TemporalResult:
    """pairwise_order_accuracy of the linear probe on per-step pooled features [f_i, f_j]. A stage with one
    time step has no pairs: its value is NaN and the score's note says why."""
    train_steps, test_steps = steps_of(train), steps_of(test)
    ceiling, ceiling_reason = temporal_ceiling(test, "pairwise_order_accuracy")
    steps = len(test_steps.intervals)
    if steps < 2 or len(train_steps.intervals) < 2:
        note = "one time step: no pairs of steps to order"
        return TemporalResult("pairwise_order_accuracy", "linear", Scored(float("nan"), None, None, note), CHANCE,
                              "chance: every pair is seen in both orders", ceiling, ceiling_reason, np.empty(0, int))
    rng = np.random.default_rng(seed)
    train_pairs = step_pairs(len(train.tokens), len(train_steps.intervals), pairs_per_clip, rng)
    test_pairs = step_pairs(len(test.tokens), steps, pairs_per_clip, rng)
    predicted = linear_predictions(pair_features(train_steps.pooled, train_pairs), train_pairs[:, 3],
                                   pair_features(test_steps.pooled, test_pairs), groups=train_pairs[:, 0])
    score = pairwise_order_accuracy(predicted, test_pairs[:, 3], test_pairs[:, 0], n_boot, seed)
    return TemporalResult("pairwise_order_accuracy", "linear", score, CHANCE, "chance: every pair is seen in both orders",
                          ceiling, ceiling_reason, np.asarray(predicted))
