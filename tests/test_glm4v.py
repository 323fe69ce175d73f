"""GLM-4.1V (Glm4vForConditionalGeneration) traced in full on a tiny random-initialized model of the real architecture."""
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.glm4v import PROMPT
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells, forward_calls, noise_square_image

SIZE = 224  # 16x16 patches, 8x8 merged tokens; the tiny tower's position table is 8x8, so it is interpolated


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    return sp.load_backbone("glm4v", str(save_tiny("glm4v", tmp_path_factory.mktemp("glm4v"))), resolution=SIZE)


def plain(colour=(60, 60, 60)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col, cell):
    return noise_square_image(SIZE, row, col, cell)


def test_stages_shapes_and_footprints(glm):
    assert glm.stages == ["vision.embed", *[f"vision.block.{i}" for i in range(3)], "projector.downsample",
                          "projector.out", "llm.layer.0", "llm.layer.1"]
    feats = glm.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])
    assert list(feats) == glm.stages
    for stage in ("vision.embed", "vision.block.2"):
        assert feats[stage].grid().shape == (2, 16, 16, 32)
    for stage in ("projector.downsample", "projector.out", "llm.layer.1"):
        assert feats[stage].grid().shape == (2, 8, 8, 64)
    # token (1, 1) of a 16x16 patch grid and of the 8x8 merged grid
    assert torch.allclose(feats["vision.embed"].footprints[0, 17], torch.tensor([1, 1, 2, 2]) / 16)
    assert torch.allclose(feats["projector.out"].footprints[1, 9], torch.tensor([0.125, 0.125, 0.25, 0.25]))
    assert torch.allclose(feats["llm.layer.0"].footprints[1, 63], torch.tensor([0.875, 0.875, 1.0, 1.0]))


def test_prompt_places_one_run_of_image_tokens(glm):
    assert PROMPT.count("<|image|>") == 1
    inputs, layout = glm.prepare([plain()])
    ids = inputs["input_ids"][0]
    positions = layout.image_positions[0]
    assert positions.tolist() == list(range(positions[0].item(), positions[0].item() + 64))
    vocab = glm.processor.tokenizer.get_vocab()
    assert ids[positions[0] - 1] == vocab["<|begin_of_image|>"] and ids[positions[-1] + 1] == vocab["<|end_of_image|>"]


# merged cells chosen so that reading the processor's 2x2-group order as a raster moves the answer
PLANTS = [[(0, 2), (5, 1)], [(3, 6), (6, 3)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_is_found_in_its_token_at_every_stage(glm, plants):
    assert_peaks_in_planted_cells(glm, plants, cells_per_side=8, size=SIZE)


def test_planted_single_patch_at_patch_stages(glm):
    image = planted(9, 4, 14)  # one 14x14 patch: odd row, even column inside its 2x2 group
    stages = ["vision.embed", "vision.block.0"]
    marked, base = glm.extract([image], stages=stages), glm.extract([plain()], stages=stages)
    for stage in stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)[0]
        assert change.argmax().item() == 9 * 16 + 4, stage
    # the embed stage is read before any attention: only the planted patch's token changes
    assert torch.count_nonzero((marked["vision.embed"].tokens - base["vision.embed"].tokens).norm(dim=-1) > 1e-5) == 1


def test_projector_out_is_what_the_llm_receives(glm):
    images = [planted(2, 5, 28), planted(6, 1, 28)]
    feats = glm.extract(images, stages=["projector.downsample", "projector.out", "llm.layer.0"])
    inputs, layout = glm.prepare(images)
    with torch.inference_mode():
        own = glm.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    for image, pooled in enumerate(own.pooler_output):  # one [64, 64] tensor per image
        assert torch.allclose(feats["projector.out"].tokens[image], pooled.float(), atol=1e-5)
    # the downsample stage is the tower's own last_hidden_state (before the merger)
    assert torch.allclose(feats["projector.downsample"].tokens.reshape(-1, 64), own.last_hidden_state.float(), atol=1e-5)
    # and the first decoder layer's input at the image positions is exactly projector.out
    seen = {}
    layer = glm.model.model.language_model.layers[0]

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = layer.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            glm.model(**inputs)
    finally:
        handle.remove()
    at_images = torch.gather(seen["h"], 1, layout.image_positions[..., None].expand(-1, -1, 64))
    assert torch.allclose(at_images.float(), feats["projector.out"].tokens, atol=1e-5)
    assert not torch.allclose(feats["llm.layer.0"].tokens, feats["projector.out"].tokens, atol=1e-3)


def test_vision_stages_never_run_the_llm(glm):
    with forward_calls(glm.model.model.language_model.layers[0]) as fired:
        glm.extract([plain()], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_answer_is_the_models_own_greedy_generation(glm):
    image, question = planted(1, 1, 28), "What colour is the square ?"
    replies = glm.answer([image, plain()], [question, question], max_new_tokens=4)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    inputs = glm.move_inputs(glm._inputs([glm._question_prompt(question)], [image]))
    with torch.inference_mode():
        output = glm.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = glm.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert replies[0] == expected.strip()


def test_bad_path_is_named(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="glm4v.*missing-model"):
        sp.load_backbone("glm4v", str(tmp_path / "missing-model"))


def test_other_model_types_are_refused_by_name(tmp_path):
    from transformers import Dinov2Config

    Dinov2Config().save_pretrained(tmp_path)
    with pytest.raises(sp.SpatialProbeError, match="glm4v: .* is a 'dinov2' model, not one of glm4v, glm4v_moe"):
        sp.load_backbone("glm4v", str(tmp_path))


def test_resolution_must_fit_the_merge_grid(glm):
    with pytest.raises(sp.SpatialProbeError, match="not a multiple of 28"):
        sp.load_backbone("glm4v", glm.name_or_path, resolution=230)
