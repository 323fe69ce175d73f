"""Linear CKA between a model's stage and reference latents of the same images, with its null and interval.

Three forms, each a set of paired examples x_e (the stage) and y_e (the latents):
- `pooled`: one example per image, the mean of its tokens (of its placeless tokens where it has no placed
  ones) against the mean of its latent cells. Comparable with platonic-representation-style papers.
- `spatial`: one example per image, its tokens resampled through their footprints onto the latent grid
  (`bridging.resample_onto`) and flattened, against its flattened latents: moving content moves features.
- `per_position`: one example per (image, latent cell): the resampled tokens of that cell against its latent.

Linear CKA of centered examples X [m, p], Y [m, q] is ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)
= <K, L> / (||K|| ||L||) with K = X X^T, L = Y Y^T (Kornblith et al. 2019); `metrics.cka` computes it
from features, and the tests hold these Gram and accumulator forms to it.

Per image form (pooled, spatial) everything comes from the centered n x n Gram matrices of the two sides:
- the bootstrap over images resamples rows and columns of both (re-centered): a 95% percentile interval;
- the floor is a permutation null: CKA with the pairing of images shuffled (L's rows and columns permuted),
  its mean and 95th percentile: what chance gives at this width and n;
- the ceiling is 1 (a stage that is an invertible linear map of the latents would reach it).
Per position, examples are (image, cell) pairs and features are too wide for an examples x examples Gram:
the sums X^T X, X^T Y, Y^T Y (and column sums) are accumulated per block of images (`BLOCKS` blocks,
image i in block i % BLOCKS), the interval is a bootstrap over those blocks, and the null pairs each
image's cells with another image's latents (exact: one more pass over the stage per permutation chunk,
the latents held in memory).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .bridging.resample import resample_onto
from .metrics.cka import center_gram

FORMS = ("pooled", "spatial", "per_position")
#: blocks of images the per-position sums are kept in (the unit its bootstrap resamples)
BLOCKS = 20
#: float64 numbers of the permuted cross sums held at once (permutations x C x q)
CROSS_BUDGET = 2**25
#: bootstrap draws whose CKAs are computed at once ([draws, n] matrices)
BOOTSTRAP_CHUNK = 200


def centered(gram: torch.Tensor) -> torch.Tensor:
    """H K H (H = I - 11^T/n) in float64, as a new matrix: the Gram matrix of the examples around their mean."""
    return center_gram(gram.double().clone(), unbiased=False)


def gram_cka(k: torch.Tensor, l: torch.Tensor) -> float:
    """Linear CKA from two Gram matrices of the same examples (centered here); 0 when a side does not vary
    (a task's stage may be constant: a number, not an error)."""
    k, l = centered(k), centered(l)
    denominator = float(k.norm() * l.norm())
    return float((k * l).sum()) / denominator if denominator > 0 else 0.0


@dataclass
class CkaEstimate:
    value: float
    ci_low: float
    ci_high: float
    null_mean: float
    null_p95: float
    n: int  # examples (images, or image x cell pairs)
    images: int
    ci_method: str
    permutations: int

    def fields(self) -> dict:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "floor": self.null_p95,
                "null_mean": self.null_mean, "null_p95": self.null_p95, "ceiling": 1.0, "n": self.n,
                "images": self.images, "ci_method": self.ci_method, "permutations": self.permutations}


def weighted_hsic(w: torch.Tensor, k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """<H K H, H L H> of the examples each counted w[r, i] times ([R, n] -> [R]): the Gram matrices of a
    bootstrap draw (rows and columns repeated) without building them. With N = sum w, a = K w / N, b = L w / N,
    alpha = w.a / N, beta = w.b / N, the centered entries are K_ij - a_i - a_j + alpha (and likewise for L), and
    sum_ij w_i w_j Kc_ij Lc_ij = w^T (K * L) w - 2 N (w * a) . b + N^2 alpha beta."""
    n_w = w.sum(1)
    a, b = (w @ k) / n_w[:, None], (w @ l) / n_w[:, None]
    alpha, beta = (w * a).sum(1) / n_w, (w * b).sum(1) / n_w
    return ((w @ (k * l)) * w).sum(1) - 2 * n_w * (w * a * b).sum(1) + n_w ** 2 * alpha * beta


def bootstrap_ckas(k: torch.Tensor, l: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """CKA [R] of each bootstrap draw, given as how often each image was drawn ([R, n])."""
    kl, kk, ll = (weighted_hsic(counts, *pair) for pair in ((k, l), (k, k), (l, l)))
    return kl / (kk.clamp(min=0) * ll.clamp(min=0)).sqrt().clamp(min=1e-300)


def gram_estimate(k: torch.Tensor, l: torch.Tensor, bootstrap: int, permutations: int, seed: int) -> CkaEstimate:
    """CKA of per-image Gram matrices with its bootstrap interval over images and its permutation null."""
    n = len(k)
    k, l = k.double(), l.double()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (bootstrap, n), generator=generator)
    counts = torch.zeros(bootstrap, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(bootstrap, n,
                                                                                              dtype=torch.float64))
    boot = torch.cat([bootstrap_ckas(k, l, chunk) for chunk in counts.split(BOOTSTRAP_CHUNK)]).numpy()
    # centering commutes with re-pairing the images: center once, permute the centered latents' Gram
    kc, lc = centered(k), centered(l)
    norms = float(kc.norm() * lc.norm())
    null = []
    for _ in range(permutations):
        order = torch.randperm(n, generator=generator)
        null.append(float((kc * lc[order][:, order]).sum()) / norms if norms > 0 else 0.0)
    return CkaEstimate(gram_cka(k, l), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)),
                       float(np.mean(null)), float(np.percentile(null, 95)), n, n,
                       "bootstrap over images", permutations)


# --- examples of each form, from the stage's shards and the latents -----------------------------------------


def placed_means(feats) -> torch.Tensor:
    """[b, C] per-image mean of the placed tokens, else of the placeless ones."""
    if feats.tokens.shape[1]:
        return feats.tokens.double().mean(1)
    return torch.cat(list(feats.extra.values()), dim=1).double().mean(1)


def on_cells(feats, cells: torch.Tensor) -> torch.Tensor:
    """[b, M, C] the tokens resampled onto the latent cells (float64)."""
    return resample_onto(feats.tokens, feats.footprints, cells).double()


class Chained:
    """Token sources one after the other (the training split's images, then the test split's)."""

    def __init__(self, *sources) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def shards(self):
        for source in self.sources:
            yield from source.shards()


class OnCells:
    """A source's placed tokens resampled onto latent cells, shard by shard ([b, M, C] float32)."""

    def __init__(self, source, cells: torch.Tensor) -> None:
        self.source, self.cells = source, cells

    def __len__(self) -> int:
        return len(self.source)

    def shards(self):
        from .features import TokenFeatures

        for feats in self.source.shards():
            tokens = resample_onto(feats.tokens, feats.footprints, self.cells)
            yield TokenFeatures(tokens, self.cells.expand(len(tokens), -1, -1))


class NoImages:
    def __len__(self) -> int:
        return 0

    def shards(self):
        return iter(())


def image_grams(source, latents: torch.Tensor, cells: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """form -> (K, L) Gram matrices [n, n] of the per-image forms (a stage without placed tokens: pooled only).
    The spatial rows (M x C per image) are never all held: `probes.gram.centered_grams` takes them in panels."""
    from .probes.gram import centered_grams

    pooled, placed = [], False
    for feats in source.shards():
        pooled.append(placed_means(feats))
        placed = bool(feats.tokens.shape[1])
    x_pooled, y_pooled = torch.cat(pooled), latents.double().mean(1)
    out = {"pooled": (x_pooled @ x_pooled.T, y_pooled @ y_pooled.T)}
    if placed:
        k = centered_grams(OnCells(source, cells), NoImages())[0]
        y = latents.double().flatten(1)
        out["spatial"] = (k, y @ y.T)
    return out


@dataclass
class BlockSums:
    """Sums over each block's (image, cell) examples, stacked: X^T X [B, p, p], X^T Y [B, p, q], Y^T Y [B, q, q],
    column sums [B, p] and [B, q], and example counts [B]."""

    xx: torch.Tensor
    xy: torch.Tensor
    yy: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, blocks: int, p: int, q: int) -> "BlockSums":
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return cls(z(blocks, p, p), z(blocks, p, q), z(blocks, q, q), z(blocks, p), z(blocks, q), z(blocks))

    def add(self, block: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Examples x [m, p], y [m, q] into one block."""
        self.xx[block] += x.T @ x
        self.xy[block] += x.T @ y
        self.yy[block] += y.T @ y
        self.x[block] += x.sum(0)
        self.y[block] += y.sum(0)
        self.count[block] += len(x)

    def cka(self, weights: torch.Tensor) -> torch.Tensor:
        """Linear CKA [R] of the examples with each block counted weights[r, b] times ([R, B]: bootstrap draws).

        With M = sum_b w_b XX_b, m = sum_b w_b x_b and N = sum_b w_b n_b, the centered X^T X is M - m m^T / N and
        ||M - m m^T/N||^2 = ||M||^2 - 2 m^T M m / N + (m^T m)^2 / N^2 (and likewise X^T Y, Y^T Y). Every term is
        a form in w of per-block products (<XX_a, XX_b>, x_a^T XX_b x_c, x_a . x_b), computed once: a draw
        then costs B^3 numbers, not C^2."""
        w = weights.double()
        n = w @ self.count
        def quadratic(t):  # noqa: E306
            return torch.einsum("ra,ab,rb->r", w, t, w)
        def cubic(u):  # noqa: E306
            return torch.einsum("abc,ra,rb,rc->r", u, w, w, w)
        flat = lambda t: t.reshape(len(t), -1)  # noqa: E731
        gx, gy = quadratic(self.x @ self.x.T), quadratic(self.y @ self.y.T)
        sxx = quadratic(flat(self.xx) @ flat(self.xx).T) - 2 * cubic(self.third(self.x, self.xx, self.x)) / n \
            + gx ** 2 / n ** 2
        syy = quadratic(flat(self.yy) @ flat(self.yy).T) - 2 * cubic(self.third(self.y, self.yy, self.y)) / n \
            + gy ** 2 / n ** 2
        sxy = quadratic(flat(self.xy) @ flat(self.xy).T) - 2 * cubic(self.third(self.x, self.xy, self.y)) / n \
            + gx * gy / n ** 2
        return sxy / (sxx.clamp(min=0) * syy.clamp(min=0)).sqrt().clamp(min=1e-300)

    @staticmethod
    def third(left: torch.Tensor, middle: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """[B, B, B]: left_a^T middle_b right_c."""
        return torch.einsum("ap,bcp->abc", left, torch.einsum("bpq,cq->bcp", middle, right))

    def totals(self) -> tuple:
        return self.xx.sum(0), self.yy.sum(0), self.x.sum(0), self.y.sum(0), float(self.count.sum())


def sums_cka(xx, xy, yy, x, y, count) -> float:
    """Linear CKA from the examples' sums: centered X^T Y, X^T X, Y^T Y."""
    mx, my = x / count, y / count
    cxy = xy - count * torch.outer(mx, my)
    cxx = xx - count * torch.outer(mx, mx)
    cyy = yy - count * torch.outer(my, my)
    denominator = float(cxx.norm() * cyy.norm())
    return float(cxy.pow(2).sum()) / denominator if denominator > 0 else 0.0


def position_estimate(shard_source, latents: torch.Tensor, cells: torch.Tensor, bootstrap: int, permutations: int,
                      seed: int) -> CkaEstimate:
    """Per-position CKA: examples are (image, latent cell) pairs. `shard_source()` yields the stage's shards
    (called once per pass); `latents` [n, M, q] of the same images in order."""
    n, cell_count, q = latents.shape
    # sums are taken around shifts (the first shard's mean cell, the latents' mean): the centered sums are
    # the same, and a large common offset of a stage does not cancel digits away
    latents = latents.double() - latents.double().mean((0, 1))
    sums, first, shift, blocks = None, 0, None, min(BLOCKS, n)
    for feats in shard_source():
        x = on_cells(feats, cells)
        if sums is None:
            shift = x.mean((0, 1))
            sums = BlockSums.zeros(blocks, x.shape[-1], q)
        x = x - shift
        images = torch.arange(first, first + len(x))
        for block in range(blocks):
            mine = (images % blocks == block).nonzero().flatten()
            if len(mine):
                sums.add(block, x[mine].reshape(-1, x.shape[-1]), latents[images[mine]].reshape(-1, q))
        first += len(x)
    value = float(sums.cka(torch.ones(1, blocks))[0])
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(blocks, (bootstrap, blocks), generator=generator)
    counts = torch.zeros(bootstrap, blocks).scatter_add_(1, draws, torch.ones(bootstrap, blocks))
    boot = sums.cka(counts).numpy()
    null = permuted_position_ckas(shard_source, latents, cells, shift, sums, permutations, generator)
    return CkaEstimate(value, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), float(np.mean(null)),
                       float(np.percentile(null, 95)), n * cell_count, n,
                       f"bootstrap over {blocks} blocks of images", permutations)


def permuted_position_ckas(shard_source, latents, cells, shift, sums: BlockSums, permutations: int,
                           generator) -> list[float]:
    """CKA with each image's cells paired with another image's latents (the same cell), per permutation.
    Only X^T Y changes: the other sums are the totals. `latents` and `shift` as the sums took them."""
    n, _, q = latents.shape
    xx, yy, x_sum, y_sum, count = sums.totals()
    orders = [torch.randperm(n, generator=generator) for _ in range(permutations)]
    p = xx.shape[0]
    chunk = max(1, CROSS_BUDGET // (p * q))
    null = []
    for start in range(0, permutations, chunk):
        group = torch.stack(orders[start:start + chunk])  # [P, n]
        cross = torch.zeros(len(group), p, q, dtype=torch.float64)
        first = 0
        for feats in shard_source():
            x = on_cells(feats, cells) - shift  # [b, M, p]
            paired = latents[group[:, first:first + len(x)]]  # [P, b, M, q]
            cross += torch.einsum("bmp,kbmq->kpq", x, paired)
            first += len(x)
        null += [sums_cka(xx, c, yy, x_sum, y_sum, count) for c in cross]
    return null
