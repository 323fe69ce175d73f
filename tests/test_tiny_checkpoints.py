"""Tiny checkpoints (`path: tiny`) are complete only once their marker is written: a build interrupted
after `config.json` is rebuilt, instead of failing every later run."""
import json

from PIL import Image

import spatialprobe as sp
from spatialprobe.config import quickstart_config
from spatialprobe.runner import resolve_path
from spatialprobe.testing import TINY_MARKER, ensure_tiny


def partial_checkpoint(folder):
    """What a build killed after its config leaves: config.json and no weights."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": 32}))
    return folder


def loads(folder):
    backbone = sp.load_backbone("dinov2", str(folder))
    return backbone.extract([Image.new("RGB", (64, 48), (90, 120, 30))])


def test_partial_tiny_checkpoint_is_rebuilt_and_loads(tmp_path):
    folder = partial_checkpoint(tmp_path / "tiny" / "dinov2")
    assert ensure_tiny("dinov2", folder) == folder
    assert json.loads((folder / TINY_MARKER).read_text()) == {"family": "dinov2", "seed": 0}
    assert loads(folder)
    assert [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.endswith(".lock")] == ["dinov2"]


def test_runs_heal_a_partial_tiny_checkpoint(tmp_path):
    config = quickstart_config().model_copy(update={"cache_dir": tmp_path})
    partial_checkpoint(tmp_path / "tiny" / "dinov2")
    assert loads(resolve_path("tiny", "dinov2", config))


def test_complete_tiny_checkpoint_is_reused(tmp_path, monkeypatch):
    from spatialprobe import testing

    folder = ensure_tiny("dinov2", tmp_path / "d")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(testing, "save_tiny", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert ensure_tiny("dinov2", folder) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
