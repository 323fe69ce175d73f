"""The whole pipeline: known answers on real data, run outputs, resume after a kill, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import spatialprobe as sp
from spatialprobe import extract
from spatialprobe.cli import app
from spatialprobe.config import parse_config
from spatialprobe.data import generate_synthetic_shapes, load_coco
from spatialprobe.probes import run_spatial_probes, shuffle_tokens
from spatialprobe.runner import probe_split, run

EASY = {"n_train": 64, "n_val": 0, "n_test": 32, "image_size": 112, "preset": "easy"}


def mini_config(cache: Path, **overrides) -> dict:
    config = {
        "name": "mini",
        "dataset": {"kind": "synthetic_shapes", "shapes": EASY},
        "models": [
            {"name": "dino-tiny", "family": "dinov2", "path": "tiny", "options": {"resolution": 112}},
            {"name": "qwen-tiny", "family": "qwen2_5_vl", "path": "tiny", "options": {"resolution": 112},
             "random_init_control": False},
        ],
        "controls": {"pixels_resolution": 112},
        "bootstrap": 100, "shard_size": 16, "cache_dir": str(cache),
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    root = generate_synthetic_shapes(tmp_path_factory.mktemp("easy") / "d", **EASY)
    return load_coco(root, "train"), load_coco(root, "test")


def by_key(records):
    return {(r["probe"], r["metric"]): r for r in records}


def test_raw_pixels_reach_the_ceiling_on_the_easy_preset(easy):
    train_data, test_data = easy
    pixels = sp.load_backbone("pixels", "pixels", resolution=112)
    feats = {name: pixels.extract([d.load_image(i) for i in range(len(d))])["vision.embed"]
             for name, d in (("train", train_data), ("test", test_data))}
    train, test = probe_split(train_data, feats["train"]), probe_split(test_data, feats["test"])
    got = by_key(run_spatial_probes(train, test, probes=("dense",), n_boot=200))
    # the box ceiling is the best box with edges on token boundaries; a thresholded token mask's box
    # comes near it but need not find it, hence the wider margin for boxes
    for metric, margin in (("spatial_iou", 0.04), ("bbox_iou", 0.06)):
        r = got[("dense", metric)]
        assert r["ceiling"] - margin <= r["value"] <= r["ceiling"] and r["value"] > r["floor"] + 0.3, r
    shuffled = by_key(run_spatial_probes(shuffle_tokens(train, 0), shuffle_tokens(test, 1), probes=("dense",), n_boot=200))
    for metric in ("spatial_iou", "bbox_iou"):
        r = shuffled[("dense", metric)]
        assert r["value"] <= r["floor"] + 0.03, r


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    return run(parse_config(mini_config(base / "cache")), base / "out"), base


def read_results(run_dir: Path, timings: bool = False) -> list[dict]:
    """Results of a run; timings (the speed task) only when asked, since they differ from run to run."""
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return [r for r in rows if timings or r["task"] != "speed"]


def test_run_writes_every_stage_probe_and_bound(finished_run):
    run_dir, _ = finished_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["dataset"]["hash"] and manifest["models"]["qwen-tiny"]["preprocessing"]["resolution"] == 112
    results = read_results(run_dir)
    for model, info in manifest["models"].items():
        for stage in info["stages"]:
            rows = [r for r in results if r["model"] == model and r["stage"] == stage and r["task"] == "spatial_probe"]
            assert {r["probe"] for r in rows} == {"linear", "pooled", "dense"}, (model, stage)
    spatial = [r for r in results if r["task"] == "spatial_probe"]
    assert all(r["floor"] is not None and r["ceiling"] is not None and r["ci_low"] <= r["ci_high"] for r in spatial)
    # on a token grid the dense probe cannot pass its ceiling; every row says what its interval covers
    assert all(r["value"] <= r["ceiling"] + 1e-9 for r in spatial if r["probe"] == "dense")
    assert all("ci_covers" in r for r in read_results(run_dir, timings=True))
    # the reconstruction probe ran once per model, at its judged stage, with PSNR/SSIM and an honest LPIPS
    recon = [r for r in results if r["task"] == "reconstruction_probe" and r["model"] == "qwen-tiny"]
    assert {r["metric"] for r in recon} == {"psnr", "ssim", "lpips"} and {r["stage"] for r in recon} == {"llm.layer.1"}
    lpips = next(r for r in recon if r["metric"] == "lpips")
    assert (lpips["value"] is None) == bool(lpips.get("unavailable"))
    # speed: every configured model timed, the ratio taken against the Qwen2.5-VL baseline
    speed = {(r["model"], r["metric"]): r for r in read_results(run_dir, timings=True) if r["task"] == "speed"}
    assert speed[("qwen-tiny", "speed_ratio")]["value"] == pytest.approx(1.0)
    assert speed[("dino-tiny", "images_per_second")]["value"] > 0 and ("pixels", "speed_ratio") not in speed
    ratio = speed[("dino-tiny", "speed_ratio")]
    assert ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"] and ratio["baseline"] == "qwen-tiny"
    # the semantic check ran for the VLM only (an encoder cannot answer)
    assert {r["model"] for r in results if r["task"] == "vqa"} == {"qwen-tiny"}
    assert {r["control"] for r in results} == {"pixels", "none", "random_init", "shuffled"}
    html = (run_dir / "report.html").read_text()
    assert "llm.layer.1" in html and "<script" not in html and "http" not in html.split("<body>")[1].split("Configuration")[0]


def test_report_rebuilds_from_stored_results(finished_run):
    run_dir, _ = finished_run
    before = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    assert CliRunner().invoke(app, ["report", str(run_dir)]).exit_code == 0
    assert (run_dir / "report.html").read_text() == before


def test_interrupted_run_resumes_with_identical_results(finished_run, tmp_path, monkeypatch):
    run_dir, base = finished_run
    # no speed task here: its timing pass would add extractions to the count below
    # no self-check either: its two forward passes per model would add to the count too
    config = parse_config(mini_config(tmp_path / "cache", tasks=["spatial_probe", "reconstruction_probe", "vqa"],
                                      verify="off"))
    real, calls = extract.run_shard, []

    def dies_on_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "run_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "out")
    monkeypatch.setattr(extract, "run_shard", real)
    extracted = []
    monkeypatch.setattr(sp.models.base.Backbone, "extract_batches",
                        lambda self, images, *a, _real=sp.models.base.Backbone.extract_batches, **k:
                        extracted.append(len(images)) or _real(self, images, *a, **k))
    run(config, tmp_path / "out")
    assert read_results(tmp_path / "out") == read_results(run_dir)
    # 4 backbones (pixels, dino, dino random init, qwen) x 96 images, less the two 16-image shards
    # finished before the interruption, which came from the cache
    assert sum(extracted) == 4 * (64 + 32) - 2 * 16


def test_killed_process_resumes_with_identical_results(finished_run, tmp_path):
    run_dir, _ = finished_run
    cache = tmp_path / "cache"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(mini_config(cache)))
    command = [sys.executable, "-m", "spatialprobe.cli", "run", str(config_path), "--out", str(tmp_path / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((cache / "features").rglob("*.safetensors"))) < 20:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    manifest = tmp_path / "out" / "manifest.json"
    assert json.loads(manifest.read_text())["status"] == "running", "the run finished before it could be killed"
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert read_results(tmp_path / "out") == read_results(run_dir)


def test_a_rerun_stopped_early_never_pairs_the_old_manifest_with_new_results(finished_run, tmp_path, monkeypatch):
    import shutil

    run_dir, base = finished_run
    shutil.copytree(run_dir, tmp_path / "out")
    config = parse_config(mini_config(base / "cache", bootstrap=200))  # another config: needs --overwrite

    def stops(*args, **kwargs):
        raise KeyboardInterrupt

    # the features are stored (the store is shared); the new bootstrap size needs new probe fits
    monkeypatch.setattr(sp.probes, "run_spatial_probes", stops)
    with pytest.raises(sp.SpatialProbeError, match="holds a different run"):
        run(config, tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "out", on_existing="overwrite")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["config"]["bootstrap"] == 200
    # the older run's numbers are gone with its manifest: only what this run finished before it stopped (its
    # model jobs: VQA) is there, and no probe row
    assert {r["task"] for r in read_results(tmp_path / "out")} <= {"vqa"}
    assert CliRunner().invoke(app, ["report", str(tmp_path / "out")]).exit_code == 0
    assert "Incomplete run (status: running)" in (tmp_path / "out" / "report.html").read_text()


def test_run_killed_while_probing_refits_nothing_that_finished(finished_run, tmp_path, monkeypatch):
    from spatialprobe import probes

    run_dir, base = finished_run
    # the finished run's feature cache, so only the probes are at stake
    config = parse_config(mini_config(base / "cache", tasks=["spatial_probe", "reconstruction_probe"]))
    config.cache_dir = tmp_path / "work"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "features").symlink_to(base / "cache" / "features")
    real, fits, kill = probes.run_spatial_probes, [], [True]

    def dies_on_fifth_fit(*args, **kwargs):
        fits.append(kwargs["probes"])
        if len(fits) == 5 and kill[0]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(probes, "run_spatial_probes", dies_on_fifth_fit)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "out")
    finished_before = sum(len(probes) for probes in fits[:4])
    fits.clear()
    kill[0] = False
    run(config, tmp_path / "out")
    # every (model, stage, variant, probe) is fitted once over both runs: none that finished is fitted again
    total = len([r for r in read_results(run_dir) if r["task"] == "spatial_probe" and r["metric"] == "bbox_iou"])
    assert sum(len(probes) for probes in fits) == total - finished_before
    results = [r for r in read_results(tmp_path / "out")]
    expected = [r for r in read_results(run_dir) if r["task"] in ("spatial_probe", "reconstruction_probe")]
    assert results == expected


def test_progress_outside_a_terminal_is_a_line_per_finished_job(finished_run, tmp_path):
    import io

    from rich.console import Console

    _, base = finished_run
    config = parse_config(mini_config(base / "cache", tasks=["spatial_probe", "speed", "vqa"]))
    log = io.StringIO()
    run(config, tmp_path / "out", console=Console(file=log, force_terminal=False, width=200))
    lines = log.getvalue().splitlines()
    for job in ("dino-tiny: extract train: 64/64", "dino-tiny: probes: ", "qwen-tiny: speed: 1/1",
                "qwen-tiny: vqa: 1/1"):
        assert any(line.startswith(job) and "elapsed]" in line for line in lines), (job, lines)


@pytest.mark.parametrize("change,message", [
    ({"models": [{"name": "x", "family": "llama9", "path": "y"}]}, "models[0].family: unknown model family 'llama9'"),
    ({"probs": ["dense"]}, "probs: unknown key"),
    ({"dataset": {"kind": "coco", "path": "/nonexistent/folder"}}, "dataset folder not found: /nonexistent/folder"),
])
def test_bad_input_ends_in_one_line_naming_it(tmp_path, change, message):
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump({**mini_config(tmp_path / "c"), **change}))
    result = CliRunner().invoke(app, ["run", str(config_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in " ".join(result.output.split()), result.output


def test_corrupt_image_is_named_by_the_run(tmp_path, easy):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(easy[0].root, root)
    (root / "images/test/test_00004.png").write_bytes(b"\x89PNG broken")
    config = mini_config(tmp_path / "c", dataset={"kind": "coco", "path": str(root)})
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(config_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "test_00004.png" in result.output


def test_missing_config_file(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_data_command_writes_a_coco_dataset(tmp_path):
    result = CliRunner().invoke(app, ["data", "synthetic-shapes", "--out", str(tmp_path / "d"), "--n-train", "8",
                                      "--n-val", "0", "--n-test", "8", "--image-size", "64", "--preset", "easy"])
    assert result.exit_code == 0, result.output
    assert len(load_coco(tmp_path / "d", "test")) == 8
    bad = CliRunner().invoke(app, ["data", "synthetic-shapes", "--out", str(tmp_path / "e"), "--background", "lava"])
    assert bad.exit_code == 2 and "unknown background 'lava'" in bad.output


def test_models_command_lists_every_family():
    from spatialprobe.models import FAMILIES

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0 and all(family in result.output for family in FAMILIES)


def test_random_init_control_has_other_weights(tmp_path):
    from spatialprobe.jobs import open_spec
    from spatialprobe.runner import run_infos

    config = parse_config(mini_config(tmp_path / "c"))
    runs = {info.name: info for info in run_infos(config)}
    real, control = runs["dino-tiny"], runs["dino-tiny [random init]"]
    assert open_spec(real.spec, config).weights_fingerprint() != open_spec(control.spec, config).weights_fingerprint()
    assert control.label.endswith("[random init]")
