"""Centered kernel alignment (CKA): linear, RBF and debiased, in full and over minibatches.

Definitions (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations
Revisited"). For paired rows x_i in R^p and y_i in R^q (i = 1..n), Gram matrices K = k(X), L = l(Y):

    H = I - 11^T / n,   HSIC(K, L) = tr(K H L H) / (n - 1)^2
    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))          (the (n-1)^2 cancels)

- linear: K = X X^T. With column-centered X' = H X, Y' = H Y, tr(K H L H) = ||X'^T Y'||_F^2, so
  CKA = ||X'^T Y'||_F^2 / (||X'^T X'||_F ||Y'^T Y'||_F). `cka` builds the n x n Grams or the feature
  sums below (p*p + q*q + p*q numbers), whichever hold fewer numbers; both are exact.
- rbf: K_ij = exp(-d_ij^2 / (2 t^2 m)), d_ij = |x_i - x_j|, m = the median of the n^2 squared distances
  (zero diagonal included) and t = `threshold`, as `gram_rbf(x, threshold)` in Kornblith et al.'s code:
  the bandwidth is t times the median pairwise distance.
- debiased: HSIC replaced by the unbiased estimator of Song, Smola, Gretton, Bedo & Borgwardt (2012),
  with K~ = K with its diagonal set to 0 (n >= 4):

    HSIC_u(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1 ] / (n (n-3))

  computed as the Frobenius inner product of U-centered Grams (Kornblith et al.'s
  `center_gram(unbiased=True)`), which equals the bracket; the 1/(n(n-3)) cancels in the ratio.

Streaming, exact for the linear kernel (`StreamingCKA(kernel="linear")`). Every quantity above is a
function of sums over rows; with a_i = |x_i|^2, b_i = |y_i|^2 and

    S_xy = sum x_i y_i^T (p x q), S_xx, S_yy,  s_x = sum x_i, s_y = sum y_i,
    A = sum a_i, B = sum b_i, sum a_i b_i, sum a_i^2, sum b_i^2,
    r_xa = sum a_i x_i, r_xb = sum b_i x_i, r_ya = sum a_i y_i, r_yb = sum b_i y_i,

  biased:   X'^T Y' = S_xy - s_x s_y^T / n,  so
            ||X'^T Y'||_F^2 = ||S_xy||_F^2 - 2 s_x^T S_xy s_y / n + |s_x|^2 |s_y|^2 / n^2;
  debiased: K~_ij = x_i.x_j for i != j, so (K~ 1)_i = x_i.s_x - a_i and
            tr(K~ L~)   = sum_{i != j} (x_i.x_j)(y_i.y_j) = ||S_xy||_F^2 - sum a_i b_i
            1^T K~ 1    = |s_x|^2 - A,      1^T L~ 1 = |s_y|^2 - B
            1^T K~ L~ 1 = sum_i (x_i.s_x - a_i)(y_i.s_y - b_i)
                        = s_x^T S_xy s_y - s_x.r_xb - s_y.r_ya + sum a_i b_i
            and the same with y := x (S_xx, r_xa, sum a_i^2) or x := y for HSIC_u(K, K), HSIC_u(L, L).
  Rows are shifted by the first minibatch's column means before they are summed: CKA (biased or
  not, linear kernel) is unchanged by a constant shift of x or y, and the shift keeps the sums near
  centered, so the subtractions above lose no precision when features have large means.
  Memory: p*p + q*q + p*q float64 numbers whatever n is (x 4096 and y 128 wide: ~140 MB; 4096 and
  4096: ~400 MB); time n (p^2 + q^2 + p q).

Streaming with the rbf kernel has no exact form (the bandwidth and every entry need all pairs). It
is "minibatch CKA" (Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks Learn the Same
Things?"): the mean of each minibatch's unbiased HSIC_u(K_b, L_b), HSIC_u(K_b, K_b), HSIC_u(L_b, L_b)
(each minibatch's own median bandwidth; minibatches weighted by their rows, equal weights when
equal sizes as in the paper), then the CKA ratio of the means. It estimates the same population
quantity as full debiased rbf CKA, not the full-data number, and is only offered debiased: a mean of
biased HSICs would depend on the minibatch size.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SpatialProbeError

KERNELS = ("linear", "rbf")


def _as_rows(name: str, values) -> torch.Tensor:
    """A 2-D float64 tensor [n, channels] of finite values, or a one-line error naming the argument."""
    tensor = values.detach() if torch.is_tensor(values) else torch.as_tensor(np.asarray(values))
    if tensor.ndim != 2:
        raise SpatialProbeError(f"cka: {name} must be 2-D [n, channels], got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float64)
    if not torch.isfinite(tensor).all():
        raise SpatialProbeError(f"cka: {name} holds NaN or infinite values")
    return tensor


def _check_options(kernel: str, threshold: float) -> None:
    if kernel not in KERNELS:
        raise SpatialProbeError(f"cka: unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "rbf" and not (math.isfinite(threshold) and threshold > 0):
        raise SpatialProbeError(f"cka: threshold (the rbf bandwidth as a fraction of the median distance) "
                                f"must be a positive number, got {threshold!r}")


def _pair(x, y, min_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_rows("x", x), _as_rows("y", y)
    if len(x) != len(y):
        raise SpatialProbeError(f"cka: x and y must pair the same rows, got n = {len(x)} and {len(y)}")
    if len(x) < min_rows:
        why = " (the unbiased HSIC divides by n - 3)" if min_rows == 4 else ""
        raise SpatialProbeError(f"cka: needs at least {min_rows} rows{why}, got {len(x)}")
    return x, y.to(x.device)


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def _median(values: torch.Tensor) -> float:
    """numpy's median (the mean of the two middle values for an even count); torch.quantile refuses > 2^24 values."""
    flat = values.reshape(-1)
    low, high = flat.kthvalue((flat.numel() + 1) // 2).values, flat.kthvalue(flat.numel() // 2 + 1).values
    return float((low + high) / 2)


def gram_rbf(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """exp(-d^2 / (2 threshold^2 median(d^2))), built in place to hold one n x n matrix."""
    sq_norms = (x * x).sum(1)
    sq_distances = (x @ x.T).mul_(-2).add_(sq_norms[:, None]).add_(sq_norms[None, :]).clamp_(min=0)
    median = _median(sq_distances)
    if median == 0:
        raise SpatialProbeError("cka: the median pairwise distance of the rows is 0 (most rows identical), "
                                "so the rbf bandwidth is undefined")
    return sq_distances.div_(-2 * threshold ** 2 * median).exp_()


def center_gram(gram: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """H K H, or the U-centered K for the unbiased HSIC (Kornblith et al.'s center_gram), in place."""
    n = gram.shape[0]
    if unbiased:
        gram.fill_diagonal_(0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = gram.mean(0)
        means -= means.mean() / 2
    gram -= means[:, None]
    gram -= means[None, :]
    if unbiased:
        gram.fill_diagonal_(0)
    return gram


def _frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def _ratio(xy: float, xx: float, yy: float) -> float:
    for name, self_hsic in (("x", xx), ("y", yy)):
        if not self_hsic > 0:
            raise SpatialProbeError(f"cka: the HSIC of {name} with itself is {self_hsic:.3g}, not positive "
                                    f"({name} does not vary enough across its rows): CKA is undefined")
    return xy / math.sqrt(xx * yy)


def cka_from_grams(k: torch.Tensor, l: torch.Tensor, debiased: bool = False) -> float:
    """CKA of two n x n Gram matrices (overwritten: they are centered in place)."""
    k, l = center_gram(k, debiased), center_gram(l, debiased)
    return _ratio(_frobenius(k, l), _frobenius(k, k), _frobenius(l, l))


def _all_rows_identical(x: torch.Tensor) -> bool:
    return bool((x == x[:1]).all())


def cka(x, y, kernel: str = "linear", threshold: float = 1.0, debiased: bool = False) -> float:
    """CKA between x [n, p] and y [n, q] (numpy or torch; float64 inside); see the module docstring."""
    _check_options(kernel, threshold)
    x, y = _pair(x, y, 4 if debiased else 2)
    for name, rows in (("x", x), ("y", y)):
        if _all_rows_identical(rows):
            raise SpatialProbeError(f"cka: every row of {name} is the same: CKA is undefined")
    (n, p), q = x.shape, y.shape[1]
    if kernel == "linear" and p * p + q * q + p * q < n * n:  # the feature-space sums are the smaller matrices
        moments = _LinearMoments(debiased)
        moments.update(x, y)
        return moments.cka()
    gram = gram_linear if kernel == "linear" else (lambda rows: gram_rbf(rows, threshold))
    return cka_from_grams(gram(x), gram(y), debiased)


class _LinearMoments:
    """The row sums of the module docstring, for exact linear CKA (biased or debiased) over minibatches."""

    def __init__(self, debiased: bool) -> None:
        self.debiased, self.n, self.sums = debiased, 0, None

    def _start(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.shift_x, self.shift_y = x.mean(0), y.mean(0)
        p, q, like = x.shape[1], y.shape[1], dict(dtype=torch.float64, device=x.device)
        shapes = {"xx": (p, p), "yy": (q, q), "xy": (p, q), "sx": (p,), "sy": (q,)}
        if self.debiased:
            shapes |= {"a": (), "b": (), "aa": (), "bb": (), "ab": (), "xa": (p,), "xb": (p,), "ya": (q,), "yb": (q,)}
        self.sums = {name: torch.zeros(shape, **like) for name, shape in shapes.items()}

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.sums is None:
            self._start(x, y)
        x, y, s = x - self.shift_x, y - self.shift_y, self.sums
        self.n += len(x)
        s["xx"].addmm_(x.T, x)  # in place: no second p x p matrix
        s["yy"].addmm_(y.T, y)
        s["xy"].addmm_(x.T, y)
        s["sx"] += x.sum(0)
        s["sy"] += y.sum(0)
        if self.debiased:
            a, b = (x * x).sum(1), (y * y).sum(1)
            s["a"] += a.sum(); s["b"] += b.sum()  # noqa: E702
            s["aa"] += a @ a; s["bb"] += b @ b; s["ab"] += a @ b  # noqa: E702
            s["xa"] += x.T @ a; s["xb"] += x.T @ b; s["ya"] += y.T @ a; s["yb"] += y.T @ b  # noqa: E702

    def _centered_product(self, s_uv, s_u, s_v) -> float:
        """||U'^T V'||_F^2 from the sums: the biased tr(K H L H)."""
        n = self.n
        return float(_frobenius(s_uv, s_uv) - 2 * (s_u @ s_uv @ s_v) / n + (s_u @ s_u) * (s_v @ s_v) / n ** 2)

    def _unbiased(self, s_uv, s_u, s_v, sum_a, sum_b, sum_ab, r_ub, r_va) -> float:
        """n (n - 3) HSIC_u from the sums (module docstring); r_ub = sum b_i u_i, r_va = sum a_i v_i."""
        n = self.n
        trace = _frobenius(s_uv, s_uv) - sum_ab
        ones_k, ones_l = s_u @ s_u - sum_a, s_v @ s_v - sum_b
        ones_kl = s_u @ s_uv @ s_v - s_u @ r_ub - s_v @ r_va + sum_ab
        return float(trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2 * ones_kl / (n - 2))

    def cka(self) -> float:
        s = self.sums
        if not self.debiased:
            return _ratio(self._centered_product(s["xy"], s["sx"], s["sy"]),
                          self._centered_product(s["xx"], s["sx"], s["sx"]),
                          self._centered_product(s["yy"], s["sy"], s["sy"]))
        return _ratio(self._unbiased(s["xy"], s["sx"], s["sy"], s["a"], s["b"], s["ab"], s["xb"], s["ya"]),
                      self._unbiased(s["xx"], s["sx"], s["sx"], s["a"], s["a"], s["aa"], s["xa"], s["xa"]),
                      self._unbiased(s["yy"], s["sy"], s["sy"], s["b"], s["b"], s["bb"], s["yb"], s["yb"]))


class _MinibatchHSIC:
    """Row-weighted means of each minibatch's unbiased HSICs (Nguyen et al. 2021's minibatch CKA)."""

    def __init__(self, threshold: float) -> None:
        self.threshold, self.n, self.xy, self.xx, self.yy = threshold, 0, 0.0, 0.0, 0.0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        b = len(x)
        k = center_gram(gram_rbf(x, self.threshold), unbiased=True)
        l = center_gram(gram_rbf(y, self.threshold), unbiased=True)
        weight = b / (b * (b - 3))  # rows x HSIC_u, HSIC_u = <U(K), U(L)> / (b (b - 3))
        self.xy += weight * _frobenius(k, l)
        self.xx += weight * _frobenius(k, k)
        self.yy += weight * _frobenius(l, l)
        self.n += b

    def cka(self) -> float:
        return _ratio(self.xy, self.xx, self.yy)


class StreamingCKA:
    """CKA over minibatches of paired rows in bounded memory: exact for the linear kernel, minibatch
    CKA (an estimator of the same population quantity) for rbf; see the module docstring."""

    def __init__(self, kernel: str = "linear", debiased: bool = False, threshold: float = 1.0) -> None:
        _check_options(kernel, threshold)
        if kernel == "rbf" and not debiased:
            raise SpatialProbeError("StreamingCKA: the rbf kernel streams only as minibatch debiased CKA; "
                                    "pass debiased=True (or use cka() on the full data)")
        self.kernel, self.debiased = kernel, debiased
        self._state = _LinearMoments(debiased) if kernel == "linear" else _MinibatchHSIC(threshold)
        self._widths, self._first_rows, self._varies = None, None, [False, False]

    @property
    def n(self) -> int:
        """Rows seen so far."""
        return self._state.n

    def update(self, x, y) -> None:
        """Add paired rows x [b, p], y [b, q]; rbf minibatches need b >= 4 (each is its own HSIC_u)."""
        x, y = _pair(x, y, 4 if self.kernel == "rbf" else 1)
        widths = (x.shape[1], y.shape[1])
        if self._widths is None:
            self._widths, self._first_rows = widths, (x[0].clone(), y[0].clone())
        elif widths != self._widths:
            raise SpatialProbeError(f"StreamingCKA: minibatch widths (x {widths[0]}, y {widths[1]}) differ from "
                                    f"the first minibatch's (x {self._widths[0]}, y {self._widths[1]})")
        for side, rows in enumerate((x, y)):
            self._varies[side] = self._varies[side] or bool((rows != self._first_rows[side]).any())
        self._state.update(x, y)

    def compute(self) -> float:
        if self.n < (4 if self.debiased else 2):
            raise SpatialProbeError(f"StreamingCKA: {self.n} rows seen; needs at least "
                                    f"{4 if self.debiased else 2}{' (debiased)' if self.debiased else ''}")
        for name, varies in zip("xy", self._varies):
            if not varies:
                raise SpatialProbeError(f"StreamingCKA: every row of {name} is the same: CKA is undefined")
        return self._state.cka()
