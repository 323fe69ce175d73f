"""The run folder: never overwrite another run or a user's files, never mix runs, share-able outputs."""
import json
import os
import stat

import pytest
import yaml
from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.errors import SpatialProbeError
from spatialprobe.runner import claim_run_dir


def one_line_error(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return " ".join(result.output.split())


def write_config(tmp_path, **overrides) -> str:
    config = {"name": "mini", "models": [{"name": "d", "family": "dinov2", "path": "tiny"}], "cache_dir": str(tmp_path / "cache")}
    config.update(overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_out_holding_a_users_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.jsonl").write_text("my own notes\n")
    result = CliRunner().invoke(app, ["run", write_config(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "holds no spatialprobe run" in one_line_error(result)
    assert (out / "results.jsonl").read_text() == "my own notes\n"
    assert not (tmp_path / "cache").exists()  # nothing was computed or cached


def test_out_holding_another_run_is_refused_unless_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"config_hash": "0123456789abcdef", "status": "complete"}))
    with pytest.raises(SpatialProbeError, match="holds a different run.*--resume.*--overwrite"):
        claim_run_dir(out, "fedcba9876543210")
    claim_run_dir(out, "0123456789abcdef")  # the same run resumes
    claim_run_dir(out, "fedcba9876543210", "resume")
    claim_run_dir(out, "fedcba9876543210", "overwrite")


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    result = CliRunner().invoke(app, ["run", write_config(tmp_path), "--resume", "--overwrite"])
    assert result.exit_code == 2 and "exclude each other" in one_line_error(result)


def test_run_name_cannot_leave_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / "x"
    result = CliRunner().invoke(app, ["run", write_config(tmp_path, name="../../x"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not outside.exists()
    from spatialprobe.config import safe_run_dir_name

    name = safe_run_dir_name("../../x")
    assert "/" not in name and name not in ("", ".", "..") and (tmp_path / "runs" / name).parent == tmp_path / "runs"


def test_unexpected_errors_are_one_line_pointing_to_debug(tmp_path, monkeypatch):
    import spatialprobe.config as config

    def broken(_path):
        raise ZeroDivisionError("something deep\nand a second line")

    monkeypatch.setattr(config, "load_config", broken)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.yaml")])
    assert result.exit_code == 3 and "--debug" in one_line_error(result) and "ZeroDivisionError" in result.output
    debug = CliRunner().invoke(app, ["--debug", "run", str(tmp_path / "x.yaml")])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_outputs_follow_the_users_umask(tmp_path):
    from spatialprobe.files import write_atomic

    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "results.jsonl", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "results.jsonl").stat().st_mode) == 0o644
