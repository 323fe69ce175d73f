"""Presets (the proposal's Qwen modifications) and `run --dry-run`: the plan, offline, loading nothing."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

import spatialprobe as sp
from spatialprobe.cli import app
from spatialprobe.config import load_config, parse_config
from spatialprobe.plan import params_from_name, plan, safetensors_params
from spatialprobe.testing import save_tiny

PHASE1 = Path(__file__).resolve().parents[1] / "configs" / "pivot4-phase1.yaml"


@pytest.mark.parametrize("name,billions", [
    ("Qwen/Qwen2.5-VL-7B-Instruct", 7.0), ("llava-hf/llava-v1.6-34b-hf", 34.0), ("OpenGVLab/InternVL2-8B-MPO", 8.0),
    ("THUDM/cogvlm2-llama3-chat-19B", 19.0), ("Qwen/Qwen2.5-VL-3B", 3.0), ("org/model-0.5B", 0.5),
    ("google/owlvit-base-patch32", None), ("facebook/dinov2-small", None)])
def test_parameter_count_from_the_name(name, billions):
    assert params_from_name(name) == billions


def test_parameter_count_from_safetensors_headers(tmp_path):
    folder = save_tiny("dinov2", tmp_path / "d")
    model = sp.load_backbone("dinov2", str(folder)).model
    exact = sum(t.numel() for t in model.state_dict().values()) / 1e9
    assert safetensors_params(str(folder)) == pytest.approx(exact)


def test_presets_set_stages_and_names():
    models = parse_config({"models": [
        {"name": "a", "family": "qwen2_5_vl", "path": "x", "preset": "mod_a"},
        {"name": "b", "family": "qwen2_5_vl", "path": "x", "preset": "mod_b", "label": "Qwen2.5-VL-7B"}]}).models
    assert models[0].stages == ["vision.block.-1"] and "Mod A: pre-merger" in models[0].label
    assert models[1].stages == ["vision.*", "projector.*"] and models[1].label.startswith("Qwen2.5-VL-7B — Mod B")
    with pytest.raises(sp.SpatialProbeError, match=r"models\[0\]: .*preset mod_a sets the stages itself"):
        parse_config({"models": [{"name": "a", "family": "qwen2_5_vl", "preset": "mod_a", "stages": ["vision.embed"]}]})
    with pytest.raises(sp.SpatialProbeError, match=r"models\[0\].preset: "):
        parse_config({"models": [{"name": "a", "family": "qwen2_5_vl", "preset": "mod_c"}]})


def test_mod_b_reads_the_vision_encoder_only(tmp_path):
    qwen = sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", tmp_path / "q")))
    stages = qwen.resolve_stages(parse_config({"models": [
        {"name": "b", "family": "qwen2_5_vl", "preset": "mod_b"}]}).models[0].stages)
    assert stages[-1] == "projector.out" and not any(s.startswith("llm.") for s in stages)


def test_phase1_config_plans_offline():
    config = load_config(PHASE1)
    families = {m.family for m in config.models}
    assert {"qwen2_5_vl", "llava_next", "internvl", "cogvlm2", "hybrid"} <= families
    assert {m.preset for m in config.models} >= {"mod_a", "mod_b"}
    planned = {(p.name, p.control): p for p in plan(config)}
    qwen = planned[("qwen2.5-vl-7b", "none")]
    assert qwen.params == 7.0 and qwen.memory_gb == pytest.approx(7.0 * 2 * 1.2)  # bfloat16 weights + margin
    assert planned[("llava-next-34b", "none")].memory_gb == pytest.approx(34 * 0.5 * 1.2)  # 4-bit
    assert planned[("qwen2.5-vl-7b-mod-a", "none")].stages == "vision.block.-1"
    assert all(p.shards == 16 + 8 for p in planned.values())  # 1000 train + 500 test images in shards of 64


def test_dry_run_command_lists_jobs_without_loading():
    result = CliRunner().invoke(app, ["run", str(PHASE1), "--dry-run"])
    assert result.exit_code == 0, result.output
    for expected in ("qwen2.5-vl-7b-mod-b", "cogvlm2-19b", "hybrid.concat", "extraction jobs", "estimated from the name"):
        assert expected in result.output


def test_dry_run_shows_shared_extractions_and_totals():
    result = CliRunner().invoke(app, ["run", str(PHASE1), "--dry-run"])
    assert result.exit_code == 0, result.output
    shared = [line for line in result.stdout.splitlines() if "Qwen/Qwen2.5-VL-7B-Instruct, none)" in line]
    assert len(shared) == 1 and "shared by qwen2.5-vl-7b, qwen2.5-vl-7b-mod-a, qwen2.5-vl-7b-mod-b, " \
                                "hybrid-owlvit-qwen.semantic" in shared[0]
    assert "GPU-hours" in result.stdout and "disk" in result.stdout


def test_json_needs_dry_run():
    result = CliRunner().invoke(app, ["run", str(PHASE1), "--json"])
    assert result.exit_code == 2 and "--json prints the plan: it goes with --dry-run" in result.output


def test_presets_extract_the_union_of_their_stages():
    from spatialprobe.plan import plan_jobs

    config = parse_config({"models": [
        {"name": "a", "family": "qwen2_5_vl", "path": "org/vlm", "preset": "mod_a", "random_init_control": False},
        {"name": "b", "family": "qwen2_5_vl", "path": "org/vlm", "preset": "mod_b", "random_init_control": False}],
        "controls": {"pixels": False}})
    extraction = plan_jobs(config)["extraction"]
    assert {e["model_key"] for e in extraction} == {extraction[0]["model_key"]}
    assert extraction[0]["stages"] == ["vision.block.-1", "vision.*", "projector.*"] and extraction[0]["runs"] == ["a", "b"]


def test_stored_shards_are_cached_and_their_measured_seconds_replace_the_assumption(tmp_path):
    from spatialprobe.store.shards import FeatureCache
    from spatialprobe.data import dataset_hash, generate_synthetic_shapes
    from spatialprobe.plan import plan_jobs
    from spatialprobe.runner import load_split

    shapes = {"n_train": 8, "n_val": 0, "n_test": 8, "image_size": 32}
    root = generate_synthetic_shapes(tmp_path / "data", **shapes)
    config = parse_config({"models": [{"name": "d", "family": "dinov2", "path": str(save_tiny("dinov2", tmp_path / "d")),
                                       "random_init_control": False}],
                           "controls": {"pixels": False}, "dataset": {"path": str(root), "shapes": shapes},
                           "shard_size": 4, "cache_dir": str(tmp_path / "cache")})
    data_hash = dataset_hash(root, load_split(root, "train", config), load_split(root, "test", config))
    before = plan_jobs(config)
    assert before["data_hash"] == data_hash and not any(e["cached"] for e in before["extraction"])
    key = before["extraction"][0]["model_key"]
    every = ["vision.embed", "vision.block.0", "vision.block.1"]
    store = FeatureCache(tmp_path / "cache" / "features")
    store.write_shard_index(key, data_hash, "train", 0, 4, stages=every, all_stages=every, seconds=2.0, images=4)
    store.write_shard_index(key, data_hash, "train", 4, 8, stages=every[:1], all_stages=every, seconds=6.0, images=4)
    after = plan_jobs(config)
    assert [e["cached"] for e in after["extraction"]] == [True, False, False, False]  # the second lacks two stages
    model = after["models"][0]
    assert model["seconds_per_image"] == pytest.approx((0.5 + 1.5) / 2) and model["seconds_source"].startswith("measured")
    assert model["images_to_extract"] == 12 and model["gpu_hours"] == pytest.approx(12 * 1.0 / 3600)


PHASE2 = Path(__file__).parent.parent / "configs" / "pivot4-phase2.yaml"


def phase2_estimate(**changes) -> dict:
    """The dry run's estimate of the Phase 2 config, with top-level sections changed (offline, nothing built)."""
    import yaml

    from spatialprobe.plan import plan_jobs

    raw = yaml.safe_load(PHASE2.read_text())
    raw["alignment"].pop("phase1_run", None)  # no Phase 1 folder here: every model is planned
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return plan_jobs(parse_config(raw))["estimate"]


def test_the_dry_run_prices_the_phase2_tasks():
    estimate = phase2_estimate()
    for share in ("alignment_gpu_hours", "adapter_gpu_hours", "temporal_gpu_hours"):
        assert estimate[share] > 0, share
    parts = ("extraction_gpu_hours", "speed_vqa_gpu_hours", "probe_fit_gpu_hours", "alignment_gpu_hours",
             "adapter_gpu_hours", "temporal_gpu_hours")
    assert estimate["gpu_hours"] == pytest.approx(sum(estimate[p] for p in parts))


def test_adapter_hours_grow_with_the_training_budget_and_clip_hours_with_the_frames():
    one, two, three = (phase2_estimate(alignment={"adapter": {"steps": k * 1000}}) for k in (1, 2, 3))
    hours = [e["adapter_gpu_hours"] for e in (one, two, three)]
    # training grows linearly with the steps; the decodes of the test images do not change
    assert hours[1] > hours[0] and hours[2] - hours[1] == pytest.approx(hours[1] - hours[0])
    assert one["alignment_gpu_hours"] == three["alignment_gpu_hours"]
    base = phase2_estimate()
    frames = phase2_estimate(temporal={"data": {"kind": "ssv2", "path": "/data/ssv2", "frames": 32}})
    assert frames["temporal_gpu_hours"] > 1.5 * base["temporal_gpu_hours"]


def test_the_disk_estimate_counts_every_clip_view_of_every_video_model():
    base = phase2_estimate()
    assert base["clip_disk_gb"] > 0 and base["disk_gb"] > base["clip_disk_gb"]
    doubled = phase2_estimate(temporal={"data": {"kind": "ssv2", "path": "/data/ssv2", "frames": 32}})
    assert doubled["clip_disk_gb"] == pytest.approx(2 * base["clip_disk_gb"])  # the config reads 16 frames
    without = phase2_estimate(temporal={"controls": {"frames_shuffled": False, "frame_repeated": False}})
    assert without["clip_disk_gb"] == pytest.approx(base["clip_disk_gb"] * 2 / 5)  # forward and reversed of 5 views


def test_runs_of_one_checkpoint_read_the_clips_once():
    import yaml

    from spatialprobe.plan import plan_jobs

    raw = yaml.safe_load(PHASE2.read_text())
    raw["alignment"].pop("phase1_run", None)
    raw["temporal"]["probes"] = ["linear"]  # no per-run probe training: only the clips' extraction is priced
    once = plan_jobs(parse_config(raw))["estimate"]
    renamed = dict(raw["models"][0], name="the-same-checkpoint-again")
    raw["models"].append(renamed)
    twice = plan_jobs(parse_config(raw))["estimate"]
    assert twice["temporal_gpu_hours"] == pytest.approx(once["temporal_gpu_hours"])
    assert twice["clip_disk_gb"] == pytest.approx(once["clip_disk_gb"])
