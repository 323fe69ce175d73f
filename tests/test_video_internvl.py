"""InternVL on frames (the -hf `InternVLForConditionalGeneration`, as InternVL's video chat: one tile per frame,
"FrameN: <img>...</img>" in the prompt), on a tiny random-initialized model of the real architecture: a patch
planted in one frame is found in the token whose footprint holds it and whose `times` cover that frame, at every
stage."""
import os

import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells_in_time, forward_calls, noise_square_clip, noise_square_image

FRAME = 112  # one tile: 8x8 patches, 4x4 tokens after the pixel shuffle


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(save_tiny("internvl", tmp_path_factory.mktemp("internvl")))


@pytest.fixture(scope="module")
def internvl(tiny_path):
    return sp.load_backbone("internvl", tiny_path)


def clip(frames, frame=-1, row=0, col=0):
    return noise_square_clip(frames, frame, FRAME, row, col, FRAME // 4)


def test_clip_stages_are_one_tile_per_frame_time_major(internvl):
    feats = internvl.extract([clip(3), clip(3)])
    assert list(feats) == internvl.stages
    for stage, f in feats.items():
        per_frame = 64 if stage.startswith("vision.") else 16
        assert f.tokens.shape[:2] == (2, 3 * per_frame) and f.grid_shape is None, stage
        assert torch.allclose(f.times[1, per_frame : 2 * per_frame], torch.tensor([1 / 3, 2 / 3]).expand(per_frame, 2))
        side = int(per_frame ** 0.5)
        assert torch.allclose(f.footprints[0, 2 * per_frame + side + 2], torch.tensor([2, 1, 3, 2]) / side)
    assert feats["vision.block.1"].extra["cls"].shape == (2, 3, 32)


def test_clip_reading_goes_into_clip_descriptions_only(internvl):
    assert "clip_preprocessing" not in internvl.describe()  # still-image descriptions (and cache keys) as before
    assert "one tile" in internvl.describe(clips=True)["clip_preprocessing"]["clip"]


def test_prompt_holds_one_image_span_per_frame(internvl):
    inputs, layout = internvl.prepare([clip(3)])
    tokens = internvl.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    assert tokens.count("<img>") == tokens.count("</img>") == 3
    starts = [i for i, token in enumerate(tokens) if token == "<img>"]
    assert all(tokens[s + 1 : s + 17] == ["<IMG_CONTEXT>"] * 16 and tokens[s + 17] == "</img>" for s in starts)
    assert layout.image_positions.shape == (1, 3 * 16)


# (frame, row, col) in a 4x4 grid of each frame, off the diagonal
PLANTS = [[(2, 1, 3), (0, 3, 0)], [(1, 2, 1), (2, 0, 2)]]


@pytest.mark.parametrize("plants", PLANTS)
def test_planted_patch_in_time_at_every_stage(internvl, plants):
    assert_peaks_in_planted_cells_in_time(internvl, plants, frames=3, cells_per_side=4, size=FRAME)


def test_a_one_frame_clip_reads_like_a_one_tile_image(tiny_path):
    """A frame is read as an image tile is: a 1-frame clip and the same image on a 1x1 tile grid (no thumbnail)
    give the same tokens up to the projector."""
    one_tile = sp.load_backbone("internvl", tiny_path, tile_grid=1)
    image = noise_square_image(FRAME, 2, 1, 28)
    stages = ["vision.embed", "vision.block.1", "projector.pixel_shuffle", "projector.out"]
    still, frame = one_tile.extract([image], stages=stages), one_tile.extract([[image]], stages=stages)
    for stage in stages:
        assert torch.allclose(still[stage].tokens, frame[stage].tokens, atol=1e-5), stage
        assert torch.equal(still[stage].footprints, frame[stage].footprints), stage


def test_projector_out_is_what_the_llm_receives(internvl):
    clips = [clip(2, 1, 1, 2), clip(2, 0, 3, 3)]
    feats = internvl.extract(clips, stages=["projector.out"])["projector.out"]
    inputs, layout = internvl.prepare(clips)
    seen = {}

    def keep_input(_module, args, kwargs):
        seen["h"] = kwargs.get("hidden_states", args[0] if args else None)

    handle = internvl.model.model.language_model.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            internvl.model(**inputs)
    finally:
        handle.remove()
    at_frames = torch.gather(seen["h"], 1, layout.image_positions[..., None].expand(-1, -1, 64))
    assert torch.allclose(at_frames.float(), feats.tokens, atol=1e-5)


def test_vision_stages_of_a_clip_never_run_the_llm(internvl):
    with forward_calls(internvl.model.model.language_model.layers[0]) as fired:
        internvl.extract([clip(2)], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_clips_the_model_cannot_take_are_named_before_compute(internvl):
    with forward_calls(internvl.model.model.vision_tower) as fired:
        with pytest.raises(sp.SpatialProbeError, match="internvl: one call mixes still images and clips"):
            internvl.extract([clip(2), Image.new("RGB", (FRAME, FRAME))])
        with pytest.raises(sp.SpatialProbeError, match="internvl: clips of \\[2, 3\\] frames"):
            internvl.extract([clip(3), clip(2)])
        too_many = internvl.model.config.text_config.max_position_embeddings // 16
        with pytest.raises(sp.SpatialProbeError, match=f"internvl: a clip of {too_many} frames .*{internvl.name_or_path}"):
            internvl.extract([[Image.new("RGB", (8, 8))] * too_many])
    assert fired == []


REMOTE = os.environ.get("SPATIALPROBE_INTERNVL2_PATH")


@pytest.mark.skipif(not REMOTE, reason="set SPATIALPROBE_INTERNVL2_PATH to a local snapshot folder of an original "
                                       "InternVL2 checkpoint (e.g. OpenGVLab/InternVL2-1B) to test the remote-code path")
def test_remote_code_checkpoint_reads_frames():
    remote = sp.load_backbone("internvl", REMOTE, trust_remote_code=True)
    size = remote.tiling.tile
    assert_peaks_in_planted_cells_in_time(remote, [(1, 2, 1)], frames=2, cells_per_side=4, size=size,
                                          stages=["vision.embed", "projector.out", "llm.layer.0"])
    inputs, layout = remote.prepare([noise_square_clip(2, 0, size, 0, 0, size // 4)])
    assert layout.image_positions.shape[1] == 2 * (remote.side // remote.merge) ** 2
