"""Tasks: what a run measures, one module per task, behind one small protocol.

A task says which jobs it needs and turns them into result rows:
- `model_jobs(run, ctx)`: jobs that need the loaded model (timing, generating answers);
- `feature_jobs(run, stages, judged, ctx)`: jobs on stored features of the run's resolved stages
  (`judged` is the stage the decision reads);
- `finalize(rows, ctx)`: rows between models, once every job has finished (e.g. ratios to a baseline);
- `section(manifest, results)`: its part of the HTML report.
Every job is a picklable value with `run(...) -> list[dict]` (see `spatialprobe.jobs`), so any
executor can run it. Adding a task is one module here, one entry in `TASKS` (its module and the
metrics it writes, which the decision then accepts as criteria), and its tests; the config's
`tasks:` list accepts the names in `TASKS`.

Task modules import torch and the models lazily, inside their jobs: the report imports them for
their sections and must work without torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

@dataclass(frozen=True)
class TaskEntry:
    """A task as data: where its module is, and the metrics its rows carry (metric -> the probes whose
    rows carry it; () = rows without a probe). The decision reads these without importing the module."""
    module: str
    metrics: dict[str, tuple[str, ...]]
    #: reads the latents of the run's reference model (`alignment.reference`), extracted beside the models
    reference: bool = False
    #: in a config's `tasks` when it names none (Phase 2 tasks are asked for by name)
    default: bool = True


SPATIAL_PROBES = ("linear", "pooled", "dense")
ALIGNMENT_FORMS = ("pooled", "spatial", "per_position")  # as alignment.FORMS (here without torch)
ADAPTER_HEADS = ("conv", "attention")
TEMPORAL_PROBES = ("linear", "attentive")  # as probes.temporal.PROBES (here without torch)

#: task name -> its entry, in the order their sections appear in the report
TASKS: dict[str, TaskEntry] = {
    "spatial_probe": TaskEntry("spatialprobe.tasks.spatial_probe", {
        "bbox_iou": SPATIAL_PROBES, "map_50": SPATIAL_PROBES, "map_75": SPATIAL_PROBES,
        "spatial_iou": ("dense",)}),  # only the dense probe paints a mask
    "reconstruction_probe": TaskEntry("spatialprobe.tasks.reconstruction_probe", {
        "psnr": ("decoder",), "ssim": ("decoder",), "lpips": ("decoder",)}),
    "speed": TaskEntry("spatialprobe.tasks.speed", {"speed_ratio": (), "images_per_second": (), "peak_memory_mb": ()}),
    "vqa": TaskEntry("spatialprobe.tasks.vqa", {"vqa_accuracy": ("generate",), "vqa_relative": ("generate",)}),
    "latent_alignment": TaskEntry("spatialprobe.tasks.latent_alignment", {"cka": ALIGNMENT_FORMS},
                                  reference=True, default=False),
    "adapter_bridging": TaskEntry("spatialprobe.tasks.adapter_bridging", {
        "lpips_adapter": ADAPTER_HEADS, "psnr_adapter": ADAPTER_HEADS, "ssim_adapter": ADAPTER_HEADS},
        reference=True, default=False),
    "temporal_probe": TaskEntry("spatialprobe.tasks.temporal_probe", {
        "direction_accuracy": TEMPORAL_PROBES, "ordering_accuracy": TEMPORAL_PROBES,
        "pairwise_order_accuracy": ("linear",)}, default=False),
    # Mod C: turned on by the config's `finetune` section; drift and training rows of each tuned run
    "finetune": TaskEntry("spatialprobe.tasks.finetune", {
        "cka_to_original": ("drift",), "finetune_val_loss": ("training",)}, default=False),
}


def default_tasks() -> list[str]:
    return [name for name, entry in TASKS.items() if entry.default]


def needs_reference(tasks: list[str]) -> bool:
    """Whether any of these tasks reads the reference model's latents."""
    return any(TASKS[t].reference for t in tasks)


def measured_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """metric -> (the task that writes it, the probes whose rows carry it)."""
    return {metric: (task, probes) for task, entry in TASKS.items() for metric, probes in entry.metrics.items()}


@dataclass(frozen=True)
class PlanContext:
    """What every job of a run shares: the config, the data, and where features and results are stored."""
    config: Any  # RunConfig
    data: Any  # jobs.DataRef
    store_root: str
    results_root: str
    reference: Any = None  # jobs.RunInfo of the alignment reference (the VAE), when a task reads it
    clips: Any = None  # jobs.ClipDataRef of the clips the temporal_probe task reads, when `tasks` names it


class Task(Protocol):
    name: str

    def model_jobs(self, run, ctx: PlanContext) -> list: ...

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list: ...

    def finalize(self, rows: list[dict], ctx: PlanContext) -> list[dict]: ...

    def section(self, manifest: dict, results: list[dict]) -> str: ...


TINY_REFERENCE = ("measured against a tiny VAE (alignment.reference.path: tiny; random encoder, decoder fitted on shapes): a check of the pipeline, "
                  "not a measurement of LTX-Video, so the verdict does not use it")


def reference_fields(ctx: PlanContext) -> dict:
    """What every row measured against the reference says about it; a tiny reference is never judged."""
    return {"not_judged": TINY_REFERENCE} if ctx.config.alignment.reference.path == "tiny" else {}


def cached_records(ctx: PlanContext, compute, **key) -> list[dict]:
    """A job's records from the run's result store (by `result_key(**key)`), computed and stored on a miss."""
    from ..store.results import ResultCache, result_key

    store, name = ResultCache(ctx.results_root), result_key(**key)
    records = store.get(name)
    if records is None:
        records = compute()
        store.put(name, records)
    return records


def row_base(run, task: str, stage: str | None, ctx: PlanContext) -> dict:
    """The fields naming a row's run, task and stage."""
    return {"model": run.name, "label": run.label, "family": run.family, "task": task, "seed": ctx.config.seed,
            "control": run.variant, "variant": run.variant, "stage": stage}


def stage_source(ctx: PlanContext, run, split: str, stage: str):
    """One stage of one split of a run's model in the feature store, read shard by shard."""
    from ..store.shards import FeatureCache
    from ..store.sources import StoreSource

    return StoreSource(FeatureCache(ctx.store_root), run.spec.key(), ctx.data.hash, split,
                       len(ctx.data.split(split)), ctx.config.shard_size, stage)


def get_task(name: str) -> Task:
    """The task object of a registered task (its module's `TASK`)."""
    return importlib.import_module(TASKS[name].module).TASK


class NoJobs:
    """Defaults for a task that has no jobs of one kind, no rows between models or no section."""

    def model_jobs(self, run, ctx: PlanContext) -> list:
        return []

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        return []

    def finalize(self, rows: list[dict], ctx: PlanContext) -> list[dict]:
        return []

    def section(self, manifest: dict, results: list[dict]) -> str:
        return ""
