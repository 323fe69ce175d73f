"""OWL-ViT and OWLv2 on tiny random-initialized models of the real architectures (64 px, 8x8 patches)."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.vit import resize_whole
from spatialprobe.testing import save_tiny
from planting import forward_calls

SIZE, CELL, SIDE = 64, 8, 8
STAGES = ["vision.embed", "vision.block.0", "vision.block.1", "detector.image_embeds"]


@pytest.fixture(scope="module", params=["owlvit", "owlv2"])
def owl(request, tmp_path_factory):
    path = save_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return sp.load_backbone(request.param, str(path))


def plain(size=SIZE, colour=(60, 60, 60)):
    return Image.new("RGB", (size, size), colour)


def planted(row, col, cell=CELL, size=SIZE):
    """A plain image with a bright noise square filling grid cell (row, col) of `cell` pixels."""
    array = np.asarray(plain(size)).copy()
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array.astype(np.uint8))


def test_stages_shapes_and_footprints(owl):
    assert owl.stages == STAGES
    feats = owl.extract([plain(), Image.new("RGB", (120, 40), (1, 2, 3))])
    for stage in STAGES:
        assert feats[stage].grid().shape == (2, SIDE, SIDE, 32)
        # token 10 is row 1, column 2 of the 8x8 grid
        assert torch.allclose(feats[stage].footprints[1, 10], torch.tensor([2, 1, 3, 2]) / 8)
    assert feats["vision.block.1"].extra["cls"].shape == (2, 1, 32)
    assert feats["detector.image_embeds"].extra == {}  # the class token is merged into every patch


# cells off the diagonal: a transposed or flipped grid would move the answer
@pytest.mark.parametrize("row,col", [(1, 6), (6, 2)])
def test_planted_patch_is_found_in_its_token_at_every_stage(owl, row, col):
    marked, base = owl.extract([planted(row, col)]), owl.extract([plain()])
    for stage in STAGES:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0]
        found = change.argmax().item()
        assert found == row * SIDE + col, f"{stage}: change peaks at {divmod(found, SIDE)}, planted at {(row, col)}"
    embed_change = (marked["vision.embed"].tokens - base["vision.embed"].tokens).norm(dim=-1)
    assert torch.count_nonzero(embed_change > 1e-5) == 1  # the patch embedding is local


def test_image_embeds_are_what_the_heads_read(owl):
    """The detector's own full forward (text queries and all) returns the same patch map."""
    from transformers import AutoProcessor

    images = [planted(2, 5), planted(7, 0)]
    feats = owl.extract(images, stages=["detector.image_embeds"])["detector.image_embeds"]
    processor = AutoProcessor.from_pretrained(owl.name_or_path)
    text = processor(text=[["a red circle", "a blue square"]] * 2, return_tensors="pt")
    pixels, _ = owl.prepare(images)
    with torch.inference_mode():
        out = owl.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], **pixels)
    assert out.image_embeds.shape == (2, SIDE, SIDE, 32)
    assert torch.allclose(feats.grid(), out.image_embeds.float(), atol=1e-5)


def test_processor_only_normalizes(owl):
    """Footprints are exact only if the processor neither resizes, crops nor pads our square image."""
    image = planted(3, 4)
    pixels = owl.prepare([image])[0]["pixel_values"][0]
    rgb = torch.tensor(np.asarray(resize_whole([image], SIZE)[0]), dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in (owl.processor.image_mean, owl.processor.image_std))
    assert torch.allclose(pixels, (rgb - mean) / std, atol=1e-5)


def test_vision_stages_stop_before_the_detector(owl):
    with forward_calls(owl.model.layer_norm) as fired:
        owl.extract([plain()], stages=["vision.block.-1"])
    assert fired == []


def test_other_resolution_interpolates_positions(owl):
    bigger = sp.load_backbone(owl.family, owl.name_or_path, resolution=96)
    assert bigger.preprocessing()["interpolate_pos_encoding"] is True
    feats = bigger.extract([planted(9, 2, size=96)], stages=["vision.block.0", "detector.image_embeds"])
    base = bigger.extract([plain(96)], stages=["vision.block.0", "detector.image_embeds"])
    for stage in feats:
        assert feats[stage].grid_shape == (12, 12)
        assert (feats[stage].tokens - base[stage].tokens).norm(dim=-1)[0].argmax().item() == 9 * 12 + 2
    with pytest.raises(sp.SpatialProbeError, match="not a multiple of the patch size 8"):
        sp.load_backbone(owl.family, owl.name_or_path, resolution=70)


@pytest.mark.parametrize("family", ["owlvit", "owlv2"])
def test_bad_path_is_named(family, tmp_path):
    with pytest.raises(sp.SpatialProbeError, match=f"{family}.*missing-model"):
        sp.load_backbone(family, str(tmp_path / "missing-model"))
