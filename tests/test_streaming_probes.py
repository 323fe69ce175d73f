"""Probes read from TokenSources shard by shard: the same numbers as the in-memory fits wherever those are
exact (linear from Gram matrices, pooled from streamed means, shuffles per shard), and the dense probe's
K-fold fit from accumulators above its size limit."""
import numpy as np
import pytest
import torch

from spatialprobe.errors import SpatialProbeError
from spatialprobe.features import TokenFeatures
from spatialprobe.probes import ProbeSplit, dense_stream, images_of, run_spatial_probes, shuffle_tokens, spread_of
from spatialprobe.probes import fitter
from spatialprobe.probes.box import box_probe, gram_box_probe
from spatialprobe.probes.dense_stream import FOLDS, FoldRidge, FoldSums
from spatialprobe.probes.gram import centered_grams
from spatialprobe.probes.ridge import RidgeSolver
from spatialprobe.store.sources import InMemorySource
from test_dense import with_noisy_coverage
from test_probes import by_key, rectangles


def source_of(tokens: torch.Tensor, shard_size: int) -> InMemorySource:
    return InMemorySource(TokenFeatures(tokens, torch.zeros(*tokens.shape[:2], 4)), shard_size)


def streamed(split: ProbeSplit, shard_size: int = 7) -> ProbeSplit:
    """The same split with its tokens behind a source of uneven shards."""
    return ProbeSplit(InMemorySource(TokenFeatures(split.tokens, split.footprints), shard_size), split.footprints,
                      split.boxes, split.masks, split.placeless_mean)


# dual (d >= n) and d < n; a large common offset (as in LLM activations) must not cost digits
@pytest.mark.parametrize("n,tokens,channels", [(30, 6, 12), (40, 3, 4)])
def test_ridge_from_shard_grams_equals_ridge_on_the_samples(n, tokens, channels):
    g = torch.Generator().manual_seed(n)
    train = torch.randn(n, tokens, channels, generator=g, dtype=torch.float64) + 1e3
    test = torch.randn(11, tokens, channels, generator=g, dtype=torch.float64) + 1e3
    y = torch.randn(n, 4, generator=g, dtype=torch.float64)
    # a panel of ~2 images: several panels, shards of 4 and 5 images that straddle them
    gram, cross, d = centered_grams(source_of(train, 4), source_of(test, 5), panel_bytes=2 * 8 * tokens * channels)
    assert d == tokens * channels
    want = RidgeSolver(train.flatten(1)).fit(y)
    got = RidgeSolver.from_gram(gram, d).fit(y)
    assert got.alpha == pytest.approx(want.alpha, rel=1e-9)
    assert (got.loo_predictions - want.loo_predictions).abs().max() < 1e-9
    predicted = cross @ got.dual_weights / got.scale ** 2 + got.intercept
    assert (predicted - (test.flatten(1) @ want.coef + want.intercept)).abs().max() < 1e-9


def test_linear_probe_from_shards_gives_todays_boxes_and_scores():
    g = torch.Generator().manual_seed(3)
    train, test = torch.randn(50, 8, 16, generator=g), torch.randn(20, 8, 16, generator=g)
    boxes = torch.rand(50, 4, generator=g)
    want = box_probe(train.flatten(1), boxes, test.flatten(1))  # the fit on the whole design in memory
    gram, cross, d = centered_grams(source_of(train, 16), source_of(test, 16))
    got = gram_box_probe(gram, cross, d, boxes)
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-6


@pytest.fixture(scope="module")
def box_case():
    """Tokens that carry the box (plus noise), a case where linear and pooled probes learn something."""
    g = torch.Generator().manual_seed(5)
    splits = []
    for n, seed in ((60, 0), (25, 1)):
        split = rectangles(n, seed, grid=4)
        mixing = torch.randn(4, 6, generator=g)
        split.tokens = ((split.boxes @ mixing)[:, None, :] + 0.3 * torch.randn(n, 16, 6, generator=g)).contiguous()
        splits.append(split)
    return splits


@pytest.mark.parametrize("probe", ["linear", "pooled"])
def test_box_probes_from_sources_give_the_in_memory_records(box_case, probe):
    train, test = box_case
    want = by_key(run_spatial_probes(train, test, probes=(probe,), n_boot=100))
    got = by_key(run_spatial_probes(streamed(train), streamed(test, 4), probes=(probe,), n_boot=100))
    assert want.keys() == got.keys()
    for key in want:
        for field in ("value", "ci_low", "ci_high", "floor", "ceiling"):
            assert got[key][field] == pytest.approx(want[key][field], abs=1e-9), (key, field)


def test_linear_bootstrap_refits_from_the_gram_matrix_equal_refits_on_the_tokens(box_case):
    train, test = box_case
    rows = torch.randint(len(train.boxes), (len(train.boxes),), generator=torch.Generator().manual_seed(2))
    resampled = images_of(train, rows)
    want = box_probe(resampled.tokens.flatten(1), resampled.boxes, test.tokens.flatten(1))
    got = fitter("linear", streamed(train), streamed(test))(rows)
    assert (got[0] - want[0]).abs().max() < 1e-6 and (got[1] - want[1]).abs().max() < 1e-6
    assert spread_of(fitter("linear", streamed(train), streamed(test)), len(train.boxes), test, 3, 0) == pytest.approx(
        spread_of(lambda r: (*box_probe(train.tokens.flatten(1)[r], train.boxes[r], test.tokens.flatten(1)), None, {}),
                  len(train.boxes), test, 3, 0), abs=1e-9)


def test_shuffled_source_draws_the_in_memory_permutations(box_case):
    train = box_case[0]
    want = shuffle_tokens(train, 4).tokens
    source = shuffle_tokens(streamed(train, 9), 4).tokens
    for _ in range(2):  # every pass over the shards draws the same permutations
        assert torch.equal(torch.cat([s.tokens for s in source.shards()]), want)


def test_pooled_reads_placeless_tokens_from_the_shards_extras():
    g = torch.Generator().manual_seed(0)
    extra = torch.randn(10, 3, 5, generator=g)
    feats = TokenFeatures(torch.zeros(10, 0, 5), torch.zeros(10, 0, 4), extra={"queries": extra})
    split = ProbeSplit(InMemorySource(feats, 4), feats.footprints, torch.rand(10, 4), torch.zeros(10, 8, 8, dtype=torch.bool))
    assert not split.has_spatial_tokens
    assert torch.allclose(split.pooled(), extra.mean(1))


# --- dense: K-fold from accumulators -----------------------------------------------------------------
def image_offset_case(seed, images=40, tokens=6):
    """Tokens sharing image-level features and a per-image offset they do not explain: per-token
    leave-one-out shrinks far too little here, leaving whole images out does not (test_dense)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(images, 8, generator=g, dtype=torch.float64).repeat_interleave(tokens, 0)
    own = torch.randn(images * tokens, 1, generator=g, dtype=torch.float64)
    x = torch.cat([shared + 0.05 * torch.randn(shared.shape, generator=g, dtype=torch.float64), own], 1)
    offset = torch.randn(images, 1, generator=g, dtype=torch.float64).repeat_interleave(tokens, 0)
    return x, (0.5 * own + offset)[:, 0]


def fold_sums(x, y, tokens):
    folds = [FoldSums.zeros(x.shape[1]) for _ in range(FOLDS)]
    for i in range(len(x) // tokens):
        folds[i % FOLDS].add(x[i * tokens:(i + 1) * tokens], y[i * tokens:(i + 1) * tokens])
    return folds


def test_kfold_error_from_accumulators_equals_explicit_refits():
    x, y = image_offset_case(0)
    tokens, ridge = 6, FoldRidge(fold_sums(*image_offset_case(0), 6))
    scale = RidgeSolver(x).scale
    fold = (torch.arange(len(x)) // tokens) % FOLDS
    for alpha in ridge.alphas[::6]:
        errors = 0.0
        for f in range(FOLDS):
            keep = fold != f
            xk, yk = x[keep], y[keep]
            xc = (xk - xk.mean(0)) / scale
            w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ (yk - yk.mean()))
            errors += (((x[~keep] - xk.mean(0)) / scale @ w + yk.mean() - y[~keep]) ** 2).sum().item()
        assert ridge.cv_error(alpha) == pytest.approx(errors / len(x), rel=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kfold_alpha_is_within_one_grid_step_of_the_exact_loio_alpha(seed):
    x, y = image_offset_case(seed)
    solver = RidgeSolver(x)
    exact = solver.alphas.tolist().index(solver.fit(y, group_size=6).alpha)
    ridge = FoldRidge(fold_sums(x, y, 6))
    assert ridge.alphas == pytest.approx(solver.alphas.tolist(), rel=1e-9)  # the same grid
    assert abs(ridge.alphas.index(ridge.best_alpha()) - exact) <= 1


@pytest.fixture(scope="module")
def dense_case():
    train = with_noisy_coverage(rectangles(120, 0), 4, channels=5)
    test = with_noisy_coverage(rectangles(60, 1), 5, channels=5)
    return train, test, by_key(run_spatial_probes(train, test, probes=("dense",), n_boot=200))


def test_dense_above_the_exact_limit_streams_kfold_and_lands_in_the_exact_intervals(dense_case, monkeypatch):
    train, test, exact = dense_case
    assert {r["fit"] for r in exact.values()} == {"exact-loio"}
    monkeypatch.setattr(dense_stream, "EXACT_NUMBERS", train.tokens.numel() - 1)
    half = lambda s: ProbeSplit(InMemorySource(TokenFeatures(s.tokens.half(), s.footprints), 16), s.footprints,  # noqa: E731
                                s.boxes, s.masks)
    got = by_key(run_spatial_probes(half(train), half(test), probes=("dense",), n_boot=200))
    assert {r["fit"] for r in got.values()} == {dense_stream.FIT_NAME}
    for metric in ("spatial_iou", "bbox_iou"):
        want = exact[("dense", metric)]
        assert want["ci_low"] <= got[("dense", metric)]["value"] <= want["ci_high"]
        assert got[("dense", metric)]["value"] == pytest.approx(want["value"], abs=0.02)


def test_bootstrap_refits_are_refused_above_the_dense_exact_limit(dense_case, monkeypatch):
    train, test, _ = dense_case
    monkeypatch.setattr(dense_stream, "EXACT_NUMBERS", 10)
    with pytest.raises(SpatialProbeError, match="probe_resamples"):
        run_spatial_probes(streamed(train), streamed(test), probes=("dense",), resamples=2)
    assert run_spatial_probes(streamed(train), streamed(test), probes=("linear",), n_boot=10, resamples=2)


def random_dense_split(images, tokens, channels, seed, offset=0.0):
    """Rectangles with tokens = coverage-bearing noise, plus a large common offset (as in LLM activations)."""
    split = with_noisy_coverage(rectangles(images, seed), seed + 10, channels=channels - 1)
    return ProbeSplit(split.tokens + offset, split.footprints, split.boxes, split.masks)


# the direct N x N solve (tokens <= channels + 1) and the low-rank one (more tokens than channels)
@pytest.mark.parametrize("channels,offset", [(40, 0.0), (5, 30.0)])
def test_exact_dense_fit_from_shards_equals_the_fit_on_joined_tokens(channels, offset):
    from spatialprobe.probes.dense import fit_coverage, painted_predictions
    from spatialprobe.probes.dense_exact import fit_exact_streaming

    train, test = random_dense_split(30, 16, channels, 3, offset), random_dense_split(12, 16, channels, 4, offset)
    fit, want_loio = fit_coverage(train)
    loio, train_full, test_full, alpha = fit_exact_streaming(streamed(train, 7), streamed(test, 5))
    assert alpha == pytest.approx(fit.alpha, rel=1e-9)
    assert (loio - want_loio).abs().max() < 1e-6
    assert (train_full - painted_predictions(fit, train)).abs().max() < 1e-6
    assert (test_full - painted_predictions(fit, test)).abs().max() < 1e-6


def test_dense_records_streamed_exact_equal_the_joined_fit(dense_case, monkeypatch):
    from spatialprobe.probes import dense as dense_module
    from spatialprobe.probes.dense import dense_probe

    train, test, got = dense_case
    # the reference: the same probe forced through the fit on joined tokens
    monkeypatch.setattr(dense_module, "dense_probe_exact_streaming", dense_probe)
    want = by_key(run_spatial_probes(train, test, probes=("dense",), n_boot=200))
    for key, row in want.items():
        assert got[key]["value"] == pytest.approx(row["value"], abs=1e-9)
        assert (got[key]["ci_low"], got[key]["ci_high"]) == pytest.approx((row["ci_low"], row["ci_high"]), abs=1e-9)


def test_a_singular_leave_one_image_out_system_gives_a_clamped_residual_not_a_crash():
    from spatialprobe.probes.ridge import guarded_solve

    systems = torch.stack([torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)),
                           2 * torch.eye(3, dtype=torch.float64)])
    rhs = torch.ones(2, 3, 1, dtype=torch.float64)
    got = guarded_solve(systems, rhs)
    assert torch.isfinite(got).all()
    assert got[0, :, 0].tolist() == pytest.approx([1e12, 1.0, 1.0])
    assert got[1, :, 0].tolist() == pytest.approx([0.5, 0.5, 0.5])
