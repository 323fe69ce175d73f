"""CogVLM2: no native transformers class, so no tiny offline model. What can be checked offline (the refusal
without trust_remote_code, the token-layout functions, the conversion of raw stage outputs) always runs; the
real model is traced only when $SPATIALPROBE_COGVLM2_PATH names a local snapshot folder."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.models import cogvlm2
from spatialprobe.models.cogvlm2 import (CogVLM2Backbone, Layout, grid_sides, split_boi_eoi, stage_names,
                                            vision_positions, vision_slot_count)
from planting import forward_calls

ENV = "SPATIALPROBE_COGVLM2_PATH"


# --- offline: refusal, registry facts, layout functions ------------------------------------------------------
def test_refuses_without_trust_remote_code_before_loading(monkeypatch):
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not be reached without trust_remote_code")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    with pytest.raises(sp.SpatialProbeError, match=r"cogvlm2: 'THUDM/cogvlm2-llama3-chat-19B' .*pass --trust-remote-code") as info:
        sp.load_backbone("cogvlm2", "THUDM/cogvlm2-llama3-chat-19B")
    assert "\n" not in str(info.value)


def test_bad_path_is_named_with_remote_code_allowed(tmp_path):
    with pytest.raises(sp.SpatialProbeError, match="cogvlm2.*missing-model"), \
            pytest.warns(UserWarning, match="remote code"):  # the once-per-checkpoint notice
        sp.load_backbone("cogvlm2", str(tmp_path / "missing-model"), trust_remote_code=True)


def test_registry_says_how_it_is_tested():
    assert sp.models.backbone_class("cogvlm2") is CogVLM2Backbone
    assert CogVLM2Backbone.offline_test == "only with $SPATIALPROBE_COGVLM2_PATH"
    with pytest.raises(sp.SpatialProbeError, match=r"\$SPATIALPROBE_COGVLM2_PATH"):
        CogVLM2Backbone.save_tiny(Path("unused"))


def test_stage_names_and_token_counts_of_the_19b_checkpoint():
    names = stage_names(63, 32)  # EVA-CLIP-E layers, Llama-3-8B layers
    assert names[:2] == ["vision.embed", "vision.block.0"]
    assert names[63:67] == ["vision.block.62", "projector.downsample", "projector.out", "llm.layer.0"]
    assert names[-1] == "llm.layer.31" and len(names) == 63 + 3 + 32
    assert grid_sides(1344, 14) == (96, 48)
    assert vision_slot_count(1344, 14) == 48 * 48 + 2  # what build_conversation_input_ids reserves


def test_vision_positions_split_boi_image_tokens_eoi():
    types = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0, 0]])
    boi, image, eoi = vision_positions(types)
    assert boi.tolist() == [1, 1] and eoi.tolist() == [6, 6] and image.tolist() == [[2, 3, 4, 5]] * 2
    with pytest.raises(ValueError, match="same number"):
        vision_positions(torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="contiguous"):
        vision_positions(torch.tensor([[1, 1, 0, 1, 1]]))
    tokens, extra = split_boi_eoi(torch.arange(6.0).reshape(1, 6, 1))
    assert tokens.flatten().tolist() == [1, 2, 3, 4] and extra["boi"].item() == 0 and extra["eoi"].item() == 5


@pytest.fixture
def unloaded():
    """The adapter's conversion code without a model: 4x4 patches, a 2x2 grid after the conv."""
    backbone = CogVLM2Backbone.__new__(CogVLM2Backbone)
    backbone.side, backbone.merged_side, backbone.label = 4, 2, "cogvlm2:test"
    return backbone


def test_raw_outputs_become_rasters_with_specials_in_extra(unloaded):
    # each token carries its raster index as its feature, so a wrong order shows as wrong values
    tower = torch.cat([torch.full((1, 1, 1), -1.0), torch.arange(16.0).reshape(1, 16, 1)], dim=1)  # CLS + raster
    block = unloaded.to_features("vision.block.0", tower, None)
    assert block.grid_shape == (4, 4) and block.tokens.flatten().tolist() == list(range(16))
    assert block.extra["cls"].item() == -1
    assert torch.allclose(block.footprints[0, 6], torch.tensor([0.5, 0.25, 0.75, 0.5]))  # row 1, col 2
    conv = torch.arange(4.0).reshape(1, 1, 2, 2)  # NCHW
    assert unloaded.to_features("projector.downsample", conv, None).tokens.flatten().tolist() == [0, 1, 2, 3]
    out = unloaded.to_features("projector.out", torch.arange(6.0).reshape(1, 6, 1), None)
    assert out.tokens.flatten().tolist() == [1, 2, 3, 4] and out.extra["eoi"].item() == 5
    sequence = torch.arange(10.0).reshape(1, 10, 1)  # [bos, boi, 4 image tokens, eoi, text...]
    layout = Layout(torch.tensor([1]), torch.tensor([[2, 3, 4, 5]]), torch.tensor([6]))
    llm = unloaded.to_features("llm.layer.3", sequence, layout)
    assert llm.tokens.flatten().tolist() == [2, 3, 4, 5] and llm.extra["boi"].item() == 1 and llm.extra["eoi"].item() == 6
    with pytest.raises(RuntimeError, match="expected 4x4"):
        unloaded.to_features("vision.embed", tower[:, :10], None)


# --- the real model, only with $SPATIALPROBE_COGVLM2_PATH ------------------------------------------------------
@pytest.fixture(scope="module")
def cog():
    path = os.environ.get(ENV)
    if not path:
        pytest.skip(f"runs only when ${ENV} names a local snapshot folder of THUDM/cogvlm2-llama3-chat-19B")
    assert Path(path).is_dir(), f"${ENV}={path!r} is not a folder"
    device = os.environ.get("SPATIALPROBE_COGVLM2_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    return sp.load_backbone("cogvlm2", path, device=device, dtype="bfloat16", trust_remote_code=True)


SIZE = 1344
CELL = 28 * 4  # a 4x4 block of merged tokens (8x8 patches): big enough for the change to stay put in deep layers


def plain(colour=(60, 60, 60)):
    return Image.new("RGB", (SIZE, SIZE), colour)


def planted(row, col):
    """A plain image with a bright noise square filling block (row, col) of a 12x12 grid of CELL pixels."""
    array = np.asarray(plain()).copy()
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (CELL, CELL, 3))
    array[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = noise
    return Image.fromarray(array.astype(np.uint8))


def test_real_stages_and_shapes(cog):
    assert cog.stages == stage_names(len(cog.model.model.vision.transformer.layers), len(cog.model.model.layers))
    feats = cog.extract([plain()], stages=["vision.embed", "projector.downsample", "projector.out", "llm.layer.0"])
    assert feats["vision.embed"].grid_shape == (96, 96) and feats["vision.embed"].extra["cls"].shape[1] == 1
    for stage in ("projector.downsample", "projector.out", "llm.layer.0"):
        assert feats[stage].grid_shape == (48, 48)
    assert set(feats["projector.out"].extra) == {"boi", "eoi"}


def test_real_planted_patch_is_found_in_its_token_at_every_stage(cog):
    plants = [(1, 9), (7, 2)]
    stages = cog.stages
    for start in range(0, len(stages), 12):  # 96x96x1792 floats per image and block: a few stages at a time
        chunk = stages[start : start + 12]
        marked = cog.extract([planted(r, c) for r, c in plants], stages=chunk, batch_size=1)
        base = cog.extract([plain()] * len(plants), stages=chunk, batch_size=1)
        for stage in chunk:
            assert_change_peaks_inside(marked[stage], base[stage], plants, stage)


def assert_change_peaks_inside(marked, base, plants, stage):
    change = (marked.tokens - base.tokens).norm(dim=-1)
    for image, (row, col) in enumerate(plants):
        footprint = marked.footprints[image, change[image].argmax()]
        cell = torch.tensor([col, row, col + 1, row + 1]) / 12
        inside = (footprint[:2] >= cell[:2] - 1e-6).all() and (footprint[2:] <= cell[2:] + 1e-6).all()
        assert inside, f"{stage} image {image}: change peaks at {footprint.tolist()}, planted in {cell.tolist()}"


def test_real_projector_out_is_what_the_llm_receives(cog):
    images = [planted(3, 5)]
    feats = cog.extract(images, stages=["projector.out"])["projector.out"]
    inputs, layout = cog.prepare(images)
    with torch.inference_mode():
        own = cog.model.model.vision(torch.stack([group[0] for group in inputs["images"]]))
    assert torch.allclose(feats.tokens, own[:, 1:-1].float().cpu(), atol=1e-3)
    seen = {}
    handle = cog.model.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.setdefault("h", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.inference_mode():
            cog.model(**inputs, use_cache=False)
    finally:
        handle.remove()
    at_images = torch.gather(seen["h"], 1, layout.image_positions.to(seen["h"].device)[..., None].expand(-1, -1, seen["h"].shape[-1]))
    assert torch.allclose(at_images.float().cpu(), feats.tokens, atol=1e-3)
    assert torch.allclose(seen["h"][0, layout.boi[0]].float().cpu(), feats.extra["boi"][0, 0], atol=1e-3)


def test_real_vision_stages_never_run_the_llm(cog):
    with forward_calls(cog.model.model.layers[0]) as fired:
        cog.extract([plain()], stages=["vision.block.-1", "projector.out"])
    assert fired == []


def test_real_answer_names_the_colour(cog):
    reply = cog.answer([plain((220, 20, 20))], ["What colour is this image? Answer in one word."])[0]
    assert "red" in reply.lower(), reply
