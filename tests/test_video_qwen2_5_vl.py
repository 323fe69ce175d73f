"""Qwen2.5-VL on clips (`pixel_values_videos`): 2-frame temporal patches, traced in full on the tiny model."""
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells_in_time, forward_calls, noise_square_clip

SIZE, CELLS = 224, 8  # 16x16 patches, 8x8 merged tokens of 28 px, 16 attention windows per time step


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen_video"))))


def clip(frames, frame=-1, row=0, col=0):
    return noise_square_clip(frames, frame, SIZE, row, col, SIZE // CELLS)


def test_a_clip_is_time_major_one_step_per_two_frames(qwen):
    assert "video" in qwen.modalities
    feats = qwen.extract([clip(6), clip(6, 2, 1, 1)])
    thirds = torch.tensor([[0, 1], [1, 2], [2, 3]]) / 3
    for stage, f in feats.items():
        per_step = 256 if stage.startswith("vision.") else 64
        assert f.tokens.shape[:2] == (2, 3 * per_step) and f.grid_shape is None, stage
        assert torch.allclose(f.times[1, ::per_step], thirds) and torch.equal(f.times[1, :per_step],
                                                                             f.times[1, :1].expand(per_step, 2))
        assert torch.equal(f.footprints[0, per_step:2 * per_step], f.footprints[0, :per_step])
    assert torch.allclose(feats["projector.out"].footprints[0, 64 + 9], torch.tensor([0.125, 0.125, 0.25, 0.25]))


# (frame, row, col): the first temporal patch, the second frame of the middle one, the last frame, each in another
# attention window of its step, so a missing un-permutation, a wrong step or a wrong group order moves the answer
PLANTS = [[(0, 0, 2), (3, 5, 1)], [(5, 7, 7), (2, 3, 6)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_in_one_frame_is_found_in_its_place_and_time_at_every_stage(qwen, plants):
    assert_peaks_in_planted_cells_in_time(qwen, plants, frames=6, cells_per_side=CELLS, size=SIZE)


def test_an_odd_clip_is_padded_and_its_last_step_covers_its_last_frame_alone(qwen):
    feats = qwen.extract([clip(5)], stages=["projector.out"])["projector.out"]
    assert feats.tokens.shape[1] == 3 * 64
    assert torch.allclose(feats.times[0, ::64], torch.tensor([[0, 2], [2, 4], [4, 5]]) / 5)
    assert_peaks_in_planted_cells_in_time(qwen, [(4, 1, 6), (1, 6, 0)], frames=5, cells_per_side=CELLS, size=SIZE)


def test_projector_out_is_what_the_llm_receives_at_the_video_positions(qwen):
    clips = [clip(4, 1, 2, 5), clip(4, 2, 6, 1)]
    feats = qwen.extract(clips, stages=["projector.out", "llm.layer.0"])
    inputs, layout = qwen.prepare(clips)
    with torch.inference_mode():
        own = qwen.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    own = torch.cat(list(own.pooler_output if hasattr(own, "pooler_output") else own))
    assert torch.allclose(feats["projector.out"].tokens.reshape(-1, 64), own.float(), atol=1e-5)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = qwen.model.model.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            qwen.model(**inputs)
    finally:
        handle.remove()
    assert (inputs["input_ids"].gather(1, layout.image_positions) == qwen.model.config.video_token_id).all()
    at_video = torch.gather(seen["h"], 1, layout.image_positions[..., None].expand(-1, -1, 64))
    assert torch.allclose(at_video.float(), feats["projector.out"].tokens, atol=1e-5)


def test_a_two_frame_still_clip_reads_like_the_still_image_in_the_vision_tower(qwen):
    """An image is itself a 2-frame still to the processor: the video path must order its tokens the same way."""
    image = clip(1, 0, 3, 4)[0]
    stages = ["vision.block.3", "projector.out"]
    as_clip, still = qwen.extract([[image, image]], stages=stages), qwen.extract([image], stages=stages)
    for stage in stages:
        assert as_clip[stage].grid_shape == still[stage].grid_shape and still[stage].times is None
        assert torch.allclose(as_clip[stage].tokens, still[stage].tokens, atol=1e-5), stage
        assert torch.equal(as_clip[stage].times[0].unique(dim=0), torch.tensor([[0.0, 1.0]]))


def test_fps_sets_the_llm_time_positions_only(qwen):
    slow = sp.load_backbone("qwen2_5_vl", qwen.name_or_path, fps=2)
    clips = [clip(4, 3, 2, 2)]
    stages = ["projector.out", "llm.layer.1"]
    fast_feats, slow_feats = qwen.extract(clips, stages=stages), slow.extract(clips, stages=stages)
    assert torch.equal(fast_feats["projector.out"].tokens, slow_feats["projector.out"].tokens)
    assert not torch.allclose(fast_feats["llm.layer.1"].tokens, slow_feats["llm.layer.1"].tokens, atol=1e-4)
    assert slow.clip_preprocessing()["fps"] == 2.0 and qwen.clip_preprocessing()["fps"] == 24.0
    with pytest.raises(sp.SpatialProbeError, match="fps 0 must be positive"):
        sp.load_backbone("qwen2_5_vl", qwen.name_or_path, fps=0)


@pytest.mark.parametrize("samples,words", [(lambda: [clip(4), clip(6)], "[4, 6] frames"),
                                           (lambda: [clip(4), clip(1)[0]], "mixes still images and clips")])
def test_clips_it_cannot_batch_are_one_line_before_compute(qwen, samples, words):
    with forward_calls(qwen.model.model.visual.patch_embed) as calls, pytest.raises(sp.SpatialProbeError) as caught:
        qwen.extract(samples(), batch_size=1)
    message = str(caught.value)
    assert "\n" not in message and words in message and "qwen2_5_vl" in message
    assert calls == []


def test_how_clips_are_read_is_described_apart_from_still_images(qwen):
    assert "clip_preprocessing" not in qwen.describe()  # still-image descriptions (and their keys) as before
    read = qwen.describe(clips=True)["clip_preprocessing"]
    assert "2 frames per time step" in read["clip"] and "<|video_pad|>" in read["video_prompt"]
