"""GLM-4.1V on clips (`Glm4vForConditionalGeneration` video input) on a tiny random-initialized model of the real
architecture: frames go in pairs (temporal patches of 2), each pair one time step; a patch planted in one frame is
found in the token whose footprint holds it and whose `times` cover that frame, at every stage."""
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells_in_time, forward_calls, noise_square_clip, noise_square_image

SIZE = 112  # 8x8 patches per frame, 4x4 merged tokens per time step


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    backbone = sp.load_backbone("glm4v", str(save_tiny("glm4v", tmp_path_factory.mktemp("glm4v"))), resolution=SIZE)
    # the random merger's outputs are ~1e-2 in norm against text states of ~10, so the LLM layers would carry a
    # planted frame token only through attention, spread over every later token; a trained merger speaks at the
    # text's scale: scale its last projection to norm ~2 (the checkpoint on disk stays as it is)
    with torch.no_grad():
        backbone.model.model.visual.merger.down_proj.weight.mul_(300)
    return backbone


def clip(frames, frame=-1, row=0, col=0):
    return noise_square_clip(frames, frame, SIZE, row, col, SIZE // 4)


def test_clip_stages_pair_frames_time_major(glm):
    feats = glm.extract([clip(4), clip(4)])
    assert list(feats) == glm.stages
    for stage, f in feats.items():
        per_step = 64 if stage.startswith("vision.") else 16
        assert f.tokens.shape[:2] == (2, 2 * per_step) and f.grid_shape is None, stage
        # the second time step holds frames 2 and 3 of 4
        assert torch.equal(f.times[1, per_step:], torch.tensor([0.5, 1.0]).expand(per_step, 2))
        side = int(per_step ** 0.5)
        assert torch.allclose(f.footprints[0, per_step + side + 2], torch.tensor([2, 1, 3, 2]) / side)


def test_clip_reading_goes_into_clip_descriptions_only(glm):
    assert "clip_preprocessing" not in glm.describe()  # still-image descriptions (and cache keys) as before
    read = glm.describe(clips=True)["clip_preprocessing"]
    assert read["frames_per_step"] == 2 and read["fps"] == 2.0


def test_odd_last_frame_is_a_step_of_its_own(glm):
    f = glm.extract([clip(3)], stages=["projector.out"])["projector.out"]
    assert f.tokens.shape[1] == 2 * 16
    assert torch.allclose(f.times[0, ::16], torch.tensor([[0, 2 / 3], [2 / 3, 1]]))
    one = glm.extract([clip(1)], stages=["projector.out"])["projector.out"]
    assert one.grid_shape == (4, 4) and torch.equal(one.times[0, 0], torch.tensor([0.0, 1.0]))


# (frame, row, col): the second frame of a pair, the first of a pair, and the odd last frame padded with itself
PLANTS = [[(3, 1, 2), (0, 2, 0)], [(4, 3, 1), (2, 0, 3)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_in_time_at_every_stage(glm, plants):
    assert_peaks_in_planted_cells_in_time(glm, plants, frames=5, cells_per_side=4, size=SIZE)


def test_a_still_pair_of_frames_reads_like_the_image(glm):
    """GLM reads an image as a 2-frame still: a clip of the image twice gives the same tower and merger tokens,
    so the clip path keeps the image path's token order."""
    image = noise_square_image(SIZE, 1, 2, 28)
    stages = ["vision.embed", "vision.block.2", "projector.downsample", "projector.out"]
    still, pair = glm.extract([image], stages=stages), glm.extract([[image, image]], stages=stages)
    for stage in stages:
        assert torch.allclose(still[stage].tokens, pair[stage].tokens, atol=1e-4), stage
        assert torch.equal(still[stage].footprints, pair[stage].footprints), stage


def test_projector_out_is_what_the_llm_receives(glm):
    clips = [clip(4, 1, 2, 3), clip(4, 2, 0, 1)]
    feats = glm.extract(clips, stages=["projector.out"])["projector.out"]
    inputs, layout = glm.prepare(clips)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    inner = glm.model.model
    handle = inner.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            own = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output
            glm.model(**inputs, use_cache=False)
    finally:
        handle.remove()
    for index, pooled in enumerate(own):  # one [steps * 16, 64] tensor per clip
        assert torch.allclose(pooled.float(), feats.tokens[index], atol=1e-5)
    at_frames = torch.gather(seen["h"], 1, layout.video_positions[..., None].expand(-1, -1, 64))
    assert torch.allclose(at_frames.float(), feats.tokens, atol=1e-5)


def test_vision_stages_of_a_clip_never_run_the_llm(glm):
    with forward_calls(glm.model.model.language_model.layers[0]) as fired:
        glm.extract([clip(2)], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_clips_the_model_cannot_take_are_named_before_compute(glm):
    with forward_calls(glm.model.model.visual) as fired:
        with pytest.raises(sp.SpatialProbeError, match="glm4v: one call mixes still images and clips"):
            glm.extract([clip(2), Image.new("RGB", (SIZE, SIZE))])
        with pytest.raises(sp.SpatialProbeError, match="glm4v: clips of \\[2, 4\\] frames"):
            glm.extract([clip(2), clip(4)])
        too_many = 2 * glm.model.config.text_config.max_position_embeddings // 16
        with pytest.raises(sp.SpatialProbeError, match=f"glm4v: a clip of {too_many} frames .*{glm.name_or_path}"):
            glm.extract([[Image.new("RGB", (8, 8))] * too_many])
    assert fired == []
