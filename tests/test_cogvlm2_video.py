"""CogVLM2-Video: no native transformers class, so no tiny offline model. What can be checked offline (the refusals
without remote code and before compute, the registry and docs rows, the clip-layout functions, the conversion of
raw stage outputs into time-major tokens) always runs; the real model is traced only when
$SPATIALPROBE_COGVLM2_VIDEO_PATH names a local snapshot folder."""
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import spatialprobe as sp
from spatialprobe.cli import app
from spatialprobe.features import TokenFeatures
from spatialprobe.models import FAMILIES
from spatialprobe.models.base import HookedBackbone
from spatialprobe.models.cogvlm2 import stage_names
from spatialprobe.models.cogvlm2_video import (MAX_FRAMES, ClipLayout, CogVLM2VideoBackbone, frame_slots,
                                              frames_into_clips, slots_per_frame, video_tensor)
from spatialprobe.plan import FAMILY_SHAPES
from planting import assert_peaks_in_planted_cells_in_time, forward_calls, noise_square_clip

ENV = "SPATIALPROBE_COGVLM2_VIDEO_PATH"
ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "THUDM/cogvlm2-video-llama3-chat"


# --- offline: refusals, registry facts, docs rows --------------------------------------------------------------
def test_refuses_without_trust_remote_code_before_loading(monkeypatch):
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not be reached without trust_remote_code")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    with pytest.raises(sp.SpatialProbeError,
                       match=rf"cogvlm2_video: '{HUB_ID}' .*pass --trust-remote-code") as info:
        sp.load_backbone("cogvlm2_video", HUB_ID)
    assert "\n" not in str(info.value)


def test_bad_path_is_named_with_remote_code_allowed(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="cogvlm2_video.*missing-model"), \
            pytest.warns(UserWarning, match="remote code"):  # the once-per-checkpoint notice
        sp.load_backbone("cogvlm2_video", str(tmp_path / "missing-model"), trust_remote_code=True)


def test_registry_says_how_it_is_tested_and_what_it_reads():
    assert sp.models.backbone_class("cogvlm2_video") is CogVLM2VideoBackbone
    assert CogVLM2VideoBackbone.modalities == ("video",)  # the remote code has no still-image path
    assert CogVLM2VideoBackbone.offline_test == f"only with ${ENV}"
    assert not hasattr(CogVLM2VideoBackbone, "answer")  # the still-image vqa task must not ask it
    with pytest.raises(sp.SpatialProbeError, match=rf"\${ENV}"):
        CogVLM2VideoBackbone.save_tiny(Path("unused"))


def test_models_command_lists_it_and_readme_and_config_reference_name_it():
    result = CliRunner().invoke(app, ["models"])
    output = " ".join(re.sub(r"[│┃]", " ", result.output).split())
    assert result.exit_code == 0 and "cogvlm2_video" in output and f"${ENV}" in output
    readme_rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `cogvlm2")]
    assert [row.split("|")[1].strip() for row in readme_rows] == ["`cogvlm2`", "`cogvlm2_video`"]
    assert f"`${ENV}`" in readme_rows[1]
    assert "`cogvlm2_video`" in (ROOT / "docs" / "config.md").read_text()
    assert list(FAMILIES).index("cogvlm2_video") == list(FAMILIES).index("cogvlm2") + 1
    shape = FAMILY_SHAPES["cogvlm2_video"]
    assert (shape.vision_tokens(224), shape.llm_tokens(224), shape.resolution) == (256, 66, 224)


@pytest.fixture
def unloaded():
    """The adapter's checks and conversion code without a model: 4x4 patches, a 2x2 grid after the conv."""
    backbone = CogVLM2VideoBackbone.__new__(CogVLM2VideoBackbone)
    backbone.side, backbone.merged_side, backbone.label, backbone.name_or_path = 4, 2, "cogvlm2_video:test", HUB_ID
    return backbone


def frames(count, size=28):
    return [Image.new("RGB", (size, size), (10 * i, 0, 0)) for i in range(count)]


def test_refuses_still_images_and_too_many_frames_in_one_line_before_compute(unloaded):
    refusal = r"cogvlm2_video' reads clips only .*\[image\] for one frame"
    with pytest.raises(sp.SpatialProbeError, match=refusal) as info:
        unloaded.forward_features([Image.new("RGB", (28, 28))])  # no model: a later check would fail otherwise
    assert "\n" not in str(info.value)
    with pytest.raises(sp.SpatialProbeError,
                       match=rf"cogvlm2_video: a clip of 25 frames; '{HUB_ID}' takes at most 24") as info:
        unloaded.forward_features([frames(MAX_FRAMES + 1)])
    assert "\n" not in str(info.value)
    with pytest.raises(sp.SpatialProbeError, match="clips of \\[2, 3\\] frames"):
        unloaded.check_modalities([frames(2), frames(3)])


def test_each_clip_runs_as_its_own_forward_pass(unloaded, monkeypatch):
    # the remote forward encodes only the first clip of a batch: a batch of 3 must be 3 passes of 1 clip
    seen = []

    def one_pass(self, clips, stages):  # features whose value is the pass's number
        seen.append(len(clips))
        tokens = torch.full((1, 2, 1), float(len(seen)))
        return {"vision.embed": TokenFeatures(tokens, torch.zeros(1, 2, 4), None, {}, torch.zeros(1, 2, 2))}

    monkeypatch.setattr(HookedBackbone, "_extract_batch", one_pass)
    got = unloaded._extract_batch([frames(2)] * 3, ["vision.embed"])["vision.embed"]
    assert seen == [1, 1, 1] and got.tokens[:, 0, 0].tolist() == [1.0, 2.0, 3.0]


# --- offline: layout functions ---------------------------------------------------------------------------------
def test_slot_counts_of_the_real_checkpoint():
    assert slots_per_frame(224, 14) == 8 * 8 + 2  # what build_conversation_input_ids reserves per frame
    names = stage_names(63, 32)
    assert names[63:66] == ["vision.block.62", "projector.downsample", "projector.out"]


def test_frame_slots_under_the_chat_and_base_templates():
    # chat: [bos] + per frame (boi, 2 image tokens, eoi) + its time index (1 text token) + text
    chat = torch.tensor([[0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0]])
    layout = frame_slots(chat, frames=2, per_frame=4)
    assert layout.boi.tolist() == [[1, 6]] and layout.eoi.tolist() == [[4, 9]]
    assert layout.image_positions.tolist() == [[2, 3, 7, 8]]  # time-major
    # base: the frames' slots back to back, no time indices
    base = frame_slots(torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]]), frames=2, per_frame=4)
    assert base.boi.tolist() == [[1, 5]] and base.image_positions.tolist() == [[2, 3, 6, 7]]
    with pytest.raises(ValueError, match=r"need 12 per row, got \[8\]"):
        frame_slots(chat, frames=3, per_frame=4)
    with pytest.raises(ValueError, match="contiguous"):
        frame_slots(torch.tensor([[0, 1, 1, 0, 1, 1, 1, 1, 1, 1]]), frames=2, per_frame=4)


def test_video_tensor_is_channels_then_time_at_the_frame_size():
    video = video_tensor(frames(3, size=20), 28)
    assert video.shape == (3, 3, 28, 28) and video.dtype == torch.uint8
    assert video[0, :, 5, 5].tolist() == [0, 10, 20]  # red channel, frame by frame
    per_frame = torch.arange(6.0).reshape(3, 2, 1)  # 3 frames of 2 tokens
    assert frames_into_clips(per_frame, 3).flatten().tolist() == list(range(6))
    assert frames_into_clips(torch.arange(12.0).reshape(6, 2, 1), 3).shape == (2, 6, 1)


def assert_time_major(features, frames_, side):
    per_frame = side * side
    assert features.grid_shape is None and features.tokens.shape[1] == frames_ * per_frame
    for t in range(frames_):
        block = slice(t * per_frame, (t + 1) * per_frame)
        interval = torch.tensor([t / frames_, (t + 1) / frames_])
        assert torch.allclose(features.times[0, block], interval.expand(per_frame, 2))
        assert torch.allclose(features.footprints[0, block], features.footprints[0, :per_frame])


def test_raw_outputs_become_time_major_rasters_with_frame_times(unloaded):
    # each token carries (frame, raster index) as its value, so a wrong order shows as wrong values
    T = 3
    tower = torch.cat([torch.full((T, 1, 1), -1.0), torch.arange(16.0).expand(T, 16)[..., None]], dim=1)
    tower = tower + 100 * torch.arange(T, dtype=torch.float)[:, None, None]  # [T, CLS + 16, 1]
    block = unloaded.to_features("vision.block.0", tower, ClipLayout(T, None, None, None))
    assert block.tokens.flatten().tolist() == [100 * t + i for t in range(T) for i in range(16)]
    assert block.extra["cls"].flatten().tolist() == [-1, 99, 199] and block.extra["cls"].shape == (1, T, 1)
    assert torch.allclose(block.footprints[0, 16 + 6], torch.tensor([0.5, 0.25, 0.75, 0.5]))  # frame 1, row 1, col 2
    assert torch.allclose(block.times[0, 16 + 6], torch.tensor([1 / 3, 2 / 3]))
    assert_time_major(block, T, 4)

    conv = torch.arange(T * 4.0).reshape(T, 1, 2, 2)  # NCHW per frame
    down = unloaded.to_features("projector.downsample", conv, ClipLayout(T, None, None, None))
    assert down.tokens.flatten().tolist() == list(range(12)) and not down.extra
    assert_time_major(down, T, 2)

    out = unloaded.to_features("projector.out", torch.arange(T * 6.0).reshape(T, 6, 1), ClipLayout(T, None, None, None))
    assert out.tokens.flatten().tolist() == [1, 2, 3, 4, 7, 8, 9, 10, 13, 14, 15, 16]
    assert out.extra["boi"].flatten().tolist() == [0, 6, 12] and out.extra["eoi"].flatten().tolist() == [5, 11, 17]
    assert_time_major(out, T, 2)

    sequence = torch.arange(22.0).reshape(1, 22, 1)  # [bos, (boi, 4 image tokens, eoi, time index) x 3]
    layout = frame_slots(torch.tensor([[0] + ([1] * 6 + [0]) * T]), frames=T, per_frame=6)
    llm = unloaded.to_features("llm.layer.3", sequence, layout)
    assert llm.tokens.flatten().tolist() == [2, 3, 4, 5, 9, 10, 11, 12, 16, 17, 18, 19]
    assert llm.extra["boi"].flatten().tolist() == [1, 8, 15] and llm.extra["eoi"].flatten().tolist() == [6, 13, 20]
    assert_time_major(llm, T, 2)
    with pytest.raises(RuntimeError, match="expected 3 frames of 4x4"):
        unloaded.to_features("vision.embed", tower[:, :10], ClipLayout(T, None, None, None))


# --- offline: the adapter's whole path on a stand-in for the remote code ---------------------------------------
class StandIn(torch.nn.Module):
    """What the adapter relies on in CogVLMVideoForCausalLM, at 56 px with 7-px patches (8x8, 4x4 after the conv):
    the module paths, `build_conversation_input_ids` (template "chat": each frame's 18 slots then its time index)
    and the forward that writes the tower's [T, 18, D] output over the type-1 positions of the first clip only.
    Its layers are token-wise, so a planted patch stays in its token: what is checked is the adapter's bookkeeping."""

    def __init__(self, width=8):
        super().__init__()
        torch.manual_seed(0)
        self.config = type("Config", (), {"vision_config": {"image_size": 56, "patch_size": 7}})()
        self.model = torch.nn.Module()
        vision = self.model.vision = torch.nn.Module()
        vision.patch_embedding = PatchEmbedding(width)
        vision.transformer = torch.nn.Module()
        vision.transformer.layers = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(2)])
        vision.conv = torch.nn.Conv2d(width, width, 2, 2)
        vision.linear_proj = torch.nn.Linear(width, width)
        vision.boi = torch.nn.Parameter(torch.ones(1, 1, width))
        vision.eoi = torch.nn.Parameter(-torch.ones(1, 1, width))
        self.model.embed_tokens = torch.nn.Embedding(300, width)
        self.model.layers = torch.nn.ModuleList([Tupled(torch.nn.Linear(width, width)) for _ in range(2)])
        vision.forward = self.vision_forward

    def vision_forward(self, images):  # [T, 3, 56, 56] -> [T, boi + 16 + eoi, D]
        vision = self.model.vision
        x = vision.patch_embedding(images)
        for layer in vision.transformer.layers:
            x = torch.tanh(layer(x))
        x = x[:, 1:].transpose(1, 2).reshape(len(images), -1, 8, 8)
        x = vision.linear_proj(vision.conv(x).flatten(2).transpose(1, 2))
        return torch.cat([vision.boi.expand(len(x), -1, -1), x, vision.eoi.expand(len(x), -1, -1)], dim=1)

    def build_conversation_input_ids(self, tokenizer, *, query, history, images, template_version):
        video = images[0]
        assert video.shape[0] == 3 and video.shape[2:] == (56, 56)
        ids, types = [1], [0]
        for t in range(video.shape[1]):
            ids, types = ids + [2] * 18 + [100 + t], types + [1] * 18 + [0]
        ids, types = ids + [5, 6], types + [0, 0]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long)
        return {"input_ids": as_tensor(ids), "token_type_ids": as_tensor(types),
                "attention_mask": as_tensor([1] * len(ids)),
                "images": [(video.float() / 255).transpose(0, 1)]}

    def forward(self, input_ids, images, token_type_ids, attention_mask, use_cache):
        hidden = self.model.embed_tokens(input_ids)
        frames = self.model.vision(images[0][0])  # only the first clip of a batch, as the remote code
        hidden = hidden.index_put([token_type_ids == 1], frames.reshape(-1, frames.shape[-1]))
        for layer in self.model.layers:
            hidden = layer(hidden)[0]


class PatchEmbedding(torch.nn.Module):
    """As the remote PatchEmbedding: [T, CLS + patches in raster order, C]."""

    def __init__(self, width):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, width, 7, 7)

    def forward(self, images):
        x = self.proj(images).flatten(2).transpose(1, 2)
        return torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)


class Tupled(torch.nn.Module):
    """A decoder layer's output is a tuple, as in the remote code."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, hidden):
        return (torch.tanh(self.inner(hidden)),)


@pytest.fixture
def stand_in():
    from spatialprobe.models.base import LoadOptions

    backbone = CogVLM2VideoBackbone.__new__(CogVLM2VideoBackbone)
    backbone.model, backbone.tokenizer, backbone.template = StandIn(), None, "chat"
    backbone.resolution, backbone.patch, backbone.side, backbone.merged_side = 56, 7, 8, 4
    backbone.device, backbone.dtype, backbone.load_options = torch.device("cpu"), torch.float32, LoadOptions()
    backbone.label = backbone.name_or_path = "stand-in"
    return backbone


def test_stand_in_clips_are_time_major_and_a_planted_patch_is_found_in_time(stand_in):
    feats = stand_in.extract([noise_square_clip(3, -1, 56, 0, 0, 14)] * 2, batch_size=2)
    assert list(feats) == stage_names(2, 2)
    for stage, f in feats.items():
        side = 8 if stage.startswith("vision.") else 4
        assert f.tokens.shape[:2] == (2, 3 * side * side), stage
        assert_time_major(f, 3, side)
    assert feats["llm.layer.1"].extra["boi"].shape[:2] == (2, 3)
    assert_peaks_in_planted_cells_in_time(stand_in, [(0, 3, 1), (2, 0, 2), (1, 1, 1)], 3, 4, 56)


# --- the real model, only with $SPATIALPROBE_COGVLM2_VIDEO_PATH -----------------------------------------------
@pytest.fixture(scope="module")
def cog():
    path = os.environ.get(ENV)
    if not path:
        pytest.skip(f"runs only when ${ENV} names a local snapshot folder of {HUB_ID}")
    assert Path(path).is_dir(), f"${ENV}={path!r} is not a folder"
    device = os.environ.get("SPATIALPROBE_COGVLM2_VIDEO_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    return sp.load_backbone("cogvlm2_video", path, device=device, dtype="bfloat16", trust_remote_code=True)


SIZE = 224
FRAMES = 8


def test_real_stages_shapes_and_times(cog):
    assert cog.stages == stage_names(len(cog.model.model.vision.transformer.layers), len(cog.model.model.layers))
    clip = noise_square_clip(FRAMES, -1, SIZE, 0, 0, SIZE // 4)
    feats = cog.extract([clip, clip], stages=["vision.embed", "projector.downsample", "projector.out", "llm.layer.0"])
    assert feats["vision.embed"].tokens.shape[:2] == (2, FRAMES * 256)
    assert feats["vision.embed"].extra["cls"].shape[:2] == (2, FRAMES)
    for stage in ("projector.downsample", "projector.out", "llm.layer.0"):
        assert feats[stage].tokens.shape[:2] == (2, FRAMES * 64) and feats[stage].grid_shape is None
        assert torch.allclose(feats[stage].times[0, -1], torch.tensor([(FRAMES - 1) / FRAMES, 1.0]))
    assert set(feats["projector.out"].extra) == {"boi", "eoi"}


def test_real_planted_patch_in_time_is_found_at_every_stage(cog):
    plants = [(1, 0, 3), (6, 2, 1)]  # (frame, row, col) in a 4x4 grid of 56-px cells: 2x2 merged tokens each
    stages = cog.stages
    for start in range(0, len(stages), 12):  # a few stages at a time: every vision block is [T, 257, 1792]
        assert_peaks_in_planted_cells_in_time(cog, plants, FRAMES, 4, SIZE, stages=stages[start : start + 12])


def test_real_projector_out_is_what_the_llm_receives(cog):
    clip = noise_square_clip(FRAMES, 3, SIZE, 1, 1, SIZE // 4)
    feats = cog.extract([clip], stages=["projector.out"])["projector.out"]
    inputs, layout = cog.prepare([clip])
    seen = {}
    handle = cog.model.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.setdefault("h", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.inference_mode():
            cog.model(**inputs, use_cache=False)
    finally:
        handle.remove()
    hidden = seen["h"].float().cpu()
    at_images = torch.gather(hidden, 1, layout.image_positions[..., None].expand(-1, -1, hidden.shape[-1]))
    assert torch.allclose(at_images, feats.tokens, atol=1e-2)
    assert torch.allclose(hidden[0, layout.boi[0]], feats.extra["boi"][0], atol=1e-2)


def test_real_vision_stages_never_run_the_llm(cog):
    with forward_calls(cog.model.model.layers[0]) as fired:
        cog.extract([noise_square_clip(2, -1, SIZE, 0, 0, SIZE // 4)], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_a_run_refuses_the_clip_only_family_in_one_line_before_anything_loads():
    from spatialprobe.config import parse_config

    with pytest.raises(sp.SpatialProbeError) as info:
        parse_config({"models": [{"name": "cv", "family": "cogvlm2_video", "path": "THUDM/cogvlm2-video-llama3-chat"}]})
    message = str(info.value)
    assert "\n" not in message and "models[0].family" in message and "reads clips only" in message
