"""V-JEPA 2 on real clips: one time step per tubelet, on the tiny model (64 px, 4x4 patches, tubelets of 2)."""
import pytest
import torch

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells_in_time, forward_calls, noise_square_clip

SIZE, CELLS = 64, 4


@pytest.fixture(scope="module")
def vjepa(tmp_path_factory):
    return sp.load_backbone("vjepa2", str(save_tiny("vjepa2", tmp_path_factory.mktemp("vjepa2_video"))))


def clip(frames, frame=-1, row=0, col=0):
    return noise_square_clip(frames, frame, SIZE, row, col, SIZE // CELLS)


def test_a_clip_is_time_major_one_step_per_tubelet(vjepa):
    assert "video" in vjepa.modalities
    feats = vjepa.extract([clip(6), clip(6, 1, 2, 3)])
    for f in feats.values():
        assert f.tokens.shape[:2] == (2, 3 * 16) and f.grid_shape is None
        assert torch.allclose(f.times[0, ::16], torch.tensor([[0, 2], [2, 4], [4, 6]]) / 6)
        assert torch.equal(f.footprints[1, 16:32], f.footprints[1, :16])
        assert torch.allclose(f.footprints[0, 16 + 7], torch.tensor([0.75, 0.25, 1.0, 0.5]))  # row 1, col 3


# (frame, row, col): the first tubelet, the second frame of the middle one, the last frame
@pytest.mark.parametrize("plants", [[(0, 0, 2), (3, 3, 1)], [(5, 1, 3), (2, 2, 0)]])
def test_planted_patch_in_one_frame_is_found_in_its_place_and_time_at_every_stage(vjepa, plants):
    assert_peaks_in_planted_cells_in_time(vjepa, plants, frames=6, cells_per_side=CELLS, size=SIZE)


def test_last_block_is_the_models_own_encoder_output_on_the_clip(vjepa):
    clips = [clip(4, 0, 0, 3), clip(4, 3, 3, 0)]
    last = vjepa.extract(clips, stages=["vision.block.-1"])["vision.block.1"].tokens
    inputs, _ = vjepa.prepare(clips)
    assert inputs["pixel_values_videos"].shape == (2, 4, 3, SIZE, SIZE)
    with torch.inference_mode():
        own = vjepa.model.get_vision_features(inputs["pixel_values_videos"])
    assert torch.allclose(vjepa.model.encoder.layernorm(last), own, atol=1e-5)


def test_a_one_tubelet_still_clip_is_the_still_image(vjepa):
    image = clip(1, 0, 2, 1)[0]
    as_clip, still = vjepa.extract([[image, image]]), vjepa.extract([image])
    for stage in vjepa.stages:
        assert as_clip[stage].grid_shape == still[stage].grid_shape == (4, 4) and still[stage].times is None
        assert torch.equal(as_clip[stage].tokens, still[stage].tokens)
        assert torch.equal(as_clip[stage].times, torch.tensor([[[0.0, 1.0]] * 16]))


@pytest.mark.parametrize("samples,words", [(lambda: [clip(5)], "clip of 5 frames"),
                                           (lambda: [clip(1)], "clip of 1 frames"),
                                           (lambda: [clip(4), clip(6)], "[4, 6] frames"),
                                           (lambda: [clip(2)[0], clip(2)], "mixes still images and clips")])
def test_clips_it_cannot_read_are_one_line_before_compute(vjepa, samples, words):
    with forward_calls(vjepa.model.encoder.embeddings) as calls, pytest.raises(sp.SpatialProbeError) as caught:
        vjepa.extract(samples(), batch_size=1)
    message = str(caught.value)
    assert "\n" not in message and words in message and "vjepa2" in message
    assert calls == []


def test_how_clips_are_read_is_described_apart_from_still_images(vjepa):
    assert "clip_preprocessing" not in vjepa.describe()
    assert "multiple of 2 frames" in vjepa.describe(clips=True)["clip_preprocessing"]["clip"]
