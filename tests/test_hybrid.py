"""The hybrid backbone: parts resampled onto one footprint grid by overlap, then joined."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.hybrid import resample
from spatialprobe.config import parse_config
from spatialprobe.data import generate_synthetic_shapes, load_coco
from spatialprobe.features import TokenFeatures, grid_footprints, overlap_weights
from spatialprobe.probes import run_spatial_probes
from spatialprobe.runner import probe_split
from spatialprobe.testing import save_tiny


def on_grid(values: torch.Tensor) -> TokenFeatures:
    """One image's [side, side, C] values as TokenFeatures on a raster of the whole image."""
    side, _, channels = values.shape
    return TokenFeatures(values.reshape(1, side * side, channels), grid_footprints(side, side)[None], (side, side))


def test_resampling_by_hand():
    values = torch.arange(16.0).reshape(4, 4, 1)
    assert torch.equal(resample(on_grid(values), 4).tokens, on_grid(values).tokens)  # same grid: identity
    coarse = resample(on_grid(values), 2).grid()[0, ..., 0]
    assert coarse.tolist() == [[2.5, 4.5], [10.5, 12.5]]  # each cell: the mean of its 2x2 block
    fine = resample(on_grid(torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])), 4).grid()[0, ..., 0]
    assert fine[:2, :2].eq(1).all() and fine[2:, 2:].eq(4).all() and fine[0, 3] == 2  # replicated
    # a 3x3 source on a 2x2 target: the top-left target cell overlaps source cells in areas 4:2:2:1 (in ninths)
    w = overlap_weights(grid_footprints(2, 2).double(), grid_footprints(3, 3)[None].double())[0, 0]
    assert torch.allclose(w[[0, 1, 3, 4]], torch.tensor([4, 2, 2, 1], dtype=torch.float64) / 9)


def test_overlapping_tiles_are_averaged():
    # a coarse whole-image token and four fine tiles (as in LLaVA-NeXT's base tile + crops)
    footprints = torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), grid_footprints(2, 2)])[None]
    tokens = torch.tensor([[[10.0], [0.0], [2.0], [4.0], [6.0]]])
    out = resample(TokenFeatures(tokens, footprints), 2).grid()[0, ..., 0]
    assert out.tolist() == [[5.0, 6.0], [7.0, 8.0]]


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    dino = save_tiny("dinov2", tmp_path_factory.mktemp("dino"))
    parts = [{"name": "spatial", "family": "pixels", "path": "pixels", "stage": "vision.embed",
              "options": {"resolution": 56}},
             {"name": "semantic", "family": "dinov2", "path": str(dino), "stage": "vision.block.-1",
              "options": {"resolution": 112}}]
    return sp.load_backbone("hybrid", "pixels+dino", parts=parts)


def planted(row, col, side=8, size=112):
    array = np.full((size, size, 3), 30, np.uint8)
    cell = size // side
    array[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 240
    return Image.fromarray(array)


def test_stages_grid_and_channels(hybrid):
    assert hybrid.stages == ["hybrid.spatial", "hybrid.semantic", "hybrid.concat"]
    assert hybrid.side == 8  # the finer part sets the common grid
    feats = hybrid.extract([planted(0, 0)])
    assert feats["hybrid.spatial"].grid().shape == (1, 8, 8, 14 * 14 * 3)
    assert feats["hybrid.semantic"].grid().shape == (1, 8, 8, 32)
    concat = feats["hybrid.concat"].tokens
    assert torch.equal(concat, torch.cat([feats["hybrid.spatial"].tokens, feats["hybrid.semantic"].tokens], -1))
    assert torch.allclose(feats["hybrid.concat"].footprints[0, 9], torch.tensor([0.125, 0.125, 0.25, 0.25]))


@pytest.mark.parametrize("row,col", [(1, 6), (5, 2)])
def test_planted_patch_is_found_in_its_token(hybrid, row, col):
    marked, base = hybrid.extract([planted(row, col)]), hybrid.extract([Image.new("RGB", (112, 112), (30, 30, 30))])
    for stage in hybrid.stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0]
        footprint = marked[stage].footprints[0, change.argmax()]
        # the pixels part is 4x4: the found token must lie inside the planted 8x8 cell's 4x4 parent
        parent = torch.tensor([col // 2, row // 2, col // 2 + 1, row // 2 + 1]) / 4
        assert (footprint[:2] >= parent[:2] - 1e-6).all() and (footprint[2:] <= parent[2:] + 1e-6).all(), stage


def test_spatial_pathway_adds_what_the_semantic_one_lacks(tmp_path):
    # on the easy preset raw pixels locate the shape; joined with a random-init tower's coarser tokens,
    # the concatenation keeps what the spatial pathway brings
    shapes = {"n_train": 64, "n_val": 0, "n_test": 32, "image_size": 112, "preset": "easy"}
    root = generate_synthetic_shapes(tmp_path / "d", **shapes)
    train_data, test_data = load_coco(root, "train"), load_coco(root, "test")
    dino = save_tiny("dinov2", tmp_path / "dino")
    backbone = sp.load_backbone("hybrid", "h", parts=[
        {"name": "spatial", "family": "pixels", "path": "pixels", "stage": "vision.embed", "options": {"resolution": 112}},
        {"name": "semantic", "family": "dinov2", "path": str(dino), "stage": "vision.block.-1", "options": {"resolution": 56}}])
    feats = {name: backbone.extract([d.load_image(i) for i in range(len(d))])
             for name, d in (("train", train_data), ("test", test_data))}
    dense = {}
    for stage in backbone.stages:
        train, test = probe_split(train_data, feats["train"][stage]), probe_split(test_data, feats["test"][stage])
        dense[stage] = {r["metric"]: r for r in run_spatial_probes(train, test, probes=("dense",), n_boot=100)}
    assert dense["hybrid.spatial"]["spatial_iou"]["value"] > dense["hybrid.spatial"]["spatial_iou"]["floor"] + 0.3
    assert dense["hybrid.concat"]["spatial_iou"]["value"] >= dense["hybrid.spatial"]["spatial_iou"]["value"] - 0.05


def test_hybrid_config_is_validated():
    part = {"name": "a", "family": "pixels", "path": "pixels", "stage": "vision.embed"}
    good = {"models": [{"name": "h", "family": "hybrid", "parts": [part, {**part, "name": "b"}]}]}
    assert len(parse_config(good).models[0].parts) == 2
    with pytest.raises(sp.SpatialProbeError, match=r"models\[0\]: .*needs `parts`"):
        parse_config({"models": [{"name": "h", "family": "hybrid"}]})
    with pytest.raises(sp.SpatialProbeError, match=r"models\[0\].parts\[1\].family: .*cannot itself be a hybrid"):
        parse_config({"models": [{"name": "h", "family": "hybrid", "parts": [part, {**part, "family": "hybrid"}]}]})
    with pytest.raises(sp.SpatialProbeError, match=r"models\[0\].parts\[0\].stge: unknown key"):
        parse_config({"models": [{"name": "h", "family": "hybrid", "parts": [{**part, "stge": "x"}, part]}]})


def test_finest_side_of_tiles_and_grids():
    tiles = TokenFeatures(torch.zeros(1, 5, 1), torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), grid_footprints(2, 2)])[None])
    assert tiles.finest_side() == 2 and on_grid(torch.zeros(3, 3, 1)).finest_side() == 3
    with pytest.raises(ValueError, match="without spatial tokens"):
        TokenFeatures(torch.zeros(1, 0, 4), torch.zeros(1, 0, 4)).on_raster(2)


def test_composition_from_stored_parts_equals_the_live_one():
    # averaging onto a coarser grid: a part read live (float32) and the same part as the store keeps it (float16)
    # give the same bits, so a run that composes from the store reproduces the adapter exactly
    from spatialprobe.models.hybrid import compose
    from spatialprobe.store.shards import stored_form

    live = {"a": on_grid(torch.randn(6, 6, 5, generator=torch.Generator().manual_seed(0)) * 3),
            "b": on_grid(torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(1)))}
    from_store = compose({name: stored_form(feats) for name, feats in live.items()}, 3)
    for stage, feats in compose(live, 3).items():
        assert torch.equal(stored_form(feats).tokens, stored_form(from_store[stage]).tokens), stage
