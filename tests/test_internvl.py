"""InternVL traced in full on a tiny random-initialized model of the real architecture (-hf layout).

Tiny layout: 112-px tiles of 8x8 patches (14 px), a 2x2 tile grid plus a thumbnail, so a 224-px image gives
5 tiles x 64 patch tokens at the vision stages and 5 x 16 tokens after the 2x2 pixel shuffle.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny

SIZE = 224  # the whole image: 2x2 tiles of 112 px
TILES, PATCHES, MERGED = 5, 64, 16  # tiles per image (4 + thumbnail), patch tokens and shuffled tokens per tile


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny("internvl", tmp_path_factory.mktemp("internvl"))


@pytest.fixture(scope="module")
def internvl(tiny_path):
    return sp.load_backbone("internvl", str(tiny_path))


def plain(colour=(60, 60, 60), size=(SIZE, SIZE)):
    return Image.new("RGB", size, colour)


def planted(row, col, cell, size=(SIZE, SIZE)):
    """A plain image with a bright noise square filling grid cell (row, col) of `cell` pixels."""
    array = np.asarray(plain(size=size)).copy()
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array.astype(np.uint8))


def covers(footprint, box):
    """The footprint lies inside the box, or holds it (a coarse thumbnail token)."""
    footprint, box = footprint.double(), box.double()
    inside = (footprint[:2] >= box[:2] - 1e-6).all() and (footprint[2:] <= box[2:] + 1e-6).all()
    holds = (footprint[:2] <= box[:2] + 1e-6).all() and (footprint[2:] >= box[2:] - 1e-6).all()
    return bool(inside or holds)


def test_stages_shapes_and_footprints(internvl):
    assert internvl.stages == ["vision.embed", "vision.block.0", "vision.block.1", "projector.pixel_shuffle",
                               "projector.out", "llm.layer.0", "llm.layer.1"]
    feats = internvl.extract([plain(), plain((1, 2, 3), (300, 120))])
    for stage in ("vision.embed", "vision.block.1"):
        assert feats[stage].tokens.shape == (2, TILES * PATCHES, 32)
        assert feats[stage].extra["cls"].shape == (2, TILES, 32)
    assert feats["projector.pixel_shuffle"].tokens.shape == (2, TILES * MERGED, 4 * 32)
    assert feats["projector.out"].tokens.shape == feats["llm.layer.1"].tokens.shape == (2, TILES * MERGED, 64)
    assert all(f.grid_shape is None for f in feats.values())  # several tiles: no single raster
    embed, out = feats["vision.embed"].footprints[1], feats["llm.layer.0"].footprints[0]
    # tile 1 (top right), patch (2, 3) of its 8x8
    assert torch.allclose(embed[1 * PATCHES + 2 * 8 + 3], torch.tensor([0.5 + 3 / 16, 2 / 16, 0.5 + 4 / 16, 3 / 16]))
    # the thumbnail (tile 4) covers the whole image: its patch (1, 6) is a 1/8 cell
    assert torch.allclose(embed[4 * PATCHES + 1 * 8 + 6], torch.tensor([0.75, 0.125, 0.875, 0.25]))
    # tile 2 (bottom left), shuffled token (3, 1) of its 4x4
    assert torch.allclose(out[2 * MERGED + 3 * 4 + 1], torch.tensor([0.125, 0.875, 0.25, 1.0]))
    # the thumbnail's shuffled token (0, 3): a quarter of the image side
    assert torch.allclose(out[4 * MERGED + 3], torch.tensor([0.75, 0.0, 1.0, 0.25]))
    recorded = internvl.preprocessing()
    assert recorded["tile_grid"] == [2, 2] and recorded["thumbnail"] and recorded["image_size"] == [224, 224]


def test_pixel_shuffle_packs_2x2_patches(internvl):
    assert isinstance(internvl.model.model.vision_tower.layernorm, torch.nn.Identity)  # so block.-1 is its input
    feats = internvl.extract([planted(3, 5, 28)], stages=["vision.block.-1", "projector.pixel_shuffle"])
    patches, shuffled = feats["vision.block.1"], feats["projector.pixel_shuffle"]
    # group each tile's 8x8 patch raster into 4x4 cells of 2x2 patches, the 2x2 in raster order
    grouped = patches.tokens.reshape(TILES, 4, 2, 4, 2, 32).permute(0, 1, 3, 2, 4, 5).reshape(TILES * MERGED, 4, 32)
    assert torch.allclose(shuffled.tokens.reshape(TILES * MERGED, 4, 32), grouped, atol=1e-6)
    boxes = patches.footprints.reshape(TILES, 4, 2, 4, 2, 4).permute(0, 1, 3, 2, 4, 5).reshape(TILES * MERGED, 4, 4)
    union = torch.cat([boxes[..., :2].amin(1), boxes[..., 2:].amax(1)], dim=-1)
    assert torch.allclose(shuffled.footprints[0], union)


# 28-px cells of the 8x8 image grid: in a fine tile each is one shuffled token (2x2 patches), in the thumbnail
# one patch. Chosen off the diagonals of their tiles and of the thumbnail, in different tiles, so that a wrong
# tile order, a transposed shuffle or a missing thumbnail moves the answer
PLANTS = [[(1, 6), (6, 3)], [(3, 4), (4, 1)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_is_found_in_its_tile_and_thumbnail_at_every_stage(internvl, plants):
    images = [planted(r, c, 28) for r, c in plants]
    marked, base = internvl.extract(images), internvl.extract([plain()] * len(images))
    for stage in internvl.stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)  # [B, N]
        per_tile = change.shape[1] // TILES
        for image, (row, col) in enumerate(plants):
            cell = torch.tensor([col, row, col + 1, row + 1]) / 8
            fine = change[image, : 4 * per_tile].argmax().item()  # over all four fine tiles
            thumb = 4 * per_tile + change[image, 4 * per_tile :].argmax().item()  # over the thumbnail only
            for found, where in ((fine, "fine tiles"), (thumb, "thumbnail")):
                footprint = marked[stage].footprints[image, found]
                assert covers(footprint, cell), (f"{stage} image {image} {where}: change peaks at token {found} "
                                                 f"{footprint.tolist()}, planted at {cell.tolist()}")


def test_planted_single_patch_changes_one_fine_token_at_embed(internvl):
    image = planted(5, 10, 14)  # image patch (5, 10): tile 1 (top right), its patch (5, 2)
    stages = ["vision.embed", "vision.block.0"]
    marked, base = internvl.extract([image], stages=stages), internvl.extract([plain()], stages=stages)
    for stage in stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0, : 4 * PATCHES]
        assert change.argmax().item() == 1 * PATCHES + 5 * 8 + 2
    embed_change = (marked["vision.embed"].tokens - base["vision.embed"].tokens).norm(dim=-1)[0, : 4 * PATCHES]
    assert torch.count_nonzero(embed_change > 1e-5) == 1  # tiles are exact crops: nothing else moves


def test_projector_out_is_what_the_llm_receives(internvl):
    images = [planted(2, 5, 28), planted(6, 1, 28)]
    feats = internvl.extract(images, stages=["projector.out", "llm.layer.0"])
    inputs, layout = internvl.prepare(images)
    with torch.inference_mode():
        own = internvl.model.model.get_image_features(inputs["pixel_values"]).pooler_output  # [tiles, 16, 64]
    assert torch.allclose(feats["projector.out"].tokens, own.reshape(2, TILES * MERGED, 64).float(), atol=1e-5)
    # the image tokens sit in one run between <img> and </img>
    tokenizer = internvl.processor.tokenizer
    for ids, positions in zip(inputs["input_ids"], layout.image_positions):
        assert positions.tolist() == list(range(positions[0], positions[0] + TILES * MERGED))
        assert ids[positions[0] - 1] == tokenizer.start_image_token_id
        assert ids[positions[-1] + 1] == tokenizer.end_image_token_id
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = internvl.model.model.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            internvl.model(**inputs)
    finally:
        handle.remove()
    at_images = torch.gather(seen["h"], 1, layout.image_positions[..., None].expand(-1, -1, 64))
    assert torch.allclose(at_images.float(), feats["projector.out"].tokens, atol=1e-5)


def test_vision_stages_never_run_the_llm(internvl):
    fired, projected = [], []
    inner = internvl.model.model
    handles = [inner.language_model.layers[0].register_forward_hook(lambda *a: fired.append(1)),
               inner.multi_modal_projector.register_forward_hook(lambda *a: projected.append(1))]
    try:
        internvl.extract([plain()], stages=["vision.block.-1", "projector.out"])
        assert fired == [] and projected == [1]
        internvl.extract([plain()], stages=["projector.pixel_shuffle"])  # stops before the projector
        assert projected == [1]
    finally:
        for handle in handles:
            handle.remove()
    assert "pixel_shuffle" not in vars(inner)  # the method is unwrapped again after the pass


def test_other_tile_grids(tiny_path):
    wide = sp.load_backbone("internvl", str(tiny_path), tile_grid=[3, 1])  # 3 tiles side by side + thumbnail
    image = planted(3, 17, 14, size=(336, 112))  # image patch (3, 17): tile 2, its patch (3, 1)
    marked = wide.extract([image], stages=["vision.embed"])["vision.embed"]
    base = wide.extract([plain(size=(336, 112))], stages=["vision.embed"])["vision.embed"]
    assert marked.tokens.shape == (1, 4 * PATCHES, 32) and marked.grid_shape is None
    change = (marked.tokens - base.tokens).norm(dim=-1)[0, : 3 * PATCHES]
    found = change.argmax().item()
    assert found == 2 * PATCHES + 3 * 8 + 1
    assert torch.allclose(marked.footprints[0, found], torch.tensor([2 / 3 + 1 / 24, 3 / 8, 2 / 3 + 2 / 24, 4 / 8]))
    single = sp.load_backbone("internvl", str(tiny_path), tile_grid=1)  # one tile, no thumbnail: a raster
    feats = single.extract([plain()], stages=["vision.embed", "projector.out"])
    assert feats["vision.embed"].grid().shape == (1, 8, 8, 32) and feats["projector.out"].grid().shape == (1, 4, 4, 64)
    assert single.preprocessing()["thumbnail"] is False
    small = sp.load_backbone("internvl", str(tiny_path), resolution=56)  # 56-px tiles: 4x4 patches, 2x2 tokens
    feats = small.extract([plain()], stages=["vision.embed", "llm.layer.0"])
    assert feats["vision.embed"].tokens.shape[1] == TILES * 16 and feats["llm.layer.0"].tokens.shape[1] == TILES * 4
    assert small.preprocessing()["image_size"] == [112, 112]


def test_remote_code_tiling_matches_the_processor(internvl):
    """The remote-code path cuts tiles itself: same geometry as the processor's crop_to_patches."""
    images = [planted(1, 6, 28), plain((10, 200, 30), (300, 100))]
    ours = internvl._remote_pixels(internvl._resized(images)).reshape(2, TILES, 3, 112, 112)
    theirs = internvl.prepare(images)[0]["pixel_values"].reshape(2, TILES, 3, 112, 112)
    assert torch.allclose(ours[:, :4], theirs[:, :4], atol=1e-5)  # fine tiles: exact crops
    assert (ours[:, 4] - theirs[:, 4]).abs().mean() < 0.05  # thumbnail: PIL vs torchvision bicubic


def test_answer_uses_the_models_own_generate(internvl):
    replies = internvl.answer([plain(), planted(1, 1, 28)], ["What colour is the square ?", "What shape is it ?"],
                              max_new_tokens=3)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="internvl.*missing-model"):
        sp.load_backbone("internvl", str(tmp_path / "missing-model"))


def test_remote_code_checkpoint_needs_trust(tmp_path):
    folder = tmp_path / "InternVL2-8B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"}}))
    with pytest.raises(sp.SpatialProbeError, match="--trust-remote-code") as caught:
        sp.load_backbone("internvl", str(folder))
    assert "\n" not in str(caught.value) and "InternVL2-8B" in str(caught.value)


def test_resolution_must_fit_the_shuffle_grid(tiny_path):
    with pytest.raises(sp.SpatialProbeError, match="not a multiple of 28"):
        sp.load_backbone("internvl", str(tiny_path), resolution=126)


REMOTE = os.environ.get("SPATIALPROBE_INTERNVL2_PATH")


@pytest.mark.skipif(not REMOTE, reason="set SPATIALPROBE_INTERNVL2_PATH to a local snapshot folder of an original "
                                       "InternVL2 checkpoint (e.g. OpenGVLab/InternVL2-1B) to test the remote-code path")
def test_remote_code_checkpoint_traced_by_module_path():
    bb = sp.load_backbone("internvl", REMOTE, trust_remote_code=True)
    assert bb.remote and bb.stages[0] == "vision.embed" and "projector.pixel_shuffle" in bb.stages
    per_tile, tiles = (bb.side // bb.merge) ** 2, bb.tiling.count
    stages = ["vision.embed", "projector.pixel_shuffle", "projector.out", "llm.layer.0"]
    images = [planted(1, 6, 112, size=(896, 896))]
    feats = bb.extract(images, stages=stages)
    assert feats["vision.embed"].tokens.shape[1] == tiles * bb.side ** 2
    assert feats["projector.out"].tokens.shape[1] == feats["llm.layer.0"].tokens.shape[1] == tiles * per_tile
    inputs, _ = bb.prepare(images)
    with torch.inference_mode():
        own = bb.model.extract_feature(inputs["pixel_values"])
    assert torch.allclose(feats["projector.out"].tokens, bb._raster(own.float()).reshape(1, tiles * per_tile, -1),
                          atol=1e-3)
    base = bb.extract([plain(size=(896, 896))], stages=["vision.embed"])["vision.embed"]
    change = (feats["vision.embed"].tokens - base.tokens).norm(dim=-1)[0, : 4 * bb.side ** 2]
    assert covers(feats["vision.embed"].footprints[0, change.argmax()], torch.tensor([6, 1, 7, 2]) / 8)
    assert isinstance(bb.answer([images[0]], ["What is in the image?"], max_new_tokens=4)[0], str)
