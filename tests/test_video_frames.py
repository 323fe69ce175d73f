"""CLIP, SigLIP, DINOv2 and the pixels control read a clip frame by frame: one time step per frame."""
import pytest
import torch

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells_in_time, forward_calls, noise_square_clip

SIZE, CELLS = 56, 4  # 4x4 patches of 14 px


@pytest.fixture(scope="module", params=["dinov2", "clip", "siglip", "pixels"])
def family(request, tmp_path_factory):
    if request.param == "pixels":
        return sp.load_backbone("pixels", "pixels", resolution=SIZE, patch_size=14)
    path = save_tiny(request.param, tmp_path_factory.mktemp(f"{request.param}_frames"))
    return sp.load_backbone(request.param, str(path), resolution=SIZE)


def clip(frames, frame=-1, row=0, col=0):
    return noise_square_clip(frames, frame, SIZE, row, col, SIZE // CELLS)


def test_each_frame_is_a_time_step_holding_that_frames_still_image_tokens(family):
    assert "video" in family.modalities
    clips = [clip(3, 1, 2, 1), clip(3, 2, 0, 3)]
    feats = family.extract(clips)
    stills = family.extract([frame for c in clips for frame in c])
    for stage, f in feats.items():
        assert f.tokens.shape[:2] == (2, 3 * 16) and f.grid_shape is None
        assert torch.allclose(f.times[0, ::16], torch.tensor([[0, 1], [1, 2], [2, 3]]) / 3)
        # clip c, frame k: exactly the tokens (and extras) of that frame read as a still image
        assert torch.equal(f.tokens.reshape(6, 16, -1), stills[stage].tokens), stage
        assert torch.equal(f.footprints.reshape(6, 16, 4), stills[stage].footprints)
        for name, extra in f.extra.items():
            assert torch.equal(extra.reshape(6, -1, extra.shape[-1]), stills[stage].extra[name]), (stage, name)


@pytest.mark.parametrize("plants", [[(0, 0, 2), (1, 3, 1), (2, 1, 3)], [(2, 2, 0), (0, 3, 3), (1, 0, 0)]])
def test_planted_patch_in_one_frame_is_found_in_its_place_and_time_at_every_stage(family, plants):
    assert_peaks_in_planted_cells_in_time(family, plants, frames=3, cells_per_side=CELLS, size=SIZE)


def test_a_one_frame_clip_keeps_the_grid_and_covers_the_whole_clip(family):
    image = clip(1, 0, 1, 2)[0]
    as_clip, still = family.extract([[image]]), family.extract([image])
    for stage in family.stages:
        assert as_clip[stage].grid_shape == still[stage].grid_shape == (4, 4) and still[stage].times is None
        assert torch.equal(as_clip[stage].tokens, still[stage].tokens)
        assert torch.equal(as_clip[stage].times, torch.tensor([[[0.0, 1.0]] * 16]))


@pytest.mark.parametrize("samples,words", [(lambda: [clip(2), clip(3)], "[2, 3] frames"),
                                           (lambda: [clip(2), clip(2)[0]], "mixes still images and clips")])
def test_clips_it_cannot_batch_are_one_line_before_compute(family, samples, words):
    model = getattr(family, "model", None)
    with forward_calls(model or torch.nn.Identity()) as calls, pytest.raises(sp.SpatialProbeError) as caught:
        family.extract(samples(), batch_size=1)
    message = str(caught.value)
    assert "\n" not in message and words in message and family.family in message
    assert calls == []


def test_how_clips_are_read_is_described_apart_from_still_images(family):
    assert "clip_preprocessing" not in family.describe()
    assert "frame by frame" in family.describe(clips=True)["clip_preprocessing"]["clip"]
