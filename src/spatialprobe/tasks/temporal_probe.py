"""The `temporal_probe` task (Phase 2): motion direction, the arrow of time and frame order from a stage's tokens.

The clips (`temporal.data`, loaded once in the run's setup: `jobs.ClipDataRef`) are extracted as clip sets
of their own, one per view, by model jobs (`ClipsJob`, one per view, split and shard, through `run_shard`
into the same feature store): "forward" and "reversed" always; with `temporal.controls`, "shuffled" and
"shuffled+reversed" (frames shuffled within each clip, then that clip reversed: the ordering control's
two classes) and "repeated" (the middle frame over the whole clip; its reverse is itself). A family that
reads still images only (its class's `modalities`, read without loading anything) extracts nothing and
gets one row per metric saying so.

Then per (run, stage) a job fits the probes of `probes.temporal` on the stored tokens: direction (forward
view), ordering (forward vs reversed), pairwise frame order (forward view, linear probe). At the judged
stage the same metrics are measured on each control view, in rows marked `view: shuffled | repeated`,
which the decision never reads (`decision.is_control_view`); the judged stage's direction rows also carry
a few sample test clips (a contact sheet, their labels and the probe's answers) for the report.

Every row: value with its bootstrap 95% interval over test clips, floor (majority class / chance) and
ceiling (what the stage's time resolution allows) each with its reason, n (test clips), and the protocol
(view, frames, data kind, classes, the probe's budget).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report.parts import results_table
from . import NoJobs, PlanContext, cached_records, row_base

TASK_NAME = "temporal_probe"
METRICS = ("direction_accuracy", "ordering_accuracy", "pairwise_order_accuracy")
#: the clip sets each row view reads: (the ordering probe's forward class, its reversed class)
VIEW_PAIRS = {"forward": ("forward", "reversed"), "shuffled": ("shuffled", "shuffled+reversed"),
              "repeated": ("repeated", "repeated")}  # a repeated frame reversed is the same clip
#: sample test clips shown in the report's contact sheet (one per class, in class order), and frames of each
SHEET_CLIPS, SHEET_FRAMES, SHEET_SIDE = 8, 4, 64


def control_views(config) -> list[str]:
    controls = config.temporal.controls
    return [view for view, on in (("shuffled", controls.frames_shuffled), ("repeated", controls.frame_repeated)) if on]


def extraction_views(config) -> list[str]:
    """Every clip set extracted: the views the rows read, each with its ordering partner."""
    return list(dict.fromkeys(v for view in ["forward", *control_views(config)] for v in VIEW_PAIRS[view]))


def reads_video(family: str) -> bool:
    """From the family's class alone: nothing is loaded."""
    from ..models import backbone_class

    return "video" in backbone_class(family).modalities


def still_only(family: str) -> str:
    return f"{family} reads still images only"


def clip_stages(run, stages: list[str], config, judged: str | None = None) -> list[str]:
    """The stages of `stages` (the run's, resolved) that clips are read at: those `temporal.stages` matches and
    the judged stage (where the control views are measured), in model order; all of them when it is unset.
    The list serves every model, so a selector a model lacks (llm.* for DINOv2, anything but the one stage of
    the pixels control) selects nothing there."""
    from ..decision import configured_model, judged_stage
    from ..stages import match_stages

    if config.temporal.stages is None:
        return list(stages)
    judged = judged or judged_stage(configured_model(run), stages, config.decision)
    chosen = {s for selector in config.temporal.stages for s in match_stages(selector, stages)} | {judged}
    return [s for s in stages if s in chosen]


# --- model jobs: the clips of each view through the model -------------------------------------------------
@dataclass(frozen=True)
class ClipsJob:
    """One shard of one view of one clip split through one model: every stage it needs, into the store."""
    spec: object  # the model spec the executor loads
    config: object
    model: object  # jobs.RunInfo
    clips: object  # jobs.ClipDataRef
    store_root: str
    view: str
    split: str
    start: int
    stop: int
    stages: tuple[str, ...] | None

    def run(self, backbone) -> list[dict]:
        from ..extract import ShardJob, run_shard
        from ..store.shards import FeatureCache

        stages = clip_stages(self.model, backbone.resolve_stages(self.stages), self.config)
        run_shard(backbone, self.spec.key(), self.clips.split(self.split, self.view), self.clips.view_hash(self.view),
                  ShardJob(self.split, self.start, self.stop), stages,
                  FeatureCache(self.store_root), self.config.batch_size, pool=self.spec.pool)
        return []


def known_stages(run, ctx: PlanContext) -> list[str] | None:
    """The run's resolved clip stages (`clip_stages`) when an earlier run described its model (the runner's model-info record)."""
    from ..jobs import info_key
    from ..stages import resolve_stages
    from ..store.results import ResultCache

    info = ResultCache(ctx.results_root).get(info_key(run.spec))
    if info is None:
        return None
    return clip_stages(run, resolve_stages(run.stages, info[0]["stages"], run.label), ctx.config)


def clip_shards(run, ctx: PlanContext) -> list[tuple[str, object]]:
    """(view, shard) of every clip set the run still needs; none already stored (so a rerun loads no model)."""
    from ..extract import plan_shards, shard_keys
    from ..store.shards import FeatureCache

    store, stages, todo = FeatureCache(ctx.store_root), known_stages(run, ctx), []
    for view in extraction_views(ctx.config):
        for split in ("train", "test"):
            for shard in plan_shards(split, len(ctx.clips.split(split)), ctx.config.shard_size):
                keys = shard_keys(run.spec.key(), ctx.clips.view_hash(view), shard, stages) if stages else {}
                if not keys or not all(store.path(k).exists() for k in keys.values()):
                    todo.append((view, shard))
    return todo


# --- feature jobs: the probes on the stored clip features ------------------------------------------------
def clip_shards_of(ctx: PlanContext, run, split: str, view: str, stage: str):
    """The stored shards (TokenFeatures) of one stage of one view of a clip split, one at a time."""
    from ..store.shards import FeatureCache
    from ..store.sources import StoreSource

    return StoreSource(FeatureCache(ctx.store_root), run.spec.key(), ctx.clips.view_hash(view), split,
                       len(ctx.clips.split(split)), ctx.config.shard_size, stage).shards()


def clip_features(ctx: PlanContext, run, split: str, view: str, stage: str):
    """Every clip's tokens in memory: what the attentive probe reads."""
    from ..features import TokenFeatures

    return TokenFeatures.concat(list(clip_shards_of(ctx, run, split, view, stage)))


def clip_steps(ctx: PlanContext, run, split: str, view: str, stage: str):
    """The clips' tokens pooled per time step, shard by shard: all the linear probes read, in memory clips x
    steps x channels, never every token (a stage of an LLM-wide model on thousands of clips would not fit)."""
    from ..probes.temporal import TimeSteps, time_steps

    return TimeSteps.concat([time_steps(shard) for shard in clip_shards_of(ctx, run, split, view, stage)])


def result_record(result, n: int, budget: dict | None) -> dict:
    """A probe result as a row's measured part; a value that cannot exist (no pairs to order) is unavailable."""
    score = result.score
    record = {"probe": result.probe, "metric": result.metric, "value": score.value, "ci_low": score.low,
              "ci_high": score.high, "floor": result.floor, "floor_reason": result.floor_reason,
              "ceiling": result.ceiling, "ceiling_reason": result.ceiling_reason, "n": n}
    if score.value != score.value:  # NaN
        record.update(value=None, ci_low=None, ci_high=None, unavailable=score.note)
    if budget is not None:
        record["budget"] = budget
    return record


def sample_clips(split, count: int = SHEET_CLIPS) -> list[int]:
    """The first test clip of each class, in class order (at most `count`)."""
    first: dict[int, int] = {}
    for i in range(len(split)):
        first.setdefault(split.label(i), i)
    return [first[label] for label in sorted(first)][:count]


def contact_sheet(split, clips: list[int], frames: int = SHEET_FRAMES, side: int = SHEET_SIDE) -> str:
    """Base64 JPEG: one row per clip, `frames` of its frames spread over the clip, left to right in time."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    sheet = Image.new("RGB", (side * frames, side * len(clips)), "white")
    for row, i in enumerate(clips):
        clip = split.load_clip(i)
        for column, k in enumerate(np.linspace(0, len(clip) - 1, frames).round().astype(int)):
            sheet.paste(clip[k].convert("RGB").resize((side, side), Image.BICUBIC), (column * side, row * side))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class TemporalJob:
    """The temporal probes of one stage of one run, on one view (forward, or a control view)."""
    model: object  # jobs.RunInfo
    stage: str
    view: str
    judged: bool  # the judged stage: its direction rows carry the contact sheet's samples
    ctx: PlanContext

    def run(self) -> list[dict]:
        ctx, run, settings = self.ctx, self.model, self.ctx.config.temporal
        rows = cached_records(ctx, self.records, task=TASK_NAME, model=run.spec.key(), stage=self.stage,
                              view=self.view, clips=ctx.clips.key(), probes=list(settings.probes),
                              budget=settings.attentive.model_dump(), pairs=settings.pairs_per_clip,
                              bootstrap=ctx.config.bootstrap, seed=ctx.config.seed, samples=self.judged)
        train = ctx.clips.split("train")
        protocol = {"view": self.view, "frames": ctx.clips.frames, "data_kind": ctx.clips.kind,
                    "classes": train.labels, "train_clips": len(train)}
        return [{**row_base(run, TASK_NAME, self.stage, ctx), **protocol, **r} for r in rows]

    def records(self) -> list[dict]:
        from ..errors import SpatialProbeError
        from ..store.sources import MissingShard

        try:
            return self.measured()
        except MissingShard:
            raise  # a failed extraction, not a property of the stage: never cached as a row
        except SpatialProbeError as err:  # what this stage cannot give (no token times, clips of unequal time
            # layouts): said in its rows, so the other stages and models still run
            n = len(self.ctx.clips.split("test"))
            return [{"metric": m, "value": None, "n": n, "unavailable": str(err)} for m in METRICS]

    def measured(self) -> list[dict]:
        import numpy as np

        from ..probes.temporal import probe_direction, probe_ordering, probe_pairwise_order

        ctx, settings, config = self.ctx, self.ctx.config.temporal, self.ctx.config
        first, second = VIEW_PAIRS[self.view]
        splits = {s: ctx.clips.split(s) for s in ("train", "test")}
        labels = {s: np.array([split.label(i) for i in range(len(split))]) for s, split in splits.items()}
        n, budget = len(splits["test"]), settings.attentive.model_dump()
        read = clip_features if "attentive" in settings.probes else clip_steps
        feats = {(s, v): read(ctx, self.model, s, v, self.stage) for s in splits for v in {first, second}}
        records = []
        for probe in settings.probes:
            kept = budget if probe == "attentive" else None
            result = probe_direction(feats["train", first], labels["train"], feats["test", first], labels["test"],
                                     probe, len(splits["train"].labels), config.seed, config.bootstrap, kept)
            records.append({**result_record(result, n, kept), **self.samples(result.predictions)})
        for probe in settings.probes:
            kept = budget if probe == "attentive" else None
            result = probe_ordering(feats["train", first], feats["train", second], feats["test", first],
                                    feats["test", second], probe, config.seed, config.bootstrap, kept)
            records.append(result_record(result, n, kept))
        if self.judged and self.view == "forward":  # one picture per run: every probe's answers are on its rows
            records[0]["sheet"] = contact_sheet(splits["test"], sample_clips(splits["test"]))
        if "linear" in settings.probes:
            result = probe_pairwise_order(feats["train", first], feats["test", first], settings.pairs_per_clip,
                                          config.seed, config.bootstrap)
            records.append({**result_record(result, n, None), "pairs_per_clip": settings.pairs_per_clip})
        return records

    def samples(self, predicted) -> dict:
        """The contact sheet's clips with their labels and this probe's answers (judged stage, forward view)."""
        if not (self.judged and self.view == "forward"):
            return {}
        test = self.ctx.clips.split("test")
        return {"samples": [{"clip": test.clip_id(i), "label": test.labels[test.label(i)],
                             "answer": test.labels[int(predicted[i])]} for i in sample_clips(test)]}


@dataclass(frozen=True)
class StillOnlyJob:
    """A run whose family reads still images only: one row per metric saying so (nothing is fitted)."""
    model: object  # jobs.RunInfo
    ctx: PlanContext
    stage: str | None = None

    def run(self) -> list[dict]:
        base = row_base(self.model, TASK_NAME, None, self.ctx)
        return [{**base, "metric": m, "value": None, "unavailable": still_only(self.model.family)} for m in METRICS]


class TemporalProbeTask(NoJobs):
    name = TASK_NAME

    def model_jobs(self, run, ctx: PlanContext) -> list:
        if ctx.clips is None or not reads_video(run.family):
            return []
        stages = None if run.stages is None else tuple(run.stages)
        return [ClipsJob(run.spec, ctx.config, run, ctx.clips, ctx.store_root, view, shard.split, shard.start,
                         shard.stop, stages) for view, shard in clip_shards(run, ctx)]

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        if ctx.clips is None:
            return []
        if not reads_video(run.family):
            return [StillOnlyJob(run, ctx)]
        probed = clip_stages(run, stages, ctx.config, judged)
        jobs = [TemporalJob(run, stage, "forward", stage == judged, ctx) for stage in probed]
        return jobs + [TemporalJob(run, judged, view, True, ctx) for view in control_views(ctx.config)]

    def section(self, manifest: dict, results: list[dict]) -> str:
        from .temporal_probe_report import temporal_section

        return temporal_section(manifest, [r for r in results if r.get("task") == self.name])


TASK = TemporalProbeTask()
__all__ = ["TASK", "ClipsJob", "StillOnlyJob", "TemporalJob", "contact_sheet", "results_table"]
