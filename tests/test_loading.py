"""Loading options every adapter shares: safetensors unless pickle is allowed, quantization, remote code,
stage patterns."""
import warnings

import pytest
import torch

import spatialprobe as sp
from spatialprobe.models.base import LoadOptions
from spatialprobe.testing import save_tiny


@pytest.fixture(scope="module")
def pickle_only(tmp_path_factory):
    """A tiny DINOv2 whose weights exist only as a pickle file (pytorch_model.bin)."""
    from transformers import Dinov2Model

    folder = save_tiny("dinov2", tmp_path_factory.mktemp("pickle"))
    model = Dinov2Model.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder, model


def test_pickle_weights_are_refused_unless_allowed(pickle_only):
    folder, model = pickle_only
    with pytest.raises(sp.SpatialProbeError, match=r"dinov2 .*model.safetensors.*allow_pickle: true") as info:
        sp.load_backbone("dinov2", str(folder))
    assert "\n" not in str(info.value)
    loaded = sp.load_backbone("dinov2", str(folder), allow_pickle=True)
    assert torch.equal(loaded.model.embeddings.cls_token, model.embeddings.cls_token)


def test_quantization_without_gpu_says_what_it_needs(tmp_path):
    folder = save_tiny("dinov2", tmp_path / "d")
    with pytest.raises(sp.SpatialProbeError, match="quantization '4bit' needs a CUDA GPU and bitsandbytes"):
        sp.load_backbone("dinov2", str(folder), quantization="4bit")
    with pytest.raises(sp.SpatialProbeError, match="unknown quantization '3bit'"):
        sp.load_backbone("dinov2", str(folder), quantization="3bit")


def test_load_options_reach_from_pretrained():
    assert LoadOptions().model_kwargs("x") == {"use_safetensors": True}
    options = LoadOptions(revision="abc123", device_map="auto", trust_remote_code=True, allow_pickle=True)
    assert options.model_kwargs("x") == {"use_safetensors": None, "revision": "abc123", "device_map": "auto",
                                         "trust_remote_code": True}
    assert options.processor_kwargs() == {"revision": "abc123", "trust_remote_code": True}
    assert options.places_itself() and not LoadOptions().places_itself()


def test_revision_and_quantization_change_the_cache_key(tmp_path):
    backbone = sp.load_backbone("dinov2", str(save_tiny("dinov2", tmp_path / "d")))
    assert backbone.describe()["load"] == {"revision": None, "quantization": None}


def test_remote_code_is_announced_once(tmp_path):
    from spatialprobe.models import base

    folder = str(save_tiny("dinov2", tmp_path / "d"))
    base._REMOTE_CODE_WARNED.discard(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp.load_backbone("dinov2", folder, trust_remote_code=True)
        sp.load_backbone("dinov2", folder, trust_remote_code=True)
    said = [w for w in caught if "remote code" in str(w.message)]
    assert len(said) == 1 and folder in str(said[0].message)


def test_stage_patterns_and_negative_indices(tmp_path):
    qwen = sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", tmp_path / "q")))
    assert qwen.resolve_stages(["vision.*", "projector.*"]) == [
        "vision.embed", "vision.block.0", "vision.block.1", "vision.block.2", "vision.block.3", "projector.out"]
    assert qwen.resolve_stages(["llm.layer.-1", "vision.block.-1"]) == ["vision.block.3", "llm.layer.1"]
    with pytest.raises(sp.SpatialProbeError, match="has no stage 'detector.*'"):
        qwen.resolve_stages(["detector.*"])


def test_remote_code_that_fails_is_one_line_naming_the_checkpoint(tmp_path):
    # a checkpoint whose own code cannot run here (as old remote code may not under transformers 5)
    import json

    folder = save_tiny("dinov2", tmp_path / "d")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_broken.BrokenModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_broken.py").write_text("raise RuntimeError('needs a kernel this machine lacks')\n")
    from transformers import AutoModel

    backbone = sp.load_backbone("dinov2", str(folder), trust_remote_code=True)
    with pytest.raises(sp.SpatialProbeError, match=r"dinov2: the own code of .* failed under transformers .*: "
                                                   r"needs a kernel this machine lacks") as info:
        backbone.load_model(AutoModel)
    assert "\n" not in str(info.value)


def test_device_map_without_accelerate_names_the_missing_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("accelerate") is not None:
        pytest.skip("accelerate is installed here: device_map loads")
    folder = save_tiny("dinov2", tmp_path / "d")
    with pytest.raises(sp.SpatialProbeError, match=r"cannot load dinov2 model .*requires `accelerate`") as info:
        sp.load_backbone("dinov2", str(folder), device_map="auto")
    assert "\n" not in str(info.value)
