"""The proposal's decision (PIVOT-4 sections 3.3, 8, 9.3) from measured results, uncertainty included.

A criterion passes only when its whole 95% interval clears the threshold, fails when the whole
interval misses it, and is "uncertain" otherwise; a criterion with no result is "missing". The
verdict is a row of the decision matrix; when uncertain criteria could change the row, the verdict
says so and names them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pass", "fail", "uncertain", "missing"]


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


class DecisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the stage each model is judged at; "auto" = the last LLM layer (what the video adapter would
    #: read), else the model's last stage. A dict maps model names to stages.
    stage: str | dict[str, str] = "auto"
    baseline: str | None = None  # model the speed ratio is taken against (reported, not used here)
    criteria: list[Criterion] = Field(default_factory=lambda: [
        Criterion(metric="spatial_iou", weight=0.40, threshold=0.60, direction="above", probe="dense",
                  target=0.60, acceptable=0.50, fail=0.50),
        Criterion(metric="bbox_iou", weight=0.20, threshold=0.50, direction="above", probe="dense",
                  target=0.50, acceptable=0.30, fail=0.30),
        Criterion(metric="cka", weight=0.15, threshold=0.50, direction="above", target=0.60, acceptable=0.50, fail=0.40),
        Criterion(metric="lpips", weight=0.15, threshold=0.35, direction="below", target=0.30, acceptable=0.35, fail=0.40),
        Criterion(metric="speed_ratio", weight=0.10, threshold=2.0, direction="below", target=1.5, acceptable=2.0, fail=3.0),
    ])
    spatial_metric: str = "spatial_iou"
    #: "No model exceeds spatial threshold but one is >0.5" -> hybrid; also the Phase 2 gate
    hybrid_floor: float = 0.50
    phase_gate: float = 0.50


@dataclass
class Judgement:
    criterion: Criterion
    status: Status
    value: float | None = None
    ci: tuple[float, float] | None = None
    tier: str | None = None  # target / acceptable / marginal / fail
    unavailable: str | None = None  # why a metric that was attempted has no value


@dataclass
class ModelVerdict:
    model: str
    stage: str
    judgements: list[Judgement]
    best_stage: dict[str, tuple[str, float]] = field(default_factory=dict)
    phase_gate: Status = "missing"

    def status(self, metric: str) -> Status:
        return next((j.status for j in self.judgements if j.criterion.metric == metric), "missing")

    def weighted_score(self) -> float:
        """Share of the measured criteria's weight that passes (uncertain counts half)."""
        measured = [j for j in self.judgements if j.status != "missing"]
        total = sum(j.criterion.weight for j in measured)
        earned = sum(j.criterion.weight * {"pass": 1.0, "uncertain": 0.5}.get(j.status, 0.0) for j in measured)
        return earned / total if total else 0.0


@dataclass
class Verdict:
    outcome: str  # the decision-matrix row
    action: str
    models: list[str]  # the models the row names
    reasons: list[str]
    certain: bool
    rests_on: list[str]  # criteria measured for at least one judged model
    missing: list[str]  # criteria no judged model has
    per_model: list[ModelVerdict]


def judge(value: float | None, low: float | None, high: float | None, c: Criterion) -> Status:
    if value is None:
        return "missing"
    low = value if low is None else low
    high = value if high is None else high
    clears = (lambda x: x > c.threshold) if c.direction == "above" else (lambda x: x < c.threshold)
    if clears(low) and clears(high):
        return "pass"
    if not clears(low) and not clears(high):
        return "fail"
    return "uncertain"


def tier(value: float, c: Criterion) -> str | None:
    if c.target is None:
        return None
    better = (lambda x, bound: x > bound) if c.direction == "above" else (lambda x, bound: x < bound)
    if better(value, c.target):
        return "target"
    if c.acceptable is not None and better(value, c.acceptable):
        return "acceptable"
    if c.fail is not None and not better(value, c.fail) and value != c.fail:
        return "fail"
    return "marginal"


def judged_stage(model: str, stages: list[str], config: DecisionConfig) -> str:
    chosen = config.stage.get(model, "auto") if isinstance(config.stage, dict) else config.stage
    if chosen != "auto":
        return chosen
    llm = [s for s in stages if s.startswith("llm.")]
    return llm[-1] if llm else stages[-1]


def find(results: list[dict], model: str, stage: str | None, c: Criterion) -> dict | None:
    for r in results:
        if r["model"] == model and r["metric"] == c.metric and (c.probe is None or r.get("probe") == c.probe) \
                and (stage is None or r.get("stage") in (stage, None)):
            return r
    return None


def model_verdict(model: str, stages: list[str], results: list[dict], config: DecisionConfig) -> ModelVerdict:
    stage = judged_stage(model, stages, config)
    judgements = []
    for c in config.criteria:
        r = find(results, model, stage, c)
        if r is None or r.get("value") is None:  # not measured, or recorded as unavailable
            judgements.append(Judgement(c, "missing", unavailable=(r or {}).get("unavailable")))
            continue
        low, high = r.get("ci_low"), r.get("ci_high")
        judgements.append(Judgement(c, judge(r["value"], low, high, c), r["value"],
                                    (low, high) if low is not None else None, tier(r["value"], c)))
    best = {}
    for c in config.criteria:
        rows = [r for r in results if r["model"] == model and r["metric"] == c.metric
                and (c.probe is None or r.get("probe") == c.probe) and r.get("stage") and r.get("value") is not None]
        if rows:
            pick = max if c.direction == "above" else min
            top = pick(rows, key=lambda r: r["value"])
            best[c.metric] = (top["stage"], top["value"])
    spatial = next((j for j in judgements if j.criterion.metric == config.spatial_metric), None)
    gate = Criterion(metric=config.spatial_metric, weight=0, threshold=config.phase_gate, direction="above")
    gate_status = judge(spatial.value, *(spatial.ci or (None, None)), gate) if spatial and spatial.value is not None else "missing"
    return ModelVerdict(model, stage, judgements, best, gate_status)


def matrix_row(verdicts: list[ModelVerdict], config: DecisionConfig, optimistic: bool) -> tuple[str, str, list[str]]:
    """The decision-matrix row, reading "uncertain" as pass (optimistic) or as fail."""
    def ok(status: Status) -> bool:
        return status == "pass" or (optimistic and status == "uncertain")

    # a criterion measured for any model counts for every model: one that lacks it (e.g. a stage with no
    # spatial tokens has no spatial_iou) cannot be said to exceed it, and neither can one without the
    # primary spatial criterion
    required = {config.spatial_metric} | {j.criterion.metric for v in verdicts for j in v.judgements
                                           if j.status != "missing"}

    def passes_all(v: ModelVerdict) -> bool:
        return all(ok(j.status) for j in v.judgements if j.criterion.metric in required)

    winners = [v for v in verdicts if passes_all(v)]
    if len(winners) > 1:
        return ("Multiple models exceed thresholds", "Select based on speed/simplicity", fastest_first(winners))
    if len(winners) == 1:
        return ("One model exceeds all thresholds", "Switch to that model", [winners[0].model])
    spatial_ok = [v.model for v in verdicts if ok(v.status(config.spatial_metric))]
    if spatial_ok:
        # a gap in the proposal's matrix: the spatial threshold is met but another criterion fails
        return ("A model meets the spatial threshold but fails another criterion (not a row of the matrix)",
                "Review the failing criteria before switching", spatial_ok)
    hybrid = Criterion(metric=config.spatial_metric, weight=0, threshold=config.hybrid_floor, direction="above")
    near = [v.model for v in verdicts if ok(spatial_status(v, hybrid))]
    if near:
        return ("No model exceeds spatial threshold but one is >0.5", "Investigate hybrid approach", near)
    return ("All models fail spatial threshold", "Pivot to different architecture (see Section 7)", [])


def spatial_status(v: ModelVerdict, c: Criterion) -> Status:
    j = next((j for j in v.judgements if j.criterion.metric == c.metric), None)
    if j is None or j.value is None:
        return "missing"
    return judge(j.value, *(j.ci or (None, None)), c)


def fastest_first(verdicts: list[ModelVerdict]) -> list[str]:
    def speed(v: ModelVerdict) -> float:
        j = next((j for j in v.judgements if j.criterion.metric == "speed_ratio"), None)
        return j.value if j is not None and j.value is not None else float("inf")

    return [v.model for v in sorted(verdicts, key=speed)]


def decide(results: list[dict], model_stages: dict[str, list[str]], config: DecisionConfig | None = None) -> Verdict:
    """The verdict over the models in `model_stages` (controls excluded by the caller)."""
    config = config or DecisionConfig()
    verdicts = [model_verdict(m, stages, results, config) for m, stages in model_stages.items()]
    firm, hopeful = matrix_row(verdicts, config, optimistic=False), matrix_row(verdicts, config, optimistic=True)
    certain = firm[0] == hopeful[0] and firm[2] == hopeful[2]
    metrics = [c.metric for c in config.criteria]
    missing = [m for m in metrics if all(v.status(m) == "missing" for v in verdicts)]
    rests_on = [m for m in metrics if m not in missing]
    reasons = [reason(v, rests_on) for v in verdicts]
    if not certain:
        uncertain = sorted({f"{v.model}: {j.criterion.metric}" for v in verdicts for j in v.judgements if j.status == "uncertain"})
        reasons.insert(0, f"uncertain: reading the uncertain criteria ({', '.join(uncertain)}) as passing would give "
                          f"\"{hopeful[0]}\" instead")
    if missing:
        reasons.append(f"not measured, so not part of this verdict: {', '.join(missing)}")
    return Verdict(firm[0], firm[1], firm[2], reasons, certain, rests_on, missing, verdicts)


def reason(v: ModelVerdict, measured_elsewhere: list[str] = ()) -> str:
    parts = []
    for j in v.judgements:
        if j.status == "missing":
            continue
        c = j.criterion
        sign = ">" if c.direction == "above" else "<"
        interval = f" [{j.ci[0]:.3f}, {j.ci[1]:.3f}]" if j.ci else ""
        parts.append(f"{c.metric} {j.value:.3f}{interval} {sign} {c.threshold:g}: {j.status}")
    lacking = [m for m in measured_elsewhere if v.status(m) == "missing"]
    if lacking:
        parts.append(f"{', '.join(lacking)} not measured at this stage, so it cannot exceed them")
    return f"{v.model} at {v.stage}: " + "; ".join(parts)
