"""CKA between a stage and the latents: Gram and accumulator forms against CKA from features, known answers,
the permutation null and the intervals."""
import numpy as np
import pytest
import torch

from spatialprobe.alignment import (Chained, gram_cka, gram_estimate, image_grams, position_estimate,
                                    resample_onto)
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.metrics import cka
from spatialprobe.store.sources import InMemorySource


def feature_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from centered features (Kornblith et al. 2019, eq. for the linear kernel)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def grid_stage(tokens: torch.Tensor, side: int) -> TokenFeatures:
    return TokenFeatures(tokens, grid_footprints(side, side).expand(len(tokens), -1, -1).contiguous(), (side, side))


@pytest.fixture(scope="module")
def case():
    """A 4x4-token stage whose 2x2 block means carry the latents (plus noise), latents on a 2x2 grid."""
    g = torch.Generator().manual_seed(0)
    n, q, c = 40, 6, 10
    latents = torch.randn(n, 4, q, generator=g)  # [n, M=4 cells, q]
    mix = torch.randn(q, c, generator=g)
    cells = grid_footprints(2, 2)
    # each latent cell's content spread over the 2x2 tokens it covers
    raster = (latents @ mix).reshape(n, 2, 2, c).repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(n, 16, c)
    tokens = raster + 0.5 * torch.randn(n, 16, c, generator=g)
    return grid_stage(tokens, 4), latents, cells


def test_gram_cka_equals_cka_from_features():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 7, generator=g, dtype=torch.float64), torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = y + x[:, :4]
    assert gram_cka(x @ x.T, y @ y.T) == pytest.approx(feature_cka(x.numpy(), y.numpy()), abs=1e-12)
    assert gram_cka(x @ x.T, y @ y.T) == pytest.approx(cka(x, y), abs=1e-12)  # the metric's own implementation


def test_image_forms_equal_cka_from_their_features(case):
    stage, latents, cells = case
    grams = image_grams(InMemorySource(stage, 7), latents, cells)
    pooled_x, pooled_y = stage.tokens.double().mean(1), latents.double().mean(1)
    assert gram_cka(*grams["pooled"]) == pytest.approx(feature_cka(pooled_x.numpy(), pooled_y.numpy()), abs=1e-9)
    spatial_x = resample_onto(stage.tokens, stage.footprints, cells).double().flatten(1)
    assert gram_cka(*grams["spatial"]) == pytest.approx(
        feature_cka(spatial_x.numpy(), latents.double().flatten(1).numpy()), abs=1e-9)


def test_per_position_sums_equal_cka_over_image_cell_pairs(case):
    stage, latents, cells = case
    got = position_estimate(lambda: InMemorySource(stage, 7).shards(), latents, cells, 50, 5, 0)
    x = resample_onto(stage.tokens, stage.footprints, cells).double().reshape(-1, stage.tokens.shape[-1])
    assert got.value == pytest.approx(feature_cka(x.numpy(), latents.double().reshape(-1, latents.shape[-1]).numpy()),
                                      abs=1e-9)
    assert got.n == 40 * 4 and got.images == 40


def test_a_stage_against_itself_and_a_rotation_of_itself_is_one(case):
    _, latents, cells = case
    g = torch.Generator().manual_seed(2)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0].float()
    for tokens in (latents, latents @ rotation):
        stage = grid_stage(tokens, 2)  # on the latent grid itself
        grams = image_grams(InMemorySource(stage, 9), latents, cells)
        assert gram_cka(*grams["pooled"]) == pytest.approx(1.0, abs=1e-6)
        assert gram_cka(*grams["spatial"]) == pytest.approx(1.0, abs=1e-6)
        position = position_estimate(lambda: InMemorySource(stage, 9).shards(), latents, cells, 20, 5, 0)
        assert position.value == pytest.approx(1.0, abs=1e-6)


def test_shuffled_pairings_sit_inside_the_permutation_null(case):
    stage, latents, cells = case
    order = torch.randperm(len(latents), generator=torch.Generator().manual_seed(3))
    grams = image_grams(InMemorySource(stage, 7), latents[order], cells)
    for form in ("pooled", "spatial"):
        paired = gram_estimate(*image_grams(InMemorySource(stage, 7), latents, cells)[form], 200, 200, 0)
        shuffled = gram_estimate(*grams[form], 200, 200, 0)
        assert shuffled.value <= paired.null_p95  # a draw of chance, at this width and n
        assert paired.value > paired.null_p95  # the planted relation clears the null
    shuffled = position_estimate(lambda: InMemorySource(stage, 7).shards(), latents[order], cells, 50, 50, 0)
    paired = position_estimate(lambda: InMemorySource(stage, 7).shards(), latents, cells, 50, 50, 0)
    assert shuffled.value <= paired.null_p95 < paired.value


def test_intervals_hold_the_value_and_the_null_is_ordered(case):
    stage, latents, cells = case
    est = gram_estimate(*image_grams(InMemorySource(stage, 7), latents, cells)["spatial"], 300, 100, 0)
    assert est.ci_low <= est.value <= est.ci_high and est.null_mean <= est.null_p95 < est.value
    row = est.fields()
    assert row["floor"] == est.null_p95 and row["ceiling"] == 1.0


def test_chained_sources_read_train_then_test(case):
    stage, _, _ = case
    chained = Chained(InMemorySource(stage.select(slice(0, 25)), 10), InMemorySource(stage.select(slice(25, 40)), 10))
    assert len(chained) == 40
    assert torch.equal(torch.cat([s.tokens for s in chained.shards()]), stage.tokens)


def test_a_large_common_offset_costs_no_digits(case):
    stage, latents, cells = case
    offset = stage.with_tokens(stage.tokens + 1e4)
    plain = position_estimate(lambda: InMemorySource(stage, 7).shards(), latents, cells, 20, 5, 0)
    shifted = position_estimate(lambda: InMemorySource(offset, 7).shards(), latents + 300, cells, 20, 5, 0)
    assert shifted.value == pytest.approx(plain.value, abs=1e-6)


def test_block_bootstrap_forms_equal_the_weighted_sums(case):
    """The closed forms of BlockSums.cka against CKA of the examples with each block repeated w_b times."""
    from spatialprobe.alignment import BlockSums

    stage, latents, cells = case
    x = resample_onto(stage.tokens, stage.footprints, cells).double()
    sums = BlockSums.zeros(4, x.shape[-1], latents.shape[-1])
    for block in range(4):
        sums.add(block, x[block::4].reshape(-1, x.shape[-1]), latents[block::4].double().reshape(-1, latents.shape[-1]))
    weights = torch.tensor([[1, 1, 1, 1], [2, 0, 1, 1], [0, 3, 0, 1]], dtype=torch.float64)
    got = sums.cka(weights)
    for row, w in zip(got, weights):
        rows = [i for i in range(40) for _ in range(int(w[i % 4]))]
        want = feature_cka(x[rows].reshape(-1, x.shape[-1]).numpy(), latents[rows].double().reshape(-1, latents.shape[-1]).numpy())
        assert float(row) == pytest.approx(want, abs=1e-9)


def test_bootstrap_draws_in_closed_form_equal_ckas_of_the_drawn_gram_matrices():
    from spatialprobe.alignment import bootstrap_ckas

    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(25, 6, generator=g, dtype=torch.float64), torch.randn(25, 3, generator=g, dtype=torch.float64)
    y = y + x[:, :3]
    k, l = x @ x.T, y @ y.T
    draws = torch.randint(25, (4, 25), generator=g)
    counts = torch.zeros(4, 25, dtype=torch.float64).scatter_add_(1, draws, torch.ones(4, 25, dtype=torch.float64))
    got = bootstrap_ckas(k, l, counts)
    for value, rows in zip(got, draws):
        assert float(value) == pytest.approx(gram_cka(k[rows][:, rows], l[rows][:, rows]), abs=1e-10)
