"""Closed-form ridge regression with an unpenalized intercept and exact leave-one-out selection of alpha.

One eigendecomposition serves every alpha: of the Gram matrix X X^T when features outnumber samples
(the dual form), else of X^T X. With centered X the hat matrix is H = H_c + 11^T/n, so the
leave-one-out residuals are exact: e_i / (1 - h_ii).

Grouped leave-one-out (`group_size` > 1: contiguous blocks of rows, e.g. one image's tokens) is exact
too: leaving out block G gives residuals (I - H_GG)^{-1} e_G, one small solve per block from the same
decomposition, without ever forming the full hat matrix. Alpha is then chosen by grouped LOO error:
rows of one block help each other, so per-row LOO would favour too little shrinkage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHA_GRID = torch.logspace(-4, 5, 19, dtype=torch.float64)  # relative to the mean non-zero eigenvalue
#: grouped LOO costs N^2 * rank per block and alpha, so alpha is chosen on at most this many blocks
#: (evenly spaced, fixed); their residuals are exact, so this estimates the all-block error from a
#: fixed sample. The final grouped LOO predictions cover every block.
ALPHA_GROUPS = 48
#: blocks (their rows of P and their H_GG) held in memory at once: about this many float64 numbers (~128 MB)
BLOCK_BUDGET = 2**24


@dataclass
class RidgeFit:
    coef: torch.Tensor | None  # [d, k], in the units of the raw features (None for a fit from a Gram matrix alone)
    intercept: torch.Tensor  # [k] (for a fit from a Gram matrix: the mean target, the intercept of centered features)
    alpha: float  # in the solver's scaled units
    #: [n, k] leave-one-out predictions on the training set (leave-one-group-out if fitted by groups)
    loo_predictions: torch.Tensor
    #: dual fits only: [n, k] weights of the training samples, so that the centered prediction for x is
    #: ((x - mean) . (x_j - mean))_j @ dual_weights / scale^2 -- what a fit from a Gram matrix predicts with
    dual_weights: torch.Tensor | None = None
    scale: float = 1.0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float64) @ self.coef + self.intercept).float()

    def predict_from_cross(self, cross: torch.Tensor) -> torch.Tensor:
        """Predictions [m, k] from the centered cross Gram [m, n]: (x_t - mean) . (x_j - mean) for each
        test sample t and training sample j, the mean being the training samples' (see `centered_grams`)."""
        return (cross.to(torch.float64) @ self.dual_weights / self.scale ** 2 + self.intercept).float()


class RidgeSolver:
    """Decomposes X once; `fit(Y)` then chooses alpha by leave-one-out error and solves."""

    def __init__(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        self.n, self.d = x.shape
        self.mean = x.mean(0)
        centered = x - self.mean
        # one overall scale keeps the relative alpha grid meaningful across feature types
        self.scale = centered.pow(2).mean().sqrt().clamp(min=1e-12).item()
        centered /= self.scale
        self.dual = self.d >= self.n
        gram = centered @ centered.T if self.dual else centered.T @ centered
        self.centered_t = centered.T if self.dual else None
        self._decompose(gram, centered)

    @classmethod
    def from_gram(cls, centered_gram: torch.Tensor, d: int) -> "RidgeSolver":
        """The dual solver from the centered Gram matrix [n, n] of n samples of d features alone, with the
        same scale, alpha grid, leave-one-out and fits as from the samples: the design is never needed.
        Its fits predict through `RidgeFit.predict_from_cross` (they have no `coef`)."""
        solver = cls.__new__(cls)
        gram = centered_gram.to(torch.float64)
        solver.n, solver.d = len(gram), d
        solver.mean = None
        # sum of squares of the centered samples = trace of their Gram matrix
        solver.scale = (gram.diagonal().sum() / (solver.n * d)).sqrt().clamp(min=1e-12).item()
        solver.dual = True
        solver.centered_t = None
        solver._decompose(gram / solver.scale ** 2, None)
        return solver

    def _decompose(self, gram: torch.Tensor, centered: torch.Tensor | None) -> None:
        evals, evecs = torch.linalg.eigh(gram)
        self.evals = evals.clamp(min=0)
        self.evecs = evecs
        # rows of P hold each sample in the eigenbasis: P = U (dual) or X V (primal)
        self.p = evecs if self.dual else centered @ evecs
        self.p_squared = self.p.pow(2)
        positive = self.evals[self.evals > self.evals.max() * 1e-10]
        self.alphas = ALPHA_GRID * (positive.mean().item() if len(positive) else 1.0)

    def _shrink(self, alpha: float) -> torch.Tensor:
        # dual: H_c = U diag(s/(s+a)) U^T; primal: H_c = P diag(1/(s+a)) P^T
        return self.evals / (self.evals + alpha) if self.dual else 1.0 / (self.evals + alpha)

    def _loo(self, yc: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitted values (centered) and leave-one-out residuals for one alpha."""
        shrink = self._shrink(alpha)
        fitted = self.p @ (shrink[:, None] * (self.p.T @ yc))
        leverage = (self.p_squared @ shrink) + 1.0 / self.n
        return fitted, (yc - fitted) / (1 - leverage).clamp(min=1e-12)[:, None]

    def _group_loo(self, yc: torch.Tensor, alpha: float, group_size: int,
                   groups: torch.Tensor | None = None) -> torch.Tensor:
        """Leave-one-group-out residuals [len(groups) * group_size, k] of these groups (default: all)."""
        shrink = self._shrink(alpha)
        fitted = self.p @ (shrink[:, None] * (self.p.T @ yc))
        errors = (yc - fitted).reshape(-1, group_size, yc.shape[1])
        p = self.p.reshape(-1, group_size, self.p.shape[1])
        if groups is not None:  # a sample of the groups (alpha selection): copies of their rows only
            errors, p = errors[groups], p[groups]
        return group_residuals(p, shrink, errors, self.n).reshape(-1, yc.shape[1])

    def _choose_alpha(self, yc: torch.Tensor, group_size: int) -> float:
        if group_size == 1:
            errors = [self._loo(yc, a)[1].pow(2).mean().item() for a in self.alphas.tolist()]
        else:
            n_groups = self.n // group_size
            sample = torch.linspace(0, n_groups - 1, min(n_groups, ALPHA_GROUPS)).round().long().unique()
            errors = [self._group_loo(yc, a, group_size, sample).pow(2).mean().item() for a in self.alphas.tolist()]
        return self.alphas[min(range(len(errors)), key=errors.__getitem__)].item()

    def _check_groups(self, group_size: int) -> None:
        if group_size < 1 or self.n % group_size:
            raise ValueError(f"{self.n} rows do not split into groups of {group_size}")
        if group_size > 1 and self.n == group_size:
            raise ValueError("leaving out the only group leaves nothing to fit")

    def group_loo_predictions(self, y: torch.Tensor, group_size: int, alpha: float) -> torch.Tensor:
        """Predictions [n, k] for each contiguous block of `group_size` rows from a fit without that block."""
        self._check_groups(group_size)
        y = y.to(torch.float64).reshape(self.n, -1)
        return y - self._group_loo(y - y.mean(0), alpha, group_size)

    def fit(self, y: torch.Tensor, alpha: float | None = None, group_size: int = 1) -> RidgeFit:
        """Ridge fit; alpha (unless given) and `loo_predictions` by leaving out blocks of `group_size` rows."""
        self._check_groups(group_size)
        y = y.to(torch.float64).reshape(self.n, -1)
        y_mean = y.mean(0)
        yc = y - y_mean
        best = alpha if alpha is not None else self._choose_alpha(yc, group_size)
        if group_size == 1:
            residuals = self._loo(yc, best)[1]
        else:
            residuals = self._group_loo(yc, best, group_size)
        shrink = self._shrink(best)
        if not self.dual:
            coef = self.evecs @ (shrink[:, None] * (self.p.T @ yc)) / self.scale
            return RidgeFit(coef, y_mean - self.mean @ coef, best, y - residuals)
        # w = X^T U diag(1/(s+a)) U^T y: the samples' weights U diag(1/(s+a)) U^T y, then through X^T if X is known
        weights = self.p @ ((1.0 / (self.evals + best))[:, None] * (self.p.T @ yc))
        if self.centered_t is None:
            return RidgeFit(None, y_mean, best, y - residuals, weights, self.scale)
        coef = self.centered_t @ weights / self.scale
        return RidgeFit(coef, y_mean - self.mean @ coef, best, y - residuals, weights, self.scale)


def group_residuals(p: torch.Tensor, shrink: torch.Tensor, errors: torch.Tensor, rows: int) -> torch.Tensor:
    """(I - H_GG)^-1 e_G for groups with eigenbasis rows P_G [G, N, r] and fitted-value errors e_G [G, N, k],
    from a fit on `rows` rows with an unpenalized intercept: H_GG = U C U^T, U = [P_G, 1/sqrt(rows)] (the
    intercept's 1/rows as one more column), C = diag(shrink, 1). In chunks of about BLOCK_BUDGET numbers."""
    ones = torch.full((*p.shape[:2], 1), rows ** -0.5, dtype=torch.float64)
    c = torch.cat([shrink, torch.ones(1, dtype=torch.float64)])
    group_size, width = p.shape[1], p.shape[2] + 1
    per_chunk = max(1, BLOCK_BUDGET // (group_size * max(group_size, width)))
    solve = low_rank_solve if width < group_size else direct_solve
    out = []
    for start in range(0, len(p), per_chunk):
        u = torch.cat([p[start:start + per_chunk], ones[start:start + per_chunk]], 2)
        out.append(solve(u, c, errors[start:start + per_chunk]))
    return torch.cat(out)


def direct_solve(u: torch.Tensor, c: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """(I - U C U^T)^-1 e with one N x N solve per group (N = tokens per image)."""
    eye = torch.eye(u.shape[1], dtype=torch.float64)
    return guarded_solve(eye - (u * c) @ u.transpose(1, 2), errors)


def low_rank_solve(u: torch.Tensor, c: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """The same through Woodbury, (I - U C U^T)^-1 = I + U (I - C U^T U)^-1 C U^T: an r x r solve per group
    (r = rank + 1), which for images of thousands of tokens and a few hundred channels is far cheaper.
    A group whose small system is singular is solved directly (`direct_solve`)."""
    ut = u.transpose(1, 2)
    inner = torch.eye(u.shape[2], dtype=torch.float64) - c[:, None] * (ut @ u)
    solved = torch.linalg.solve_ex(inner, c[:, None] * (ut @ errors))
    out = errors + u @ solved.result
    singular = (solved.info != 0).nonzero().flatten()
    if len(singular):
        out[singular] = direct_solve(u[singular], c, errors[singular])
    return out


def guarded_solve(systems: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve systems I - H_GG [G, N, N] (symmetric, eigenvalues in (0, 1] in exact arithmetic). Where one is
    singular in floating point (a group the fit reproduces exactly: some 1 - h = 0) it is solved through its
    eigendecomposition with 1 - h clamped at 1e-12, as single-row LOO clamps 1 - h_ii: a huge residual for
    that group, never a crash or a NaN."""
    solved = torch.linalg.solve_ex(systems, rhs)
    out = solved.result
    for i in (solved.info != 0).nonzero().flatten().tolist():
        evals, evecs = torch.linalg.eigh((systems[i] + systems[i].T) / 2)
        out[i] = evecs @ ((evecs.T @ rhs[i]) / evals.clamp(min=1e-12)[:, None])
    return out


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float | None = None, group_size: int = 1) -> RidgeFit:
    return RidgeSolver(x).fit(y, alpha, group_size)
