"""The whole decision on hand-made result sets: the Phase 1 gate and section 8.1, every row of the decision
matrix (3.3) with the Phase 2 criteria measured, every tier of 8.2, the overall success test of 8.3, the
decision points of 9.3, and Mod C (a `lora:<id>` variant against the model it tunes), uncertain cases
included. Every number is placed by hand relative to the proposal's thresholds."""
import json

import pytest

from spatialprobe.decision import (PLANNED_METRICS, PROPOSAL_METRICS, Criterion, DecisionConfig, check_decision,
                                   decide)
from spatialprobe.report import write_report

STAGES = ["vision.block.0", "projector.out", "llm.layer.0", "llm.layer.1"]
JUDGED = "llm.layer.1"


def row(model, metric, value, half_width=0.01, probe=None, stage=JUDGED, **extra):
    return {"model": model, "stage": stage, "probe": probe, "metric": metric, "value": value,
            "ci_low": value - half_width, "ci_high": value + half_width, **extra}


def phase2(model, spatial, bbox=0.60, cka=0.65, lpips=0.25, speed=1.2, direction=0.90, ordering=0.85,
           half_width=0.01, variant="none"):
    """Every criterion of the default decision measured at the judged stage (speed: no stage, no interval)."""
    rows = [row(model, "spatial_iou", spatial, half_width, "dense"), row(model, "bbox_iou", bbox, probe="dense"),
            row(model, "cka", cka, probe="spatial"), row(model, "lpips_adapter", lpips, probe="conv"),
            row(model, "direction_accuracy", direction, probe="attentive"),
            row(model, "ordering_accuracy", ordering, probe="attentive"),
            {**row(model, "speed_ratio", speed, stage=None), "ci_low": None, "ci_high": None}]
    return [{**r, "variant": variant, "control": variant} for r in rows]


def vqa(model, value, half_width=0.01, variant="none", **extra):
    return {**row(model, "vqa_accuracy", value, half_width, "generate", stage=None), "variant": variant,
            "control": variant, **extra}


def models(*names, stages=STAGES):
    return {name: stages for name in names}


# --- Phase 1: the gate (9.3, week 2) and section 8.1 -------------------------------------------------------

@pytest.mark.parametrize("spatial, half_width, bbox, status, spatial_tier, bbox_tier", [
    (0.62, 0.01, 0.55, "pass", "target", "target"),  # > 0.60 and > 0.50: 8.1's targets
    (0.55, 0.01, 0.40, "pass", "acceptable", "acceptable"),  # > 0.50 and > 0.30
    (0.52, 0.05, 0.40, "uncertain", "uncertain", "acceptable"),  # [0.47, 0.57] straddles the gate
    (0.40, 0.01, 0.20, "fail", "fail", "fail"),  # all below 0.50 and 0.30
])
def test_phase1_gate_and_the_8_1_tiers(spatial, half_width, bbox, status, spatial_tier, bbox_tier):
    results = phase2("a", spatial, bbox=bbox, half_width=half_width) + phase2("b", 0.30, bbox=0.10)
    phase1 = decide(results, models("a", "b")).phase1
    assert phase1.status == status
    assert phase1.passing == (["a"] if status == "pass" else []) and phase1.uncertain == (["a"] if status == "uncertain" else [])
    (spatial_row, best_spatial, spatial_j), (bbox_row, best_bbox, bbox_j) = phase1.rows
    assert (spatial_row.metric, spatial_row.threshold, bbox_row.metric, bbox_row.threshold) == ("spatial_iou", 0.5, "bbox_iou", 0.3)
    assert best_spatial == best_bbox == "a" and spatial_j.tier == spatial_tier and bbox_j.tier == bbox_tier


def test_week2_decision_point_answers_from_the_gate():
    passing = decide(phase2("a", 0.55) + phase2("b", 0.30), models("a", "b"))
    assert passing.decision_points[0] == ("Week 2", "Continue to Phase 2?", "yes: a")
    failing = decide(phase2("a", 0.45) + phase2("b", 0.30), models("a", "b"))
    assert failing.phase1.status == "fail" and failing.decision_points[0][2] == "no"
    assert "no model past the gate" in failing.phase1.text(0.5)


# --- Phase 2: every row of the decision matrix (3.3) -------------------------------------------------------

def test_one_model_exceeds_every_phase2_threshold():
    verdict = decide(phase2("a", 0.70) + phase2("b", 0.40), models("a", "b"))
    assert verdict.outcome == "One model exceeds all thresholds" and verdict.action == "Switch to that model"
    assert verdict.models == ["a"] and verdict.certain and verdict.missing == []
    assert set(verdict.rests_on) == {"spatial_iou", "bbox_iou", "cka", "lpips_adapter", "speed_ratio",
                                     "direction_accuracy", "ordering_accuracy"}
    # week 5 commits; 8.3 cannot be said to succeed without the VQA comparison, and the answer says so
    assert verdict.decision_points[1] == ("Week 5", "Commit to new VLM?", "yes: a; overall success (8.3) missing")
    with_vqa = decide(phase2("a", 0.70) + phase2("b", 0.40) + [vqa("a", 0.8), vqa("b", 0.8)], models("a", "b"),
                      DecisionConfig(baseline="b"))
    assert with_vqa.decision_points[1] == ("Week 5", "Commit to new VLM?", "yes: a")


def test_multiple_models_are_selected_by_speed():
    verdict = decide(phase2("slow", 0.80, speed=1.8) + phase2("fast", 0.70, speed=0.9), models("slow", "fast"))
    assert verdict.outcome == "Multiple models exceed thresholds" and verdict.action == "Select based on speed/simplicity"
    assert verdict.models == ["fast", "slow"] and verdict.success.model == "fast"


@pytest.mark.parametrize("failing", [{"direction": 0.70}, {"ordering": 0.60}, {"cka": 0.30}, {"lpips": 0.50},
                                     {"speed": 3.5}])
def test_a_failed_phase2_criterion_keeps_a_spatially_good_model_from_being_switched_to(failing):
    verdict = decide(phase2("a", 0.70, **failing), models("a"))
    assert verdict.outcome.startswith("A model meets the spatial threshold but fails another criterion")
    assert verdict.models == ["a"] and verdict.certain
    assert verdict.decision_points[1][2].startswith("no: A model meets the spatial threshold")


def test_spatial_short_but_above_half_investigates_hybrid_and_says_the_run_has_none():
    verdict = decide(phase2("a", 0.55) + phase2("b", 0.20), models("a", "b"))
    assert verdict.outcome == "No model exceeds spatial threshold but one is >0.5"
    assert verdict.action == "Investigate hybrid approach" and verdict.models == ["a"] and verdict.hybrids == []
    assert any("this run has no hybrid model" in r for r in verdict.reasons)


def test_investigate_hybrid_points_at_the_runs_hybrid_rows():
    hybrid = [{**r, "stage": "hybrid.concat" if r["stage"] else None} for r in phase2("owl+qwen", 0.45)]
    verdict = decide(phase2("qwen", 0.55) + hybrid,
                     {"qwen": STAGES, "owl+qwen": ["hybrid.owl", "hybrid.qwen", "hybrid.concat"]})
    assert verdict.outcome == "No model exceeds spatial threshold but one is >0.5" and verdict.hybrids == ["owl+qwen"]
    assert verdict.action == "Investigate hybrid approach: see this run's hybrid rows (owl+qwen)"
    assert any(r.startswith("hybrid rows of this run: owl+qwen at hybrid.concat: spatial_iou 0.450 (fail)")
               for r in verdict.reasons)
    # a hybrid is also known by its rows' family, whatever stage it is judged at
    by_family = [{**r, "family": "hybrid"} for r in phase2("h", 0.30)]
    assert decide(phase2("qwen", 0.55) + by_family, models("qwen", "h")).hybrids == ["h"]


def test_all_models_fail_the_spatial_threshold():
    verdict = decide(phase2("a", 0.45) + phase2("b", 0.10), models("a", "b"))
    assert verdict.outcome == "All models fail spatial threshold" and verdict.models == []
    assert verdict.action.startswith("Pivot to different architecture")
    assert verdict.success.status == "fail" and verdict.success.model is None


@pytest.mark.parametrize("uncertain, hopeful", [
    ({"cka": 0.50, "half_width": 0.01}, "One model exceeds all thresholds"),  # cka's interval [0.49, 0.51]
    ({"direction": 0.80}, "One model exceeds all thresholds"),  # direction_accuracy [0.79, 0.81]
])
def test_an_uncertain_phase2_criterion_makes_the_row_uncertain(uncertain, hopeful):
    verdict = decide(phase2("a", 0.70, **uncertain), models("a"))
    assert not verdict.certain and verdict.outcome.startswith("A model meets the spatial threshold")
    assert f'would give "{hopeful}" instead' in verdict.reasons[0]
    assert "(uncertain)" in verdict.decision_points[1][2]


# --- section 8.2's tiers, Phase 2 -------------------------------------------------------------------------

@pytest.mark.parametrize("metric, key, cases", [
    ("spatial_iou", "spatial", [(0.70, "pass", "target"), (0.62, "pass", "acceptable"), (0.57, "fail", "marginal"),
                                (0.50, "fail", "fail"), (0.60, "uncertain", "uncertain")]),
    ("cka", "cka", [(0.65, "pass", "target"), (0.55, "pass", "acceptable"), (0.45, "fail", "marginal"),
                    (0.35, "fail", "fail"), (0.50, "uncertain", "uncertain")]),
    ("lpips_adapter", "lpips", [(0.25, "pass", "target"), (0.33, "pass", "acceptable"), (0.38, "fail", "marginal"),
                                (0.45, "fail", "fail"), (0.35, "uncertain", "uncertain")]),
])
def test_every_8_2_tier(metric, key, cases):
    for value, status, tier in cases:
        j = decide(phase2("a", **{"spatial": 0.70, key: value}, half_width=0.01) if key != "spatial" else
                   phase2("a", value, half_width=0.01), models("a")).per_model[0].judgement(metric)
        assert (j.status, j.tier) == (status, tier), (metric, value)


def test_every_8_2_tier_of_speed():
    # speed ratios carry no interval here (a single timing): the tier is the value's own
    for value, status, tier in [(1.2, "pass", "target"), (1.8, "pass", "acceptable"), (2.5, "fail", "marginal"),
                                (3.5, "fail", "fail")]:
        j = decide(phase2("a", 0.70, speed=value), models("a")).per_model[0].judgement("speed_ratio")
        assert (j.status, j.tier) == (status, tier), value


# --- section 8.3: overall success ---------------------------------------------------------------------------

@pytest.mark.parametrize("selected_vqa, half_width, status", [
    (0.78, 0.01, "pass"),  # 0.78 / 0.80 = 0.975, interval [0.95, 1.0] at or above 0.95
    (0.60, 0.01, "fail"),  # 0.75 of Qwen's
    (0.76, 0.03, "uncertain"),  # [0.73/0.81, 0.79/0.79] = [0.90, 1.0] straddles 0.95
])
def test_overall_success_needs_the_spatial_threshold_and_95_percent_of_qwens_vqa(selected_vqa, half_width, status):
    results = phase2("a", 0.70) + phase2("qwen", 0.20) + [vqa("a", selected_vqa, half_width), vqa("qwen", 0.80)]
    success = decide(results, models("a", "qwen"), DecisionConfig(baseline="qwen")).success
    assert success.model == "a" and success.primary == "pass" and success.status == status
    assert success.secondary.reference == "qwen" and success.secondary.status == status
    assert success.secondary.value == pytest.approx(selected_vqa / 0.80)
    assert any(r.startswith("secondary (VQA") and "of qwen's, at least 0.95" in r for r in success.reasons)
    assert any(r.startswith("tertiary") and "not measured" in r for r in success.reasons)


def test_overall_success_finds_the_baseline_in_the_rows_and_says_what_is_missing():
    results = phase2("a", 0.70) + phase2("qwen", 0.20)
    results[-1]["baseline"] = "qwen"  # qwen's speed_ratio row: the run's baseline
    lacking = decide(results, models("a", "qwen")).success
    assert lacking.status == "missing" and "vqa_accuracy not measured for a, qwen" in lacking.secondary.why
    no_baseline = decide(phase2("a", 0.70), models("a")).success
    assert no_baseline.status == "missing" and "decision.baseline" in no_baseline.secondary.why
    # the baseline selected itself is Qwen: its own VQA is 100% of Qwen's by definition
    itself = decide(phase2("qwen", 0.70) + [vqa("qwen", 0.8)], models("qwen"), DecisionConfig(baseline="qwen")).success
    assert itself.status == "pass" and itself.secondary.status == "baseline"


def test_overall_success_of_a_model_only_an_optimistic_reading_selects_is_at_best_uncertain():
    results = phase2("a", 0.61, half_width=0.03) + [vqa("a", 0.8), vqa("qwen", 0.8)] + phase2("qwen", 0.2)
    verdict = decide(results, models("a", "qwen"), DecisionConfig(baseline="qwen"))
    assert not verdict.certain and verdict.success.model == "a" and verdict.success.status == "uncertain"


# --- Mod C: a fine-tuned variant (lora:<id>) against the model it tunes -------------------------------------

def mod_c_run(tuned_spatial, tuned_vqa, vqa_half_width=0.01, spatial_half_width=0.01):
    """Qwen below the spatial threshold, its fine-tuned variant `qwen-modc` (variant lora:r8) as given."""
    return (phase2("qwen", 0.30) + phase2("qwen-modc", tuned_spatial, half_width=spatial_half_width, variant="lora:r8")
            + [vqa("qwen", 0.80), vqa("qwen-modc", tuned_vqa, vqa_half_width, variant="lora:r8")])


def test_mod_c_rescues_qwen():
    verdict = decide(mod_c_run(0.70, 0.79), models("qwen", "qwen-modc"), DecisionConfig(baseline="qwen"),
                     tuned_from={"qwen-modc": "qwen"})
    (mod_c,) = verdict.mod_c
    assert (mod_c.tuned, mod_c.base, mod_c.status, mod_c.spatial, mod_c.base_spatial) == \
        ("qwen-modc", "qwen", "pass", "pass", "fail")
    assert mod_c.outcome.startswith("rescues qwen") and mod_c.guard.status == "pass"
    # judged like any model: the tuned variant is the one to switch to, and the action says what it is
    assert verdict.outcome == "One model exceeds all thresholds" and verdict.models == ["qwen-modc"]
    assert verdict.action == "Switch to that model (qwen-modc is Mod C: qwen with its fine-tuned vision encoder)"
    assert verdict.success.status == "pass" and verdict.certain
    assert verdict.reasons[0].startswith("Mod C, qwen-modc (fine-tuned from qwen): rescues qwen")


def test_mod_c_failing_the_semantic_guard_is_not_switched_to():
    verdict = decide(mod_c_run(0.70, 0.60), models("qwen", "qwen-modc"), tuned_from={"qwen-modc": "qwen"})
    (mod_c,) = verdict.mod_c
    assert mod_c.status == "fail" and mod_c.guard.status == "fail" and mod_c.outcome.startswith("fails the semantic guard")
    assert mod_c.guard.value == pytest.approx(0.75) and mod_c.guard.ci == pytest.approx((0.59 / 0.81, 0.61 / 0.79))
    assert verdict.outcome.startswith("A model meets the spatial threshold but fails another criterion")
    assert verdict.certain


def test_mod_c_semantic_guard_straddling_95_percent_is_uncertain():
    # [0.73 / 0.81, 0.79 / 0.79] = [0.90, 1.0]: neither holds nor fails
    verdict = decide(mod_c_run(0.70, 0.76, vqa_half_width=0.03), models("qwen", "qwen-modc"),
                     tuned_from={"qwen-modc": "qwen"})
    (mod_c,) = verdict.mod_c
    assert mod_c.status == "uncertain" and mod_c.guard.status == "uncertain"
    assert mod_c.outcome == "may rescue qwen: semantic guard uncertain"
    assert not verdict.certain and "qwen-modc: semantic guard" in verdict.reasons[0]
    assert verdict.outcome.startswith("A model meets the spatial threshold")  # firm: the guard read as failing


@pytest.mark.parametrize("tuned_spatial, half_width, tuned_vqa, status, outcome", [
    (0.45, 0.01, 0.80, "fail", "does not cross the spatial threshold"),
    (0.61, 0.03, 0.80, "uncertain", "may rescue qwen: spatial uncertain"),
    (0.70, 0.01, None, "missing", "semantic guard not measured: no rescue can be claimed"),
])
def test_other_mod_c_outcomes(tuned_spatial, half_width, tuned_vqa, status, outcome):
    results = mod_c_run(tuned_spatial, tuned_vqa or 0.8, spatial_half_width=half_width)
    if tuned_vqa is None:
        results = [r for r in results if not (r["model"] == "qwen-modc" and r["metric"] == "vqa_accuracy")]
    (mod_c,) = decide(results, models("qwen", "qwen-modc"), tuned_from={"qwen-modc": "qwen"}).mod_c
    assert (mod_c.status, mod_c.outcome) == (status, outcome)


def test_the_base_of_a_variant_comes_from_its_rows_when_not_given():
    results = [{**r, "base_model": "qwen"} if r["variant"].startswith("lora:") else r for r in mod_c_run(0.70, 0.79)]
    (mod_c,) = decide(results, models("qwen", "qwen-modc")).mod_c
    assert mod_c.base == "qwen" and mod_c.status == "pass"
    assert decide(mod_c_run(0.70, 0.79), models("qwen", "qwen-modc")).mod_c == []  # no base known: no Mod C outcome


# --- the temporal metrics: accepted as criteria before any task writes them ---------------------------------

def test_temporal_metrics_are_listed_missing_with_their_source_until_rows_carry_them():
    assert set(PROPOSAL_METRICS) == {"direction_accuracy", "ordering_accuracy"}
    results = [r for r in phase2("a", 0.70) if r["metric"] not in PROPOSAL_METRICS]
    verdict = decide(results, models("a"))
    assert {"direction_accuracy", "ordering_accuracy"} <= set(verdict.missing)
    if "direction_accuracy" in PLANNED_METRICS:  # until the temporal task is registered
        assert any("direction_accuracy (no task writes it yet: temporal_probe" in r for r in verdict.reasons)
    # the same criteria are judged once rows carry them, with no change to the decision
    carried = decide(phase2("a", 0.70), models("a")).per_model[0]
    assert carried.status("direction_accuracy") == "pass" and carried.status("ordering_accuracy") == "pass"
    check_decision(DecisionConfig(), ["spatial_probe"], ["dense"], ["a"])


def test_a_phase1_row_is_checked_like_a_criterion():
    config = DecisionConfig(phase1=[Criterion(metric="spatial_iuo", weight=0, threshold=0.5, direction="above")])
    with pytest.raises(ValueError, match=r"^decision\.phase1\[0\]\.metric: unknown metric 'spatial_iuo'"):
        check_decision(config, ["spatial_probe"], ["dense"], ["a"])


# --- the report: the whole decision shown, every string escaped ---------------------------------------------

EVIL = "<b>qwen</b>"


def test_report_shows_mod_c_and_the_whole_decision_escaped(tmp_path):
    tuned = f"{EVIL} [lora]"
    results = [{**r, "model": EVIL if r["model"] == "qwen" else tuned, "task": "t"} for r in mod_c_run(0.70, 0.79)]
    manifest = {"config": {"name": "modc", "decision": {"baseline": EVIL}}, "models": {
        EVIL: {"label": "q", "control": "none", "stages": STAGES},
        tuned: {"label": "tuned", "control": "lora:r8", "base": EVIL, "stages": STAGES}}}
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    write_report(folder)
    page, summary = (folder / "report.html").read_text(), (folder / "summary.md").read_text()
    assert "<b>qwen" not in page and "&lt;b&gt;qwen&lt;/b&gt; [lora] is Mod C" in page
    assert "rescues &lt;b&gt;qwen&lt;/b&gt;: crosses the spatial threshold while VQA holds" in page
    assert "Overall success (8.3) for &lt;b&gt;qwen&lt;/b&gt; [lora]: pass" in page
    assert "Week 2, Continue to Phase 2?" in page and "Week 5, Commit to new VLM? yes" in page
    assert "Overall success (8.3)" in summary and "<b>qwen" not in summary


def test_the_phase1_table_never_refuses_a_run_without_its_probe():
    # a run of the pooled probe alone judges bbox_iou; 8.1's dense rows are then simply not measured
    config = DecisionConfig(spatial_metric="bbox_iou", criteria=[
        Criterion(metric="bbox_iou", weight=1, threshold=0.5, direction="above", probe="pooled")])
    check_decision(config, ["spatial_probe"], ["pooled"], ["a"])
    verdict = decide([row("a", "bbox_iou", 0.7, probe="pooled")], models("a"), config)
    assert [best for _, best, _ in verdict.phase1.rows] == [None, None] and "not measured" in verdict.phase1.text(0.5)


# --- a VQA benchmark beside the generated questions: the guard judges each set -----------------------------------
@pytest.mark.parametrize("benchmark_tuned, status, each", [
    (0.78, "pass", ("pass", "pass")),  # 0.975 [0.95, 1.0] on both sets
    (0.60, "fail", ("pass", "fail")),  # the benchmark's ratio 0.75 sinks the rescue though the generated one holds
    (0.76, "uncertain", ("pass", "uncertain")),  # [0.925, 0.975] straddles on the benchmark
])
def test_mod_c_guard_judges_the_generated_and_the_benchmark_questions_each(benchmark_tuned, status, each):
    results = mod_c_run(0.70, 0.79) + [vqa("qwen", 0.80, questions="benchmark"),
                                       vqa("qwen-modc", benchmark_tuned, variant="lora:r8", questions="benchmark")]
    (mod_c,) = decide(results, models("qwen", "qwen-modc"), tuned_from={"qwen-modc": "qwen"}).mod_c
    guard = mod_c.guard
    assert guard.status == status and tuple(check.status for _, check in guard.parts) == each
    assert [questions for questions, _ in guard.parts] == ["generated", "benchmark"]
    text = guard.text(0.95)
    assert text.startswith("generated questions: VQA 0.988") and f"benchmark questions: VQA {benchmark_tuned / 0.8:.3f}" in text


def test_the_temporal_criteria_read_the_attentive_probe_not_the_first_row():
    # the linear probe pools each time step's tokens: it cannot see where a shape is, so a verdict on it would
    # fail a model whose tokens carry the motion; its row comes first, as the task writes them
    results = [r for r in phase2("a", 0.70) if r["metric"] not in ("direction_accuracy", "ordering_accuracy")]
    results += [row("a", "direction_accuracy", 0.20, probe="linear"), row("a", "direction_accuracy", 0.90, probe="attentive"),
                row("a", "ordering_accuracy", 0.50, probe="linear"), row("a", "ordering_accuracy", 0.85, probe="attentive")]
    verdict = decide(results, models("a"))
    (judged,) = [v for v in verdict.per_model if v.model == "a"]
    assert judged.status("direction_accuracy") == "pass" and judged.status("ordering_accuracy") == "pass"
    only_linear = [r for r in results if r.get("probe") != "attentive"]
    assert {"direction_accuracy", "ordering_accuracy"} <= set(decide(only_linear, models("a")).missing)
