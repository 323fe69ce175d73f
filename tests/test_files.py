"""Files and folders written whole, with the user's umask, and never over a user's files:
`weights install` builds beside its destination and renames; it refuses a folder it did not make."""
import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import spatialprobe as sp
from spatialprobe import weights
from spatialprobe.cli import app
from spatialprobe.files import install_folder, umask_mode, write_atomic


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.fixture
def fake_conversion(monkeypatch):
    """The folder handling is under test, not the conversion: a stand-in writes one file, and counts calls."""
    calls = []

    def build_checkpoint(source, folder):
        calls.append(folder)
        (folder / "config.json").write_text('{"hidden_size": 384}')

    monkeypatch.setattr(weights, "build_checkpoint", build_checkpoint)
    monkeypatch.setattr(weights, "verify_against_onnx", lambda *args, **kwargs: 0.0)  # the command line verifies
    return calls


def user_folder(tmp_path):
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "thesis.txt").write_text("three years of work")
    return dest


def test_install_refuses_a_folder_holding_a_users_file(tmp_path, fake_conversion):
    dest = user_folder(tmp_path)
    with pytest.raises(sp.SpatialProbeError) as info:
        weights.install_weights(dest=dest, verify=False)
    message = str(info.value)
    assert "\n" not in message and str(dest) in message and "--force" in message
    assert (dest / "thesis.txt").read_text() == "three years of work"
    assert not fake_conversion  # refused before any compute


def test_install_command_refuses_in_one_line_and_keeps_the_file(tmp_path, fake_conversion):
    dest = user_folder(tmp_path)
    result = CliRunner().invoke(app, ["weights", "install", "--dest", str(dest)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--force" in lines[0], result.output
    assert (dest / "thesis.txt").is_file()


def test_force_replaces_the_folder(tmp_path, fake_conversion):
    dest = user_folder(tmp_path)
    result = CliRunner().invoke(app, ["weights", "install", "--dest", str(dest), "--force"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", weights.MARKER]
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["models"]  # nothing set aside


def test_force_restores_the_old_folder_when_the_new_one_cannot_be_renamed_in(tmp_path, fake_conversion, monkeypatch):
    from spatialprobe import files

    dest = user_folder(tmp_path)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".models.tmp-"):  # renaming the new checkpoint in
            raise OSError("disk trouble")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="disk trouble"):
        weights.install_weights(dest=dest, verify=False, force=True)
    assert (dest / "thesis.txt").read_text() == "three years of work"


def test_an_empty_folder_or_a_complete_install_needs_no_force(tmp_path, fake_conversion):
    dest = tmp_path / "w"
    dest.mkdir()
    assert weights.install_weights(dest=dest, verify=False) == dest
    assert weights.install_weights(dest=dest, verify=False) == dest  # complete: returned as is
    assert len(fake_conversion) == 1


def test_installed_folder_honours_the_umask(tmp_path, fake_conversion, umask):
    dest = weights.install_weights(dest=tmp_path / "w", verify=False)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # mkdtemp alone would leave 0700
    assert (dest / weights.MARKER).stat().st_mode & 0o777 == 0o666 & ~umask


def test_concurrent_installers_build_once_and_share_the_result(tmp_path):
    builds, results = [], []

    def slow_build(folder):
        builds.append(folder)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one builds
        (folder / "weights.bin").write_bytes(b"x")
        return {"built": True}

    def install():
        results.append(install_folder(tmp_path / "shared", "done.json", slow_build))

    threads = [threading.Thread(target=install) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and results == [tmp_path / "shared"] * 2
    assert (tmp_path / "shared" / "weights.bin").read_bytes() == b"x"


def test_write_atomic_honours_the_umask_and_leaves_no_temporary(tmp_path, umask):
    path = tmp_path / "out" / "results.jsonl"
    write_atomic(path, "a\n")
    write_atomic(path, "b\n")
    assert path.read_text() == "b\n" and path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert umask_mode() == 0o666 & ~umask and umask_mode(0o777) == 0o777 & ~umask
    assert os.listdir(path.parent) == ["results.jsonl"]
