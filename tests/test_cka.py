"""CKA against a reference written here from the published definitions, its streaming form, invariances, errors.

The reference builds explicit n x n Gram matrices, centers with H = I - 11^T/n (Kornblith et al. 2019)
and writes Song et al. (2012)'s unbiased HSIC term by term; the module instead uses feature-space sums
or U-centered Grams, so agreement checks one derivation against the other.
"""
import numpy as np
import pytest
import torch

import spatialprobe as sp
from spatialprobe.errors import SpatialProbeError
from spatialprobe.metrics.cka import StreamingCKA, cka, cka_from_grams, gram_linear


# ---------- independent reference (numpy, from the papers' formulas) ----------

def ref_gram(x, kernel, threshold=1.0):
    if kernel == "linear":
        return x @ x.T
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # squared Euclidean distance of every pair
    return np.exp(-sq / (2 * threshold ** 2 * np.median(sq)))  # Kornblith et al.'s gram_rbf convention


def ref_hsic(k, l):
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_unbiased(k, l):
    """Song, Smola, Gretton, Bedo & Borgwardt (2012), eq. (5)."""
    n, ones = len(k), np.ones(len(k))
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    first = np.trace(kt @ lt)
    second = (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
    third = 2 / (n - 2) * ones @ kt @ lt @ ones
    return (first + second - third) / (n * (n - 3))


def ref_cka(x, y, kernel="linear", threshold=1.0, debiased=False):
    k, l = ref_gram(x, kernel, threshold), ref_gram(y, kernel, threshold)
    hsic = ref_hsic_unbiased if debiased else ref_hsic
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


# ---------- data ----------

def related(n, p, q, seed, offset=0.0):
    """x [n, p] and y [n, q] sharing a nonlinear signal, so every CKA is well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    y = np.tanh(x[:, :q] @ rng.standard_normal((q, q))) + 0.5 * rng.standard_normal((n, q))
    return x + offset, y - offset


def orthogonal(p, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))[0]


VARIANTS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


# ---------- agreement with the reference ----------

@pytest.mark.parametrize("kernel,debiased", VARIANTS)
@pytest.mark.parametrize("n,p,q", [(40, 12, 7), (90, 6, 5)])  # Gram path (n^2 small) and feature path (n^2 large)
def test_matches_reference(kernel, debiased, n, p, q):
    x, y = related(n, p, q, seed=n)
    expected = ref_cka(x, y, kernel, debiased=debiased)
    assert 0.05 < expected < 0.95
    assert cka(x, y, kernel=kernel, debiased=debiased) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("threshold", [0.5, 2.0])
def test_rbf_threshold_scales_the_median_bandwidth(threshold):
    x, y = related(50, 8, 4, seed=3)
    expected = ref_cka(x, y, "rbf", threshold=threshold)
    assert cka(x, y, kernel="rbf", threshold=threshold) == pytest.approx(expected, abs=1e-6)
    assert abs(expected - ref_cka(x, y, "rbf", threshold=1.0)) > 1e-3  # the threshold matters


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_gram_and_feature_paths_agree(debiased):
    x, y = related(300, 10, 6, seed=4, offset=50.0)  # large means: the feature sums must not cancel
    gram_value = cka_from_grams(gram_linear(torch.as_tensor(x)), gram_linear(torch.as_tensor(y)), debiased)
    assert cka(x, y, debiased=debiased) == pytest.approx(gram_value, abs=1e-9)


def test_torch_and_numpy_inputs_agree():
    x, y = related(30, 5, 3, seed=5)
    value = cka(x, y, kernel="rbf", debiased=True)
    assert cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), kernel="rbf",
               debiased=True) == pytest.approx(value, abs=1e-5)
    assert isinstance(value, float)


def test_exported_from_the_package():
    x, y = related(20, 4, 3, seed=6)
    assert sp.metrics.cka(x, y) == cka(x, y)
    assert sp.metrics.StreamingCKA is StreamingCKA


# ---------- streaming ----------

def stream(x, y, sizes, **options):
    streaming, start = StreamingCKA(**options), 0
    for size in sizes:
        streaming.update(x[start:start + size], y[start:start + size])
        start += size
    assert start == len(x) == streaming.n
    return streaming.compute()


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_streaming_linear_is_exact(debiased, offset):
    x, y = related(500, 24, 9, seed=7, offset=offset)
    # CKA ignores a constant shift; the reference is computed unshifted because its uncentered Grams
    # (entries ~ p * offset^2) lose 1e-7 to cancellation in Song et al.'s formula, the stream does not
    full = ref_cka(*related(500, 24, 9, seed=7), debiased=debiased)
    assert stream(x, y, [1, 37, 200, 3, 259], debiased=debiased) == pytest.approx(full, abs=1e-8)


def test_streaming_rbf_estimates_full_debiased_cka():
    # minibatch CKA estimates the same population quantity; with batches of 400 the ratio-of-means
    # bias and the bandwidth's batch-to-batch spread stay small (0.0012 at this seed, under 0.003 over 8 others)
    x, y = related(1200, 10, 4, seed=8)
    full = cka(x, y, kernel="rbf", debiased=True)
    assert stream(x, y, [400] * 3, kernel="rbf", debiased=True) == pytest.approx(full, abs=0.01)
    # and a lone minibatch is exactly the full computation on it
    assert stream(x[:300], y[:300], [300], kernel="rbf", debiased=True) == pytest.approx(
        ref_cka(x[:300], y[:300], "rbf", debiased=True), abs=1e-6)


# ---------- invariances and known answers ----------

@pytest.mark.parametrize("kernel,debiased", VARIANTS)
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(kernel, debiased):
    x, y = related(80, 10, 6, seed=9)
    value = cka(x, y, kernel=kernel, debiased=debiased)
    rotated = cka(x @ orthogonal(10, 1), y @ orthogonal(6, 2), kernel=kernel, debiased=debiased)
    scaled = cka(3.7 * x, 0.02 * y, kernel=kernel, debiased=debiased)
    assert rotated == pytest.approx(value, abs=1e-9) and scaled == pytest.approx(value, abs=1e-9)


def test_linear_cka_changes_under_anisotropic_scaling():
    x, y = related(200, 10, 3, seed=10)  # y depends on x's first 3 channels only
    stretched = x * np.array([1.0] * 3 + [10.0] * 7)  # inflate the channels y ignores
    assert cka(x, y) - cka(stretched, y) > 0.2


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_self_and_rotated_self_score_one(kernel):
    x = np.random.default_rng(11).standard_normal((60, 8))
    assert cka(x, x, kernel=kernel) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, x @ orthogonal(8, 3), kernel=kernel) == pytest.approx(1.0, abs=1e-9)


def test_independent_features_score_near_zero():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    biased, unbiased = cka(x, y), cka(x, y, debiased=True)
    assert 0 < biased < 0.05  # biased CKA is positive at finite n (about sqrt(p q) / n here)
    assert abs(unbiased) < 0.01 and abs(unbiased) < biased / 2


# ---------- errors ----------

@pytest.mark.parametrize("call,message", [
    (lambda: cka(np.ones((5, 2)) + np.arange(5)[:, None], np.zeros((6, 2))), "same rows"),
    (lambda: cka(np.random.rand(3, 2), np.random.rand(3, 2), debiased=True), "at least 4 rows"),
    (lambda: cka(np.random.rand(5, 2), np.random.rand(5, 2), kernel="cosine"), "unknown kernel"),
    (lambda: cka(np.array([[0.0, np.nan]] * 5), np.random.rand(5, 2)), "NaN or infinite"),
    (lambda: cka(np.random.rand(5, 2), np.array([[np.inf]] * 5)), "y holds NaN"),
    (lambda: cka(np.random.rand(5), np.random.rand(5)), "2-D"),
    (lambda: cka(np.ones((5, 2)), np.random.rand(5, 2)), "every row of x"),
    (lambda: cka(np.random.rand(5, 2), np.random.rand(5, 2), kernel="rbf", threshold=0), "threshold"),
    (lambda: StreamingCKA(kernel="rbf"), "debiased=True"),
    (lambda: StreamingCKA().compute(), "0 rows seen"),
])
def test_user_errors_are_one_line(call, message):
    with pytest.raises(SpatialProbeError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_streaming_rejects_changed_widths():
    streaming = StreamingCKA()
    streaming.update(np.random.rand(4, 3), np.random.rand(4, 2))
    with pytest.raises(SpatialProbeError, match="widths"):
        streaming.update(np.random.rand(4, 5), np.random.rand(4, 2))
