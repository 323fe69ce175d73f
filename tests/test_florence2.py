"""Florence-2 traced in full on a tiny random-initialized model of the real architecture (DaViT + BART)."""
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.florence2 import TASK
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells, noise_square_image

SIZE = 256  # DaViT grids 64, 32, 16, 8; the language encoder gets 1 global + 8x8 image tokens
ENCODER_LAYERS = ["llm.layer.0", "llm.layer.1"]


@pytest.fixture(scope="module")
def florence(tmp_path_factory):
    return sp.load_backbone("florence2", str(save_tiny("florence2", tmp_path_factory.mktemp("florence2"))))


def plain(colour=(60, 60, 60)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, cell):
    return noise_square_image(SIZE, row, col, cell)


def test_stages_shapes_and_footprints(florence):
    # tiny depths (1, 1, 2, 1): blocks are numbered across the 4 DaViT stages, each with its stage's grid
    assert florence.stages == ["vision.embed", *[f"vision.block.{i}" for i in range(5)], "projector.out",
                               *ENCODER_LAYERS]
    feats = florence.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    sides = {"vision.embed": 64, "vision.block.0": 64, "vision.block.1": 32, "vision.block.2": 16,
             "vision.block.3": 16, "vision.block.4": 8, "projector.out": 8, "llm.layer.0": 8, "llm.layer.1": 8}
    for stage, side in sides.items():
        assert feats[stage].grid_shape == (side, side) and feats[stage].tokens.shape[:2] == (2, side * side), stage
    assert feats["vision.block.2"].tokens.shape[-1] == 32 and feats["vision.block.0"].tokens.shape[-1] == 16
    # cell (row 1, col 2) of the 32x32 stage-1 grid, and the last token of the 8x8 grid
    assert torch.allclose(feats["vision.block.1"].footprints[1, 1 * 32 + 2], torch.tensor([2, 1, 3, 2]) / 32)
    assert torch.allclose(feats["llm.layer.1"].footprints[0, 63], torch.tensor([7, 7, 8, 8]) / 8)
    for stage in ("projector.out", *ENCODER_LAYERS):
        assert feats[stage].extra["global"].shape == (2, 1, 32)
    assert feats["vision.block.4"].extra == {}


def test_projector_global_token_is_the_mean(florence):
    """Token 0 of the projector is LayerNorm(W mean(cells)): rebuild it from the grid before the projection."""
    projector = florence.model.model.multi_modal_projector
    seen = {}
    handle = projector.image_proj_norm.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    try:
        florence.extract([planted(1, 2, 64)], stages=["projector.out"])
    finally:
        handle.remove()
    before_norm = seen["x"][0]  # [1 + 64, C] after the linear projection
    assert torch.allclose(before_norm[0], before_norm[1:].mean(0), atol=1e-5)


# 64-px squares (2x2 cells of the last grid); places that a transposed or shifted (global token) read would move
PLANTS = [[(0, 2), (3, 1)], [(1, 3), (2, 0)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_is_found_in_its_token_at_every_stage(florence, plants):
    assert_peaks_in_planted_cells(florence, plants, cells_per_side=4, size=SIZE)


def test_projector_out_is_what_the_language_encoder_receives(florence):
    images = [planted(0, 3, 64), planted(2, 1, 64)]
    feats = florence.extract(images, stages=["projector.out", *ENCODER_LAYERS])
    inputs, layout = florence.prepare(images)
    with torch.inference_mode():
        own = florence.model.model.get_image_features(inputs["pixel_values"]).pooler_output
    projector = feats["projector.out"]
    assert torch.allclose(projector.extra["global"], own[:, :1], atol=1e-6)
    assert torch.allclose(projector.tokens, own[:, 1:], atol=1e-6)
    # the BART encoder's input embeddings at the <image> positions are [global, grid], and its own output
    # there is the last traced encoder layer
    seen = {}
    encoder = florence.model.model.language_model.encoder
    handle = encoder.register_forward_pre_hook(lambda _m, _a, kwargs: seen.update(x=kwargs["inputs_embeds"]),
                                               with_kwargs=True)
    try:
        with torch.inference_mode():
            out = florence.model(**inputs)
    finally:
        handle.remove()
    index = layout.image_positions[..., None].expand(-1, -1, 32)
    at_images = torch.gather(seen["x"], 1, index)
    assert layout.image_positions[0].tolist() == list(range(65))  # the processor puts the image first
    assert torch.allclose(at_images, torch.cat([projector.extra["global"], projector.tokens], 1), atol=1e-6)
    last = torch.gather(out.encoder_last_hidden_state, 1, index)
    assert torch.allclose(last[:, 1:], feats["llm.layer.1"].tokens, atol=1e-5)
    assert torch.allclose(last[:, :1], feats["llm.layer.1"].extra["global"], atol=1e-5)


def test_vision_stages_never_run_the_language_model(florence):
    fired = []
    language = florence.model.model.language_model
    handles = [language.encoder.layers[0].register_forward_hook(lambda *a: fired.append("encoder")),
               language.decoder.layers[0].register_forward_hook(lambda *a: fired.append("decoder"))]
    try:
        florence.extract([plain()], stages=["vision.block.-1", "projector.out"])
        florence.extract([plain()], stages=["llm.layer.-1"])  # the encoder runs, the decoder never does
    finally:
        for handle in handles:
            handle.remove()
    assert fired == ["encoder"]


def test_answer_uses_the_image_and_the_question(florence):
    seen = []
    handle = florence.model.model.vision_tower.register_forward_hook(lambda *a: seen.append(1))
    try:
        replies = florence.answer([plain(), plain((200, 10, 10))], ["What colour is the shape?", "What shape is it?"],
                                  max_new_tokens=3)
    finally:
        handle.remove()
    assert len(replies) == 2 and all(isinstance(r, str) and "<" not in r for r in replies)
    assert len(seen) == 2


def test_preprocessing_records_prompt_and_resolution(florence):
    record = florence.preprocessing()
    assert record["resolution"] == SIZE and record["prompt"] == TASK
    assert record["prompt_text"] == "What does the image describe?" and record["image_tokens"] == "1 global + 8x8"


def test_other_resolution_changes_the_image_token_count(florence):
    small = sp.load_backbone("florence2", florence.name_or_path, resolution=128)
    feats = small.extract([plain()], stages=["vision.embed", "llm.layer.0"])
    assert feats["vision.embed"].grid_shape == (32, 32) and feats["llm.layer.0"].grid_shape == (4, 4)
    with pytest.raises(sp.SpatialProbeError, match="not a multiple of 32"):
        sp.load_backbone("florence2", florence.name_or_path, resolution=250)


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="florence2.*missing-model"):
        sp.load_backbone("florence2", str(tmp_path / "missing-model"))
