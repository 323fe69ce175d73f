"""The backbone contract: samples (images or clips) by modality, features to the host per batch, a forward
pass with gradients, modules found by name so PEFT-wrapped models still trace, and the random-init control
built on the CPU."""
import re

import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models.base import Backbone
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.testing import save_tiny
from planting import assert_peaks_in_planted_cells, forward_calls, noise_square_image


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    return sp.load_backbone("dinov2", str(save_tiny("dinov2", tmp_path_factory.mktemp("dinov2"))))


@pytest.fixture(scope="module")
def owlvit(tmp_path_factory):
    """A family that reads still images only (DINOv2 now reads clips frame by frame)."""
    return sp.load_backbone("owlvit", str(save_tiny("owlvit", tmp_path_factory.mktemp("owlvit"))))


def grey(size=56, colour=(60, 60, 60)):
    return Image.new("RGB", (size, size), colour)


# --- samples and modalities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["extract", "forward_features"])
def test_a_clip_is_refused_by_an_image_family_before_any_compute(owlvit, call):
    clip = [grey(), grey(colour=(90, 90, 90))]
    with forward_calls(owlvit.model) as calls, pytest.raises(sp.SpatialProbeError) as info:
        getattr(owlvit, call)([grey(), clip])
    message = str(info.value)
    assert "\n" not in message and "'owlvit'" in message and "image" in message and "clip" in message
    assert calls == []


class RecordingVideoFamily(Backbone):
    """A family that reads video: what reaches its batch function is the contract for the video adapters."""

    family = "recording"
    modalities = ("image", "video")
    stages = ["out"]

    def __init__(self):
        super().__init__("nowhere")
        self.batches = []

    def _extract_batch(self, samples, stages):
        self.batches.append(samples)
        footprints = grid_footprints(1, 1).expand(len(samples), -1, -1)
        return {"out": TokenFeatures(torch.zeros(len(samples), 1, 2), footprints, (1, 1))}


def test_a_family_that_reads_video_gets_each_clip_as_its_frames_in_rgb():
    family = RecordingVideoFamily()
    clip = [Image.new("L", (8, 8)), Image.new("RGBA", (8, 8))]
    feats = family.extract([clip, Image.new("L", (8, 8)), clip], batch_size=2)
    assert feats["out"].tokens.shape[0] == 3
    first, second = family.batches
    assert [len(first), len(second)] == [2, 1]
    assert isinstance(first[0], list) and [f.mode for f in first[0]] == ["RGB", "RGB"]
    assert first[1].mode == "RGB"


# --- features leave the device per batch ---------------------------------------------------------------------
def test_each_batch_goes_to_the_host_with_the_asked_dtype(dinov2, monkeypatch):
    images = [noise_square_image(56, r, c, 14) for r, c in [(0, 0), (1, 2), (3, 3)]]
    plain = dinov2.extract(images, stages=["vision.block.1"], batch_size=2)["vision.block.1"]
    moved = []
    to_host = TokenFeatures.to_host

    def spy(self, dtype=None):
        moved.append(dtype)
        return to_host(self, dtype)

    monkeypatch.setattr(TokenFeatures, "to_host", spy)
    half = dinov2.extract(images, stages=["vision.block.1"], batch_size=2, host_dtype=torch.float16)["vision.block.1"]
    assert moved == [torch.float16, torch.float16]  # once per batch, as soon as it is done
    assert half.tokens.dtype == torch.float16 and half.tokens.device.type == "cpu"
    assert half.extra["cls"].dtype == torch.float16 and half.footprints.dtype == torch.float32
    assert torch.equal(half.tokens, plain.tokens.half())
    # float32 callers get exactly the pass's own values, batch by batch
    own = [dinov2.forward_features(images[i : i + 2], ["vision.block.1"])["vision.block.1"] for i in (0, 2)]
    assert torch.equal(plain.tokens, torch.cat([f.tokens for f in own]))
    assert plain.tokens.dtype == torch.float32 and not plain.tokens.requires_grad


def test_forward_features_records_gradients_only_when_asked(dinov2):
    images = [noise_square_image(56, 1, 1, 14)]
    frozen = dinov2.forward_features(images, ["vision.block.0"])["vision.block.0"].tokens
    assert frozen.is_inference() and not frozen.requires_grad
    with torch.no_grad():  # grad=True wins over a caller's no_grad: training code asks for it explicitly
        tokens = dinov2.forward_features(images, ["vision.block.0"], grad=True)["vision.block.0"].tokens
    assert tokens.requires_grad
    tokens.square().mean().backward()
    weight = dinov2.model.encoder.layer[0].attention.q_proj.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    dinov2.model.zero_grad(set_to_none=True)


# --- PEFT-wrapped models still trace -----------------------------------------------------------------------
QWEN_SIZE = 224  # 8x8 merged tokens of the tiny Qwen2.5-VL
#: LoRA on every projection of the vision tower's attention and MLP (a regex into model.visual)
VISION_LORA = r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj))"


@pytest.fixture(scope="module")
def qwen_with_lora(tmp_path_factory):
    peft = pytest.importorskip("peft")
    backbone = sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen"))))
    before = backbone.extract([noise_square_image(QWEN_SIZE, 2, 3, 28)])
    # init_lora_weights=False: non-zero LoRA weights, so the adapted model differs and every LoRA weight has a grad
    config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=VISION_LORA, init_lora_weights=False)
    backbone.model = peft.get_peft_model(backbone.model, config)
    return backbone, before


def test_a_peft_wrapped_model_traces_every_stage_and_runs_its_lora(qwen_with_lora):
    backbone, before = qwen_with_lora
    assert type(backbone.model).__name__ == "PeftModel"
    assert backbone.stages[-1] == "llm.layer.1"
    after = backbone.extract([noise_square_image(QWEN_SIZE, 2, 3, 28)])
    assert set(after) == set(backbone.stages)
    assert torch.equal(after["vision.embed"].tokens, before["vision.embed"].tokens)  # before any LoRA layer
    assert not torch.allclose(after["vision.block.0"].tokens, before["vision.block.0"].tokens)  # the LoRA ran


@pytest.mark.parametrize("plants", [[(0, 2), (5, 1)], [(3, 6), (7, 7)]])
def test_a_planted_patch_is_found_in_its_token_at_every_stage_of_a_peft_model(qwen_with_lora, plants):
    assert_peaks_in_planted_cells(qwen_with_lora[0], plants, cells_per_side=8, size=QWEN_SIZE)


def test_grad_reaches_the_lora_weights_before_the_stage_and_no_frozen_weight(qwen_with_lora):
    backbone, _ = qwen_with_lora
    feats = backbone.forward_features([noise_square_image(QWEN_SIZE, 4, 4, 28)], ["vision.block.2"], grad=True)
    feats["vision.block.2"].tokens.square().mean().backward()
    try:
        params = dict(backbone.model.named_parameters())
        lora = {name: p for name, p in params.items() if "lora_" in name}
        assert lora and all(p.requires_grad for p in lora.values())
        for name, param in lora.items():
            block = int(re.search(r"blocks\.(\d+)\.", name).group(1))
            if block <= 2:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            else:  # the pass stops after block 2
                assert param.grad is None, name
        assert all(p.grad is None for name, p in params.items() if name not in lora)
    finally:
        backbone.model.zero_grad(set_to_none=True)


# --- the random-init control ------------------------------------------------------------------------------------
def test_random_init_is_built_on_the_cpu_with_todays_values(tmp_path, monkeypatch):
    backbone = sp.load_backbone("dinov2", str(save_tiny("dinov2", tmp_path / "d")))
    model_class = type(backbone.model)
    torch.manual_seed(7)  # today's construction, on a CPU run
    expected = model_class._from_config(backbone.model.config, dtype=torch.float32).state_dict()

    built_on = []
    from_config = model_class._from_config.__func__

    def spy(cls, *args, **kwargs):
        built_on.append(torch.get_default_device().type)
        return from_config(cls, *args, **kwargs)

    monkeypatch.setattr(model_class, "_from_config", classmethod(spy))
    backbone.device = torch.device("meta")  # stands for a GPU: the fresh copy must not be built there
    weights = backbone.model.embeddings.patch_embeddings.projection.weight
    backbone.randomize_weights(seed=7)
    assert built_on == ["cpu"]
    assert backbone.model.embeddings.patch_embeddings.projection.weight is weights  # in place
    got = backbone.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)


class Shifted(torch.nn.Module):
    """A module put in place of another (as PEFT does with the layers it adapts): its output plus one."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return out + 1 if isinstance(out, torch.Tensor) else (out[0] + 1, *out[1:])


def test_stages_are_found_by_name_in_the_model_as_it_is_now(tmp_path):
    # InternVL keeps references to its modules from loading time: only a lookup by name sees a replaced block
    backbone = sp.load_backbone("internvl", str(save_tiny("internvl", tmp_path / "i")))
    stages = ["vision.block.1", "projector.pixel_shuffle"]
    before = backbone.extract([grey(64)], stages=stages)
    path = backbone.stage_paths["vision.block.1"]
    assert isinstance(path, str) and isinstance(backbone.stage_paths["projector.pixel_shuffle"], torch.nn.Module)
    backbone.model.set_submodule(path, Shifted(backbone.model.get_submodule(path)))
    after = backbone.extract([grey(64)], stages=stages)
    assert torch.allclose(after["vision.block.1"].tokens, before["vision.block.1"].tokens + 1, atol=1e-5)
    assert not torch.allclose(after["projector.pixel_shuffle"].tokens, before["projector.pixel_shuffle"].tokens)
