"""Mod C inside a run: the `finetune` section trains a LoRA adapter on a tiny Qwen2.5-VL before the other jobs,
and the tuned model ("<model> [Mod C]", variant lora:<id>) is probed like the original, with the semantic guard's
rows (VQA before and after, per-block CKA drift), its training curve, and the report's Mod C section."""
import json
import re
from pathlib import Path

import pytest

import spatialprobe.finetune.train as train_module
from spatialprobe.config import load_config, parse_config
from spatialprobe.errors import SpatialProbeError
from spatialprobe.finetune import adapter_fingerprint
from spatialprobe.plan import plan_jobs
from spatialprobe.runner import run

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"n_train": 24, "n_val": 8, "n_test": 16, "image_size": 112, "preset": "easy"}
TUNED = "qwen-tiny [Mod C]"


def modc_config(cache: Path, path: str = "tiny", **finetune) -> dict:
    return {
        "name": "modc", "dataset": {"kind": "synthetic_shapes", "shapes": SHAPES},
        "models": [{"name": "qwen-tiny", "family": "qwen2_5_vl", "path": path, "options": {"resolution": 112},
                    "random_init_control": False}],
        "controls": {"pixels": False, "shuffled_tokens": False},
        "tasks": ["spatial_probe", "vqa"], "probes": ["dense"], "vqa_questions": 32,
        "alignment": {"permutations": 20}, "bootstrap": 50, "shard_size": 16, "cache_dir": str(cache),
        "finetune": {"models": ["qwen-tiny"], "steps": 6, "batch_size": 4, "lr": 2e-2, "checkpoint_every": 3,
                     **finetune},
    }


def read(out: Path) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return json.loads((out / "manifest.json").read_text()), rows


@pytest.fixture(scope="module")
def answering_qwen(tmp_path_factory) -> str:
    """A tiny Qwen2.5-VL taught the run's training questions (`answering.py`): the guard needs answers."""
    from answering import teach_to_answer
    from spatialprobe.data import generate_synthetic_shapes, load_coco
    from spatialprobe.testing import save_tiny

    base = tmp_path_factory.mktemp("answering")
    root = generate_synthetic_shapes(base / "shapes", **SHAPES)  # the run's dataset: the same seed, the same images
    return str(teach_to_answer(save_tiny("qwen2_5_vl", base / "random"), base / "taught", load_coco(root, "train")))


def shape_benchmark(root: Path, folder: Path) -> Path:
    """A benchmark folder in docs/vqa-benchmark.md's layout: the test images with one shape, asked its name (three
    identical human answers: a right reply scores 1)."""
    from spatialprobe.data import load_coco

    test = load_coco(root, "test")
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, record in enumerate(test.records):
        if len(record.annotations) == 1:
            test.load_image(i).save(folder / "images" / f"{i}.png")
            name = test.categories[record.annotations[0]["category_id"]]
            lines.append(json.dumps({"image": f"images/{i}.png", "question": "What shape is in the image?",
                                     "answers": [name] * 3}))
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def modc_run(tmp_path_factory, answering_qwen):
    from spatialprobe.data import generate_synthetic_shapes

    base = tmp_path_factory.mktemp("modc")
    root = generate_synthetic_shapes(base / "shapes", **SHAPES)
    config = parse_config({**modc_config(base / "cache", path=answering_qwen),
                           "vqa_benchmark": str(shape_benchmark(root, base / "bench"))})
    out = run(config, base / "out")
    return config, out, base


def guard_text(before: dict, after: dict) -> tuple[str, str]:
    """The 95% rule on two vqa rows, as the verdict words it, and its status (computed here from the rows)."""
    ratio = after["value"] / before["value"]
    low, high = after["ci_low"] / before["ci_high"], after["ci_high"] / before["ci_low"]
    status = "pass" if low >= 0.95 else "fail" if high < 0.95 else "uncertain"
    return f"VQA {ratio:.3f} [{low:.3f}, {high:.3f}] of qwen-tiny's, at least 0.95: {status}", status


def test_the_semantic_guard_reports_the_95_rule_on_answers_before_and_after(modc_run):
    _, out, _ = modc_run
    manifest, rows = read(out)
    texts, statuses = [], []
    for questions in ("generated", "benchmark"):
        vqa = {r["model"]: r for r in rows if r["metric"] == "vqa_accuracy" and r["questions"] == questions}
        before, after = vqa["qwen-tiny"], vqa[TUNED]
        assert before["value"] > 0 and before["n"] == after["n"], before  # 0 right would give no ratio
        assert after["base_model"] == "qwen-tiny"
        text, status = guard_text(before, after)
        texts.append(f"{questions} questions: {text}")
        statuses.append(status)
    both = "fail" if "fail" in statuses else "pass" if set(statuses) == {"pass"} else "uncertain"
    summary = (out / "summary.md").read_text().replace("\\[", "[").replace("\\]", "]")  # Markdown-escaped
    assert f"semantic guard: {'; '.join(texts)}; both sets: {both}" in summary, summary
    assert manifest["vqa_benchmark"]["questions"] == len((out.parent / "bench" / "questions.jsonl").read_text().splitlines())


def test_the_tuned_model_is_a_run_of_its_own_with_its_base(modc_run):
    _, out, _ = modc_run
    manifest, _ = read(out)
    entry = manifest["models"][TUNED]
    assert entry["control"].startswith("lora:") and entry["base"] == "qwen-tiny"
    # the planted-patch check ran on the tuned checkpoint too, at every stage
    assert entry["verify"]["passed"] and set(entry["verify"]["stages"]) == set(entry["stages"])


def test_every_task_probes_the_tuned_model_at_every_stage(modc_run):
    _, out, _ = modc_run
    manifest, rows = read(out)
    for model in ("qwen-tiny", TUNED):
        probed = {r["stage"] for r in rows if r["model"] == model and r["metric"] == "spatial_iou"}
        assert probed == set(manifest["models"][model]["stages"])
    vqa = {r["model"]: r for r in rows if r["metric"] == "vqa_accuracy"}
    assert set(vqa) == {"qwen-tiny", TUNED} and vqa[TUNED]["variant"] == manifest["models"][TUNED]["control"]
    assert vqa[TUNED]["ci_low"] <= vqa[TUNED]["value"] <= vqa[TUNED]["ci_high"]


def test_drift_is_one_before_the_first_lora_layer_and_moves_after_it(modc_run):
    _, out, _ = modc_run
    manifest, rows = read(out)
    drift = {r["stage"]: r for r in rows if r["model"] == TUNED and r["metric"] == "cka_to_original"}
    vision = [s for s in manifest["models"][TUNED]["stages"] if s.startswith("vision.")]
    assert set(drift) == set(vision)  # one row per encoder stage
    # the patch embedding sits before every LoRA layer: the tuned encoder's features there are the original's
    assert drift["vision.embed"]["value"] == pytest.approx(1.0, abs=1e-9)
    last = drift[vision[-1]]
    # CKA of identical features is 1 to ~1e-12 in float64; six LoRA steps on the taught model move it ~1e-6
    assert last["value"] < 1 - 1e-8 and last["ci_low"] <= last["value"] <= last["ci_high"]


def test_training_curve_row_and_report_section(modc_run):
    config, out, _ = modc_run
    _, rows = read(out)
    (record,) = [r for r in rows if r["metric"] == "finetune_val_loss"]
    assert len(record["train_losses"]) == config.finetune.steps
    assert [step for step, _ in record["val_losses"]] == [0, 3, 6]
    assert record["value"] == min(loss for _, loss in record["val_losses"])
    report = (out / "report.html").read_text()
    assert "<h2>Mod C</h2>" in report and "VQA accuracy after (tuned)" in report and "Mod C, qwen-tiny [Mod C]" in report


def test_a_rerun_trains_nothing(modc_run, monkeypatch):
    config, out, _ = modc_run
    before = read(out)[1]

    def refuses(*args, **kwargs):
        raise AssertionError("a finished adapter was trained again")

    monkeypatch.setattr(train_module, "finetune", refuses)
    run(config, out, on_existing="resume")
    assert read(out)[1] == before


class Stop(Exception):
    pass


def test_a_killed_fine_tune_resumes_from_its_checkpoint(modc_run, tmp_path, monkeypatch):
    config, _, base = modc_run
    killed = parse_config(modc_config(tmp_path / "cache", path=config.models[0].path))
    real, seen = train_module.finetune, []

    def dies_after_step_4(*args, **kwargs):
        def on_step(step):
            if step == 4:
                raise KeyboardInterrupt
        return real(*args, on_step=on_step, **kwargs)

    monkeypatch.setattr(train_module, "finetune", dies_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(killed, tmp_path / "out")

    def resumes_then_stops(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        raise Stop  # the fine-tune is what this test is about: no need to probe

    monkeypatch.setattr(train_module, "finetune", resumes_then_stops)
    with pytest.raises(Stop):
        run(killed, tmp_path / "out", on_existing="resume")
    assert seen[0].resumed_from == 3  # the checkpoint of step 3, not a fresh start
    # and the adapter is the uninterrupted run's, bit for bit
    (uninterrupted,) = (base / "cache" / "finetune").glob("*/adapter")
    assert adapter_fingerprint(seen[0].adapter) == adapter_fingerprint(uninterrupted)


def test_dry_run_of_the_modc_config_lists_the_tuned_run_and_its_hours():
    config = load_config(ROOT / "configs" / "pivot4-modc.yaml")
    plan = plan_jobs(config)
    tuned = [r for r in plan["runs"] if r["name"] == "qwen2.5-vl-7b [Mod C]"]
    assert tuned and tuned[0]["control"].startswith("lora:")
    # the dry run's top table: the tuned run's row is its base's (weights, stages), named and controlled as the run
    from spatialprobe.plan import plan as model_table
    rows = {p.name: p for p in model_table(config)}
    row, base = rows["qwen2.5-vl-7b [Mod C]"], rows["qwen2.5-vl-7b"]
    assert row.control == tuned[0]["control"] and (row.params, row.stages) == (base.params, base.stages)
    estimate = plan["estimate"]
    assert estimate["finetune_gpu_hours"] > 0
    doubled = plan_jobs(config.model_copy(update={"finetune": config.finetune.model_copy(
        update={"steps": 2 * config.finetune.steps})}))["estimate"]
    assert doubled["gpu_hours"] - estimate["gpu_hours"] == pytest.approx(
        doubled["finetune_gpu_hours"] - estimate["finetune_gpu_hours"])
    assert doubled["finetune_gpu_hours"] > 1.9 * estimate["finetune_gpu_hours"]


def test_the_dry_run_command_names_the_tuned_run_and_the_fine_tune_hours():
    from typer.testing import CliRunner

    from spatialprobe.cli import app

    result = CliRunner().invoke(app, ["run", str(ROOT / "configs" / "pivot4-modc.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "qwen2.5-vl-7b [Mod C]" in result.output
    assert re.search(r"Mod C fine-tune \d+\.\d", result.output)


@pytest.mark.parametrize("change, message", [
    ({"finetune": {"models": ["nope"]}}, "finetune.models[0]: 'nope' is not a name in `models`"),
    ({"dataset": {"val_split": "test"}}, "dataset.val_split: 'test' is the test split"),
    ({"tasks": ["spatial_probe", "finetune"], "finetune": None}, "tasks: task 'finetune' needs a `finetune` section"),
])
def test_bad_finetune_settings_are_one_line_naming_the_field(tmp_path, change, message):
    config = modc_config(tmp_path) | change
    if config["finetune"] is None:
        del config["finetune"]
    with pytest.raises(SpatialProbeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(config, "c.yaml")


def test_without_a_val_split_a_seeded_share_of_train_is_held_out(tmp_path):
    from spatialprobe.data import generate_synthetic_shapes, load_coco
    from spatialprobe.finetune.runs import finetune_splits, val_split_name

    root = generate_synthetic_shapes(tmp_path / "d", n_train=20, n_val=0, n_test=8, image_size=32)
    config = parse_config(modc_config(tmp_path) | {"dataset": {"val_fraction": 0.25}})
    assert val_split_name(root, config) is None
    train = load_coco(root, "train")
    tuned_on, chosen_on = finetune_splits(root, train, config, None)
    assert (len(tuned_on), len(chosen_on)) == (15, 5)
    assert not set(tuned_on.indices) & set(chosen_on.indices)
    assert finetune_splits(root, train, config, None)[1].indices == chosen_on.indices  # seeded


def test_the_mod_c_section_escapes_names_and_says_what_is_not_measured():
    from spatialprobe.tasks.finetune_report import mod_c_section

    tuned, base = "q<b>x [Mod C]", "q<b>x"
    manifest = {"config": {}, "models": {
        base: {"control": "none", "stages": ["vision.embed", "vision.block.0"]},
        tuned: {"control": "lora:abc", "base": base, "stages": ["vision.embed", "vision.block.0"]}}}
    rows = [{"model": m, "task": "spatial_probe", "probe": "dense", "metric": "spatial_iou", "stage": s, "value": v,
             "ci_low": v - 0.1, "ci_high": v + 0.1, "variant": manifest["models"][m]["control"]}
            for m, values in ((base, (0.2, 0.3)), (tuned, (0.2, 0.7))) for s, v in zip(("vision.embed", "vision.block.0"), values)]
    rows.append({"model": base, "task": "vqa", "probe": "generate", "metric": "vqa_accuracy", "stage": None,
                 "value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "variant": "none"})
    section = mod_c_section(manifest, rows)
    assert "<b>" not in section and "q&lt;b&gt;x [Mod C]" in section
    assert "VQA accuracy before (original): 0.800 [0.700, 0.900]" in section
    assert "VQA accuracy after (tuned): not measured" in section
    assert mod_c_section({"models": {base: manifest["models"][base]}}, rows) == ""  # no tuned run, no section
