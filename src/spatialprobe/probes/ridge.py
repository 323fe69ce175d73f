"""Closed-form ridge regression with an unpenalized intercept and exact leave-one-out selection of alpha.

One eigendecomposition serves every alpha: of the Gram matrix X X^T when features outnumber samples
(the dual form), else of X^T X. With centered X the hat matrix is H = H_c + 11^T/n, so the
leave-one-out residuals are exact: e_i / (1 - h_ii).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHA_GRID = torch.logspace(-4, 5, 19, dtype=torch.float64)  # relative to the mean non-zero eigenvalue


@dataclass
class RidgeFit:
    coef: torch.Tensor  # [d, k], in the units of the raw features
    intercept: torch.Tensor  # [k]
    alpha: float  # in the solver's scaled units
    loo_predictions: torch.Tensor  # [n, k] leave-one-out predictions on the training set

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float64) @ self.coef + self.intercept).float()


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
        evals, evecs = torch.linalg.eigh(gram)
        self.evals = evals.clamp(min=0)
        self.evecs = evecs
        # rows of P hold each sample in the eigenbasis: P = U (dual) or X V (primal)
        self.p = evecs if self.dual else centered @ evecs
        self.p_squared = self.p.pow(2)
        self.centered_t = centered.T if self.dual else None
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

    def fit(self, y: torch.Tensor, alpha: float | None = None) -> RidgeFit:
        y = y.to(torch.float64).reshape(self.n, -1)
        y_mean = y.mean(0)
        yc = y - y_mean
        candidates = [alpha] if alpha is not None else self.alphas.tolist()
        errors = [self._loo(yc, a)[1].pow(2).mean().item() for a in candidates]
        best = candidates[min(range(len(candidates)), key=errors.__getitem__)]
        _, residuals = self._loo(yc, best)
        shrink = self._shrink(best)
        if self.dual:
            # w = X^T U diag(1/(s+a)) U^T y
            coef = self.centered_t @ (self.p @ ((1.0 / (self.evals + best))[:, None] * (self.p.T @ yc)))
        else:
            coef = self.evecs @ (shrink[:, None] * (self.p.T @ yc))
        coef = coef / self.scale
        intercept = y_mean - self.mean @ coef
        return RidgeFit(coef, intercept, best, y - residuals)


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float | None = None) -> RidgeFit:
    return RidgeSolver(x).fit(y, alpha)
