"""Adapters from a VLM stage to a VAE latent grid: resampling, heads, sizing and resumable training."""
import pytest
import torch
import torch.nn.functional as F

from spatialprobe.bridging import (AdapterBudget, ConvHead, CrossAttentionHead, adapter_loss, build_head,
                                   latent_cells, parameter_count, predict, resample_onto, sized_for, train_adapter)
from spatialprobe.errors import SpatialProbeError
from spatialprobe.features import grid_footprints


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation, which a busy machine turns into
    seconds per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def raster(b: int, side: int, c: int, seed: int = 0):
    """Random tokens [b, side*side, c] on a side x side raster, with their footprints."""
    tokens = torch.randn(b, side * side, c, generator=torch.Generator().manual_seed(seed))
    return tokens, grid_footprints(side, side).expand(b, -1, -1)


# --- resampling


def test_a_2x2_grid_onto_one_cell_is_the_mean():
    tokens, footprints = raster(3, 2, 5)
    out = resample_onto(tokens, footprints, latent_cells(1, 1))
    assert out.shape == (3, 1, 5)
    torch.testing.assert_close(out[:, 0], tokens.mean(1))


def test_a_4x4_grid_onto_2x2_gives_block_means():
    tokens, footprints = raster(2, 4, 3)
    out = resample_onto(tokens, footprints, latent_cells(2, 2))
    as_image = tokens.transpose(1, 2).reshape(2, 3, 4, 4)
    blocks = F.avg_pool2d(as_image, 2).reshape(2, 3, 4).transpose(1, 2)
    torch.testing.assert_close(out, blocks)


def test_identical_grids_resample_to_themselves():
    tokens, footprints = raster(2, 3, 4)
    torch.testing.assert_close(resample_onto(tokens, footprints, latent_cells(3, 3)), tokens)


def test_unequal_footprints_count_by_overlap_area():
    # a global thumbnail token (value 10) over 2x2 tiles (values 0, 1, 2, 3)
    footprints = torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), grid_footprints(2, 2)])[None]
    tokens = torch.tensor([10.0, 0.0, 1.0, 2.0, 3.0])[None, :, None]
    # each quarter cell: a quarter of the thumbnail's area and all of one tile's, overlap 0.25 each
    quarters = resample_onto(tokens, footprints, latent_cells(2, 2))[0, :, 0]
    torch.testing.assert_close(quarters, torch.tensor([5.0, 5.5, 6.0, 6.5]))
    # the whole image: thumbnail overlap 1, each tile 0.25 -> (10 + 0.25 * 6) / 2
    whole = resample_onto(tokens, footprints, latent_cells(1, 1))[0, 0, 0]
    assert float(whole) == pytest.approx(5.75)


def test_resampling_in_chunks_matches_one_pass():
    tokens, footprints = raster(2, 6, 4)
    cells = latent_cells(4, 4)
    torch.testing.assert_close(resample_onto(tokens, footprints, cells, max_weights=2 * 36 * 3),
                               resample_onto(tokens, footprints, cells))


def test_uncovered_cells_are_refused():
    tokens = torch.ones(1, 1, 2)
    half = torch.tensor([[[0.0, 0.0, 0.5, 1.0]]])
    with pytest.raises(ValueError, match="uncovered"):
        resample_onto(tokens, half, latent_cells(1, 2))
    torch.testing.assert_close(resample_onto(tokens, half, latent_cells(1, 2), allow_uncovered=True),
                               torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]))


def test_latent_cells_tile_the_image_in_raster_order():
    cells = latent_cells(2, 3)
    assert cells.shape == (6, 4)
    torch.testing.assert_close(cells[1], torch.tensor([1 / 3, 0.0, 2 / 3, 0.5]))
    assert float(((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum()) == pytest.approx(1.0)


# --- heads and their sizes


def test_heads_give_latent_shapes():
    tokens, footprints = raster(2, 4, 6)
    conv = ConvHead(6, out_channels=8, width=16, blocks=1)
    assert conv(torch.randn(2, 6, 3, 5)).shape == (2, 8, 3, 5)
    still = CrossAttentionHead(6, out_channels=8, width=16, heads=2, layers=1, grid=(3, 5))
    assert still(tokens, footprints).shape == (2, 8, 3, 5)
    clip = CrossAttentionHead(6, out_channels=8, width=16, heads=2, layers=1, grid=(3, 5), frames=2)
    times = torch.tensor([0.0, 0.5]).expand(2, 16, 2)
    assert clip(tokens, footprints, times).shape == (2, 8, 2, 3, 5)


def test_parameter_count_counts_trainable_parameters():
    layer = torch.nn.Linear(3, 4)  # 12 weights + 4 biases
    assert parameter_count(layer) == 16
    layer.bias.requires_grad_(False)
    assert parameter_count(layer) == 12


@pytest.mark.parametrize("kind", ["conv", "attention"])
@pytest.mark.parametrize("in_channels", [1024, 1280, 3584, 4096])
def test_sized_heads_hold_about_10m_parameters(kind, in_channels):
    kwargs = sized_for(in_channels, kind=kind)
    with torch.device("meta"):  # shapes only: no memory or init time for 10M parameters
        head = build_head(kind, **kwargs)
    assert isinstance(head, ConvHead if kind == "conv" else CrossAttentionHead)
    assert 7_500_000 <= parameter_count(head) <= 12_500_000


@pytest.mark.parametrize("kind", ["conv", "attention"])
def test_tiny_widths_give_small_heads(kind):
    head = build_head(kind, **sized_for(16, kind=kind, grid=(4, 4)))
    assert parameter_count(head) < 200_000


# --- loss and training


def test_cosine_term_known_answers():
    target = torch.randn(2, 4, 3, 3)
    assert float(adapter_loss(target.clone(), target)) == pytest.approx(0.0, abs=1e-6)
    mean_square = float((target ** 2).mean())
    # twice the target: cosine 1 everywhere, so the loss is the MSE alone
    assert float(adapter_loss(2 * target, target)) == pytest.approx(mean_square, rel=1e-5)
    # the opposite: MSE 4 * mean square, plus 2 per cell of (1 - cos), weighted
    assert float(adapter_loss(-target, target, cosine_weight=0.5)) == pytest.approx(4 * mean_square + 1.0, rel=1e-5)


def linear_map_data(n: int = 64, c: int = 6, out: int = 8, side: int = 4):
    """Inputs [n, c, side, side] and targets = a fixed 1x1 linear map of them, [n, out, side, side]."""
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, c, side, side, generator=g)
    weight = torch.randn(out, c, generator=g) / c ** 0.5
    return inputs, torch.einsum("oc,nchw->nohw", weight, inputs)


def small_conv_head(seed: int = 0, c: int = 6, out: int = 8) -> ConvHead:
    torch.manual_seed(seed)
    return ConvHead(c, out_channels=out, width=32, blocks=1)


def test_conv_head_fits_a_linear_map():
    inputs, targets = linear_map_data()
    result = train_adapter(small_conv_head(), inputs, targets, AdapterBudget(steps=150, batch_size=16, lr=3e-3))
    assert result.steps_done == 150 and len(result.losses) == 150 and result.resumed_from == 0
    assert min(result.losses[-10:]) < 0.1 * result.losses[0]


def test_training_is_deterministic_for_a_seed():
    inputs, targets = linear_map_data(n=32)
    budget = AdapterBudget(steps=5, batch_size=8, seed=3)
    first, second = small_conv_head(), small_conv_head()
    a, b = train_adapter(first, inputs, targets, budget), train_adapter(second, inputs, targets, budget)
    assert a.losses == b.losses
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))
    other = train_adapter(small_conv_head(), inputs, targets, AdapterBudget(steps=5, batch_size=8, seed=4))
    assert other.losses != a.losses  # the seed picks the minibatches


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    inputs, targets = linear_map_data(n=32)
    budget = AdapterBudget(steps=10, batch_size=8, checkpoint_every=3)
    whole_head = small_conv_head()
    whole = train_adapter(whole_head, inputs, targets, budget)

    killed = train_adapter(small_conv_head(), inputs, targets, budget, checkpoint_dir=tmp_path, stop_after=8)
    assert killed.steps_done == 8
    # steps 7 and 8 were never checkpointed, as after a kill; older checkpoints are removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000006.pt"]
    resumed_head = small_conv_head(seed=99)  # its own initial weights must not matter
    resumed = train_adapter(resumed_head, inputs, targets, budget, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 6 and resumed.steps_done == 10
    assert resumed.losses == whole.losses
    for name, value in whole_head.state_dict().items():
        assert torch.equal(resumed_head.state_dict()[name], value), name
    # a finished run only loads its final checkpoint
    again = train_adapter(small_conv_head(seed=5), inputs, targets, budget, checkpoint_dir=tmp_path)
    assert again.resumed_from == 10 and again.losses == whole.losses


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    inputs, targets = linear_map_data(n=16)
    train_adapter(small_conv_head(), inputs, targets, AdapterBudget(steps=2, batch_size=4), checkpoint_dir=tmp_path)
    with pytest.raises(SpatialProbeError, match="different adapter run"):
        train_adapter(small_conv_head(), inputs, targets, AdapterBudget(steps=4, batch_size=4, lr=0.1),
                      checkpoint_dir=tmp_path)


def test_budget_rejects_zero_steps():
    with pytest.raises(SpatialProbeError, match="steps"):
        AdapterBudget(steps=0, batch_size=4)


def shuffled_tokens(n: int, side: int, c: int, seed: int):
    """Tokens whose places on a side x side raster are shuffled per image (footprints say where each is),
    and the targets [n, c, side, side] that copy, in each cell, the token sitting there."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(side * side, generator=g) for _ in range(n)])
    footprints = latent_cells(side, side)[order]
    tokens = torch.randn(n, side * side, c, generator=g)
    in_place = torch.gather(tokens, 1, order.argsort(1)[..., None].expand(-1, -1, c))
    return (tokens, footprints, None), in_place.transpose(1, 2).reshape(n, c, side, side)


def test_the_attention_head_finds_tokens_by_their_footprints():
    side, c = 4, 8
    train_inputs, train_targets = shuffled_tokens(128, side, c, seed=0)
    test_inputs, test_targets = shuffled_tokens(32, side, c, seed=1)
    torch.manual_seed(0)
    head = CrossAttentionHead(c, out_channels=c, width=64, heads=4, layers=1, grid=(side, side))
    train_adapter(head, train_inputs, train_targets,
                  AdapterBudget(steps=120, batch_size=16, lr=3e-3, cosine_weight=0.0))
    error = float(((predict(head, test_inputs, batch_size=8) - test_targets) ** 2).mean())
    mean_predictor = float(((train_targets.mean(0) - test_targets) ** 2).mean())
    # token order is random, so only the footprints tell which token belongs in a cell
    assert error < 0.4 * mean_predictor


def test_predict_matches_the_head_in_eval_mode():
    inputs, _ = linear_map_data(n=10)
    head = small_conv_head()
    out = predict(head, inputs, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(out, head(inputs))
