"""The decision engine on hand-made result sets, one per row of the proposal's decision matrix."""
import pytest

from spatialprobe.decision import Criterion, DecisionConfig, decide, judge, tier

STAGES = ["vision.block.0", "projector.out", "llm.layer.0", "llm.layer.1"]


def row(model, metric, value, half_width=0.01, stage="llm.layer.1", probe="dense"):
    return {"model": model, "stage": stage, "probe": probe, "metric": metric, "value": value,
            "ci_low": value - half_width, "ci_high": value + half_width}


def measured(model, spatial, bbox=0.6, lpips=0.2, speed=1.2, half_width=0.01):
    return [row(model, "spatial_iou", spatial, half_width), row(model, "bbox_iou", bbox),
            row(model, "lpips", lpips, probe=None), {**row(model, "speed_ratio", speed, 0, stage=None, probe=None),
                                                     "ci_low": None, "ci_high": None}]


def test_one_model_exceeds_all_thresholds():
    results = measured("a", 0.75) + measured("b", 0.40)
    verdict = decide(results, {"a": STAGES, "b": STAGES})
    assert verdict.outcome == "One model exceeds all thresholds" and verdict.models == ["a"] and verdict.certain
    assert verdict.action == "Switch to that model"
    assert verdict.missing == ["cka"] and "cka" not in verdict.rests_on
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
    assert verdict.per_model[0].status("lpips") == "fail"


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
    below = Criterion(metric="lpips", weight=1, threshold=0.35, direction="below", target=0.30, acceptable=0.35, fail=0.40)
    assert [tier(v, below) for v in (0.2, 0.33, 0.38, 0.5)] == ["target", "acceptable", "marginal", "fail"]
    assert judge(0.3, 0.25, 0.34, below) == "pass" and judge(0.5, 0.41, 0.6, below) == "fail"


def test_unavailable_metric_counts_as_missing():
    results = measured("a", 0.75)
    lpips = next(r for r in results if r["metric"] == "lpips")
    lpips.update(value=None, ci_low=None, ci_high=None, unavailable="no AlexNet weights")
    verdict = decide(results, {"a": STAGES})
    assert verdict.per_model[0].status("lpips") == "missing" and "lpips" in verdict.missing
    assert verdict.outcome == "One model exceeds all thresholds"


def test_a_model_unmeasurable_at_its_judged_stage_does_not_exceed_thresholds():
    # e.g. Kosmos-2's LLM layers hold only placeless queries: no dense probe, so no spatial_iou or bbox_iou
    results = measured("a", 0.75) + [{**row("q", "lpips", 0.2, probe=None)}]
    verdict = decide(results, {"a": STAGES, "q": STAGES})
    assert verdict.outcome == "One model exceeds all thresholds" and verdict.models == ["a"]
    assert "spatial_iou" in verdict.rests_on and "bbox_iou" in verdict.rests_on
    assert any(r.startswith("q at llm.layer.1") and "spatial_iou, bbox_iou" in r and "not measured" in r
               for r in verdict.reasons)
    alone = decide([row("q", "lpips", 0.2, probe=None)], {"q": STAGES})
    assert alone.outcome == "All models fail spatial threshold" and alone.models == []
