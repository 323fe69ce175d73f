"""The Phase 2 gate (proposal 9.3, week 2): Phase 2 takes on only the models a Phase 1 run passed.

A config with `alignment.phase1_run` (the output folder of a Phase 1 run: its manifest.json and
results.jsonl) keeps the models whose Phase 1 gate passed in that run's verdict (its `decision.phase_gate`
on the spatial metric, interval-aware) and drops the rest, each with its reason. `alignment.gate: false`
keeps every model (the measurements are still made; the verdict still shows each model's gate).
"""
from __future__ import annotations

from pathlib import Path

from .errors import SpatialProbeError


def phase1_gates(run_dir: Path) -> dict[str, tuple[str, str]]:
    """model -> (gate status, why) from a finished Phase 1 run folder."""
    from .report import judged_models, read_run, run_verdict

    try:
        manifest, results = read_run(run_dir)
    except SpatialProbeError as err:
        raise SpatialProbeError(f"alignment.phase1_run: {err}; point it at a Phase 1 run's output folder") from None
    verdict = run_verdict(manifest, results)
    gates = {}
    for v in verdict.per_model:
        spatial = next((j for j in v.judgements if j.criterion.metric == verdict_metric(manifest)), None)
        value = f"{spatial.value:.3f}" if spatial and spatial.value is not None else "not measured"
        gates[v.model] = (v.phase_gate, f"Phase 1 spatial metric at {v.stage}: {value}")
    return gates if judged_models(manifest) else {}


def verdict_metric(manifest: dict) -> str:
    return manifest.get("config", {}).get("decision", {}).get("spatial_metric", "spatial_iou")


def gated(config, say=print, dry_run: bool = False):
    """The config with only the models past the Phase 1 gate of `alignment.phase1_run` (when set and
    `alignment.gate` is on); each dropped model is said with its reason. A dry run plans every model when
    the Phase 1 run is not there yet (and says so); a run refuses."""
    phase1 = config.alignment.phase1_run
    if phase1 is None or not config.alignment.gate:
        return config
    if dry_run and not (Path(phase1) / "results.jsonl").is_file():
        say(f"Phase 2 gate: no Phase 1 run at {phase1} yet; every model is listed (the run itself needs it)")
        return config
    gates = phase1_gates(Path(phase1))
    kept = []
    for model in config.models:
        status, why = gates.get(model.name, ("missing", f"not in the Phase 1 run {phase1}"))
        if status == "pass":
            kept.append(model)
        else:
            say(f"Phase 2 gate: {model.name} left out ({status}: {why}); set alignment.gate: false to take it on")
    if not kept:
        raise SpatialProbeError(f"alignment.phase1_run: no model of this config passed the Phase 1 gate in {phase1}; "
                                "set alignment.gate: false to measure them anyway")
    return config.model_copy(update={"models": kept})
