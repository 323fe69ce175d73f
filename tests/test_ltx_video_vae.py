"""The LTX-Video VAE as a family, on a tiny random VAE of the real ratios (32x space, 8x time, 128 channels)."""
import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.errors import SpatialProbeError
from spatialprobe.models.ltx_video_vae import pipeline_subfolder
from spatialprobe.models.tiny.ltx_video_vae import save_tiny_ltx_video_vae
from spatialprobe.testing import save_tiny

from planting import assert_peaks_in_planted_cells, forward_calls

SIZE, CELL = 128, 32  # a 4x4 latent grid of 32-px cells
BACKGROUND = (60, 60, 60)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    return save_tiny("ltx_video_vae", tmp_path_factory.mktemp("ltx_vae"))


@pytest.fixture(scope="module")
def vae(vae_folder):
    return sp.load_backbone("ltx_video_vae", str(vae_folder), resolution=SIZE)


def plain(size=SIZE):
    return Image.new("RGB", (size, size), BACKGROUND)


def planted_clip(frames: int, frame: int, row: int, col: int) -> list[Image.Image]:
    """A plain clip with a bright noise square filling 32-px cell (row, col) of frame `frame` only."""
    clip = []
    for index in range(frames):
        array = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.uint8)
        if index == frame:
            noise = np.random.default_rng(row * 31 + col).integers(150, 256, (CELL, CELL, 3))
            array[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = noise
        clip.append(Image.fromarray(array))
    return clip


# --- loading ---------------------------------------------------------------------------------------

def test_loads_a_vae_folder_and_the_vae_subfolder_of_a_pipeline_folder(vae, vae_folder, tmp_path):
    pipeline = tmp_path / "pipeline"
    save_tiny("ltx_video_vae", pipeline / "vae")
    (pipeline / "model_index.json").write_text("{}")
    from_pipeline = sp.load_backbone("ltx_video_vae", str(pipeline), resolution=SIZE)
    assert vae.stages == from_pipeline.stages == ["vae.latent"]
    assert (vae.subfolder, from_pipeline.subfolder) == (None, "vae")
    assert from_pipeline.weights_fingerprint() == vae.weights_fingerprint()


def test_a_hub_id_reads_the_vae_subfolder_unless_told_otherwise(vae_folder):
    assert pipeline_subfolder("Lightricks/LTX-Video", None) == "vae"
    assert pipeline_subfolder("Lightricks/LTX-Video", "") is None  # a repo holding the VAE alone
    assert pipeline_subfolder(str(vae_folder), "other") == "other"


def test_an_unreachable_checkpoint_is_one_line_naming_it():
    with pytest.raises(SpatialProbeError) as caught:  # the hub is offline in the tests (conftest)
        sp.load_backbone("ltx_video_vae", "Lightricks/LTX-Video-not-here")
    message = str(caught.value)
    assert "\n" not in message and "'Lightricks/LTX-Video-not-here' (subfolder 'vae')" in message
    assert "ltx_video_vae" in message


def test_resolution_must_tile_into_latent_cells(vae_folder):
    with pytest.raises(SpatialProbeError, match="resolution 100 is not a multiple of 32"):
        sp.load_backbone("ltx_video_vae", str(vae_folder), resolution=100)


# --- the stage: shapes, footprints, times -----------------------------------------------------------

def test_still_images_are_one_latent_frame_on_the_grid(vae):
    feats = vae.extract([plain(), Image.new("RGB", (300, 120), (1, 2, 3))])["vae.latent"]
    assert feats.tokens.shape == (2, 16, 128) and feats.grid_shape == (4, 4)
    assert feats.times is None  # still images carry no times, as in every image family
    assert torch.allclose(feats.footprints[1, 7], torch.tensor([0.75, 0.25, 1.0, 0.5]))  # row 1, col 3


def test_clip_tokens_run_in_time_row_column_order_with_their_frames(vae):
    feats = vae.extract([planted_clip(17, -1, 0, 0)])["vae.latent"]
    assert feats.tokens.shape == (1, 3 * 16, 128) and feats.grid_shape is None
    # latent frame 0 covers frame 0, then 8 frames each: 1-8, 9-16 (frame i of 17 is [i/17, (i+1)/17))
    expected = torch.tensor([[0, 1], [1, 9], [9, 17]]) / 17
    assert torch.allclose(feats.times[0, ::16], expected)
    assert torch.equal(feats.times[0, 16:32], expected[1].expand(16, 2))
    assert torch.equal(feats.footprints[0, 16:32], feats.footprints[0, :16])
    assert torch.allclose(feats.footprints[0, 16 + 7], torch.tensor([0.75, 0.25, 1.0, 0.5]))


def test_a_one_frame_clip_is_the_still_image_with_its_time(vae):
    as_clip = vae.extract([[plain()]])["vae.latent"]
    still = vae.extract([plain()])["vae.latent"]
    assert as_clip.grid_shape == (4, 4) and torch.equal(as_clip.times, torch.tensor([[[0.0, 1.0]] * 16]))
    assert torch.equal(as_clip.tokens, still.tokens)


@pytest.mark.parametrize("samples,count", [([[Image.new("RGB", (64, 64))] * 8], "8 frames"),
                                           ([[Image.new("RGB", (64, 64))] * 2], "2 frames"),
                                           ([Image.new("RGB", (64, 64)), []], "0 frames")])
def test_a_clip_of_another_length_than_8k_plus_1_is_one_line_before_compute(vae, samples, count):
    with forward_calls(vae.model.encoder) as calls, pytest.raises(SpatialProbeError) as caught:
        vae.extract(samples)
    message = str(caught.value)
    assert "\n" not in message and count in message and "8k+1" in message
    assert calls == []


def test_clips_of_different_lengths_in_one_call_are_refused(vae):
    with pytest.raises(SpatialProbeError, match=r"samples of \[1, 9\] frames in one call"):
        vae.extract([plain(), [plain()] * 9])


# --- the planted patch: found in the covering cell, in place and in time -----------------------------

def test_planted_patch_in_a_still_image_peaks_in_its_cell(vae):
    assert_peaks_in_planted_cells(vae, [(0, 2), (3, 1), (2, 0)], cells_per_side=4, size=SIZE)


# (frame, row, col): the first frame (alone in latent frame 0), the edges of latent frames 1 and 2
PLANTS = [(0, 1, 2), (1, 3, 0), (5, 0, 3), (8, 2, 1), (9, 1, 1), (16, 3, 3)]


def test_planted_patch_in_one_frame_peaks_in_the_latent_cell_covering_its_place_and_time(vae):
    frames = 17
    marked = vae.extract([planted_clip(frames, *plant) for plant in PLANTS])["vae.latent"]
    base = vae.extract([planted_clip(frames, -1, 0, 0)])["vae.latent"]
    change = (marked.tokens - base.tokens).norm(dim=-1)  # [B, N]
    for index, (frame, row, col) in enumerate(PLANTS):
        found = int(change[index].argmax())
        x0, y0, x1, y1 = marked.footprints[index, found].tolist()
        t0, t1 = marked.times[index, found].tolist()
        place = torch.tensor([col, row, col + 1, row + 1]) / 4
        assert torch.allclose(torch.tensor([x0, y0, x1, y1]), place), (frame, row, col, found)
        assert t0 <= frame / frames + 1e-6 and (frame + 1) / frames <= t1 + 1e-6, (frame, row, col, found)


# --- the numbers are the LTX pipeline's ---------------------------------------------------------------

def pipeline():
    from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline

    return LTXPipeline


def test_the_stage_is_the_latent_mean_normalized_as_the_ltx_pipeline_does(vae):
    clip = planted_clip(9, 3, 1, 2)
    tokens = vae.extract([clip])["vae.latent"].tokens
    model = vae.model
    inputs, _ = vae.prepare([clip])
    with torch.no_grad():
        mean = model.encode(inputs["sample"]).latent_dist.mean
    expected = pipeline()._normalize_latents(mean, model.latents_mean, model.latents_std, model.config.scaling_factor)
    assert expected.shape == (1, 128, 2, 4, 4)
    assert not torch.allclose(expected, mean, atol=1e-3)  # the tiny's statistics and factor are not the identity
    assert torch.allclose(tokens, expected.permute(0, 2, 3, 4, 1).reshape(1, 32, 128), atol=1e-5)
    assert torch.allclose(vae.encode_latents([clip]), expected, atol=1e-5)
    # the clip is read in [-1, 1]: the plain background 60 is 60 / 127.5 - 1
    assert torch.allclose(inputs["sample"][0, :, 0, 0, 0], torch.full((3,), 60 / 127.5 - 1))


def test_decode_and_reconstruct_give_frames_in_0_1_as_the_pipeline_decodes(vae):
    clip = planted_clip(9, 4, 2, 2)
    latents = vae.encode_latents([clip])
    frames = vae.decode_latents(latents)
    model = vae.model
    with torch.no_grad():
        z = pipeline()._denormalize_latents(latents, model.latents_mean, model.latents_std, model.config.scaling_factor)
        expected = (model.decode(z, None, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    assert frames.shape == (1, 3, 9, SIZE, SIZE) and 0 <= frames.min() and frames.max() <= 1
    assert torch.allclose(frames, expected, atol=1e-5)
    assert torch.equal(vae.reconstruct([clip]), frames)
    assert vae.reconstruct([plain()]).shape == (1, 3, 1, SIZE, SIZE)


def test_a_timestep_conditioned_decoder_decodes_at_timestep_0_reproducibly(tmp_path):
    save_tiny_ltx_video_vae(tmp_path, timestep_conditioning=True)  # the LTX-Video 0.9.1+ decoder
    conditioned = sp.load_backbone("ltx_video_vae", str(tmp_path), resolution=64)
    latents = conditioned.encode_latents([[plain(64)] * 9])
    first, second = conditioned.decode_latents(latents), conditioned.decode_latents(latents)
    assert first.shape == (1, 3, 9, 64, 64) and torch.equal(first, second)  # injected noise from a fixed seed
    with torch.no_grad():  # timestep 0 conditions the decoder: another timestep decodes otherwise
        other = conditioned.model.decode(conditioned.denormalize(latents), torch.ones(1), return_dict=False)[0]
    assert not torch.allclose(first, (other / 2 + 0.5).clamp(0, 1), atol=1e-3)


# --- controls and bookkeeping --------------------------------------------------------------------------

def test_randomize_weights_is_a_seeded_fresh_vae(vae_folder):
    first = sp.load_backbone("ltx_video_vae", str(vae_folder), resolution=64)
    second = sp.load_backbone("ltx_video_vae", str(vae_folder), resolution=64)
    before, trained = first.weights_fingerprint(), first.extract([plain(64)])["vae.latent"].tokens
    first.randomize_weights(seed=3)
    second.randomize_weights(seed=3)
    assert first.weights_fingerprint() != before
    assert first.weights_fingerprint() == second.weights_fingerprint()
    assert not torch.allclose(first.extract([plain(64)])["vae.latent"].tokens, trained, atol=1e-3)


def test_describe_names_what_changes_the_latents(vae):
    described = vae.describe()
    assert described["family"] == "ltx_video_vae" and described["preprocessing"]["resolution"] == SIZE
    assert described["preprocessing"]["spatial_compression"] == 32
    assert described["preprocessing"]["temporal_compression"] == 8
    assert sum(p.numel() for p in vae.model.parameters()) < 1_000_000  # a few hundred thousand
