"""DINOv2, CLIP, SigLIP and the pixels control: tiny real checkpoints, loaded like a hub id."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny

FAMILIES = ["dinov2", "clip", "siglip"]


def plain_image(size=56, colour=(40, 40, 40)):
    return Image.new("RGB", (size, size), colour)


def planted(size, cell, row, col, colour=(250, 250, 250)):
    """A plain image with one bright cell-sized square at grid position (row, col)."""
    array = np.asarray(plain_image(size)).copy()
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = colour
    return Image.fromarray(array)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    path = save_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return sp.load_backbone(request.param, str(path), resolution=56)


def test_all_stages_have_grid_and_footprints(tiny):
    feats = tiny.extract([plain_image(), plain_image(80)], batch_size=1)
    assert list(feats) == tiny.stages == ["vision.embed", "vision.block.0", "vision.block.1"]
    for f in feats.values():
        assert f.tokens.shape[:2] == (2, 16) and f.grid().shape[:3] == (2, 4, 4)
        assert torch.allclose(f.footprints[0, 5], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    if tiny.family != "siglip":
        assert feats["vision.embed"].extra["cls"].shape == (2, 1, 32)


@pytest.mark.parametrize("row,col", [(0, 3), (2, 1)])
def test_planted_patch_found_in_its_token_at_embed(tiny, row, col):
    base, marked = tiny.extract([plain_image(), planted(56, 14, row, col)], stages=["vision.embed"])["vision.embed"].tokens
    change = (marked - base).norm(dim=-1)
    assert change.argmax().item() == row * 4 + col
    # the patch embedding is local: no other token may change at all
    assert torch.count_nonzero(change > 1e-4) == 1


def test_negative_stage_index_and_unknown_stage(tiny):
    assert tiny.resolve_stages(["vision.block.-1"]) == ["vision.block.1"]
    with pytest.raises(sp.SpatialProbeError, match="no stage 'llm.layer.0'"):
        tiny.resolve_stages(["llm.layer.0"])


def test_forward_stops_after_deepest_requested_stage(tiny):
    fired = []
    last = tiny.stage_modules()["vision.block.1"]
    handle = last.register_forward_hook(lambda *a: fired.append(1))
    try:
        tiny.extract([plain_image()], stages=["vision.block.0"])
    finally:
        handle.remove()
    assert fired == []


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="nowhere"):
        sp.load_backbone("dinov2", str(tmp_path / "nowhere"))


def test_unknown_family():
    with pytest.raises(sp.SpatialProbeError, match="unknown model family 'llama9'"):
        sp.load_backbone("llama9", "x")


def test_pixels_tokens_are_patch_pixels():
    bb = sp.load_backbone("pixels", "pixels", resolution=56, patch_size=14)
    image = planted(56, 14, 1, 2)
    tokens = bb.extract([image])["vision.embed"].tokens[0]
    assert tokens.shape == (16, 14 * 14 * 3)
    bright = tokens.mean(dim=-1) > 0.9
    assert bright.nonzero().flatten().tolist() == [1 * 4 + 2]
