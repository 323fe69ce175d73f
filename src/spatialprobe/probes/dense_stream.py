"""The `dense` probe above the size of the exact fit, from accumulators read shard by shard.

Below `EXACT_NUMBERS` (n images * N tokens * C channels of the training split) the dense probe is
today's exact fit (`dense.dense_probe`: alpha, threshold and score head from exact leave-one-image-out
predictions; its float64 copies of the design take about 4 * 8 bytes per number, ~4 GiB at the limit).
Above it, rows record `"fit": "kfold-5"` instead of `"exact-loio"`, and the fit is:

1. one pass over the training shards accumulating, per fold of images (image i is in fold i % FOLDS),
   X^T X, X^T y, the sums of X and y, y^T y and the token count (float64, around a fixed shift: the
   first shard's mean token). That is FOLDS * C * C numbers, whatever the number of images;
2. alpha by grouped K-fold error computed from the accumulators alone: the fit without fold f
   (totals minus fold f) predicts fold f's tokens with a squared error that is a quadratic form in
   fold f's own accumulators. The alpha grid and the overall scale are those of the exact fit
   (relative to the mean non-zero eigenvalue of the scaled, centered X^T X of all training tokens);
3. one more pass over the training shards for each image's out-of-fold coverage (the fit without its
   fold: the threshold and the score head's targets, where the exact fit uses LOIO) and its full-fit
   coverage (the score head's inputs), and one pass over the test shards for the test coverage.

Bootstrap refits of the training images (`probe_resamples`) need the exact fit: they are refused here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..store.sources import TokenSource
from .footprints import paint, token_coverage
from .ridge import ALPHA_GRID

#: n * N * C of the training split up to which the dense probe uses the exact LOIO fit
EXACT_NUMBERS = 2**27
FOLDS = 5
FIT_NAME = f"kfold-{FOLDS}"
#: float64 bytes of one block of token rows converted at once
ROW_BLOCK_BYTES = 2**27


@dataclass
class FoldSums:
    """Sums over one fold's tokens (features around the shift)."""

    xx: torch.Tensor  # [C, C]
    xy: torch.Tensor  # [C]
    x: torch.Tensor  # [C]
    y: float = 0.0
    yy: float = 0.0
    count: int = 0

    @classmethod
    def zeros(cls, channels: int) -> "FoldSums":
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return cls(z(channels, channels), z(channels), z(channels))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.x += x.sum(0)
        self.y += float(y.sum())
        self.yy += float(y @ y)
        self.count += len(y)

    def minus(self, other: "FoldSums") -> "FoldSums":
        return FoldSums(self.xx - other.xx, self.xy - other.xy, self.x - other.x, self.y - other.y,
                        self.yy - other.yy, self.count - other.count)


def row_blocks(tokens: torch.Tensor, shift: torch.Tensor):
    """Token rows [*, C] of some images as float64 blocks around the shift, about ROW_BLOCK_BYTES each."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    step = max(1, ROW_BLOCK_BYTES // (8 * rows.shape[1]))
    for start in range(0, len(rows), step):
        yield start, rows[start:start + step].to(torch.float64) - shift


def accumulate(source: TokenSource, coverage: torch.Tensor,
               fold_count: int = FOLDS) -> tuple[list[FoldSums], torch.Tensor]:
    """Per-fold sums of the training tokens against their coverage [n, N] (image i in fold i % fold_count), and
    the shift they are around (the first shard's mean token)."""
    folds, shift, first = None, None, 0
    for shard in source.shards():
        if folds is None:
            shift = shard.tokens.reshape(-1, shard.tokens.shape[-1]).to(torch.float64).mean(0)
            folds = [FoldSums.zeros(len(shift)) for _ in range(fold_count)]
        images = torch.arange(first, first + len(shard.tokens))
        for f in range(fold_count):
            mine = (images % fold_count == f).nonzero().flatten()
            if len(mine):
                y = coverage[images[mine]].reshape(-1).to(torch.float64)
                for start, x in row_blocks(shard.tokens[mine], shift):
                    folds[f].add(x, y[start:start + len(x)])
        first += len(shard.tokens)
    return folds, shift


@dataclass
class LinearMap:
    """A fitted coverage model: prediction = (x - shift) @ weights + intercept."""

    weights: torch.Tensor  # [C]
    intercept: float


class FoldRidge:
    """Ridge fits from sums: all training tokens, or all but one fold, at any alpha of the exact fit's grid."""

    def __init__(self, folds: list[FoldSums]) -> None:
        self.folds = folds
        self.total = folds[0]
        for fold in folds[1:]:
            self.total = FoldSums(self.total.xx + fold.xx, self.total.xy + fold.xy, self.total.x + fold.x,
                                  self.total.y + fold.y, self.total.yy + fold.yy, self.total.count + fold.count)
        covariance, _ = self.centered(self.total)
        channels = len(covariance)
        # the exact fit's units: one overall scale (root mean square of the centered features) and alphas
        # relative to the mean non-zero eigenvalue of the scaled X^T X
        self.scale_sq = max(float(covariance.diagonal().sum()) / (self.total.count * channels), 1e-24)
        evals = torch.linalg.eigvalsh(covariance / self.scale_sq).clamp(min=0)
        positive = evals[evals > evals.max() * 1e-10]
        self.alphas = (ALPHA_GRID * (positive.mean().item() if len(positive) else 1.0)).tolist()
        self.without = [self.eigen(self.total.minus(fold)) for fold in folds]

    @staticmethod
    def centered(sums: FoldSums) -> tuple[torch.Tensor, torch.Tensor]:
        """Centered X^T X and X^T y of the tokens these sums cover."""
        mean, y_mean = sums.x / sums.count, sums.y / sums.count
        return sums.xx - sums.count * torch.outer(mean, mean), sums.xy - sums.count * mean * y_mean

    def eigen(self, sums: FoldSums):
        covariance, cross = self.centered(sums)
        evals, evecs = torch.linalg.eigh(covariance)
        return sums, evals.clamp(min=0), evecs, evecs.T @ cross

    def solve(self, fitted, alpha: float) -> LinearMap:
        """w = (Xc^T Xc + alpha * scale^2 I)^-1 Xc^T yc: the exact solver's fit, in raw units."""
        sums, evals, evecs, projected = fitted
        weights = evecs @ (projected / (evals + alpha * self.scale_sq))
        return LinearMap(weights, sums.y / sums.count - float(sums.x @ weights) / sums.count)

    @staticmethod
    def squared_error(fit: LinearMap, fold: FoldSums) -> float:
        """sum over the fold's tokens of (y - x.w - b)^2, from the fold's sums alone."""
        w, b = fit.weights, fit.intercept
        return (fold.yy - 2 * float(w @ fold.xy) - 2 * b * fold.y + float(w @ fold.xx @ w)
                + 2 * b * float(w @ fold.x) + fold.count * b * b)

    def cv_error(self, alpha: float) -> float:
        """Mean squared error of each fold's tokens predicted by the fit without that fold."""
        total = sum(self.squared_error(self.solve(fitted, alpha), fold) for fitted, fold in zip(self.without, self.folds))
        return total / self.total.count

    def best_alpha(self) -> float:
        errors = [self.cv_error(a) for a in self.alphas]
        return self.alphas[min(range(len(errors)), key=errors.__getitem__)]


def all_predictions(source: TokenSource, maps: torch.Tensor, intercepts: torch.Tensor,
                    shift: torch.Tensor) -> torch.Tensor:
    """Every token's coverage [n, N, k] under each of k fitted maps, in one pass over the shards."""
    out = []
    for shard in source.shards():
        b, tokens = shard.tokens.shape[:2]
        values = torch.cat([x @ maps for _, x in row_blocks(shard.tokens, shift)]) + intercepts
        out.append(values.reshape(b, tokens, -1))
    return torch.cat(out)


def fit_streaming(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The dense probe's three paintings from the K-fold fit: out-of-fold coverage on the training images,
    full-fit coverage on them and full-fit coverage on the test images [*, H, W]; and the chosen alpha.
    `train` and `test` are ProbeSplits (tokens read through their `source()`)."""
    height, width = train.masks.shape[1:]
    folds, shift = accumulate(train.source(), token_coverage(train.masks, train.footprints))
    ridge = FoldRidge(folds)
    alpha = ridge.best_alpha()
    fits = [ridge.solve(fitted, alpha) for fitted in ridge.without] + [ridge.solve(ridge.eigen(ridge.total), alpha)]
    maps = torch.stack([f.weights for f in fits], 1)
    intercepts = torch.tensor([f.intercept for f in fits], dtype=torch.float64)
    train_values = all_predictions(train.source(), maps, intercepts, shift)
    own_fold = (torch.arange(len(train_values)) % FOLDS)[:, None, None].expand(*train_values.shape[:2], 1)
    out_of_fold = train_values.gather(2, own_fold)[..., 0].float()
    train_full = train_values[..., FOLDS].float()
    test_full = all_predictions(test.source(), maps[:, FOLDS:], intercepts[FOLDS:], shift)[..., 0].float()
    return (paint(out_of_fold, train.footprints, height, width), paint(train_full, train.footprints, height, width),
            paint(test_full, test.footprints, height, width), alpha)
