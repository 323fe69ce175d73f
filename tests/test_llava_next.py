"""LLaVA-NeXT traced in full on a tiny random-initialized model of the real architecture.

Tiny sizes: 56-px tiles of 14-px patches (4x4 tokens per tile), pinpoints 56x112, 112x56, 112x112. At the
default 112 px an image is a base tile (16 tokens, 28 px each) plus a 2x2 tile mosaic (8x8 tokens, 14 px each)
and 8 newline tokens; at 56 px the mosaic is 1x2 tiles with the image padded in the middle.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.tiny.llava_next import PATCH, PINPOINTS, TILE
from spatialprobe.models.llava_next import anyres_layout
from spatialprobe.testing import save_tiny
from planting import forward_calls

SIZE = 112
BASE = 16  # base-tile tokens come first at every stage


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(save_tiny("llava_next", tmp_path_factory.mktemp("llava_next")))


@pytest.fixture(scope="module")
def llava(tiny_path):
    return sp.load_backbone("llava_next", tiny_path)


@pytest.fixture(scope="module")
def padded(tiny_path):
    """56 px lands in the 56x112 pinpoint: the image is padded left and right, and unpadding crops it again."""
    return sp.load_backbone("llava_next", tiny_path, resolution=56)


def plain(size=SIZE, colour=(60, 60, 60)):
    return Image.new("RGB", (size, size), colour)


def planted(row, col, cell=14, size=SIZE):
    """A plain image with a bright noise square filling cell (row, col) of a grid of `cell`-px cells."""
    array = np.asarray(plain(size)).copy()
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array.astype(np.uint8))


def covers(footprint, square):
    return bool((footprint[:2] <= square[:2] + 1e-6).all() and (footprint[2:] >= square[2:] - 1e-6).all())


def test_stages_shapes_and_footprints(llava):
    assert llava.resolution == SIZE  # the largest square pinpoint
    assert llava.stages == ["vision.embed", *[f"vision.block.{i}" for i in range(3)], "projector.out",
                            "llm.layer.0", "llm.layer.1"]
    feats = llava.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    for stage, f in feats.items():
        assert f.tokens.shape[:2] == (2, BASE + 64) and f.grid_shape is None, stage
        assert torch.allclose(f.footprints[1, 5], torch.tensor([0.25, 0.25, 0.5, 0.5]))  # base tile (1, 1)
        # mosaic token (3, 5): the 2nd tile of the 2nd tile row, not the 4th token of tile 1
        assert torch.allclose(f.footprints[0, BASE + 3 * 8 + 5], torch.tensor([5, 3, 6, 4]) / 8)
    assert feats["vision.block.2"].extra["cls"].shape == (2, 5, 32)  # one CLS per tile
    assert "padding" not in feats["vision.embed"].extra  # a square fills its square pinpoint
    assert feats["projector.out"].extra["newline"].shape == (2, 8, 64)
    assert feats["llm.layer.1"].extra["newline"].shape == (2, 8, 64)


def test_anyres_layout_by_hand():
    square = anyres_layout(112, TILE, PATCH, PINPOINTS)
    # mosaic row 0 = row 0 of tile 1 (tokens 16..19), then row 0 of tile 2 (tokens 32..35)
    assert square.order[BASE : BASE + 8].tolist() == [16, 17, 18, 19, 32, 33, 34, 35]
    assert square.order[BASE + 8 * 4 : BASE + 8 * 4 + 2].tolist() == [48, 49]  # row 4 starts tile 3
    assert square.is_newline.nonzero().flatten().tolist() == [BASE + 9 * r + 8 for r in range(8)]
    # 56 px in a 56x112 canvas: 28 px of padding each side, two 14-px token columns dropped each side
    wide = anyres_layout(56, TILE, PATCH, PINPOINTS)
    assert wide.tiles == 3 and wide.mosaic_shape == (4, 4)
    assert wide.order[BASE : BASE + 4].tolist() == [18, 19, 32, 33]
    assert torch.allclose(wide.footprints[BASE], torch.tensor([0.0, 0.0, 0.25, 0.25]))
    assert torch.allclose(wide.footprints[BASE + 7], torch.tensor([0.75, 0.25, 1.0, 0.5]))
    assert sorted(wide.dropped.tolist())[:4] == [16, 17, 20, 21]


def test_padded_layout_extracts(padded):
    feats = padded.extract([plain(56)])
    assert feats["vision.embed"].extra["padding"].shape == (1, 16, 32)
    assert feats["projector.out"].tokens.shape == (1, BASE + 16, 64)
    assert feats["llm.layer.0"].extra["newline"].shape == (1, 4, 64)


# mosaic cells (8x8 grid) in different tiles, off the diagonal, so a tile-by-tile order or a transposed
# mosaic would move the answer; the base-tile cell holding each is (row // 2, col // 2)
PLANTS = [[(1, 6), (6, 2)], [(5, 7), (2, 3)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_is_found_in_base_tile_and_in_its_tile_at_every_stage(llava, plants):
    images = [planted(r, c) for r, c in plants]
    marked = llava.extract(images)
    base = llava.extract([plain()] * len(images))
    for stage in llava.stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)  # [B, N]
        for image, (row, col) in enumerate(plants):
            square = torch.tensor([col, row, col + 1, row + 1]) / 8
            for part, span in (("base tile", slice(0, BASE)), ("mosaic", slice(BASE, None))):
                found = span.start + change[image, span].argmax().item()
                footprint = marked[stage].footprints[image, found]
                assert covers(footprint, square), f"{stage} image {image} {part}: peak at token {found} " \
                                                  f"covering {footprint.tolist()}, planted at {(row, col)}"


def test_planted_patch_in_padded_layout(padded):
    marked = padded.extract([planted(1, 2, size=56)])
    base = padded.extract([plain(56)])
    square = torch.tensor([2, 1, 3, 2]) / 4
    for stage in ("vision.embed", "vision.block.0", "projector.out", "llm.layer.0"):
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0]
        for span in (slice(0, BASE), slice(BASE, None)):
            found = span.start + change[span].argmax().item()
            assert covers(marked[stage].footprints[0, found], square), stage


def own_llm_inputs(backbone, images):
    """The model's own image features (get_image_features + pack_image_features) and its first layer's input."""
    inputs, batch = backbone.prepare(images)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = backbone.model.model.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            own = backbone.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
            backbone.model(**inputs)
    finally:
        handle.remove()
    index = batch.image_positions[..., None].expand(-1, -1, seen["h"].shape[-1])
    return own.pooler_output, torch.gather(seen["h"], 1, index).float()


@pytest.mark.parametrize("resolution", [SIZE, 56])
def test_projector_out_is_what_the_llm_receives(llava, padded, resolution):
    backbone = llava if resolution == SIZE else padded
    images = [planted(1, 3, size=resolution), planted(3, 0, size=resolution)]
    feats = backbone.extract(images, stages=["projector.out"])["projector.out"]
    packed, layer_input = own_llm_inputs(backbone, images)
    newline = backbone.layout.is_newline
    for image, own in enumerate(packed):  # one packed tensor per image, newlines included
        assert torch.allclose(own[~newline].float(), feats.tokens[image], atol=1e-5)
        assert torch.allclose(own[newline].float(), feats.extra["newline"][image], atol=1e-5)
    assert torch.allclose(layer_input[:, ~newline], feats.tokens, atol=1e-5)
    assert torch.allclose(layer_input[:, newline], feats.extra["newline"], atol=1e-5)


def test_projector_reads_the_penultimate_block_in_the_same_token_order(llava):
    feats = llava.extract([planted(4, 1)], stages=["vision.block.1", "projector.out"])
    with torch.inference_mode():
        projected = llava.model.model.multi_modal_projector(feats["vision.block.1"].tokens)
    assert torch.allclose(projected, feats["projector.out"].tokens, atol=1e-5)


def test_vision_stages_never_run_the_llm(llava):
    with forward_calls(llava.model.model.language_model.layers[0]) as fired:
        llava.extract([plain()], stages=["vision.block.-1"])
        llava.extract([plain()], stages=["vision.embed", "projector.out"])
    assert fired == []


def test_prompt_holds_one_image_and_answer_generates(llava):
    assert llava.prompt.count("<image>") == 1
    replies = llava.answer([plain(), plain(40)], ["What colour is the square ?", "What shape is it ?"],
                           max_new_tokens=3)
    assert len(replies) == 2 and all(isinstance(r, str) and r for r in replies)


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="llava_next.*missing-model"):
        sp.load_backbone("llava_next", str(tmp_path / "missing-model"))
