"""The proposal's decision (PIVOT-4 sections 3.3, 8, 9.3) from measured results, uncertainty included.

A criterion passes only when its whole 95% interval clears the threshold, fails when the whole
interval misses it, and is "uncertain" otherwise; a criterion with no result is "missing", and the
baseline's own relative numbers (its speed_ratio is 1 by definition) are "baseline", neither pass
nor fail. The verdict is a row of the decision matrix; when uncertain criteria could change the row,
the verdict says so and names them. Every judged criterion is set against the controls (the
random-init copy of the model, raw pixels); one that the random-init copy also meets is "met by the
architecture alone". Without a configured model, or without the primary criterion measured for one
of them, there is no verdict.

Beside the matrix row the verdict carries the rest of the proposal's decision, each part saying what it
rests on: the Phase 1 gate and the section 8.1 table (`PhaseOne`, the week-2 decision point of 9.3), the
overall success test of 8.3 for the model the matrix selects (`Success`: spatial threshold, and VQA at
least `decision.semantic_ratio` of the baseline's, interval-aware), and for every fine-tuned variant
(`lora:<id>`, judged like any model) the Mod C outcome against the model it tunes (`ModC`: does it cross
the spatial threshold while its VQA holds at least that share of the original's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import SpatialProbeError
from .stages import match_stages, stage_syntax_error
from .tasks import SPATIAL_PROBES, measured_metrics

Status = Literal["pass", "fail", "uncertain", "missing", "baseline"]

#: what the tasks write to results.jsonl: metric -> (task, the probes whose rows carry it; () = no probe),
#: as each task declares it in the registry
MEASURED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = measured_metrics()
#: metrics of the proposal (section 3.2) the decision knows before any task writes them, with the task that
#: will: accepted as criteria and listed as missing until rows carry them. Once that task is registered in
#: TASKS with the metric, the metric is a measured one and leaves PLANNED_METRICS by itself.
PROPOSAL_METRICS: dict[str, str] = {
    "direction_accuracy": "temporal_probe (proposal 3.2, temporal_preservation: motion direction from features)",
    "ordering_accuracy": "temporal_probe (proposal 3.2, temporal_preservation: frame order from features)",
}
#: the proposal's metrics that no task measures yet: allowed as criteria, reported as not measured
PLANNED_METRICS = tuple(m for m in PROPOSAL_METRICS if m not in MEASURED_METRICS)
#: the variant of a fine-tuned copy (Mod C): `lora:<id>`, judged like a configured model
TUNED_PREFIX = "lora:"
#: the semantic check of 8.3 and of Mod C's guard: the VQA task's accuracy (the model's own generate)
SEMANTIC_METRIC = "vqa_accuracy"
#: the controls' model names, as the runner writes them
PIXELS = "pixels"
RANDOM_INIT_SUFFIX = " [random init]"
#: the rows carry only 95% intervals, not the bootstrap samples, so a margin's interval is the widest
#: difference the two intervals allow
MARGIN_INTERVAL = "the difference of the two 95% intervals (low minus the control's high, high minus its low): conservative"
NO_CONTROL = {"speed": "controls are not timed", "vqa": "controls answer no questions"}


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    weight: float = Field(ge=0)
    threshold: float
    direction: Literal["above", "below"]
    probe: str | None = None  # which probe's number counts (None: metrics without a probe)
    #: section 8 tiers: target / acceptable / fail bounds (same direction as the threshold)
    target: float | None = None
    acceptable: float | None = None
    fail: float | None = None

    def better(self, x: float, bound: float) -> bool:
        return x > bound if self.direction == "above" else x < bound

    @model_validator(mode="after")
    def tiers_agree_with_threshold(self) -> "Criterion":
        """So that a tier never contradicts the status: the target tier clears the threshold, the fail
        tier misses it, and target, acceptable and fail come in that order."""
        bounds = [(name, b) for name, b in (("target", self.target), ("acceptable", self.acceptable), ("fail", self.fail))
                  if b is not None]
        for (name, bound), (next_name, next_bound) in zip(bounds, bounds[1:]):
            if self.better(next_bound, bound):
                raise ValueError(f"{self.metric}: {next_name} {next_bound:g} is better than {name} {bound:g}")
        if self.target is not None and self.better(self.threshold, self.target):
            raise ValueError(f"{self.metric}: target {self.target:g} does not clear the threshold {self.threshold:g}")
        if self.fail is not None and self.better(self.fail, self.threshold):
            raise ValueError(f"{self.metric}: fail bound {self.fail:g} clears the threshold {self.threshold:g}")
        return self


class DecisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the stage each model is judged at, in the `stages:` syntax (a name, vision.block.-1, vision.*: the
    #: last match); "auto" = the last LLM layer (what the video adapter would read), else the model's
    #: last stage. A dict maps model names to stages.
    stage: str | dict[str, str] = "auto"
    baseline: str | None = None  # model the speed ratio is taken against (reported, not used here)
    #: section 3.3's criteria and weights with section 8.2's tiers (bbox IoU has no 8.2 row: 8.1's), then the
    #: Phase 2 temporal targets of 3.2, which 3.3 gives no weight: thresholds only
    criteria: list[Criterion] = Field(default_factory=lambda: [
        Criterion(metric="spatial_iou", weight=0.40, threshold=0.60, direction="above", probe="dense",
                  target=0.65, acceptable=0.60, fail=0.55),
        Criterion(metric="bbox_iou", weight=0.20, threshold=0.50, direction="above", probe="dense",
                  target=0.50, acceptable=0.30, fail=0.30),
        Criterion(metric="cka", weight=0.15, threshold=0.50, direction="above", probe="spatial",
                  target=0.60, acceptable=0.50, fail=0.40),
        # LPIPS of the adapter's decoded latents (Phase 2, adapter_bridging), whichever head the run trains
        Criterion(metric="lpips_adapter", weight=0.15, threshold=0.35, direction="below", target=0.30,
                  acceptable=0.35, fail=0.40),
        Criterion(metric="speed_ratio", weight=0.10, threshold=2.0, direction="below", target=1.5, acceptable=2.0, fail=3.0),
        # the attentive probe (V-JEPA's protocol for frozen video features): the linear probe pools each time
        # step's tokens, so it cannot see where a shape is, only what the frame holds
        Criterion(metric="direction_accuracy", weight=0.0, threshold=0.80, direction="above", probe="attentive"),
        Criterion(metric="ordering_accuracy", weight=0.0, threshold=0.75, direction="above", probe="attentive"),
    ])
    #: section 8.1's table (Phase 1, quick assessment): "at least one VLM" above the acceptable bound, each
    #: row's tier taken from the best model; reported beside the gate, not used for the matrix row
    phase1: list[Criterion] = Field(default_factory=lambda: [
        Criterion(metric="spatial_iou", weight=0.0, threshold=0.50, direction="above", probe="dense",
                  target=0.60, acceptable=0.50, fail=0.50),
        Criterion(metric="bbox_iou", weight=0.0, threshold=0.30, direction="above", probe="dense",
                  target=0.50, acceptable=0.30, fail=0.30),
    ])
    #: section 8.3's secondary test and Mod C's semantic guard: VQA accuracy at least this share of the
    #: baseline's (8.3) or of the original model's (Mod C), judged on the ratio's interval
    semantic_ratio: float = Field(0.95, gt=0, le=1)
    spatial_metric: str = "spatial_iou"
    #: "No model exceeds spatial threshold but one is >0.5" -> hybrid; also the Phase 2 gate
    hybrid_floor: float = 0.50
    phase_gate: float = 0.50
    #: a criterion the model's random-init copy also meets: "flag" it in the verdict, or "fail": count it
    #: as failed when choosing the decision-matrix row
    architecture_alone: Literal["flag", "fail"] = "flag"


@dataclass
class Margin:
    """A judged number against a control's, signed so that positive means better than the control."""
    control: str  # the control's model name
    control_value: float
    control_ci: tuple[float, float] | None
    control_status: Status  # the control's own judgement at the criterion's threshold
    value: float
    ci: tuple[float, float] | None  # see MARGIN_INTERVAL

    def text(self, what: str) -> str:
        interval = f" [{self.ci[0]:+.3f}, {self.ci[1]:+.3f}]" if self.ci else ""
        return f"{self.value:+.3f}{interval} over {what}"


@dataclass
class Judgement:
    criterion: Criterion
    status: Status
    value: float | None = None
    ci: tuple[float, float] | None = None
    tier: str | None = None  # target / acceptable / marginal / fail, or "uncertain"
    unavailable: str | None = None  # why a metric that was attempted has no value
    random_init: Margin | None = None
    pixels: Margin | None = None
    ci_covers: str | None = None  # what the interval is, when not a bootstrap 95% interval

    @property
    def met_by_architecture(self) -> bool:
        """The random-init copy of the same architecture meets (or may meet) the criterion too."""
        return (self.status in ("pass", "uncertain") and self.random_init is not None
                and self.random_init.control_status in ("pass", "uncertain"))


@dataclass
class ModelVerdict:
    model: str
    stage: str
    judgements: list[Judgement]
    best_stage: dict[str, tuple[str, float]] = field(default_factory=dict)
    phase_gate: Status = "missing"
    architecture_alone: Literal["flag", "fail"] = "flag"
    phase1: list[Judgement] = field(default_factory=list)  # section 8.1's rows at the judged stage
    tuned_from: str | None = None  # the model a `lora:<id>` variant fine-tunes (Mod C)

    def judgement(self, metric: str) -> Judgement | None:
        return next((j for j in self.judgements if j.criterion.metric == metric), None)

    def status(self, metric: str) -> Status:
        """As measured."""
        j = self.judgement(metric)
        return "missing" if j is None else j.status

    def counted(self, j: Judgement) -> Status:
        """As the decision matrix reads it: with `architecture_alone: fail`, met by the architecture alone is a fail."""
        return "fail" if j.met_by_architecture and self.architecture_alone == "fail" else j.status

    def counted_status(self, metric: str) -> Status:
        j = self.judgement(metric)
        return "missing" if j is None else self.counted(j)

    def weighted_score(self) -> float:
        """Share of the judged criteria's weight that passes (uncertain counts half; the baseline's own
        ratios are not judged)."""
        judged = [j for j in self.judgements if j.status not in ("missing", "baseline")]
        total = sum(j.criterion.weight for j in judged)
        earned = sum(j.criterion.weight * {"pass": 1.0, "uncertain": 0.5}.get(self.counted(j), 0.0) for j in judged)
        return earned / total if total else 0.0


@dataclass
class Verdict:
    outcome: str  # the decision-matrix row, or "No verdict: ..."
    action: str
    models: list[str]  # the models the row names
    reasons: list[str]
    certain: bool
    rests_on: list[str]  # criteria measured for at least one judged model
    missing: list[str]  # criteria no judged model has
    per_model: list[ModelVerdict]
    architecture_alone: list[str] = field(default_factory=list)  # "model: metric" met by the random-init copy too
    phase1: "PhaseOne | None" = None  # section 8.1 and the week-2 decision point
    success: "Success | None" = None  # section 8.3 for the model the matrix row selects
    mod_c: list["ModC"] = field(default_factory=list)  # one per fine-tuned variant, against the model it tunes
    hybrids: list[str] = field(default_factory=list)  # the run's hybrid models (what "Investigate hybrid" points at)
    decision_points: list[tuple[str, str, str]] = field(default_factory=list)  # 9.3: (when, question, answer)


def judge(value: float | None, low: float | None, high: float | None, c: Criterion) -> Status:
    if value is None:
        return "missing"
    low = value if low is None else low
    high = value if high is None else high
    if c.better(low, c.threshold) and c.better(high, c.threshold):
        return "pass"
    if not c.better(low, c.threshold) and not c.better(high, c.threshold):
        return "fail"
    return "uncertain"


def tier(value: float, c: Criterion) -> str | None:
    if c.target is None:
        return None
    if c.better(value, c.target):
        return "target"
    if c.acceptable is not None and c.better(value, c.acceptable):
        return "acceptable"
    if c.fail is not None and not c.better(value, c.fail) and value != c.fail:
        return "fail"
    return "marginal"


def interval_tier(status: Status, value: float, ci: tuple[float, float] | None, c: Criterion) -> str | None:
    """The tier that cannot contradict the status: a pass is only as good as its interval's worse end,
    a fail as good as its better end, and an uncertain criterion is in no tier but "uncertain"."""
    if c.target is None or status not in ("pass", "fail", "uncertain"):
        return None
    if status == "uncertain":
        return "uncertain"
    low, high = ci or (value, value)
    worse, better = (low, high) if c.direction == "above" else (high, low)
    return tier(worse if status == "pass" else better, c)


def judged_stage(model: str, stages: list[str], config: DecisionConfig) -> str:
    """The stage `model` is judged at: `decision.stage` in the `stages:` syntax (a name, a negative
    index, or a pattern, whose last match counts); "auto" = the last LLM layer, else the last stage.
    The pixels control has a single stage and is judged there whatever decision.stage says."""
    if not stages:
        raise SpatialProbeError(f"decision.stage: model {model!r} has no measured stage to judge")
    chosen = config.stage.get(model, "auto") if isinstance(config.stage, dict) else config.stage
    if chosen == "auto" or model == PIXELS:
        llm = [s for s in stages if s.startswith("llm.")]
        return llm[-1] if llm else stages[-1]
    matches = match_stages(chosen, stages)
    if not matches:
        raise SpatialProbeError(f"decision.stage: model {model!r} has no stage {chosen!r}; its measured stages are "
                                f"{stages[0]} ... {stages[-1]}")
    return matches[-1]


def configured_model(run) -> str:
    """The `models` entry a run is judged as: a Mod C run as its base, a random-init control as its model."""
    base = getattr(run, "base", None)
    if base is not None:
        return base if isinstance(base, str) else base.name
    return run.name.removesuffix(RANDOM_INIT_SUFFIX)


def variant_of(r: dict) -> str:
    """A row's variant (schema 2), or its control (schema 1 rows carry only that)."""
    return r.get("variant") or r.get("control") or "none"


def is_tuned(variant: str) -> bool:
    return variant.startswith(TUNED_PREFIX)


def judged_variant(variant: str) -> bool:
    """Rows a model is judged on: its own (`none`) or a fine-tuned variant's (`lora:<id>`), not a control's."""
    return variant == "none" or is_tuned(variant)


def is_control_view(r: dict) -> bool:
    """A row measured on a control view of the data (temporal_probe's shuffled or repeated frames): it shows
    what a probe reaches without the information, and is never a model's (or a control model's) number."""
    return r.get("view", "forward") != "forward"


def find(results: list[dict], model: str, stage: str | None, c: Criterion, control: str = "none") -> dict | None:
    """The row of `c` for `model` at `stage` (or a row without a stage); `control="none"` reads the model's own
    rows, a fine-tuned variant's included, anything else the rows of that control. Rows of a control view of
    the data are never read."""
    for r in results:
        variant = variant_of(r)
        if not is_control_view(r) and r["model"] == model and (judged_variant(variant) if control == "none" else variant == control) \
                and r["metric"] == c.metric and (c.probe is None or r.get("probe") == c.probe) \
                and (stage is None or r.get("stage") in (stage, None)):
            return r
    return None


def interval(r: dict) -> tuple[float, float] | None:
    return (r["ci_low"], r["ci_high"]) if r.get("ci_low") is not None and r.get("ci_high") is not None else None


def margin(value: float, ci: tuple[float, float] | None, control: dict, c: Criterion) -> Margin:
    """model minus control ("above"), or control minus model ("below"), with MARGIN_INTERVAL."""
    control_ci = interval(control)
    sign = 1.0 if c.direction == "above" else -1.0
    low, high = ci or (value, value)
    c_low, c_high = control_ci or (control["value"], control["value"])
    ends = sorted((sign * (low - c_high), sign * (high - c_low)))
    return Margin(control["model"], control["value"], control_ci, judge(control["value"], *(control_ci or (None, None)), c),
                  sign * (value - control["value"]), tuple(ends) if ci or control_ci else None)


def against(results: list[dict], control_model: str, control: str, stage: str | None, value: float,
            ci: tuple[float, float] | None, c: Criterion) -> Margin | None:
    row = find(results, control_model, stage, c, control)
    return None if row is None or row.get("value") is None else margin(value, ci, row, c)


def judgement(model: str, stage: str, c: Criterion, results: list[dict]) -> Judgement:
    r = find(results, model, stage, c)
    if r is None or r.get("value") is None:  # not measured, or recorded as unavailable
        return Judgement(c, "missing", unavailable=(r or {}).get("unavailable"))
    if r.get("not_judged"):  # measured, but against something that is no evidence (e.g. the tiny VAE)
        return Judgement(c, "missing", unavailable=r["not_judged"])
    if r.get("baseline") == model:  # a ratio to the model itself: 1 by definition, nothing to judge
        return Judgement(c, "baseline", r["value"])
    value, ci = r["value"], interval(r)
    status = judge(value, *(ci or (None, None)), c)
    covers = r.get("ci_covers") if r.get("ci_covers") != "test" else None  # the default needs no words in a verdict
    return Judgement(c, status, value, ci, interval_tier(status, value, ci, c), ci_covers=covers,
                     random_init=against(results, model + RANDOM_INIT_SUFFIX, "random_init", stage, value, ci, c),
                     pixels=against(results, PIXELS, "pixels", None, value, ci, c))


def best_stages(model: str, results: list[dict], config: DecisionConfig) -> dict[str, tuple[str, float]]:
    best = {}
    for c in config.criteria:
        rows = [r for r in results if r["model"] == model and judged_variant(variant_of(r)) and not is_control_view(r)
                and r["metric"] == c.metric
                and (c.probe is None or r.get("probe") == c.probe) and r.get("stage") and r.get("value") is not None]
        if rows:
            pick = max if c.direction == "above" else min
            top = pick(rows, key=lambda r: r["value"])
            best[c.metric] = (top["stage"], top["value"])
    return best


def model_verdict(model: str, stages: list[str], results: list[dict], config: DecisionConfig,
                  tuned_from: str | None = None) -> ModelVerdict:
    stage = judged_stage(model, stages, config)
    judgements = [judgement(model, stage, c, results) for c in config.criteria]
    spatial = next((j for j in judgements if j.criterion.metric == config.spatial_metric), None)
    gate = Criterion(metric=config.spatial_metric, weight=0, threshold=config.phase_gate, direction="above")
    gate_status = judge(spatial.value, *(spatial.ci or (None, None)), gate) if spatial and spatial.value is not None \
        else "missing"
    return ModelVerdict(model, stage, judgements, best_stages(model, results, config), gate_status,
                        config.architecture_alone, [judgement(model, stage, c, results) for c in config.phase1],
                        tuned_from)


def matrix_row(verdicts: list[ModelVerdict], config: DecisionConfig, optimistic: bool,
               guards: dict[str, Status] | None = None) -> tuple[str, str, list[str]]:
    """The decision-matrix row, reading "uncertain" as pass (optimistic) or as fail. `guards`: the semantic
    guard of each fine-tuned variant (Mod C), one more threshold it must exceed (a guard not measured is
    left out, as a criterion no model has)."""
    guards = guards or {}

    def ok(status: Status) -> bool:
        return status in ("pass", "baseline") or (optimistic and status == "uncertain")

    # a criterion measured for any model counts for every model: one that lacks it (e.g. a stage with no
    # spatial tokens has no spatial_iou) cannot be said to exceed it, and neither can one without the
    # primary spatial criterion
    required = {config.spatial_metric} | {j.criterion.metric for v in verdicts for j in v.judgements
                                           if j.status not in ("missing", "baseline")}

    def passes_all(v: ModelVerdict) -> bool:
        return all(ok(v.counted(j)) for j in v.judgements if j.criterion.metric in required) \
            and ok(guards.get(v.model, "pass"))

    winners = [v for v in verdicts if passes_all(v)]
    if len(winners) > 1:
        return ("Multiple models exceed thresholds", "Select based on speed/simplicity", fastest_first(winners))
    if len(winners) == 1:
        return ("One model exceeds all thresholds", "Switch to that model", [winners[0].model])
    spatial_ok = [v.model for v in verdicts if ok(v.counted_status(config.spatial_metric))]
    if spatial_ok:
        # a gap in the proposal's matrix: the spatial threshold is met but another criterion fails
        return ("A model meets the spatial threshold but fails another criterion (not a row of the matrix)",
                "Review the failing criteria before switching", spatial_ok)
    hybrid = Criterion(metric=config.spatial_metric, weight=0, threshold=config.hybrid_floor, direction="above")
    near = [v.model for v in verdicts if ok(spatial_status(v, hybrid))]
    if near:
        return ("No model exceeds spatial threshold but one is >0.5", HYBRID_ACTION, near)
    return ("All models fail spatial threshold", "Pivot to different architecture (see proposal section 7)", [])


def spatial_status(v: ModelVerdict, c: Criterion) -> Status:
    j = v.judgement(c.metric)
    if j is None or j.value is None:
        return "missing"
    return judge(j.value, *(j.ci or (None, None)), c)


def fastest_first(verdicts: list[ModelVerdict]) -> list[str]:
    def speed(v: ModelVerdict) -> float:
        j = v.judgement("speed_ratio")
        return j.value if j is not None and j.value is not None else float("inf")

    return [v.model for v in sorted(verdicts, key=speed)]


def task_of(metric: str) -> str | None:
    return MEASURED_METRICS.get(metric, (None, ()))[0]


def source_of(metric: str) -> str:
    """Where a criterion's rows come from, for a verdict that lists it as missing."""
    if metric in PLANNED_METRICS:
        return f"no task writes it yet: {PROPOSAL_METRICS[metric]}"
    task = task_of(metric)
    return f"from the {task} task" if task else "no task writes it"


def decide(results: list[dict], model_stages: dict[str, list[str]], config: DecisionConfig | None = None,
           tuned_from: dict[str, str] | None = None) -> Verdict:
    """The verdict over the judged models in `model_stages` (configured models and their fine-tuned `lora:<id>`
    variants, not controls), read from every result row of the run: the controls' rows give each criterion's
    margins. `tuned_from` maps a fine-tuned variant to the model it tunes; without it, a `lora:<id>` row's
    `base_model` says so."""
    config = config or DecisionConfig()
    metrics = [c.metric for c in config.criteria]
    if not model_stages:
        return Verdict("No verdict: no model is configured", "Add at least one model to `models:`", [],
                       ["a verdict needs at least one configured model"], False, [], metrics, [])
    bases = tuned_bases(results, model_stages, tuned_from)
    verdicts = [model_verdict(m, stages, results, config, bases.get(m)) for m, stages in model_stages.items()]
    missing = [m for m in metrics if all(v.status(m) == "missing" for v in verdicts)]
    rests_on = [m for m in metrics if m not in missing]
    reasons = [reason(v, rests_on) for v in verdicts]
    if all(v.status(config.spatial_metric) == "missing" for v in verdicts):  # also when no criterion names it
        return no_primary(verdicts, config, reasons, missing)
    mod_c = [mod_c_outcome(v, verdicts, results, config) for v in verdicts if v.tuned_from]
    guards = {m.tuned: m.guard.status for m in mod_c if m.guard.status != "missing"}
    firm, hopeful = (matrix_row(verdicts, config, optimistic, guards) for optimistic in (False, True))
    certain = firm[0] == hopeful[0] and firm[2] == hopeful[2]
    alone = [f"{v.model}: {j.criterion.metric}" for v in verdicts for j in v.judgements if j.met_by_architecture]
    if alone:
        counted = ("counted as failed (decision.architecture_alone: fail)" if config.architecture_alone == "fail"
                   else "flagged, not failed")
        reasons.insert(0, f"met by the architecture alone (the random-init copy meets it too; {counted}): "
                          f"{', '.join(alone)}")
    reasons[:0] = [m.text(config.semantic_ratio) for m in mod_c]  # before the models: it can change what to switch to
    if not certain:
        reasons.insert(0, uncertain_reason(verdicts, hopeful[0], guards))
    if any(j.random_init or j.pixels for v in verdicts for j in v.judgements):
        reasons.append(f"margins over the controls: the model's value minus the control's, positive = better; interval: "
                       f"{MARGIN_INTERVAL}")
    if missing:
        reasons.append(f"not measured or not usable (see below), so not part of this verdict: "
                       f"{', '.join(f'{m} ({source_of(m)})' for m in missing)}")
    hybrids = hybrid_models(verdicts, results)
    action = firm[1] + (tuned_note(firm[2], verdicts) if firm[0] in SWITCH_ROWS else "")
    if firm[1] == HYBRID_ACTION:
        action, hybrid_reason = hybrid_pointer(hybrids, verdicts, config)
        reasons.append(hybrid_reason)
    phase1 = phase_one(verdicts, config)
    success = overall_success(firm, hopeful, verdicts, results, config)
    return Verdict(firm[0], action, firm[2], reasons, certain, rests_on, missing, verdicts, alone, phase1, success,
                   mod_c, hybrids, decision_points(phase1, firm, certain, success))


def uncertain_reason(verdicts: list[ModelVerdict], hopeful_outcome: str, guards: dict[str, Status] | None = None) -> str:
    uncertain = sorted({(v.model, j.criterion.metric) for v in verdicts for j in v.judgements
                        if v.counted(j) == "uncertain"}
                       | {(model, "semantic guard") for model, status in (guards or {}).items() if status == "uncertain"})
    text = (f"uncertain: reading the uncertain criteria ({', '.join(f'{m}: {k}' for m, k in uncertain)}) as passing "
            f"would give \"{hopeful_outcome}\" instead")
    timed = sorted({k for _, k in uncertain if task_of(k) == "speed"})
    if timed:
        text += f"; {', '.join(timed)} turns on timing noise (the timing repeats' IQR straddles the threshold)"
    return text


def no_primary(verdicts: list[ModelVerdict], config: DecisionConfig, reasons: list[str], missing: list[str]) -> Verdict:
    """No verdict: the primary criterion was measured for none of the judged models."""
    primary = config.spatial_metric
    c = next((c for c in config.criteria if c.metric == primary), None)
    task = task_of(primary)
    source = (f"the {task} task" + (f" with the {c.probe} probe" if c and c.probe else "")) if task else "no task yet"
    stages = ", ".join(f"{v.model}: {v.stage}" for v in verdicts)
    hint = "; set decision.stage to a stage with spatial tokens" if task == "spatial_probe" else ""
    action = f"Measure {primary} for at least one model: it comes from {source}, at each model's judged stage ({stages}{hint})"
    reasons = [f"{primary} (the primary criterion) has no value at any judged stage", *reasons]
    return Verdict(f"No verdict: the primary criterion {primary} was measured for no model", action, [], reasons,
                   False, [], missing, verdicts)


def reason(v: ModelVerdict, measured_elsewhere: list[str] = ()) -> str:
    parts = [judgement_reason(j, v.architecture_alone) for j in v.judgements if j.status != "missing"]
    lacking = [m for m in measured_elsewhere if v.status(m) == "missing"]
    if lacking:
        parts.append(f"{', '.join(lacking)} not measured at this stage, so it cannot exceed them")
    return f"{v.model} at {v.stage}: " + "; ".join(parts)


def judgement_reason(j: Judgement, architecture_alone: str = "flag") -> str:
    c = j.criterion
    if j.status == "baseline":
        return f"{c.metric} {j.value:g} (the baseline itself: 1 by definition, not judged)"
    sign = ">" if c.direction == "above" else "<"
    interval_text = f" [{j.ci[0]:.3f}, {j.ci[1]:.3f}]" if j.ci else ""
    covers = f" ({j.ci_covers})" if j.ci_covers and j.ci else ""
    text = f"{c.metric} {j.value:.3f}{interval_text}{covers} {sign} {c.threshold:g}: {j.status}"
    if j.status == "uncertain" and task_of(c.metric) == "speed":
        text += " (turns on timing noise)"
    text += ", " + controls_text(j)
    if j.met_by_architecture:
        r = j.random_init
        control_ci = f" [{r.control_ci[0]:.3f}, {r.control_ci[1]:.3f}]" if r.control_ci else ""
        text += (f", met by the architecture alone (random init {r.control_value:.3f}{control_ci}: {r.control_status}"
                 f"{'; counted as failed' if architecture_alone == 'fail' else ''})")
    return text


def controls_text(j: Judgement) -> str:
    """The margins over the random-init copy and the pixels, or why there is none."""
    why = NO_CONTROL.get(task_of(j.criterion.metric))
    why = why or "none measured"
    random_init = j.random_init.text("random init") if j.random_init else f"no random-init control ({why})"
    pixels = j.pixels.text("pixels") if j.pixels else f"no pixels control ({why})"
    return f"{random_init}, {pixels}"


HYBRID_ACTION = "Investigate hybrid approach"


def tuned_bases(results: list[dict], model_stages: dict[str, list[str]], tuned_from: dict[str, str] | None) -> dict[str, str]:
    """Fine-tuned variant -> the model it tunes: as given, else from its `lora:<id>` rows' `base_model`."""
    bases = dict(tuned_from or {})
    for r in results:
        if r["model"] in model_stages and is_tuned(variant_of(r)) and r.get("base_model"):
            bases.setdefault(r["model"], r["base_model"])
    return {tuned: base for tuned, base in bases.items() if tuned in model_stages}


# --- the semantic check: 8.3's secondary test and Mod C's guard ------------------------------------------

@dataclass
class SemanticCheck:
    """VQA accuracy of `model` over `reference`'s, judged against `decision.semantic_ratio` ("at least"): pass
    when the ratio's whole interval is at or above it, fail when the whole interval is below, else uncertain."""
    model: str
    reference: str | None
    status: Status
    value: float | None = None  # the ratio of the two accuracies
    ci: tuple[float, float] | None = None  # SEMANTIC_INTERVAL
    why: str = ""  # what a missing check lacks, or that the model is the reference itself
    #: with a VQA benchmark beside the generated questions: the check on each set (this one combines them)
    parts: tuple[tuple[str, "SemanticCheck"], ...] = ()

    def text(self, ratio: float) -> str:
        if self.parts:
            each = "; ".join(f"{questions} questions: {check.text(ratio)}" for questions, check in self.parts)
            return f"{each}; both sets: {self.status}"
        if self.value is None:
            return f"VQA at least {ratio:.0%} of {self.reference or 'the baseline'}'s: {self.status} ({self.why})"
        interval = f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]" if self.ci else ""
        return f"VQA {self.value:.3f}{interval} of {self.reference}'s, at least {ratio:g}: {self.status}"


#: the ratio's interval from the two accuracies' 95% intervals, as the margins' (the rows keep no bootstrap samples)
SEMANTIC_INTERVAL = "the model's interval over the reference's (low / reference high, high / reference low): conservative"


def vqa_row(results: list[dict], model: str) -> dict | None:
    row = find(results, model, None, Criterion(metric=SEMANTIC_METRIC, weight=0, threshold=0, direction="above"))
    return row if row is not None and row.get("value") is not None else None


def semantic_check(results: list[dict], model: str, reference: str | None, ratio: float) -> SemanticCheck:
    """The 95% rule on each set of questions the run asked (generated, and a benchmark folder's if given):
    fail if either fails, pass if every measured set passes, missing if none is measured, else uncertain."""
    from .vqa import asking, question_sets

    sets = question_sets(results)
    if len(sets) < 2 or reference is None or model == reference:
        return semantic_check_of(results, model, reference, ratio)
    parts = tuple((s, semantic_check_of(asking(results, s), model, reference, ratio)) for s in sets)
    measured = [check.status for _, check in parts if check.status != "missing"]
    status = ("missing" if not measured else "fail" if "fail" in measured
              else "pass" if set(measured) == {"pass"} else "uncertain")
    return SemanticCheck(model, reference, status, parts=parts)


def semantic_check_of(results: list[dict], model: str, reference: str | None, ratio: float) -> SemanticCheck:
    if reference is None:
        return SemanticCheck(model, None, "missing", why="no baseline to compare with; set decision.baseline")
    if model == reference:
        return SemanticCheck(model, reference, "baseline", why="the baseline itself")
    mine, theirs = vqa_row(results, model), vqa_row(results, reference)
    lacking = [name for name, row in ((model, mine), (reference, theirs)) if row is None]
    if lacking:
        return SemanticCheck(model, reference, "missing", why=f"{SEMANTIC_METRIC} not measured for {', '.join(lacking)}")
    if not theirs["value"] > 0:
        return SemanticCheck(model, reference, "missing", why=f"{reference} answers no question right: no ratio")
    (low, high), (ref_low, ref_high) = interval(mine) or (mine["value"],) * 2, interval(theirs) or (theirs["value"],) * 2
    ci = (low / ref_high if ref_high > 0 else float("inf"), high / ref_low if ref_low > 0 else float("inf"))
    status = "pass" if ci[0] >= ratio else "fail" if ci[1] < ratio else "uncertain"
    return SemanticCheck(model, reference, status, mine["value"] / theirs["value"], ci)


def semantic_reference(results: list[dict], config: DecisionConfig) -> str | None:
    """The model 8.3 compares VQA with: decision.baseline, else the baseline the run's ratio rows name."""
    return config.baseline or next((r["baseline"] for r in results if r.get("baseline")), None)


# --- Mod C: a fine-tuned variant against the model it tunes ---------------------------------------------

@dataclass
class ModC:
    """Mod C (proposal 3.1.4): does the tuned encoder cross the spatial threshold while VQA holds?"""
    tuned: str
    base: str
    outcome: str
    status: Status  # of the rescue: pass (crosses and holds), fail, uncertain, or missing
    spatial: Status  # the tuned variant's primary criterion
    base_spatial: Status  # the original's
    guard: SemanticCheck

    def text(self, ratio: float) -> str:
        return (f"Mod C, {self.tuned} (fine-tuned from {self.base}): {self.outcome}; spatial {self.spatial} "
                f"(the original: {self.base_spatial}); semantic guard: {self.guard.text(ratio)}")


def mod_c_outcome(v: ModelVerdict, verdicts: list[ModelVerdict], results: list[dict], config: DecisionConfig) -> ModC:
    base = next((b for b in verdicts if b.model == v.tuned_from), None)
    spatial = v.counted_status(config.spatial_metric)
    base_spatial = base.counted_status(config.spatial_metric) if base else "missing"
    guard = semantic_check(results, v.model, v.tuned_from, config.semantic_ratio)
    outcome, status = mod_c_row(spatial, base_spatial, guard.status, v.tuned_from)
    return ModC(v.model, v.tuned_from, outcome, status, spatial, base_spatial, guard)


def mod_c_row(spatial: Status, base_spatial: Status, guard: Status, base: str) -> tuple[str, Status]:
    """The Mod C outcome: the guard first (a tuned encoder that loses semantics is no rescue), then the
    spatial threshold; each says what it rests on."""
    if guard == "fail":
        return f"fails the semantic guard: VQA below the share of {base}'s it must keep", "fail"
    if spatial == "missing":
        return "the tuned variant's spatial criterion is not measured", "missing"
    if spatial == "fail":
        return "does not cross the spatial threshold", "fail"
    if guard == "missing":
        return "semantic guard not measured: no rescue can be claimed", "missing"
    if spatial == "pass" and guard == "pass":
        if base_spatial == "pass":
            return f"keeps {base} above the spatial threshold (it already was), VQA holds", "pass"
        return f"rescues {base}: crosses the spatial threshold while VQA holds", "pass"
    what = " and ".join(name for name, status in (("spatial", spatial), ("semantic guard", guard)) if status == "uncertain")
    return f"may rescue {base}: {what} uncertain", "uncertain"


# --- the hybrid rows "Investigate hybrid approach" points at ---------------------------------------------

def tuned_note(named: list[str], verdicts: list[ModelVerdict]) -> str:
    """Said after the action when the model to switch to is a fine-tuned variant: what switching to it means."""
    first = next((v for v in verdicts if named and v.model == named[0]), None)
    return f" ({first.model} is Mod C: {first.tuned_from} with its fine-tuned vision encoder)" if first and first.tuned_from else ""


def hybrid_models(verdicts: list[ModelVerdict], results: list[dict]) -> list[str]:
    """The run's hybrids (proposal 9.4): judged at a `hybrid.*` stage, or with rows of family hybrid."""
    families = {r["model"] for r in results if r.get("family") == "hybrid"}
    return [v.model for v in verdicts if v.stage.startswith("hybrid.") or v.model in families]


def hybrid_pointer(hybrids: list[str], verdicts: list[ModelVerdict], config: DecisionConfig) -> tuple[str, str]:
    """The hybrid action and its reason: pointing at the run's hybrid rows, or saying there are none."""
    if not hybrids:
        return HYBRID_ACTION, ("this run has no hybrid model to investigate: add one (`family: hybrid`, proposal 9.4) "
                               "to measure a spatial encoder beside the VLM")
    shown = []
    for v in verdicts:
        if v.model in hybrids:
            j = v.judgement(config.spatial_metric)
            value = f"{j.value:.3f}" if j and j.value is not None else "not measured"
            shown.append(f"{v.model} at {v.stage}: {config.spatial_metric} {value} ({v.status(config.spatial_metric)})")
    return (f"{HYBRID_ACTION}: see this run's hybrid rows ({', '.join(hybrids)})",
            f"hybrid rows of this run: {'; '.join(shown)}")


# --- Phase 1 (8.1, 9.3 week 2) and overall success (8.3) -------------------------------------------------

@dataclass
class PhaseOne:
    """Section 8.1 and the week-2 decision point: at least one model past the Phase 1 gate?"""
    status: Status  # pass: one passes; uncertain: none passes, one may; fail: every measured one fails
    passing: list[str]
    uncertain: list[str]
    rows: list[tuple[Criterion, str | None, Judgement | None]]  # each 8.1 row with its best model

    def text(self, gate: float) -> str:
        rows = [f"{c.metric} > {c.threshold:g} for at least one model: " + (
            f"best {model} {j.value:.3f} ({j.status}, tier {j.tier})" if j else "not measured")
            for c, model, j in self.rows]
        past = (f"past the gate: {', '.join(self.passing)}" if self.passing else "no model past the gate") + (
            f"; uncertain: {', '.join(self.uncertain)}" if self.uncertain else "")
        return f"Phase 1 (gate: spatial > {gate:g}, interval-aware): {self.status}, {past}. " + "; ".join(rows)


RANK = {"pass": 0, "baseline": 1, "uncertain": 2, "fail": 3, "missing": 4}


def phase_one(verdicts: list[ModelVerdict], config: DecisionConfig) -> PhaseOne:
    gates = [v.phase_gate for v in verdicts]
    passing = [v.model for v in verdicts if v.phase_gate == "pass"]
    uncertain = [v.model for v in verdicts if v.phase_gate == "uncertain"]
    status = "pass" if passing else "uncertain" if uncertain else "fail" if "fail" in gates else "missing"
    rows = []
    for c in config.phase1:
        judged = [(v.model, j) for v in verdicts for j in v.phase1 if j.criterion is c and j.value is not None]
        sign = -1.0 if c.direction == "above" else 1.0
        best = min(judged, key=lambda mj: (RANK[mj[1].status], sign * mj[1].value), default=(None, None))
        rows.append((c, *best))
    return PhaseOne(status, passing, uncertain, rows)


@dataclass
class Success:
    """Section 8.3 for the model the decision matrix selects: primary (its spatial criterion) and secondary
    (VQA at least `semantic_ratio` of the baseline's); the tertiary (integration time) is not measured here."""
    model: str | None
    status: Status
    primary: Status
    secondary: SemanticCheck | None
    reasons: list[str]


SWITCH_ROWS = ("One model exceeds all thresholds", "Multiple models exceed thresholds")
TERTIARY = "tertiary (integration within 8 weeks of the decision): not measured by this tool"


def overall_success(firm: tuple, hopeful: tuple, verdicts: list[ModelVerdict], results: list[dict],
                    config: DecisionConfig) -> Success:
    """8.3 on the model the firm matrix row selects (the first named: the fastest of several); when only the
    optimistic row selects one, on that model, and at best uncertain."""
    row = firm if firm[0] in SWITCH_ROWS else hopeful if hopeful[0] in SWITCH_ROWS else None
    if row is None:
        return Success(None, "fail", "fail", None, [f"no model is selected: \"{firm[0]}\"", TERTIARY])
    model = row[2][0]
    v = next(v for v in verdicts if v.model == model)
    primary = v.counted_status(config.spatial_metric)
    secondary = semantic_check(results, model, semantic_reference(results, config), config.semantic_ratio)
    parts = [primary, "pass" if secondary.status == "baseline" else secondary.status]
    status = next(s for s in ("fail", "uncertain", "missing", "pass") if s in parts)
    if row is hopeful and status == "pass":
        status = "uncertain"
    j = v.judgement(config.spatial_metric)
    c = j.criterion if j else None
    reasons = [f"primary ({config.spatial_metric} > {c.threshold:g} at {v.stage}): {primary}" if c else
               f"primary ({config.spatial_metric}): not a criterion",
               f"secondary ({secondary.text(config.semantic_ratio)})", TERTIARY]
    return Success(model, status, primary, secondary, reasons)


def decision_points(phase1: PhaseOne, firm: tuple, certain: bool, success: Success) -> list[tuple[str, str, str]]:
    """Section 9.3's decision points, each answered from what the run measured (or said not to be)."""
    week2 = {"pass": "yes", "fail": "no", "uncertain": "uncertain", "missing": "not measured"}[phase1.status]
    week2 += f": {', '.join(phase1.passing or phase1.uncertain)}" if phase1.passing or phase1.uncertain else ""
    week5 = (f"yes: {firm[2][0]}" if firm[0] in SWITCH_ROWS else f"no: {firm[0]}") + ("" if certain else " (uncertain)")
    if success.model and success.status != "pass":
        week5 += f"; overall success (8.3) {success.status}"
    return [("Week 2", "Continue to Phase 2?", week2), ("Week 5", "Commit to new VLM?", week5),
            ("Week 6", "Full project pivot?", "not measured by this tool (integration plan, team consensus)")]


def known_metrics() -> list[str]:
    return sorted([*MEASURED_METRICS, *PLANNED_METRICS])


def check_decision(decision: DecisionConfig, tasks: list[str], probes: list[str], model_names: list[str]) -> None:
    """Raise ValueError, one line naming the field, when the decision cannot be judged from what the run
    measures: no model, an unknown metric or probe, a primary criterion the run does not measure, or a
    decision.stage / decision.baseline naming no configured model or written in no stage syntax."""
    if not model_names:
        raise ValueError("models: none configured; a verdict needs at least one model")
    for i, c in enumerate(decision.criteria):
        check_criterion(f"decision.criteria[{i}]", c, probes)
    for i, c in enumerate(decision.phase1):  # a report beside the gate: a probe the run leaves out leaves it missing
        check_criterion(f"decision.phase1[{i}]", c, probes, probe_must_run=False)
    check_primary(decision, tasks, probes)
    check_stage(decision.stage, model_names)
    if decision.baseline is not None and decision.baseline not in model_names:
        raise ValueError(f"decision.baseline: no model named {decision.baseline!r}; models: {', '.join(model_names)}")


def check_criterion(where: str, c: Criterion, probes: list[str], probe_must_run: bool = True) -> None:
    if c.metric in PLANNED_METRICS:
        return  # no task measures it yet: listed as not measured
    if c.metric not in MEASURED_METRICS:
        raise ValueError(f"{where}.metric: unknown metric {c.metric!r}; known: {', '.join(known_metrics())}")
    task, producing = MEASURED_METRICS[c.metric]
    if c.probe is None:
        return
    if c.probe not in producing:
        source = f"it comes from probe {' or '.join(producing)}" if producing else "it has no probe (leave probe unset)"
        raise ValueError(f"{where}.probe: {c.metric} does not come from probe {c.probe!r}; {source}")
    if probe_must_run and task == "spatial_probe" and c.probe not in probes:
        raise ValueError(f"{where}.probe: probe {c.probe!r} is not run (probes: {', '.join(probes)})")


def check_primary(decision: DecisionConfig, tasks: list[str], probes: list[str]) -> None:
    """The primary criterion must be one of the criteria, and something the run measures."""
    primary = decision.spatial_metric
    names = [c.metric for c in decision.criteria]
    if primary not in names:
        raise ValueError(f"decision.spatial_metric: {primary!r} is no criterion's metric; criteria: {', '.join(names)}")
    if primary not in MEASURED_METRICS:
        raise ValueError(f"decision.spatial_metric: no task measures {primary!r} yet; the primary criterion must be measured")
    task, producing = MEASURED_METRICS[primary]
    if task not in {*tasks, "spatial_probe"}:  # spatial_probe always runs
        raise ValueError(f"decision.spatial_metric: {primary} comes from the {task} task, which `tasks` leaves out")
    if task == "spatial_probe" and not set(producing) & set(probes):
        raise ValueError(f"decision.spatial_metric: {primary} comes from probe {' or '.join(producing)}, "
                         f"which `probes` leaves out")


def check_stage(stage: str | dict[str, str], model_names: list[str]) -> None:
    chosen = stage.items() if isinstance(stage, dict) else [(None, stage)]
    for model, text in chosen:
        where = "decision.stage" if model is None else f"decision.stage.{model}"
        if model is not None and model not in model_names:
            raise ValueError(f"decision.stage: no model named {model!r}; models: {', '.join(model_names)}")
        problem = None if text == "auto" else stage_syntax_error(text)
        if problem:
            raise ValueError(f"{where}: {problem}")
