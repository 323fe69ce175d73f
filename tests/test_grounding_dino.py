"""Grounding DINO on a tiny random-initialized model of the real architecture (Swin + BERT, 128 px)."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.grounding_dino import PROMPT, Level, level_footprints
from spatialprobe.testing import save_tiny
from planting import forward_calls

SIZE = 128  # levels: 16x16 (stride 8), 8x8 (16), 4x4 (32) from Swin, 2x2 (64) from an extra stride-2 conv
SIDES = [16, 8, 4, 2]
STAGES = [*[f"vision.block.{i}" for i in range(3)], *[f"detector.level.{i}" for i in range(4)],
          "detector.encoder.0", "detector.encoder.1"]


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    path = save_tiny("grounding_dino", tmp_path_factory.mktemp("grounding_dino"))
    return sp.load_backbone("grounding_dino", str(path), resolution=SIZE)


def plain(colour=(200, 200, 200)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, cell=32):
    """A plain image with a bright noise square filling grid cell (row, col) of `cell` pixels."""
    array = np.asarray(plain()).copy()
    noise = np.random.default_rng(row * 31 + col).integers(145, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array.astype(np.uint8))


def test_stages_shapes_and_footprints(dino):
    assert dino.stages == STAGES
    assert dino.preprocessing()["prompt"] == PROMPT == "object ."
    feats = dino.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    for i, (side, width) in enumerate(zip(SIDES[:3], [32, 64, 128])):
        assert feats[f"vision.block.{i}"].grid().shape == (2, side, side, width)
    for i, side in enumerate(SIDES):
        assert feats[f"detector.level.{i}"].grid().shape == (2, side, side, 64)
    encoder = feats["detector.encoder.1"]
    assert encoder.grid_shape is None and encoder.tokens.shape == (2, 256 + 64 + 16 + 4, 64)
    # level 0 token 17: row 1, column 1 of the stride-8 map; the first level-1 token sits right after level 0
    assert torch.allclose(encoder.footprints[1, 17], torch.tensor([8, 8, 16, 16]) / SIZE)
    assert torch.allclose(encoder.footprints[0, 256 + 2], torch.tensor([32, 0, 48, 16]) / SIZE)
    assert torch.allclose(encoder.footprints[0, -3], torch.tensor([64, 0, 128, 64]) / SIZE)
    assert torch.equal(feats["detector.level.2"].footprints, encoder.footprints[:, dino.level_slices()[2]])


def test_levels_cut_at_the_image_edge_at_800_px(dino):
    """At the default 800 px the stride-64 level has 13 cells per side; the last one stops at the edge."""
    big = sp.load_backbone("grounding_dino", dino.name_or_path)
    assert big.levels == [Level(8, 100), Level(16, 50), Level(32, 25), Level(64, 13)]
    last = level_footprints(big.levels[3], 800)[-1]
    assert torch.allclose(last, torch.tensor([768, 768, 800, 800]) / 800)


# Stride-32 cells (0, 2) and (2, 0): off the diagonal, so a transposed map moves the answer, and even, so
# the stride-64 level's 3x3 stride-2 conv sees each in exactly one output cell (an odd cell sits on the
# edge of two kernels). Encoder stages hold all levels in a row: the argmax is taken within each level.
@pytest.mark.parametrize("row,col", [(0, 2), (2, 0)])
def test_planted_patch_is_found_in_its_token_at_every_stage(dino, row, col):
    marked, base = dino.extract([planted(row, col)]), dino.extract([plain()])
    square = torch.tensor([col, row, col + 1, row + 1]) / 4
    for stage in STAGES:
        parts = dino.level_slices() if stage.startswith("detector.encoder.") else [slice(None)]
        for level, part in enumerate(parts):
            change = (marked[stage].tokens - base[stage].tokens)[0, part].norm(dim=-1)
            footprint = marked[stage].footprints[0, part][change.argmax()]
            inside = (footprint[:2] >= square[:2] - 1e-6).all() and (footprint[2:] <= square[2:] + 1e-6).all()
            covers = (footprint[:2] <= square[:2] + 1e-6).all() and (footprint[2:] >= square[2:] - 1e-6).all()
            where = footprint.tolist()
            assert inside or covers, f"{stage} level {level}: change peaks at {where}, planted {square.tolist()}"


def test_feature_maps_are_the_backbones_own(dino):
    images = [planted(1, 3)]
    feats = dino.extract(images, stages=[f"vision.block.{i}" for i in range(3)])
    inputs, _ = dino.prepare(images)
    with torch.inference_mode():
        own = dino.model.model.backbone.conv_encoder(inputs["pixel_values"], inputs["pixel_mask"])
    for i, (feature_map, mask) in enumerate(own):
        assert mask.all()
        assert torch.allclose(feats[f"vision.block.{i}"].grid(), feature_map.permute(0, 2, 3, 1), atol=1e-5)


def test_levels_are_what_the_encoder_receives(dino):
    images = [planted(3, 1), planted(0, 2)]
    feats = dino.extract(images, stages=[f"detector.level.{i}" for i in range(4)] + ["detector.encoder.1"])
    inputs, _ = dino.prepare(images)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen.update(kwargs)

    handle = dino.model.model.encoder.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            out = dino.model(**inputs)
    finally:
        handle.remove()
    levels = torch.cat([feats[f"detector.level.{i}"].tokens for i in range(4)], dim=1)
    assert torch.allclose(levels, seen["vision_features"].float(), atol=1e-5)
    assert [tuple(s) for s in seen["spatial_shapes_list"]] == [(s, s) for s in SIDES]
    assert torch.allclose(feats["detector.encoder.1"].tokens, out.encoder_last_hidden_state_vision.float(), atol=1e-5)


def test_backbone_stages_never_run_the_encoder(dino):
    with forward_calls(dino.model.model.encoder.layers[0]) as fired:
        dino.extract([plain()], stages=["vision.block.-1", "detector.level.-1"])
    assert fired == []


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="grounding_dino.*missing-model"):
        sp.load_backbone("grounding_dino", str(tmp_path / "missing-model"))
