"""The latent_alignment task end to end on tiny models: a tiny LTX VAE as the reference, CKA rows for every
stage of every model and control, with interval, permutation floor and ceiling; the decision reads them."""
import json
from pathlib import Path

import pytest

from spatialprobe.config import parse_config
from spatialprobe.plan import plan_jobs
from spatialprobe.report import run_verdict
from spatialprobe.runner import run

EASY = {"n_train": 40, "n_val": 0, "n_test": 24, "image_size": 128, "preset": "easy"}


def alignment_config(cache: Path) -> dict:
    return {
        "name": "align",
        "dataset": {"kind": "synthetic_shapes", "shapes": EASY},
        "models": [{"name": "dino-tiny", "family": "dinov2", "path": "tiny", "options": {"resolution": 112}}],
        "controls": {"pixels_resolution": 112, "shuffled_tokens": False},
        "probes": ["dense"],
        "tasks": ["latent_alignment"],  # spatial_probe left out: only the alignment is under test
        "alignment": {"reference": {"path": "tiny", "options": {"resolution": 128}}, "permutations": 20},
        "bootstrap": 60, "shard_size": 16, "cache_dir": str(cache), "verify": "off",
    }


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    base = tmp_path_factory.mktemp("align")
    config = parse_config(alignment_config(base / "cache"))
    return run(config, base / "out"), config


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_every_stage_of_every_run_has_cka_rows_with_interval_null_and_ceiling(aligned):
    run_dir, _ = aligned
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = [r for r in rows_of(run_dir) if r["task"] == "latent_alignment"]
    assert set(manifest["models"]) == {"pixels", "dino-tiny", "dino-tiny [random init]"}
    for model, info in manifest["models"].items():
        for stage in info["stages"]:
            mine = {r["probe"]: r for r in rows if r["model"] == model and r["stage"] == stage}
            assert set(mine) == {"pooled", "spatial", "per_position"}, (model, stage)
            for r in mine.values():
                assert r["metric"] == "cka" and r["ref_model"] == "reference" and r["ref_stage"] == "vae.latent"
                assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ceiling"] == 1.0
                assert r["floor"] == r["null_p95"] >= r["null_mean"] and r["permutations"] == 20
                assert r["images"] == 64 and r["kernel"] == "linear"
    # the reference is extracted and named, but measured by no task itself
    assert "tiny" in manifest["reference"]["label"] and manifest["reference"]["stages"] == ["vae.latent"]
    assert not [r for r in rows_of(run_dir) if r["model"] == "reference"]


def test_the_decision_reads_spatial_cka_at_the_judged_stage_but_never_against_a_tiny_vae(aligned):
    run_dir, _ = aligned
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = rows_of(run_dir)
    # against the tiny VAE the numbers are measured but no evidence: the verdict leaves them out
    verdict = run_verdict(manifest, rows)
    cka = next(v for v in verdict.per_model if v.model == "dino-tiny").judgement("cka")
    assert cka.status == "missing" and "tiny VAE" in cka.unavailable and "cka" in verdict.missing
    # the same rows from a real reference are judged: spatial CKA at the judged stage
    real = [{k: v for k, v in r.items() if k != "not_judged"} for r in rows]
    cka = next(v for v in run_verdict(manifest, real).per_model if v.model == "dino-tiny").judgement("cka")
    assert cka.status != "missing" and cka.value is not None and cka.criterion.probe == "spatial"
    judged = manifest["models"]["dino-tiny"]["stages"][-1]
    assert cka.value == next(r["value"] for r in real if r["model"] == "dino-tiny" and r["stage"] == judged
                             and r["probe"] == "spatial")
    assert "Phase 2: latent alignment" in (run_dir / "report.html").read_text()


def test_the_dry_run_extracts_the_reference_once_and_plans_its_jobs(aligned):
    _, config = aligned
    plan = plan_jobs(config)
    reference = [e for e in plan["extraction"] if e["runs"] == ["reference"]]
    assert reference and all(e["family"] == "ltx_video_vae" for e in reference)
    assert {e["run"] for e in plan["tasks"] if e["task"] == "latent_alignment"} == {
        "pixels", "dino-tiny", "dino-tiny [random init]"}
