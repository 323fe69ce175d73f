"""The dense probe's exact leave-one-image-out fit, reading the training tokens shard by shard.

The same numbers as `ridge.RidgeSolver(tokens).fit(coverage, group_size=N)` on the joined tokens (its
primal form, features fewer than token rows), without ever holding them: everything it needs of the
n x N token rows is

1. X^T X, X^T y and the column sums, accumulated in float64 around a shift (the first shard's mean
   token), so the centered X^T X, the overall scale and the eigendecomposition are the solver's;
2. each image's rows in the eigenbasis, P_G = ((X_G - mean) / scale) V, made again from its own tokens
   when its leave-one-image-out residuals (I - H_GG)^-1 e_G are solved (`ridge.group_residuals`).

Alpha is chosen, as by the solver, on `ridge.ALPHA_GROUPS` evenly spaced images, whose P_G are held
(a fixed number of images, whatever n); the chosen fit's residuals then take one more pass over the
training shards, and its predictions one pass over each split. Memory is C x C plus one shard plus
the sampled images' P_G, not n x N x C.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..store.sources import TokenSource
from .dense_stream import FoldSums, accumulate
from .footprints import paint, token_coverage
from .ridge import ALPHA_GRID, ALPHA_GROUPS, group_residuals


@dataclass
class StreamedRidge:
    """The primal ridge solver's state from accumulated sums: mean, scale, eigenbasis, P^T yc."""

    mean: torch.Tensor  # [C] of the raw tokens
    scale: float
    evals: torch.Tensor  # [C] of the scaled, centered X^T X
    evecs: torch.Tensor  # [C, C]
    projected: torch.Tensor  # [C, 1]: P^T yc
    y_mean: float
    rows: int  # n * N

    @classmethod
    def from_sums(cls, sums: FoldSums, shift: torch.Tensor) -> "StreamedRidge":
        count, channels = sums.count, len(shift)
        mean_shifted, y_mean = sums.x / count, sums.y / count
        covariance = sums.xx - count * torch.outer(mean_shifted, mean_shifted)
        scale = (covariance.diagonal().sum() / (count * channels)).sqrt().clamp(min=1e-12).item()
        evals, evecs = torch.linalg.eigh(covariance / scale ** 2)
        cross = (sums.xy - count * mean_shifted * y_mean) / scale
        return cls(mean_shifted + shift, scale, evals.clamp(min=0), evecs, (evecs.T @ cross)[:, None], y_mean, count)

    @property
    def alphas(self) -> list[float]:
        positive = self.evals[self.evals > self.evals.max() * 1e-10]
        return (ALPHA_GRID * (positive.mean().item() if len(positive) else 1.0)).tolist()

    def rotated(self, tokens: torch.Tensor) -> torch.Tensor:
        """P rows [b, N, C] of some images' tokens [b, N, C]."""
        return ((tokens.to(torch.float64) - self.mean) / self.scale) @ self.evecs

    def residuals(self, p: torch.Tensor, yc: torch.Tensor, alpha: float) -> torch.Tensor:
        """Leave-one-image-out residuals [b, N] of images with P rows [b, N, C] and centered targets [b, N]."""
        shrink = 1.0 / (self.evals + alpha)
        errors = yc - (p @ (shrink[:, None] * self.projected))[..., 0]
        return group_residuals(p, shrink, errors[..., None], self.rows)[..., 0]

    def coef(self, alpha: float) -> tuple[torch.Tensor, float]:
        """The full fit in raw units: prediction = x @ coef + intercept."""
        coef = (self.evecs @ (self.projected / (self.evals + alpha)[:, None]))[:, 0] / self.scale
        return coef, self.y_mean - float(self.mean @ coef)


def sampled_images(n: int) -> torch.Tensor:
    """The images alpha is chosen on: the solver's `ALPHA_GROUPS` evenly spaced ones."""
    return torch.linspace(0, n - 1, min(n, ALPHA_GROUPS)).round().long().unique()


def rotated_images(ridge: StreamedRidge, source: TokenSource, images: torch.Tensor) -> torch.Tensor:
    """P rows [len(images), N, C] of these images (sorted indices), in one pass over the shards."""
    out, first = [], 0
    for shard in source.shards():
        mine = images[(images >= first) & (images < first + len(shard.tokens))] - first
        if len(mine):
            out.append(ridge.rotated(shard.tokens[mine]))
        first += len(shard.tokens)
    return torch.cat(out)


def best_alpha(ridge: StreamedRidge, source: TokenSource, yc: torch.Tensor) -> float:
    """The alpha of the grid with the least leave-one-image-out error on the sampled images."""
    images = sampled_images(len(yc))
    p = rotated_images(ridge, source, images)
    errors = [ridge.residuals(p, yc[images], a).pow(2).mean().item() for a in ridge.alphas]
    return ridge.alphas[min(range(len(errors)), key=errors.__getitem__)]


def loio_coverage(ridge: StreamedRidge, source: TokenSource, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Each training token's coverage [n, N] from the fit without its image: y minus its residual."""
    out, first = [], 0
    for shard in source.shards():
        rows = y[first:first + len(shard.tokens)]
        out.append(rows - ridge.residuals(ridge.rotated(shard.tokens), rows - ridge.y_mean, alpha))
        first += len(shard.tokens)
    return torch.cat(out)


def predictions(source: TokenSource, coef: torch.Tensor, intercept: float) -> torch.Tensor:
    """The full fit's coverage [n, N] of a split's tokens, shard by shard (as `RidgeFit.predict`)."""
    return torch.cat([(shard.tokens.to(torch.float64) @ coef + intercept).float() for shard in source.shards()])


def fit_exact_streaming(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The dense probe's three paintings from the exact LOIO fit: LOIO coverage on the training images,
    full-fit coverage on them and on the test images [*, H, W]; and the chosen alpha (in the solver's units).
    `train` and `test` are ProbeSplits (tokens read through their `source()`)."""
    height, width = train.masks.shape[1:]
    coverage = token_coverage(train.masks, train.footprints).to(torch.float64)
    (sums,), shift = accumulate(train.source(), coverage, fold_count=1)  # one fold: all training tokens
    ridge = StreamedRidge.from_sums(sums, shift)
    alpha = best_alpha(ridge, train.source(), coverage - ridge.y_mean)
    loio = loio_coverage(ridge, train.source(), coverage, alpha).float()
    coef, intercept = ridge.coef(alpha)
    train_full, test_full = predictions(train.source(), coef, intercept), predictions(test.source(), coef, intercept)
    return (paint(loio, train.footprints, height, width), paint(train_full, train.footprints, height, width),
            paint(test_full, test.footprints, height, width), alpha)
