"""The proposal's decision (PIVOT-4 sections 3.3, 8, 9.3) from measured results, uncertainty included.

A criterion passes only when its whole 95% interval clears the threshold, fails when the whole
interval misses it, and is "uncertain" otherwise; a criterion with no result is "missing", and the
baseline's own relative numbers (its speed_ratio is 1 by definition) are "baseline", neither pass
nor fail. The verdict is a row of the decision matrix; when uncertain criteria could change the row,
the verdict says so and names them. Every judged criterion is set against the controls (the
random-init copy of the model, raw pixels); one that the random-init copy also meets is "met by the
architecture alone". Without a configured model, or without the primary criterion measured for one
of them, there is no verdict.
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
#: the proposal's Phase 2 metrics that no task measures yet: allowed as criteria, reported as not measured
PLANNED_METRICS = ("direction_accuracy", "ordering_accuracy")
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
    criteria: list[Criterion] = Field(default_factory=lambda: [
        Criterion(metric="spatial_iou", weight=0.40, threshold=0.60, direction="above", probe="dense",
                  target=0.60, acceptable=0.50, fail=0.50),
        Criterion(metric="bbox_iou", weight=0.20, threshold=0.50, direction="above", probe="dense",
                  target=0.50, acceptable=0.30, fail=0.30),
        Criterion(metric="cka", weight=0.15, threshold=0.50, direction="above", probe="spatial",
                  target=0.60, acceptable=0.50, fail=0.40),
        # LPIPS of the adapter's decoded latents (Phase 2, adapter_bridging), whichever head the run trains
        Criterion(metric="lpips_adapter", weight=0.15, threshold=0.35, direction="below", target=0.30,
                  acceptable=0.35, fail=0.40),
        Criterion(metric="speed_ratio", weight=0.10, threshold=2.0, direction="below", target=1.5, acceptable=2.0, fail=3.0),
    ])
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


def find(results: list[dict], model: str, stage: str | None, c: Criterion, control: str = "none") -> dict | None:
    for r in results:
        if r["model"] == model and r.get("control", "none") == control and r["metric"] == c.metric \
                and (c.probe is None or r.get("probe") == c.probe) and (stage is None or r.get("stage") in (stage, None)):
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
    if r.get("not_judged"):  # measured, but against something that is no evidence (e.g. a tiny random VAE)
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
        rows = [r for r in results if r["model"] == model and r.get("control", "none") == "none" and r["metric"] == c.metric
                and (c.probe is None or r.get("probe") == c.probe) and r.get("stage") and r.get("value") is not None]
        if rows:
            pick = max if c.direction == "above" else min
            top = pick(rows, key=lambda r: r["value"])
            best[c.metric] = (top["stage"], top["value"])
    return best


def model_verdict(model: str, stages: list[str], results: list[dict], config: DecisionConfig) -> ModelVerdict:
    stage = judged_stage(model, stages, config)
    judgements = [judgement(model, stage, c, results) for c in config.criteria]
    spatial = next((j for j in judgements if j.criterion.metric == config.spatial_metric), None)
    gate = Criterion(metric=config.spatial_metric, weight=0, threshold=config.phase_gate, direction="above")
    gate_status = judge(spatial.value, *(spatial.ci or (None, None)), gate) if spatial and spatial.value is not None \
        else "missing"
    return ModelVerdict(model, stage, judgements, best_stages(model, results, config), gate_status,
                        config.architecture_alone)


def matrix_row(verdicts: list[ModelVerdict], config: DecisionConfig, optimistic: bool) -> tuple[str, str, list[str]]:
    """The decision-matrix row, reading "uncertain" as pass (optimistic) or as fail."""
    def ok(status: Status) -> bool:
        return status in ("pass", "baseline") or (optimistic and status == "uncertain")

    # a criterion measured for any model counts for every model: one that lacks it (e.g. a stage with no
    # spatial tokens has no spatial_iou) cannot be said to exceed it, and neither can one without the
    # primary spatial criterion
    required = {config.spatial_metric} | {j.criterion.metric for v in verdicts for j in v.judgements
                                           if j.status not in ("missing", "baseline")}

    def passes_all(v: ModelVerdict) -> bool:
        return all(ok(v.counted(j)) for j in v.judgements if j.criterion.metric in required)

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
        return ("No model exceeds spatial threshold but one is >0.5", "Investigate hybrid approach", near)
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


def decide(results: list[dict], model_stages: dict[str, list[str]], config: DecisionConfig | None = None) -> Verdict:
    """The verdict over the judged models in `model_stages` (configured models, not controls), read from
    every result row of the run: the controls' rows give each criterion's margins."""
    config = config or DecisionConfig()
    metrics = [c.metric for c in config.criteria]
    if not model_stages:
        return Verdict("No verdict: no model is configured", "Add at least one model to `models:`", [],
                       ["a verdict needs at least one configured model"], False, [], metrics, [])
    verdicts = [model_verdict(m, stages, results, config) for m, stages in model_stages.items()]
    missing = [m for m in metrics if all(v.status(m) == "missing" for v in verdicts)]
    rests_on = [m for m in metrics if m not in missing]
    reasons = [reason(v, rests_on) for v in verdicts]
    if all(v.status(config.spatial_metric) == "missing" for v in verdicts):  # also when no criterion names it
        return no_primary(verdicts, config, reasons, missing)
    firm, hopeful = matrix_row(verdicts, config, optimistic=False), matrix_row(verdicts, config, optimistic=True)
    certain = firm[0] == hopeful[0] and firm[2] == hopeful[2]
    alone = [f"{v.model}: {j.criterion.metric}" for v in verdicts for j in v.judgements if j.met_by_architecture]
    if alone:
        counted = ("counted as failed (decision.architecture_alone: fail)" if config.architecture_alone == "fail"
                   else "flagged, not failed")
        reasons.insert(0, f"met by the architecture alone (the random-init copy meets it too; {counted}): "
                          f"{', '.join(alone)}")
    if not certain:
        reasons.insert(0, uncertain_reason(verdicts, hopeful[0]))
    if any(j.random_init or j.pixels for v in verdicts for j in v.judgements):
        reasons.append(f"margins over the controls: the model's value minus the control's, positive = better; interval: "
                       f"{MARGIN_INTERVAL}")
    if missing:
        reasons.append(f"not measured or not usable (see below), so not part of this verdict: {', '.join(missing)}")
    return Verdict(firm[0], firm[1], firm[2], reasons, certain, rests_on, missing, verdicts, alone)


def uncertain_reason(verdicts: list[ModelVerdict], hopeful_outcome: str) -> str:
    uncertain = sorted({(v.model, j.criterion.metric) for v in verdicts for j in v.judgements
                        if v.counted(j) == "uncertain"})
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
    check_primary(decision, tasks, probes)
    check_stage(decision.stage, model_names)
    if decision.baseline is not None and decision.baseline not in model_names:
        raise ValueError(f"decision.baseline: no model named {decision.baseline!r}; models: {', '.join(model_names)}")


def check_criterion(where: str, c: Criterion, probes: list[str]) -> None:
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
    if task == "spatial_probe" and c.probe not in probes:
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
