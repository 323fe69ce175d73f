"""Model specs: keys computed from the spec and the checkpoint's files, never from the label or a loaded model."""
import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import spatialprobe.models
from spatialprobe.cli import app
from spatialprobe.config import load_config, parse_config
from spatialprobe.spec import ModelSpec, spec_runs
from spatialprobe.testing import save_tiny

PHASE1 = Path(__file__).resolve().parents[1] / "configs" / "pivot4-phase1.yaml"
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture(scope="module")
def two_tiny(tmp_path_factory):
    """Two tiny dinov2 checkpoints of one architecture from different seeds."""
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny("dinov2", root / "seed0", seed=0), save_tiny("dinov2", root / "seed1", seed=1)


def safetensors_header(folder: Path) -> bytes:
    with open(folder / "model.safetensors", "rb") as handle:
        return handle.read(int.from_bytes(handle.read(8), "little"))


def test_phase1_dry_run_json_extracts_qwen_once_per_shard_for_four_runs():
    result = CliRunner().invoke(app, ["run", str(PHASE1), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)  # nothing but the JSON on stdout
    qwen = [e for e in plan["extraction"] if e["path"] == QWEN and e["variant"] == "none"]
    shards = {(e["split"], e["start"], e["stop"]) for e in qwen}
    assert len(qwen) == len(shards) == 16 + 8  # 1,000 train + 500 test images in shards of 64
    assert len({e["model_key"] for e in qwen}) == 1
    assert all(e["runs"] == ["qwen2.5-vl-7b", "qwen2.5-vl-7b-mod-a", "qwen2.5-vl-7b-mod-b",
                             "hybrid-owlvit-qwen.semantic"] for e in qwen)
    assert all(e["stages"] == "all" and e["cached"] is False for e in qwen)  # the baseline's "all" absorbs the rest
    # its random-init copy is another checkpoint: extracted on its own
    assert {e["model_key"] for e in plan["extraction"] if e["path"] == QWEN} - {qwen[0]["model_key"]}
    estimate = plan["estimate"]
    assert estimate["gpu_hours"] == pytest.approx(estimate["extraction_gpu_hours"] + estimate["speed_vqa_gpu_hours"]
                                                  + estimate["probe_fit_gpu_hours"])
    assert estimate["gpu_hours"] > 0 and estimate["disk_gb"] > 0 and estimate["host_ram_gb"] > 0


def test_renaming_labels_changes_no_key():
    data = yaml.safe_load(PHASE1.read_text())
    before = [r.spec.key() for r in spec_runs(parse_config(data))]
    for model in data["models"]:
        model["label"] = f"renamed {model['name']}"
    assert [r.spec.key() for r in spec_runs(parse_config(data))] == before


def test_tiny_checkpoints_of_different_seeds_get_different_keys(two_tiny, tmp_path):
    first, second = two_tiny
    assert safetensors_header(first) == safetensors_header(second)  # only the weights' bytes tell them apart
    key = lambda path: ModelSpec("dinov2", str(path)).key()
    assert key(first) != key(second)
    copy = shutil.copytree(first, tmp_path / "copy")
    assert key(copy) == key(first)  # the files identify a checkpoint, not the folder's name


@pytest.mark.parametrize("change", [{"revision": "v2"}, {"dtype": "bfloat16"}, {"quantization": "4bit"},
                                    {"options": (("resolution", 448),)}, {"variant": "random_init", "seed": 7}])
def test_what_changes_the_numbers_changes_the_key(change, two_tiny):
    spec = ModelSpec("dinov2", str(two_tiny[0]))
    assert dataclasses.replace(spec, **change).key() != spec.key()


def test_placement_is_not_in_the_key(two_tiny):
    spec = ModelSpec("dinov2", str(two_tiny[0]))
    placed = dataclasses.replace(spec, load=(("allow_pickle", True), ("device_map", "auto"),
                                             ("trust_remote_code", True)))
    assert placed.key() == spec.key()
    assert dataclasses.replace(spec, variant="random_init", seed=1).key() != \
        dataclasses.replace(spec, variant="random_init", seed=2).key()


def test_hub_id_key_is_its_commit_before_and_after_the_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from spatialprobe import spec as spec_module

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--vlm"
    spec = ModelSpec("qwen2_5_vl", "org/vlm")
    not_cached = spec.key()  # offline and not cached: id and revision only
    assert dataclasses.replace(spec, revision="abc").key() != not_cached
    # a hub that answers: the key names the commit the revision points to
    monkeypatch.setattr(spec_module, "hub_commit", lambda repo_id, revision: "0" * 40)
    before_download = spec.key()
    assert before_download != not_cached
    monkeypatch.setattr(spec_module, "hub_commit", lambda repo_id, revision: None)  # offline again
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "etag1").write_text("{}")
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    os.symlink("../../blobs/etag1", snapshot / "config.json")
    assert spec.key() == before_download  # downloaded: the same commit, the same key (features are reused)
    (repo / "refs" / "main").write_text("1" * 40)
    other = repo / "snapshots" / ("1" * 40)
    other.mkdir()
    os.symlink("../../blobs/etag1", other / "config.json")
    assert spec.key() != before_download  # main moved to another commit: other weights, other features


def test_key_never_loads_the_model(two_tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("key() loaded a model")

    monkeypatch.setattr(spatialprobe.models, "load_backbone", refuse)
    monkeypatch.setattr(spatialprobe.models, "backbone_class", refuse)
    hybrid = ModelSpec("hybrid", "", options=(("parts", (("a", "vision.block.-1"), ("b", "vision.embed"))),),
                       parts=(ModelSpec("dinov2", str(two_tiny[0])), ModelSpec("dinov2", str(two_tiny[1]))))
    assert len(ModelSpec("dinov2", str(two_tiny[0])).key()) == 64 and hybrid.key()


def test_spec_is_a_frozen_picklable_hashable_value():
    spec = next(r.spec for r in spec_runs(load_config(PHASE1)) if r.name == "hybrid-owlvit-qwen")
    assert pickle.loads(pickle.dumps(spec)) == spec and len({spec, dataclasses.replace(spec)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.path = "elsewhere"


def test_hybrid_parts_are_specs_of_their_own_and_load_as_configured():
    config = load_config(PHASE1)
    runs = {r.name: r for r in spec_runs(config)}
    hybrid = runs["hybrid-owlvit-qwen"].spec
    assert hybrid.parts[1].key() == runs["qwen2.5-vl-7b"].spec.key() == runs["qwen2.5-vl-7b-mod-b"].spec.key()
    configured = next(m for m in config.models if m.family == "hybrid").parts
    assert hybrid.part_options() == [p.model_dump() for p in configured]  # what the runner gives the adapter
    other_stage = yaml.safe_load(PHASE1.read_text())
    other_stage["models"][-1]["parts"][1]["stage"] = "llm.layer.-2"
    moved = next(r.spec for r in spec_runs(parse_config(other_stage)) if r.name == "hybrid-owlvit-qwen")
    assert moved.key() != hybrid.key() and moved.parts[1].key() == hybrid.parts[1].key()


def test_random_init_copies_carry_the_runners_seed():
    from spatialprobe.spec import RANDOM_INIT_SEED_OFFSET

    config = parse_config({"seed": 3, "models": [{"name": "d", "family": "dinov2", "path": "tiny"}]})
    names = {r.name: r for r in spec_runs(config)}
    assert names["d [random init]"].spec.seed == 3 + RANDOM_INIT_SEED_OFFSET
    assert names["d"].spec.seed == 0 and names["pixels"].spec.variant == "pixels"


def test_dry_run_keys_a_built_tiny_checkpoint_as_the_run_does(tmp_path):
    from spatialprobe.plan import plan_jobs
    from spatialprobe.runner import resolve_path
    from spatialprobe.testing import ensure_tiny

    config = parse_config({"models": [{"name": "d", "family": "dinov2", "path": "tiny", "random_init_control": False}],
                           "controls": {"pixels": False}, "cache_dir": str(tmp_path)})
    unbuilt = plan_jobs(config)["runs"][0]["model_key"]
    assert unbuilt == ModelSpec("dinov2", "tiny").key()  # nothing built: keyed by the string
    ensure_tiny("dinov2", tmp_path / "tiny" / "dinov2")
    runner_key = spec_runs(config, lambda path, family: resolve_path(path, family, config))[0].spec.key()
    assert plan_jobs(config)["runs"][0]["model_key"] == runner_key != unbuilt
