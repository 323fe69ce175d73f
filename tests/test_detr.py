"""DETR on a tiny random-initialized model of the real architecture (transformers ResNet backbone, 128 px)."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import forward_calls

SIZE = 256  # feature maps 64x64, 32x32, 16x16, 8x8 (strides 4, 8, 16, 32)
STAGES = [*[f"vision.block.{i}" for i in range(4)], "projector.out", "detector.encoder.0", "detector.encoder.1"]
GRIDS = {"vision.block.0": 64, "vision.block.1": 32, "vision.block.2": 16, "vision.block.3": 8,
         "projector.out": 8, "detector.encoder.0": 8, "detector.encoder.1": 8}


@pytest.fixture(scope="module")
def detr(tmp_path_factory):
    return sp.load_backbone("detr", str(save_tiny("detr", tmp_path_factory.mktemp("detr"))), resolution=SIZE)


def plain(colour=(200, 200, 200)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, half=20):
    """A plain image with a bright noise square of side 2 * half centred on pixel (32 * row, 32 * col)."""
    array = np.asarray(plain()).copy()
    y, x = 32 * row, 32 * col
    noise = np.random.default_rng(row * 31 + col).integers(145, 256, (2 * half, 2 * half, 3))
    array[y - half : y + half, x - half : x + half] = noise
    return Image.fromarray(array.astype(np.uint8))


def test_stages_shapes_and_footprints(detr):
    assert detr.stages == STAGES
    feats = detr.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    for stage, side in GRIDS.items():
        assert feats[stage].grid_shape == (side, side) and feats[stage].tokens.shape[:2] == (2, side * side)
    assert feats["vision.block.3"].tokens.shape[-1] == 128 and feats["detector.encoder.1"].tokens.shape[-1] == 64
    # token 65 of the 64x64 stride-4 map: row 1, column 1, pixels 4..8; token 10 of the 8x8 map: row 1, column 2
    assert torch.allclose(feats["vision.block.0"].footprints[1, 65], torch.tensor([4, 4, 8, 8]) / SIZE)
    assert torch.allclose(feats["detector.encoder.0"].footprints[0, 10], torch.tensor([64, 32, 96, 64]) / SIZE)


def test_feature_maps_are_the_backbones_own(detr):
    inputs, _ = detr.prepare([planted(1, 2)])
    feats = detr.extract([planted(1, 2)], stages=[f"vision.block.{i}" for i in range(4)])
    with torch.inference_mode():
        own = detr.model.model.backbone(inputs["pixel_values"], inputs["pixel_mask"])
    for i, (feature_map, mask) in enumerate(own):
        assert mask.all()
        assert torch.allclose(feats[f"vision.block.{i}"].grid(), feature_map.permute(0, 2, 3, 1), atol=1e-5)


# A ResNet token's receptive field is centred near the TOP-LEFT corner of its cell (stride-2 "same"
# convolutions: token k of a stride-s map is centred on pixel k*s), so a square centred on a cell corner
# is the one every stride sees in the same place; a token is right when its footprint overlaps the square.
# Centres far off the diagonal: a transposed map (or a column-major flatten) would land 4+ cells away.
@pytest.mark.parametrize("row,col", [(1, 6), (6, 2)])
def test_planted_patch_is_found_in_its_token_at_every_stage(detr, row, col):
    marked, base = detr.extract([planted(row, col)]), detr.extract([plain()])
    square = torch.tensor([32 * col - 20, 32 * row - 20, 32 * col + 20, 32 * row + 20]) / SIZE
    for stage in STAGES:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0]
        found = change.argmax().item()
        # the encoder's post-LayerNorm tokens of a random model keep only direction changes, which can peak one
        # 32-px cell beside the square: allow that slack there only
        slack = 32 / SIZE if stage.startswith("detector.") else 0.0
        footprint = marked[stage].footprints[0, found]
        overlaps = (footprint[:2] < square[2:] + slack).all() and (footprint[2:] > square[:2] - slack).all()
        where = divmod(found, GRIDS[stage])
        assert overlaps, f"{stage}: change peaks at {where}, planted around pixel {(32 * row, 32 * col)}"


def test_projector_out_is_what_the_encoder_receives(detr):
    images = [planted(3, 1), planted(2, 5)]
    feats = detr.extract(images, stages=["projector.out", "detector.encoder.1"])
    inputs, _ = detr.prepare(images)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["embeds"] = kwargs.get("inputs_embeds", args[0] if args else None)

    handle = detr.model.model.encoder.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            out = detr.model(**inputs)
    finally:
        handle.remove()
    assert torch.allclose(feats["projector.out"].tokens, seen["embeds"].float(), atol=1e-5)
    assert torch.allclose(feats["detector.encoder.1"].tokens, out.encoder_last_hidden_state.float(), atol=1e-5)


def test_backbone_stages_never_run_the_encoder(detr):
    with forward_calls(detr.model.model.encoder.layers[0]) as fired:
        detr.extract([plain()], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_resolution_must_fit_the_total_stride(detr):
    with pytest.raises(sp.SpatialProbeError, match="not a multiple of 32"):
        sp.load_backbone("detr", detr.name_or_path, resolution=100)


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="detr.*missing-model"):
        sp.load_backbone("detr", str(tmp_path / "missing-model"))
