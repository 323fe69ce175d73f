"""Qwen2.5-VL traced in full on a tiny random-initialized model of the real architecture."""
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.qwen2_5_vl import PROMPT, group_order_to_raster
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells, forward_calls, noise_square_image

SIZE = 224  # 16x16 patches, 8x8 merged tokens, 16 attention windows of 2x2 merged tokens


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen"))))


def plain(colour=(60, 60, 60)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, cell):
    return noise_square_image(SIZE, row, col, cell)


def test_stages_shapes_and_footprints(qwen):
    assert qwen.stages == ["vision.embed", *[f"vision.block.{i}" for i in range(4)], "projector.out",
                           "llm.layer.0", "llm.layer.1"]
    feats = qwen.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    assert feats["vision.block.3"].grid().shape == (2, 16, 16, 32)
    assert feats["llm.layer.1"].grid().shape == (2, 8, 8, 64)
    assert torch.allclose(feats["projector.out"].footprints[1, 9], torch.tensor([0.125, 0.125, 0.25, 0.25]))


def test_group_order_to_raster_by_hand():
    # a 4x4 patch grid in 2x2 groups: group order is [g0: (0,0) (0,1) (1,0) (1,1)], [g1: (0,2) ...], ...
    assert group_order_to_raster(4, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


# merged cells chosen outside the first window and in different windows of each image, so that a
# missing or wrong un-permutation of the window order moves the answer
PLANTS = [[(0, 2), (5, 1)], [(3, 6), (7, 7)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_is_found_in_its_token_at_every_stage(qwen, plants):
    assert_peaks_in_planted_cells(qwen, plants, cells_per_side=8, size=SIZE)


def test_planted_single_patch_at_patch_stages(qwen):
    image = planted(9, 4, 14)  # one 14x14 patch: odd row, even column inside its 2x2 group
    marked, base = qwen.extract([image], stages=["vision.embed", "vision.block.0"]), qwen.extract(
        [plain()], stages=["vision.embed", "vision.block.0"])
    for stage in ("vision.embed", "vision.block.0"):
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0]
        assert change.argmax().item() == 9 * 16 + 4
    assert torch.count_nonzero((marked["vision.embed"].tokens - base["vision.embed"].tokens).norm(dim=-1) > 1e-5) == 1


def test_projector_out_is_what_the_llm_receives(qwen):
    images = [planted(2, 5, 28), planted(6, 1, 28)]
    feats = qwen.extract(images, stages=["projector.out", "llm.layer.0"])
    inputs, layout = qwen.prepare(images)
    with torch.inference_mode():
        own = qwen.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    own = own.pooler_output if hasattr(own, "pooler_output") else own
    own = torch.cat(list(own)) if isinstance(own, (list, tuple)) else own
    assert torch.allclose(feats["projector.out"].tokens.reshape(-1, 64), own.float(), atol=1e-5)
    # and the first decoder layer's input at the image positions is exactly those tokens
    seen = {}
    layer = qwen.model.model.language_model.layers[0]

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = layer.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            qwen.model(**inputs)
    finally:
        handle.remove()
    at_images = torch.gather(seen["h"], 1, layout.image_positions[..., None].expand(-1, -1, 64))
    assert torch.allclose(at_images.float(), feats["projector.out"].tokens, atol=1e-5)


def test_vision_stages_never_run_the_llm(qwen):
    with forward_calls(qwen.model.model.language_model.layers[0]) as fired:
        qwen.extract([plain()], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_prompt_holds_one_image():
    assert PROMPT.count("<|image_pad|>") == 1


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="qwen2_5_vl.*missing-model"):
        sp.load_backbone("qwen2_5_vl", str(tmp_path / "missing-model"))


def test_resolution_must_fit_the_merge_grid(qwen, tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="not a multiple of 28"):
        sp.load_backbone("qwen2_5_vl", qwen.name_or_path, resolution=230)


def test_max_pixels_picks_the_largest_square_of_merge_cells(qwen):
    backbone = sp.load_backbone("qwen2_5_vl", qwen.name_or_path, max_pixels=200_000)
    assert backbone.resolution == 420 and backbone.preprocessing()["resolution"] == 420  # 447 px -> 15 cells of 28
    with pytest.raises(sp.SpatialProbeError, match="resolution or max_pixels, not both"):
        sp.load_backbone("qwen2_5_vl", qwen.name_or_path, resolution=224, max_pixels=50_176)
