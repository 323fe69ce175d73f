"""The temporal_probe task end to end on tiny inputs: moving shapes generated small, the pixels control and a tiny
DINOv2 read frame by frame; rows for every stage with interval, floor and ceiling; the control views; a rerun from
the stores; image-only families; the decision never reading a control view; config errors in one line."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spatialprobe.config import parse_config
from spatialprobe.decision import Criterion, DecisionConfig, decide
from spatialprobe.errors import SpatialProbeError
from spatialprobe.features import TokenFeatures
from spatialprobe.jobs import RunInfo
from spatialprobe.runner import run
from spatialprobe.spec import ModelSpec
from spatialprobe.store.shards import FeatureCache, stage_key

CLIPS = {"n_train": 40, "n_val": 0, "n_test": 20, "image_size": 32, "preset": "easy", "motion": "accelerating"}


def temporal_config(cache: Path) -> dict:
    return {
        "name": "temporal",
        # the still-image dataset every run reads: as small as the config allows
        "dataset": {"kind": "synthetic_shapes", "shapes": {"n_train": 8, "n_val": 0, "n_test": 8, "image_size": 32}},
        "models": [{"name": "dino-tiny", "family": "dinov2", "path": "tiny", "options": {"resolution": 28},
                    "random_init_control": False}],
        "controls": {"pixels_resolution": 28, "shuffled_tokens": False},
        "tasks": ["temporal_probe"],
        "temporal": {"data": {"frames": 8, "moving_shapes": CLIPS},
                     "attentive": {"steps": 40, "batch": 16, "width": 16}, "pairs_per_clip": 4},
        "bootstrap": 200, "shard_size": 32, "cache_dir": str(cache), "verify": "off",
    }


@pytest.fixture(scope="module")
def temporal_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("temporal")
    config = parse_config(temporal_config(base / "cache"))
    return run(config, base / "out"), config, base


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_every_stage_has_rows_with_interval_floor_ceiling_and_protocol(temporal_run):
    run_dir, _, _ = temporal_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = [r for r in rows_of(run_dir) if r["task"] == "temporal_probe" and r["view"] == "forward"]
    assert manifest["clips"]["kind"] == "moving_shapes" and manifest["clips"]["test"] == 20
    for model in ("pixels", "dino-tiny"):  # how each reads clips, in the manifest
        assert isinstance(manifest["models"][model]["clip_preprocessing"], dict), manifest["models"][model]
    expected = {("direction_accuracy", "linear"), ("direction_accuracy", "attentive"), ("ordering_accuracy", "linear"),
                ("ordering_accuracy", "attentive"), ("pairwise_order_accuracy", "linear")}
    for model in ("pixels", "dino-tiny"):
        for stage in manifest["models"][model]["stages"]:
            mine = [r for r in rows if r["model"] == model and r["stage"] == stage]
            assert {(r["metric"], r["probe"]) for r in mine} == expected, (model, stage)
            for r in mine:
                assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n"] == 20, r
                assert r["floor"] < r["ceiling"] == 1.0 and r["floor_reason"] and r["ceiling_reason"]
                assert r["frames"] == 8 and r["data_kind"] == "moving_shapes" and len(r["classes"]) == 8
                assert (r["probe"] == "attentive") == ("budget" in r)
    # the pixels control's linear probe reads direction above its floor (the attentive probe needs more clips and
    # steps than this test affords: its known answer is in test_temporal_probe.py)
    direction = next(r for r in rows if r["model"] == "pixels" and r["metric"] == "direction_accuracy"
                     and r["probe"] == "linear")
    assert direction["ci_low"] > direction["floor"], direction


def test_shuffled_frames_put_ordering_at_chance_at_the_judged_stage_only(temporal_run):
    run_dir, _, _ = temporal_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = [r for r in rows_of(run_dir) if r["task"] == "temporal_probe"]
    for model in ("pixels", "dino-tiny"):
        judged = manifest["models"][model]["stages"][-1]
        for view in ("shuffled", "repeated"):
            controls = [r for r in rows if r["model"] == model and r["view"] == view]
            assert controls and {r["stage"] for r in controls} == {judged}
            for r in controls:
                if r["metric"] == "ordering_accuracy":
                    assert r["ci_low"] <= 0.5 <= r["ci_high"], r
    # the arrow of time (accelerating shapes) is read from the pixels in order, and lost with the frames shuffled
    def ordering(view):
        return next(r for r in rows if r["model"] == "pixels" and r["view"] == view
                    and r["metric"] == "ordering_accuracy" and r["probe"] == "linear")
    assert ordering("forward")["ci_low"] > 0.5, ordering("forward")


def test_the_report_shows_curves_controls_and_the_contact_sheet(temporal_run):
    run_dir, _, _ = temporal_run
    page = (run_dir / "report.html").read_text()
    assert "Phase 2: temporal probes" in page and page.count("between floor and ceiling") == 3
    assert "data:image/jpeg;base64," in page and "frames shuffled" in page
    sheet = [r for r in rows_of(run_dir) if r.get("samples")]
    assert sheet and {len(r["samples"]) for r in sheet} == {8}  # one clip per direction
    assert sum(bool(r.get("sheet")) for r in sheet) == 2  # one picture per run: pixels and dino-tiny
    assert all(r["stage"] == json.loads((run_dir / "manifest.json").read_text())["models"][r["model"]]["stages"][-1]
               for r in sheet)


def test_a_rerun_reuses_the_stored_clip_features_and_rows(temporal_run, monkeypatch):
    run_dir, config, base = temporal_run
    from spatialprobe import extract
    from spatialprobe.tasks import temporal_probe

    def no_extraction(*args, **kwargs):
        raise AssertionError("a rerun extracted features again")

    def no_fit(self):
        raise AssertionError("a rerun fitted the temporal probes again")

    monkeypatch.setattr(extract, "run_shard", no_extraction)
    monkeypatch.setattr(temporal_probe.TemporalJob, "records", no_fit)
    again = run(config, base / "again")
    strip = ("label",)
    first = [{k: v for k, v in r.items() if k not in strip} for r in rows_of(run_dir) if r["task"] == "temporal_probe"]
    assert first == [{k: v for k, v in r.items() if k not in strip} for r in rows_of(again)
                     if r["task"] == "temporal_probe"]


def test_temporal_stages_restrict_the_probed_stages_and_keep_the_judged_one(temporal_run, monkeypatch):
    """`temporal.stages` names stages across models (llm.* matches nothing in DINOv2 or the pixels control and
    selects nothing there); the judged stage is always probed. Its clips are already stored: nothing extracted."""
    run_dir, config, base = temporal_run
    from spatialprobe import extract

    monkeypatch.setattr(extract, "run_shard", lambda *a, **k: pytest.fail("stored clips were extracted again"))
    restricted = config.model_copy(update={"temporal": config.temporal.model_copy(
        update={"stages": ["vision.block.0", "llm.layer.-1"]})})
    rows = [r for r in rows_of(run(restricted, base / "restricted")) if r["task"] == "temporal_probe"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    dino = manifest["models"]["dino-tiny"]["stages"]
    assert {r["stage"] for r in rows if r["model"] == "dino-tiny"} == {"vision.block.0", dino[-1]} != set(dino)
    assert {r["stage"] for r in rows if r["model"] == "pixels"} == {"vision.embed"}


def test_linear_probes_alone_stream_the_steps_and_give_the_same_rows(temporal_run, monkeypatch):
    """With probes: [linear] the job pools each stored shard per time step as it reads it (never every token
    in memory); the linear rows equal those of the run that held every token."""
    run_dir, config, base = temporal_run
    from spatialprobe.tasks import temporal_probe

    monkeypatch.setattr(temporal_probe, "clip_features", lambda *a, **k: pytest.fail("every token was loaded"))
    linear = config.model_copy(update={"temporal": config.temporal.model_copy(update={"probes": ["linear"]})})
    streamed = [r for r in rows_of(run(linear, base / "linear")) if r["task"] == "temporal_probe"]
    held = [r for r in rows_of(run_dir) if r["task"] == "temporal_probe" and r.get("probe") == "linear"]
    measured = ("model", "stage", "view", "metric", "value", "ci_low", "ci_high", "floor", "ceiling")
    assert streamed and sorted(tuple(r[k] for k in measured) for r in streamed) == sorted(
        tuple(r[k] for k in measured) for r in held)


def test_temporal_stages_shrink_the_dry_runs_clip_disk_estimate(temporal_run):
    _, config, _ = temporal_run
    from spatialprobe.plan import plan_jobs

    restricted = config.model_copy(update={"temporal": config.temporal.model_copy(update={"stages": ["vision.embed"]})})
    every, fewer = (plan_jobs(c)["estimate"]["clip_disk_gb"] for c in (config, restricted))
    assert 0 < fewer < every


def test_the_dry_run_prices_the_attentive_probes_memory_and_linear_alone_needs_none(temporal_run):
    _, config, _ = temporal_run
    from spatialprobe.plan import plan_jobs

    with_attentive = plan_jobs(config)["estimate"]
    linear = config.model_copy(update={"temporal": config.temporal.model_copy(update={"probes": ["linear"]})})
    more_clips = config.model_copy(update={"temporal": config.temporal.model_copy(update={"data": config.temporal.data.model_copy(
        update={"moving_shapes": {**config.temporal.data.moving_shapes, "n_train": 80}})})})
    assert with_attentive["attentive_ram_gb"] > 0 and plan_jobs(linear)["estimate"]["attentive_ram_gb"] == 0
    assert plan_jobs(more_clips)["estimate"]["attentive_ram_gb"] > with_attentive["attentive_ram_gb"]
    assert with_attentive["host_ram_gb"] >= with_attentive["attentive_ram_gb"]


@pytest.mark.parametrize("stage, message", [("vision block", "contains spaces"), ("-1", "without a stage family")])
def test_a_bad_temporal_stage_is_one_line_naming_its_place(tmp_path, stage, message):
    config = temporal_config(tmp_path)
    config["temporal"]["stages"] = ["vision.embed", stage]
    with pytest.raises(SpatialProbeError, match=r"temporal\.stages\[1\].*" + message):
        parse_config(config, "c.yaml")


def test_a_stage_whose_tokens_span_the_whole_clip_has_an_ordering_ceiling_at_chance(temporal_run):
    """The pixels control's stored clip features, each token said to span the whole clip, stored as another
    model's stage: the task's rows then bound ordering (and pairwise order) by chance, and say why."""
    _, config, base = temporal_run
    from spatialprobe.runner import prepare_clips, run_infos
    from spatialprobe.tasks import PlanContext
    from spatialprobe.tasks.temporal_probe import TemporalJob

    clips, cache = prepare_clips(config, console=_quiet()), FeatureCache(base / "cache" / "features")
    pixels = next(info for info in run_infos(config) if info.name == "pixels")
    info = as_other_model(pixels, "merged")

    def whole_clip(feats):
        return TokenFeatures(feats.tokens, feats.footprints, None, {},
                             torch.tensor([0.0, 1.0]).expand_as(feats.times).contiguous())

    store_as(cache, clips, config, pixels.spec.key(), info.spec.key(), "vision.embed", whole_clip)
    ctx = PlanContext(config, None, str(cache.root), str(base / "cache" / "results"), None, clips)
    rows = TemporalJob(info, "vision.embed", "forward", False, ctx).run()
    ordering = [r for r in rows if r["metric"] == "ordering_accuracy"]
    assert ordering and all(r["ceiling"] == 0.5 and "one time step" in r["ceiling_reason"] for r in ordering)
    pairwise = next(r for r in rows if r["metric"] == "pairwise_order_accuracy")
    assert pairwise["value"] is None and "no pairs" in pairwise["unavailable"] and pairwise["ceiling"] == 0.5


def as_other_model(run, name: str) -> RunInfo:
    """`run` under another name and store key (the pixels control's key is its options, not its path)."""
    return replace(run, name=name, spec=replace(run.spec, options=(*run.spec.options, ("test_copy", name))))


def store_as(cache, clips, config, source, target, stage: str, change) -> None:
    """Every stored clip set of `source`'s stage, changed by `change(features)`, stored as `target`'s."""
    from spatialprobe.tasks.temporal_probe import extraction_views

    for view in extraction_views(config):
        for split, n in (("train", 40), ("test", 20)):
            for start in range(0, n, config.shard_size):
                stop = min(start + config.shard_size, n)
                feats = cache.load(stage_key(source, clips.view_hash(view), split, start, stop, stage))
                cache.save(stage_key(target, clips.view_hash(view), split, start, stop, stage), change(feats))


def test_a_stage_without_token_times_gets_unavailable_rows_and_a_missing_shard_stops(temporal_run):
    _, config, base = temporal_run
    from spatialprobe.runner import prepare_clips, run_infos
    from spatialprobe.store.sources import MissingShard
    from spatialprobe.tasks import PlanContext
    from spatialprobe.tasks.temporal_probe import TemporalJob

    clips, cache = prepare_clips(config, console=_quiet()), FeatureCache(base / "cache" / "features")
    pixels = next(info for info in run_infos(config) if info.name == "pixels")
    still = as_other_model(pixels, "still")
    store_as(cache, clips, config, pixels.spec.key(), still.spec.key(), "vision.embed",
             lambda f: TokenFeatures(f.tokens, f.footprints, f.grid_shape, {}, None))
    ctx = PlanContext(config, None, str(cache.root), str(base / "cache" / "results"), None, clips)
    rows = TemporalJob(still, "vision.embed", "forward", False, ctx).run()
    assert len(rows) == 3 and all(r["value"] is None and "times" in r["unavailable"] for r in rows)
    with pytest.raises(MissingShard):  # never extracted: an error, not a row
        TemporalJob(still, "vision.block.0", "forward", False, ctx).run()


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def test_an_image_only_family_gets_unavailable_rows_and_no_clip_jobs(temporal_run):
    _, config, base = temporal_run
    from spatialprobe.tasks import PlanContext
    from spatialprobe.tasks.temporal_probe import TASK

    ctx = PlanContext(config, None, str(base / "cache" / "features"), str(base / "cache" / "results"), None,
                      clips=object())  # any clip data: an image-only family reads none of it
    info = RunInfo("llava", "LLaVA-NeXT", "llava_next", "none", ModelSpec("llava_next", "x"), None)
    assert TASK.model_jobs(info, ctx) == []
    rows = [r for job in TASK.feature_jobs(info, ["llm.layer.0"], "llm.layer.0", ctx) for r in job.run()]
    assert {r["metric"] for r in rows} == {"direction_accuracy", "ordering_accuracy", "pairwise_order_accuracy"}
    assert all(r["value"] is None and r["unavailable"] == "llava_next reads still images only" for r in rows)


def row(model, metric, value, view="forward", probe="linear", stage="s1"):
    return {"model": model, "task": "temporal_probe", "metric": metric, "value": value, "ci_low": value - 0.02,
            "ci_high": value + 0.02, "probe": probe, "stage": stage, "variant": "none", "view": view}


def test_the_decision_never_reads_a_control_view_row():
    criteria = [Criterion(metric="spatial_iou", weight=1, threshold=0.6, direction="above", probe="dense"),
                Criterion(metric="ordering_accuracy", weight=0, threshold=0.75, direction="above")]
    spatial = {**row("a", "spatial_iou", 0.7, probe="dense")}
    # the control view's row comes first and would pass; the model's own (forward) row fails
    results = [spatial, row("a", "ordering_accuracy", 0.95, view="shuffled"), row("a", "ordering_accuracy", 0.5),
               {**row("pixels", "ordering_accuracy", 0.9, view="repeated"), "variant": "pixels"},
               {**row("pixels", "ordering_accuracy", 0.55), "variant": "pixels"}]
    verdict = decide(results, {"a": ["s1"]}, DecisionConfig(criteria=criteria))
    judgement = verdict.per_model[0].judgement("ordering_accuracy")
    assert judgement.status == "fail" and judgement.value == 0.5
    assert judgement.pixels.control_value == 0.55


@pytest.mark.parametrize("temporal, error", [
    ({"data": {"kind": "ssv2"}}, r"temporal\.data\.path: a ssv2 clip dataset needs `path`"),
    ({"data": {"kind": "ssv2", "path": "x", "options": {"clip_per_label": 3}}},
     r"temporal\.data\.options\.clip_per_label: unknown option for ssv2 clips \(did you mean 'clips_per_label'\?\)"),
    ({"data": {"moving_shapes": {"n_trian": 3}}}, r"temporal\.data\.moving_shapes\.n_trian: unknown option"),
    ({"data": {"kind": "folder", "path": "x", "moving_shapes": {"n_train": 3}}},
     r"temporal\.data\.moving_shapes: generator options go with kind moving_shapes"),
    ({"data": {"frames": 1}}, r"temporal\.data\.frames: Input should be greater than or equal to 2"),
    ({"probes": ["mlp"]}, r"temporal\.probes\[0\]"),
    ({"attentive": {"width": 6}}, r"temporal\.attentive\.width: Input should be a multiple of 4"),
    ({"controls": {"shuffled": True}}, r"temporal\.controls\.shuffled: unknown key"),
])
def test_bad_temporal_fields_are_one_line_naming_the_field(temporal, error):
    config = {"models": [{"name": "a", "family": "pixels"}], "tasks": ["temporal_probe"], "temporal": temporal}
    with pytest.raises(SpatialProbeError, match=error) as raised:
        parse_config(config)
    assert "\n" not in str(raised.value)


def test_a_missing_clip_folder_stops_the_run_before_any_model(tmp_path):
    config = parse_config({**temporal_config(tmp_path / "cache"),
                           "temporal": {"data": {"kind": "folder", "path": str(tmp_path / "nowhere")}}})
    with pytest.raises(SpatialProbeError, match=r"^temporal\.data\.path: clip folder not found: .*nowhere$"):
        run(config, tmp_path / "out")


def test_a_class_with_one_training_clip_stops_the_run_before_any_model(tmp_path):
    config = temporal_config(tmp_path / "cache")
    config["temporal"]["data"]["moving_shapes"] = {**CLIPS, "n_train": 3, "n_test": 2}
    with pytest.raises(SpatialProbeError, match=r"^temporal\.data: class '[a-z-]+' has 1 training clip; the linear"):
        run(parse_config(config), tmp_path / "out")
    assert not (tmp_path / "cache" / "tiny").exists()  # no model was built, let alone run
