"""The runner as a loop over a plan: shared model keys, renamed labels, and the same results on every executor."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import spatialprobe as sp
from spatialprobe import jobs as job_module
from spatialprobe import runner
from spatialprobe.config import parse_config

TINY = {"n_train": 12, "n_val": 0, "n_test": 8, "image_size": 64, "preset": "easy"}


def tiny_config(cache: Path, **overrides) -> dict:
    config = {
        "name": "tiny-plan",
        "dataset": {"kind": "synthetic_shapes", "shapes": TINY},
        "models": [{"name": "dino", "family": "dinov2", "path": "tiny", "options": {"resolution": 56},
                    "random_init_control": False}],
        "controls": {"pixels_resolution": 56, "shuffled_tokens": False},
        "tasks": ["spatial_probe"], "probes": ["pooled", "dense"],
        "bootstrap": 50, "shard_size": 4, "cache_dir": str(cache), "verify": "off",
    }
    config.update(overrides)
    return config


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def numbers(rows: list[dict]) -> dict:
    return {(r["model"], r["stage"], r["probe"], r["metric"]): (r["value"], r["ci_low"], r["ci_high"]) for r in rows}


def counting_shards(monkeypatch) -> list:
    from spatialprobe import extract

    real, calls = extract.run_shard, []

    def counted(*args, **kwargs):
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "run_shard", counted)
    return calls


def test_renaming_a_label_extracts_nothing_and_keeps_every_number(tmp_path, monkeypatch):
    first = runner.run(parse_config(tiny_config(tmp_path / "c")), tmp_path / "a")
    calls = counting_shards(monkeypatch)
    renamed = tiny_config(tmp_path / "c")
    renamed["models"][0]["label"] = "DINO, renamed"
    second = runner.run(parse_config(renamed), tmp_path / "b")
    assert calls == []  # every shard of every model came from the store
    assert numbers(read_rows(second)) == numbers(read_rows(first))
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["models"]["dino"]["label"] == "DINO, renamed"


def test_presets_of_one_checkpoint_share_one_extraction(tmp_path, monkeypatch):
    calls = counting_shards(monkeypatch)
    config = tiny_config(tmp_path / "c", models=[
        {"name": "dino", "family": "dinov2", "path": "tiny", "options": {"resolution": 56}, "random_init_control": False},
        {"name": "dino-last", "family": "dinov2", "path": "tiny", "options": {"resolution": 56},
         "stages": ["vision.block.-1"], "random_init_control": False}])
    out = runner.run(parse_config(config), tmp_path / "out")
    shards = 12 // 4 + 8 // 4
    assert len(calls) == 2 * shards  # pixels and the one dinov2 checkpoint, not three models
    rows = read_rows(out)
    last = {(r["stage"], r["probe"], r["metric"]): r["value"] for r in rows if r["model"] == "dino-last"}
    full = {(r["stage"], r["probe"], r["metric"]): r["value"] for r in rows if r["model"] == "dino"}
    assert last and all(full[k] == v for k, v in last.items())  # the same features, the same numbers


#: set by the test before the run: the function below travels to Ray workers by value, with this value
KILL_MARKER: str | None = None


def run_model_job_killing_once(backbone, job):
    """The runner's model-job function, except that the first extraction job ever kills its worker process."""
    marker = KILL_MARKER
    if marker and isinstance(job, job_module.ExtractJob) and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)  # a worker dying mid-job, as a lost node or an OOM kill does
    return job_module.run_model_job(backbone, job)


def test_ray_executor_gives_the_local_results_and_survives_a_killed_worker(ray_session, tmp_path, monkeypatch):
    local = runner.run(parse_config(tiny_config(tmp_path / "local")), tmp_path / "local-out")
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "killed"
    monkeypatch.setattr(sys.modules[__name__], "KILL_MARKER", str(marker))
    monkeypatch.setattr(runner, "run_model_job", run_model_job_killing_once)
    config = parse_config(tiny_config(tmp_path / "ray", executor="ray"))
    on_ray = runner.run(config, tmp_path / "ray-out")
    assert marker.exists()  # a worker was killed during an extraction, and the run completed
    assert read_rows(on_ray) == read_rows(local)


def test_a_pooled_model_stores_and_probes_the_coarser_raster(tmp_path):
    from spatialprobe.store.shards import FeatureCache
    from spatialprobe.store.sources import StoreSource

    config = tiny_config(tmp_path / "c", controls={"pixels": False, "shuffled_tokens": False}, probes=["dense"])
    config["models"][0]["pool"] = 2
    run_config = parse_config(config)
    out = runner.run(run_config, tmp_path / "out")
    info = next(i for i in runner.run_infos(run_config) if i.name == "dino")
    manifest = json.loads((out / "manifest.json").read_text())
    source = StoreSource(FeatureCache(tmp_path / "c" / "features"), info.spec.key(), manifest["dataset"]["hash"],
                         "train", 12, 4, "vision.block.0")
    shard = next(iter(source.shards()))
    assert info.spec.pool == 2 and shard.grid_shape == (2, 2)  # 56 px / 14 = 4 x 4 patches, pooled 2 x 2
    dense = [r for r in read_rows(out) if r["probe"] == "dense" and r["metric"] == "spatial_iou"]
    assert dense and all(r["value"] <= r["ceiling"] + 1e-9 for r in dense)
