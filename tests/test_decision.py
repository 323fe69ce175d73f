"""The decision engine on hand-made result sets, one per row of the proposal's decision matrix."""
import re

import pytest

from spatialprobe.decision import Criterion, DecisionConfig, check_decision, decide, judge, judged_stage, tier
from spatialprobe.errors import SpatialProbeError

STAGES = ["vision.block.0", "projector.out", "llm.layer.0", "llm.layer.1"]


def row(model, metric, value, half_width=0.01, stage="llm.layer.1", probe="dense"):
    return {"model": model, "stage": stage, "probe": probe, "metric": metric, "value": value,
            "ci_low": value - half_width, "ci_high": value + half_width}


def measured(model, spatial, bbox=0.6, lpips=0.2, speed=1.2, half_width=0.01):
    return [row(model, "spatial_iou", spatial, half_width), row(model, "bbox_iou", bbox),
            row(model, "lpips_adapter", lpips, probe=None), {**row(model, "speed_ratio", speed, 0, stage=None, probe=None),
                                                     "ci_low": None, "ci_high": None}]


def test_one_model_exceeds_all_thresholds():
    results = measured("a", 0.75) + measured("b", 0.40)
    verdict = decide(results, {"a": STAGES, "b": STAGES})
    assert verdict.outcome == "One model exceeds all thresholds" and verdict.models == ["a"] and verdict.certain
    assert verdict.action == "Switch to that model"
    # cka (latent_alignment) and the temporal targets of 3.2 (no task writes them yet) are not in these rows
    assert verdict.missing == ["cka", "direction_accuracy", "ordering_accuracy"] and "cka" not in verdict.rests_on
    assert any("not measured" in r and "cka" in r for r in verdict.reasons)


def test_multiple_models_are_ranked_by_speed():
    results = measured("slow", 0.8, speed=1.9) + measured("fast", 0.7, speed=0.8)
    verdict = decide(results, {"slow": STAGES, "fast": STAGES})
    assert verdict.outcome == "Multiple models exceed thresholds" and verdict.models == ["fast", "slow"]


def test_spatial_short_but_above_half_means_hybrid():
    results = measured("a", 0.55) + measured("b", 0.20)
    verdict = decide(results, {"a": STAGES, "b": STAGES})
    assert verdict.outcome == "No model exceeds spatial threshold but one is >0.5"
    assert verdict.action == "Investigate hybrid approach" and verdict.models == ["a"]


def test_all_fail_spatial_means_pivot():
    verdict = decide(measured("a", 0.10) + measured("b", 0.45), {"a": STAGES, "b": STAGES})
    assert verdict.outcome == "All models fail spatial threshold" and verdict.models == []


def test_uncertain_interval_is_not_a_pass():
    # 0.61 with interval [0.56, 0.66] straddles 0.60: neither pass nor fail
    verdict = decide(measured("a", 0.61, half_width=0.05), {"a": STAGES})
    assert verdict.per_model[0].status("spatial_iou") == "uncertain"
    assert not verdict.certain
    assert verdict.outcome == "No model exceeds spatial threshold but one is >0.5"
    assert "One model exceeds all thresholds" in verdict.reasons[0] and "a: spatial_iou" in verdict.reasons[0]


def test_spatial_met_but_another_criterion_failed_is_named_as_a_gap():
    verdict = decide(measured("a", 0.8, lpips=0.6), {"a": STAGES})
    assert verdict.outcome.startswith("A model meets the spatial threshold but fails another criterion")
    assert verdict.per_model[0].status("lpips_adapter") == "fail"


def test_judged_stage_defaults_to_last_llm_layer_and_best_stage_is_shown():
    results = measured("a", 0.3) + [row("a", "spatial_iou", 0.9, stage="vision.block.0")]
    v = decide(results, {"a": STAGES}).per_model[0]
    assert v.stage == "llm.layer.1" and v.best_stage["spatial_iou"] == ("vision.block.0", 0.9)
    encoder_only = decide(results, {"a": ["vision.block.0"]}).per_model[0]
    assert encoder_only.stage == "vision.block.0" and encoder_only.status("spatial_iou") == "pass"
    chosen = decide(results, {"a": STAGES}, DecisionConfig(stage={"a": "vision.block.0"})).per_model[0]
    assert chosen.stage == "vision.block.0"


def test_phase_gate_and_weighted_score():
    v = decide(measured("a", 0.58), {"a": STAGES}).per_model[0]
    assert v.phase_gate == "pass"  # > 0.50 goes on to Phase 2 although it misses 0.60
    # measured: spatial (0.40, fail), bbox (0.20, pass), lpips (0.15, pass), speed (0.10, pass)
    assert v.weighted_score() == pytest.approx((0.20 + 0.15 + 0.10) / 0.85)


def test_judge_and_tiers_by_hand():
    above = Criterion(metric="m", weight=1, threshold=0.6, direction="above", target=0.65, acceptable=0.6, fail=0.55)
    assert judge(0.7, 0.62, 0.78, above) == "pass"
    assert judge(0.5, 0.45, 0.59, above) == "fail"
    assert judge(0.6, 0.58, 0.62, above) == "uncertain"
    assert judge(None, None, None, above) == "missing"
    assert [tier(v, above) for v in (0.7, 0.62, 0.57, 0.5)] == ["target", "acceptable", "marginal", "fail"]
    below = Criterion(metric="lpips_adapter", weight=1, threshold=0.35, direction="below", target=0.30, acceptable=0.35, fail=0.40)
    assert [tier(v, below) for v in (0.2, 0.33, 0.38, 0.5)] == ["target", "acceptable", "marginal", "fail"]
    assert judge(0.3, 0.25, 0.34, below) == "pass" and judge(0.5, 0.41, 0.6, below) == "fail"


def test_unavailable_metric_counts_as_missing():
    results = measured("a", 0.75)
    lpips = next(r for r in results if r["metric"] == "lpips_adapter")
    lpips.update(value=None, ci_low=None, ci_high=None, unavailable="no AlexNet weights")
    verdict = decide(results, {"a": STAGES})
    assert verdict.per_model[0].status("lpips_adapter") == "missing" and "lpips_adapter" in verdict.missing
    assert verdict.outcome == "One model exceeds all thresholds"


def test_a_model_unmeasurable_at_its_judged_stage_does_not_exceed_thresholds():
    # e.g. Kosmos-2's LLM layers hold only placeless queries: no dense probe, so no spatial_iou or bbox_iou
    results = measured("a", 0.75) + [{**row("q", "lpips_adapter", 0.2, probe=None)}]
    verdict = decide(results, {"a": STAGES, "q": STAGES})
    assert verdict.outcome == "One model exceeds all thresholds" and verdict.models == ["a"]
    assert "spatial_iou" in verdict.rests_on and "bbox_iou" in verdict.rests_on
    assert any(r.startswith("q at llm.layer.1") and "spatial_iou, bbox_iou" in r and "not measured" in r
               for r in verdict.reasons)
    # with the primary criterion measured for no model there is nothing to decide ("Pivot" before)
    alone = decide([row("q", "lpips_adapter", 0.2, probe=None)], {"q": STAGES})
    assert alone.outcome.startswith("No verdict") and "spatial_iou" in alone.outcome and alone.models == []
    assert not alone.certain and "Pivot" not in alone.action and "spatial_iou" in alone.action


# --- guarded verdicts (issue 7) ---------------------------------------------------------------------

TOWER = ["vision.embed", "vision.block.0", "vision.block.1", "projector.out", "llm.layer.0", "llm.layer.1"]


def test_no_models_gives_no_verdict_not_pivot():
    verdict = decide([], {})
    assert verdict.outcome.startswith("No verdict") and not verdict.certain and verdict.models == []
    assert "Pivot" not in verdict.outcome + verdict.action and "model" in verdict.action


def test_a_misspelled_primary_metric_gives_no_verdict_and_fails_the_check():
    # `spatial_IoU` is measured for nobody: the verdict cannot say "Switch to that model"
    criteria = [Criterion(metric="spatial_IoU", weight=0.4, threshold=0.6, direction="above", probe="dense"),
                Criterion(metric="bbox_iou", weight=0.2, threshold=0.5, direction="above", probe="dense")]
    config = DecisionConfig(criteria=criteria)
    verdict = decide(measured("a", 0.29, bbox=0.6), {"a": STAGES}, config)
    assert verdict.outcome.startswith("No verdict") and verdict.models == [] and not verdict.certain
    with pytest.raises(ValueError, match=r"^decision\.criteria\[0\]\.metric: unknown metric 'spatial_IoU'; known: .*spatial_iou"):
        check_decision(config, TASKS, PROBES, ["a"])


TASKS, PROBES = ["spatial_probe", "reconstruction_probe", "speed", "vqa"], ["linear", "pooled", "dense"]


@pytest.mark.parametrize("change, names, error", [
    ({"criteria": [Criterion(metric="spatial_iou", weight=1, threshold=0.6, direction="above", probe="dens")]}, ["a"],
     r"^decision\.criteria\[0\]\.probe: spatial_iou does not come from probe 'dens'; it comes from probe dense$"),
    ({"criteria": [Criterion(metric="spatial_iou", weight=1, threshold=0.6, direction="above"),
                   Criterion(metric="speed_ratio", weight=1, threshold=2, direction="below", probe="dense")]}, ["a"],
     r"^decision\.criteria\[1\]\.probe: speed_ratio does not come from probe 'dense'; it has no probe"),
    ({"spatial_metric": "bbox_iou", "criteria": [
        Criterion(metric="bbox_iou", weight=1, threshold=0.5, direction="above", probe="linear")]}, ["a"],
     r"^decision\.criteria\[0\]\.probe: probe 'linear' is not run \(probes: pooled, dense\)$"),
    ({"spatial_metric": "psnr", "criteria": [Criterion(metric="psnr", weight=1, threshold=20, direction="above")]},
     ["a"], r"^decision\.spatial_metric: psnr comes from the reconstruction_probe task, which `tasks` leaves out$"),
    ({"spatial_metric": "direction_accuracy",
      "criteria": [Criterion(metric="direction_accuracy", weight=1, threshold=0.8, direction="above")]}, ["a"], r"^decision\.spatial_metric: direction_accuracy comes from the temporal_probe task, which `tasks` leaves out$"),
    ({"spatial_metric": "map_50"}, ["a"], r"^decision\.spatial_metric: 'map_50' is no criterion's metric"),
    ({"stage": {"b": "llm.layer.-1"}}, ["a"], r"^decision\.stage: no model named 'b'; models: a$"),
    ({"stage": {"a": "vision..block"}}, ["a"], r"^decision\.stage\.a: stage 'vision\.\.block' has an empty part"),
    ({"stage": "-1"}, ["a"], r"^decision\.stage: stage '-1' is an index without a stage family"),
    ({"stage": "vision.block[0"}, ["a"], r"^decision\.stage: stage 'vision\.block\[0' has an unclosed \["),
    ({"baseline": "qwen"}, ["a"], r"^decision\.baseline: no model named 'qwen'; models: a$"),
    ({}, [], r"^models: none configured; a verdict needs at least one model$"),
])
def test_check_decision_names_the_field_in_one_line(change, names, error):
    tasks = ["spatial_probe", "speed"] if change.get("spatial_metric") == "psnr" else TASKS
    probes = ["pooled", "dense"] if change.get("spatial_metric") == "bbox_iou" else PROBES
    with pytest.raises(ValueError, match=error):
        check_decision(DecisionConfig(**change), tasks, probes, names)


def test_check_decision_accepts_the_defaults_and_the_proposals_unbuilt_metrics():
    check_decision(DecisionConfig(), TASKS, PROBES, ["a", "b"])
    check_decision(DecisionConfig(), ["spatial_probe"], ["dense"], ["a"])  # lpips and speed then listed as missing
    planned = [Criterion(metric=m, weight=0.1, threshold=0.5, direction="above")
               for m in ("cka", "direction_accuracy", "ordering_accuracy")]  # cka: built, not measured here
    config = DecisionConfig(criteria=DecisionConfig().criteria[:1] + planned)
    check_decision(config, TASKS, PROBES, ["a", "b"])
    check_decision(config.model_copy(update={"stage": {"a": "vision.block.-1", "b": "vision.*"}}), TASKS, PROBES, ["a", "b"])
    assert set(decide(measured("a", 0.7), {"a": STAGES}, config).missing) == {c.metric for c in planned}


def test_decision_stage_uses_the_stages_syntax():
    config = lambda stage: DecisionConfig(stage=stage)  # noqa: E731
    assert judged_stage("a", TOWER, config("vision.block.-1")) == "vision.block.1"
    assert judged_stage("a", TOWER, config("llm.layer.-2")) == "llm.layer.0"
    assert judged_stage("a", TOWER, config("vision.*")) == "vision.block.1"  # the last match
    assert judged_stage("a", TOWER, config({"a": "projector.out"})) == "projector.out"
    assert judged_stage("b", TOWER, config({"a": "projector.out"})) == "llm.layer.1"  # auto
    # the pixels control has one stage and is judged there, whatever decision.stage says of the models
    assert judged_stage("pixels", ["vision.embed"], config("llm.layer.-1")) == "vision.embed"
    results = measured("a", 0.2) + [row("a", "spatial_iou", 0.8, stage="vision.block.1"),
                                    row("a", "bbox_iou", 0.7, stage="vision.block.1")]
    verdict = decide(results, {"a": TOWER}, config("vision.block.-1"))
    assert verdict.per_model[0].stage == "vision.block.1" and verdict.outcome == "One model exceeds all thresholds"


@pytest.mark.parametrize("stage", ["vision.block.-3", "vision.block.7", "detector.*", {"a": "llm.layer.-9"}])
def test_decision_stage_matching_nothing_is_an_error_naming_model_and_stage(stage):
    chosen = stage["a"] if isinstance(stage, dict) else stage
    with pytest.raises(SpatialProbeError, match=rf"^decision\.stage: model 'a' has no stage '{re.escape(chosen)}'"):
        decide(measured("a", 0.7), {"a": TOWER}, DecisionConfig(stage=stage))


def control_rows(model, control, spatial, half_width=0.02, stage="llm.layer.1", bbox=0.2):
    return [{**row(model, "spatial_iou", spatial, half_width, stage=stage), "control": control},
            {**row(model, "bbox_iou", bbox, half_width, stage=stage), "control": control}]


def quickstart_like():
    """The quickstart's numbers: DINOv2-S at 0.748, its random-init copy at 0.684, raw pixels lower."""
    return (measured("a", 0.748, bbox=0.62, half_width=0.02) + control_rows("a [random init]", "random_init", 0.684)
            + control_rows("pixels", "pixels", 0.40, stage="vision.embed"))


def test_margins_over_the_controls_have_conservative_intervals_and_are_stated():
    verdict = decide(quickstart_like(), {"a": STAGES})
    spatial = verdict.per_model[0].judgement("spatial_iou")
    assert spatial.random_init.value == pytest.approx(0.064) and spatial.random_init.control_status == "pass"
    # [0.728 - 0.704, 0.768 - 0.664]: the difference of the two 95% intervals
    assert spatial.random_init.ci == pytest.approx((0.024, 0.104))
    assert spatial.pixels.value == pytest.approx(0.348) and spatial.pixels.ci == pytest.approx((0.308, 0.388))
    reason_a = next(r for r in verdict.reasons if r.startswith("a at llm.layer.1"))
    assert "spatial_iou 0.748 [0.728, 0.768] > 0.6: pass, +0.064 [+0.024, +0.104] over random init" in reason_a
    assert "+0.420 [+0.390, +0.450] over random init" in reason_a  # bbox_iou: 0.62 ± 0.01 against 0.2 ± 0.02
    # a criterion without a control says why, so every judged criterion states its random-init margin
    assert "speed_ratio 1.200 < 2: pass, no random-init control (controls are not timed)" in reason_a
    assert any("difference of the two 95% intervals" in r for r in verdict.reasons)


def test_a_criterion_the_random_init_copy_also_meets_is_flagged():
    verdict = decide(quickstart_like(), {"a": STAGES})
    assert verdict.outcome == "One model exceeds all thresholds"  # flagged, not failed, by default
    assert verdict.architecture_alone == ["a: spatial_iou"]  # bbox_iou: the copy fails 0.5
    assert any(r.startswith("met by the architecture alone") and "a: spatial_iou" in r for r in verdict.reasons)
    reason_a = next(r for r in verdict.reasons if r.startswith("a at"))
    assert "met by the architecture alone (random init 0.684 [0.664, 0.704]: pass)" in reason_a
    # a copy far below the threshold flags nothing
    weak = measured("a", 0.748, bbox=0.62) + control_rows("a [random init]", "random_init", 0.30)
    assert decide(weak, {"a": STAGES}).architecture_alone == []


def test_architecture_alone_fail_counts_the_flagged_criterion_as_failed():
    verdict = decide(quickstart_like(), {"a": STAGES}, DecisionConfig(architecture_alone="fail"))
    assert verdict.outcome == "No model exceeds spatial threshold but one is >0.5"
    v = verdict.per_model[0]
    assert v.status("spatial_iou") == "pass" and v.counted_status("spatial_iou") == "fail"
    assert v.weighted_score() == pytest.approx((0.20 + 0.15 + 0.10) / 0.85)


def test_margin_of_a_below_criterion_is_positive_when_better_than_the_control():
    results = measured("a", 0.75, lpips=0.20) + [{**row("a [random init]", "lpips_adapter", 0.50, probe=None), "control": "random_init"}]
    lpips = decide(results, {"a": STAGES}).per_model[0].judgement("lpips_adapter")
    assert lpips.random_init.value == pytest.approx(0.30) and lpips.random_init.ci == pytest.approx((0.28, 0.32))
    assert lpips.random_init.control_status == "fail" and not lpips.met_by_architecture


def test_the_baselines_own_speed_ratio_is_not_judged():
    # the old speed rows gave the baseline an interval around 1 ([0.111, 9.009], "uncertain")
    results = measured("a", 0.75) + measured("q", 0.75)
    for r in results:
        if r["model"] == "q" and r["metric"] == "speed_ratio":
            r.update(value=1.0, ci_low=0.111, ci_high=9.009, baseline="q")
    verdict = decide(results, {"a": STAGES, "q": STAGES})
    q = verdict.per_model[1].judgement("speed_ratio")
    assert q.status == "baseline" and q.ci is None and q.tier is None
    assert verdict.certain and verdict.outcome == "Multiple models exceed thresholds"
    assert verdict.per_model[1].weighted_score() == pytest.approx(1.0)  # speed neither earns nor costs weight
    assert "speed_ratio 1 (the baseline itself: 1 by definition, not judged)" in verdict.reasons[1]


def test_an_uncertain_speed_criterion_is_said_to_turn_on_timing_noise():
    results = measured("a", 0.75)
    speed = next(r for r in results if r["metric"] == "speed_ratio")
    speed.update(value=1.9, ci_low=1.7, ci_high=2.2, ci_covers="timing repeats (IQR)")
    verdict = decide(results, {"a": STAGES})
    assert not verdict.certain and "speed_ratio turns on timing noise" in verdict.reasons[0]
    assert "speed_ratio 1.900 [1.700, 2.200] (timing repeats (IQR)) < 2: uncertain (turns on timing noise)" in verdict.reasons[1]


@pytest.mark.parametrize("c", [c for c in DecisionConfig().criteria if c.target is not None], ids=lambda c: c.metric)
def test_tier_never_contradicts_status_across_the_default_criteria(c):
    span = abs(c.threshold) or 1.0
    for centre in [c.threshold + span * k / 20 for k in range(-12, 13)]:
        for half_width in (0.0, span * 0.03, span * 0.15):
            results = [row("a", c.metric, centre, half_width, probe=c.probe), row("a", "spatial_iou", 0.7)]
            j = decide(results, {"a": STAGES}, DecisionConfig(criteria=[c] + ([] if c.metric == "spatial_iou" else [
                Criterion(metric="spatial_iou", weight=1, threshold=0.6, direction="above", probe="dense")]))
                       ).per_model[0].judgement(c.metric)
            low, high = centre - half_width, centre + half_width
            worse, better = (low, high) if c.direction == "above" else (high, low)
            if j.status == "uncertain":
                assert j.tier == "uncertain", (centre, half_width)
            elif j.status == "pass":
                assert j.tier == tier(worse, c) and j.tier in ("target", "acceptable"), (centre, half_width, j.tier)
            else:
                assert j.status == "fail" and j.tier == tier(better, c) and j.tier != "target", (centre, half_width, j.tier)


def test_tiers_on_the_wrong_side_of_the_threshold_are_refused():
    with pytest.raises(ValueError, match="target 0.5 does not clear the threshold 0.6"):
        Criterion(metric="m", weight=1, threshold=0.6, direction="above", target=0.5)
    with pytest.raises(ValueError, match="fail bound 0.3 clears the threshold 0.35"):
        Criterion(metric="lpips_adapter", weight=1, threshold=0.35, direction="below", target=0.2, fail=0.3)
    with pytest.raises(ValueError, match="acceptable 0.8 is better than target 0.7"):
        Criterion(metric="m", weight=1, threshold=0.6, direction="above", target=0.7, acceptable=0.8)
