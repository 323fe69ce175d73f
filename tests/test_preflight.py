"""Checks against the machine before any compute: each failure is one line naming the setting."""
import os
from pathlib import Path

import pytest
import torch

from spatialprobe.config import parse_config
from spatialprobe.errors import SpatialProbeError
from spatialprobe.preflight import check_device, preflight


def config(tmp_path: Path, **top):
    return parse_config({"models": [{"name": "d", "family": "dinov2", "path": "p"}],
                         "cache_dir": str(tmp_path / "home"), **top})


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "file.txt"
    path.write_text("a user's file")
    return path


def one_line_error(call, match: str) -> str:
    with pytest.raises(SpatialProbeError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_good_config_passes_and_creates_nothing(tmp_path):
    assert preflight(config(tmp_path), tmp_path / "runs" / "x") == []
    assert list(tmp_path.iterdir()) == []  # no run folder, no home folder, no probe file left


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cuda_without_cuda(tmp_path, monkeypatch):
    no_cuda(monkeypatch)
    one_line_error(lambda: preflight(config(tmp_path, device="cuda"), None), r"^device: 'cuda' needs CUDA, .*use device: cpu")
    one_line_error(lambda: preflight(config(tmp_path, device="cuda:0"), None), r"^device: 'cuda:0' needs CUDA")


def test_cuda_index_beyond_the_devices(tmp_path, monkeypatch):
    two_gpus(monkeypatch)
    preflight(config(tmp_path, device="cuda:1"), None)
    one_line_error(lambda: preflight(config(tmp_path, device="cuda:2"), None),
                   r"^device: 'cuda:2' does not exist; this machine has 2 CUDA device\(s\), cuda:0 to cuda:1")


def test_mps_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    one_line_error(lambda: preflight(config(tmp_path, device="mps"), None), r"^device: 'mps' is not available")


def test_unknown_device_string():
    one_line_error(lambda: check_device("tpu"), r"^device: unknown device 'tpu'; use cpu, cuda, cuda:N or mps")


def test_dry_run_plans_for_a_device_this_machine_lacks(tmp_path, monkeypatch):
    no_cuda(monkeypatch)
    notes = preflight(config(tmp_path, device="cuda"), tmp_path / "out", dry_run=True)
    assert len(notes) == 1 and notes[0].startswith("device: 'cuda' needs CUDA") and "dry run" in notes[0]


def test_out_below_a_file(tmp_path, a_file):
    one_line_error(lambda: preflight(config(tmp_path), a_file / "sub"), rf"^--out: cannot create {a_file}/sub: {a_file} is a file")
    one_line_error(lambda: preflight(config(tmp_path), a_file), r"^--out: .* is a file, not a folder")
    assert a_file.read_text() == "a user's file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_out_in_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(lambda: preflight(config(tmp_path), locked / "runs" / "x"),
                       rf"^--out: cannot write in {locked} \(Permission denied\)")
    finally:
        locked.chmod(0o700)


def test_home_below_a_file(tmp_path, a_file, monkeypatch):
    one_line_error(lambda: preflight(config(tmp_path, cache_dir=str(a_file / "cache")), None), r"^cache_dir: cannot create")
    monkeypatch.setenv("SPATIALPROBE_HOME", str(a_file / "home"))
    unset = parse_config({"models": [{"name": "d", "family": "dinov2", "path": "p"}]})
    one_line_error(lambda: preflight(unset, None), r"^\$SPATIALPROBE_HOME: cannot create")


def test_weights_to_install_need_a_writable_weights_folder(tmp_path, a_file, monkeypatch):
    monkeypatch.setenv("SPATIALPROBE_HOME", str(a_file / "home"))
    installed = parse_config({"models": [{"name": "d", "family": "dinov2", "path": "installed:dinov2-small-imgfocus"}],
                              "cache_dir": str(tmp_path / "cache")})
    one_line_error(lambda: preflight(installed, None), r"^installing weights 'dinov2-small-imgfocus' .*: cannot create")


def coco(tmp_path, splits=("train", "test")) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in splits:
        (root / "annotations" / f"instances_{split}.json").write_text("{}")
    return root


def test_coco_folder_and_annotation_files_exist(tmp_path):
    preflight(config(tmp_path, dataset={"kind": "coco", "path": str(coco(tmp_path))}), None)
    one_line_error(lambda: preflight(config(tmp_path, dataset={"kind": "coco", "path": str(tmp_path / "nope")}), None),
                   r"^dataset.path: dataset folder not found: .*nope")
    partial = coco(tmp_path / "p", splits=("train",))
    one_line_error(lambda: preflight(config(tmp_path, dataset={"kind": "coco", "path": str(partial)}), None),
                   r"^dataset.path: .*instances_test.json not found \(the 'test' split\)")


def test_synthetic_dataset_folder_must_be_writable(tmp_path, a_file):
    one_line_error(lambda: preflight(config(tmp_path, dataset={"path": str(a_file / "shapes")}), None),
                   r"^dataset.path: cannot create")


def test_unwritable_folder_reported_for_root_too(tmp_path, monkeypatch):
    # root writes through permission bits, so the refusal is simulated where the probe file is made
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("spatialprobe.preflight.tempfile.NamedTemporaryFile", refuse)
    one_line_error(lambda: preflight(config(tmp_path), tmp_path / "runs" / "x"),
                   rf"^--out: cannot write in {tmp_path} \(Permission denied\), which {tmp_path}/runs/x needs")
