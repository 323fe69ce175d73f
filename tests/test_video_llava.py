"""LLaVA-NeXT-Video and LLaVA-OneVision on clips (their native transformers classes), on tiny random-initialized
models of the real architectures: a patch planted in one frame is found in the token whose footprint holds it and
whose `times` cover that frame, at every stage, pooled video tokens included; still images as in LLaVA-NeXT."""
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import (assert_peaks_in_planted_cells, assert_peaks_in_planted_cells_in_time, forward_calls,
                      noise_square_clip, noise_square_image)

FRAME = 112  # the tiny towers' tile: 8x8 patches per frame, 4x4 tokens after the 2x2 video pooling
IMAGE = 224  # the largest square pinpoint: base tile + 2x2 high-resolution tiles
FAMILIES = ["llava_next_video", "llava_onevision"]


@pytest.fixture(scope="module", params=FAMILIES)
def video_llava(request, tmp_path_factory):
    family = request.param
    return sp.load_backbone(family, str(save_tiny(family, tmp_path_factory.mktemp(family))))


def clip(frames=3, frame=-1, row=0, col=0):
    return noise_square_clip(frames, frame, FRAME, row, col, FRAME // 4)


def test_clip_stages_are_time_major_with_frame_times(video_llava):
    feats = video_llava.extract([clip(3), clip(3)])
    assert list(feats) == video_llava.stages
    for stage, f in feats.items():
        per_frame = 64 if stage.startswith("vision.") else 16
        assert f.tokens.shape[:2] == (2, 3 * per_frame) and f.grid_shape is None, stage
        # frame 1's tokens come second, all of them, in raster order
        assert torch.allclose(f.times[1, per_frame : 2 * per_frame], torch.tensor([1 / 3, 2 / 3]).expand(per_frame, 2))
        side = int(per_frame ** 0.5)
        assert torch.allclose(f.footprints[0, per_frame + side + 2], torch.tensor([2, 1, 3, 2]) / side)
    if video_llava.family == "llava_next_video":  # a CLIP tower: one CLS per frame
        assert feats["vision.block.0"].extra["cls"].shape == (2, 3, 32)
    else:  # SigLIP has no CLS; one learned newline closes the clip
        assert "cls" not in feats["vision.block.0"].extra
        assert feats["projector.out"].extra["newline"].shape == feats["llm.layer.1"].extra["newline"].shape == (2, 1, 64)


def test_clip_reading_goes_into_clip_descriptions_only(video_llava):
    assert "clip_preprocessing" not in video_llava.describe()
    read = video_llava.describe(clips=True)["clip_preprocessing"]
    assert "one tile" in read["clip"] and read["video_prompt"].count(video_llava.processor.video_token) == 1


def test_one_frame_clip_is_a_grid(video_llava):
    feats = video_llava.extract([clip(1)], stages=["vision.embed", "projector.out"])
    assert feats["vision.embed"].grid_shape == (8, 8) and feats["projector.out"].grid_shape == (4, 4)
    assert torch.equal(feats["projector.out"].times[0], torch.tensor([[0.0, 1.0]]).expand(16, 2))


# cells of a 4x4 grid (the pooled raster) in different frames, off the diagonal: a frame-major or transposed
# order, or pooled tokens read in the wrong place, would move the answer
PLANTS = [[(2, 1, 3), (0, 3, 0)], [(3, 2, 1), (1, 0, 2)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_in_time_at_every_stage_including_pooled(video_llava, plants):
    assert_peaks_in_planted_cells_in_time(video_llava, plants, frames=4, cells_per_side=4, size=FRAME)


def test_planted_patch_in_still_images_at_every_stage(video_llava):
    assert_peaks_in_planted_cells(video_llava, [(1, 6), (6, 2)], cells_per_side=8, size=IMAGE)


def test_pooled_tokens_are_what_the_llm_receives(video_llava):
    clips = [clip(2, 1, 1, 3), clip(2, 0, 2, 0)]
    feats = video_llava.extract(clips, stages=["projector.out"])["projector.out"]
    inputs, batch = video_llava.prepare(clips)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    inner = video_llava.model.model
    handle = inner.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            own = inner.get_video_features(inputs["pixel_values_videos"]).pooler_output
            video_llava.model(**inputs)
    finally:
        handle.remove()
    own = own.reshape(2, -1, own.shape[-1]).float()
    index = batch.video_positions[..., None].expand(-1, -1, seen["h"].shape[-1])
    at_video = torch.gather(seen["h"], 1, index).float()
    pooled = feats.tokens.shape[1]
    assert torch.allclose(own[:, :pooled], feats.tokens, atol=1e-5)
    assert torch.allclose(at_video[:, :pooled], feats.tokens, atol=1e-5)
    if video_llava.video_newlines:  # OneVision: its one newline per clip comes after the pooled frames
        assert torch.allclose(own[:, pooled:], feats.extra["newline"], atol=1e-5)
        assert torch.allclose(at_video[:, pooled:], feats.extra["newline"], atol=1e-5)
    else:
        assert own.shape[1] == at_video.shape[1] == pooled


def test_image_tokens_are_what_the_llm_receives(video_llava):
    images = [noise_square_image(IMAGE, 1, 3, 28), noise_square_image(IMAGE, 6, 0, 28)]
    feats = video_llava.extract(images, stages=["projector.out"])["projector.out"]
    inputs, batch = video_llava.prepare(images)
    with torch.inference_mode():
        own = video_llava.model.model.get_image_features(
            **{k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes", "batch_num_images")})
    newline = video_llava.layout.is_newline
    for image, packed in enumerate(own.pooler_output):  # one packed tensor per image, newlines included
        assert torch.allclose(packed[~newline].float(), feats.tokens[image], atol=1e-5)
        assert torch.allclose(packed[newline].float(), feats.extra["newline"][image], atol=1e-5)


def test_vision_stages_of_a_clip_never_run_the_llm(video_llava):
    with forward_calls(video_llava.model.model.language_model.layers[0]) as fired:
        video_llava.extract([clip(2)], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_answer_about_a_clip_and_an_image(video_llava):
    replies = video_llava.answer([clip(2), Image.new("RGB", (IMAGE, IMAGE))], ["What shape is it ?"] * 2,
                                 max_new_tokens=2)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)


def test_clips_the_model_cannot_take_are_named_before_compute(video_llava):
    family = video_llava.family
    with forward_calls(video_llava.model.model.vision_tower) as fired:
        with pytest.raises(sp.SpatialProbeError, match=f"{family}: one call mixes still images and clips"):
            video_llava.extract([clip(2), Image.new("RGB", (IMAGE, IMAGE))])
        with pytest.raises(sp.SpatialProbeError, match=f"{family}: clips of \\[2, 3\\] frames"):
            video_llava.extract([clip(2), clip(3)])
        context = video_llava.model.config.text_config.max_position_embeddings
        too_many = context // 16 + 1
        with pytest.raises(sp.SpatialProbeError, match=f"{family}: a clip of {too_many} frames .*{video_llava.name_or_path}"):
            video_llava.extract([[Image.new("RGB", (8, 8))] * too_many])
    assert fired == []


def test_onevision_pooled_footprints_of_an_odd_side_by_hand():
    """A 5x5 frame pooled bilinearly to 3x3 (the real 27 -> 14): source row of pooled row i is (i + 0.5) * 5/3 - 0.5,
    so pooled rows mix patch rows {0, 1}, {2} and {3, 4}."""
    from types import SimpleNamespace

    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    from spatialprobe.features import grid_footprints
    from spatialprobe.models.llava_onevision import footprints_of_mixes

    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=70, patch_size=14)))
    weights = LlavaOnevisionModel.apply_pooling(model, torch.eye(25)[None])[0]
    footprints = footprints_of_mixes(weights, grid_footprints(5, 5))
    edges = torch.tensor([[0, 2], [2, 3], [3, 5]]) / 5
    for row in range(3):
        for col in range(3):
            box = torch.stack([edges[col, 0], edges[row, 0], edges[col, 1], edges[row, 1]])
            assert torch.allclose(footprints[row * 3 + col], box), (row, col)


def test_onevision_mosaic_shrink_matches_the_model():
    from spatialprobe.models.llava_onevision import mosaic_shrink

    # the 384-px checkpoints: 3x3 tiles of 27x27 tokens are kept whole, 6x6 tiles shrunk by 2
    assert mosaic_shrink((81, 81), 27, "anyres_max_9") == 1.0
    assert mosaic_shrink((162, 162), 27, "anyres_max_9") == 2.0


def test_context_counts_linear_rope_scaling():
    """LLaVA-NeXT-Video-7B stretches Llama's 4096 positions twice by linear RoPE scaling: 32 frames of 144 pooled
    tokens fit, and are not refused."""
    from transformers import LlamaConfig

    from spatialprobe.models.frames import llm_context

    plain = LlamaConfig(max_position_embeddings=4096)
    stretched = LlamaConfig(max_position_embeddings=4096,
                            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert (llm_context(plain), llm_context(stretched)) == (4096, 8192)
