"""V-JEPA 2 encoder read on still images, on a tiny random-initialized model of the real architecture."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny

SIZE = 64  # crop_size of the tiny model: a 4x4 grid of 16-px patches, tubelet of 2 frames


@pytest.fixture(scope="module")
def vjepa(tmp_path_factory):
    return sp.load_backbone("vjepa2", str(save_tiny("vjepa2", tmp_path_factory.mktemp("vjepa2"))))


def plain(colour=(60, 60, 60)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, cell=16):
    """A plain image with a bright noise square filling patch (row, col)."""
    array = np.asarray(plain()).copy()
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array.astype(np.uint8))


def test_stages_shapes_and_footprints(vjepa):
    assert vjepa.stages == ["vision.embed", "vision.block.0", "vision.block.1"]
    feats = vjepa.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    for f in feats.values():
        assert f.grid().shape == (2, 4, 4, 32) and f.extra == {}
        assert torch.allclose(f.footprints[0, 7], torch.tensor([0.75, 0.25, 1.0, 0.5]))  # row 1, col 3


def test_image_is_a_still_clip_of_one_tubelet(vjepa):
    inputs, _ = vjepa.prepare([planted(2, 1)])
    clip = inputs["pixel_values_videos"]
    assert clip.shape == (1, 2, 3, SIZE, SIZE) and torch.equal(clip[:, 0], clip[:, 1])
    assert "2 frames" in vjepa.preprocessing()["clip"] and vjepa.preprocessing()["resolution"] == SIZE


@pytest.mark.parametrize("plants", [[(0, 2), (3, 1)], [(1, 3), (2, 0)]])
def test_planted_patch_is_found_in_its_token_at_every_stage(vjepa, plants):
    marked = vjepa.extract([planted(r, c) for r, c in plants])
    base = vjepa.extract([plain()] * len(plants))
    for stage in vjepa.stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)
        for image, (row, col) in enumerate(plants):
            assert change[image].argmax().item() == row * 4 + col, f"{stage} image {image}"
    embed_change = (marked["vision.embed"].tokens - base["vision.embed"].tokens).norm(dim=-1)
    assert torch.count_nonzero(embed_change > 1e-5) == len(plants)  # the tubelet embedding is local


def test_last_block_is_the_models_own_encoder_output(vjepa):
    """The last traced block, through the encoder's final LayerNorm, is what get_vision_features returns; a
    single frame (which the model itself repeats to one tubelet) gives the same features."""
    images = [planted(0, 3), planted(3, 0)]
    last = vjepa.extract(images, stages=["vision.block.-1"])["vision.block.1"].tokens
    inputs, _ = vjepa.prepare(images)
    with torch.inference_mode():
        own = vjepa.model.get_vision_features(inputs["pixel_values_videos"])
        single_frame = vjepa.model.get_vision_features(inputs["pixel_values_videos"][:, :1])
        normed = vjepa.model.encoder.layernorm(last)
    assert torch.allclose(normed, own, atol=1e-5) and torch.allclose(own, single_frame, atol=1e-5)


def test_predictor_never_runs_and_forward_stops_early(vjepa):
    fired = []
    handles = [vjepa.model.predictor.register_forward_hook(lambda *a: fired.append("predictor")),
               vjepa.model.encoder.layer[1].register_forward_hook(lambda *a: fired.append("block.1"))]
    try:
        vjepa.extract([plain()], stages=["vision.block.0"])
        vjepa.extract([plain()])
    finally:
        for handle in handles:
            handle.remove()
    assert fired == ["block.1"]


def test_resolution_is_the_crop_size(vjepa):
    with pytest.raises(sp.SpatialProbeError, match="resolution 128 is not supported"):
        sp.load_backbone("vjepa2", vjepa.name_or_path, resolution=128)


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="vjepa2.*missing-model"):
        sp.load_backbone("vjepa2", str(tmp_path / "missing-model"))
