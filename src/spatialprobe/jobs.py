"""Jobs: the picklable values an executor runs. A worker rebuilds everything a job needs from the job
itself: the model from its spec, the images from the dataset folder, features from the store folder.

Two kinds:
- model jobs need a loaded model (`run(backbone)`): its description, the token-mapping self-check,
  the extraction of one data shard (every stage it needs, one forward pass per batch), speed and
  VQA. Jobs that share a model spec key share one loaded model (an executor groups them).
- task jobs need only stored features and the data (`run()`): a probe or metric on one stage.

Between them, `ComposeJob` makes a hybrid's stages from its parts' stored stages (no model).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .config import RunConfig
from .spec import ModelSpec
from .store.shards import cache_key


@dataclass(frozen=True)
class DataRef:
    """A dataset as a worker finds it: the folder, the splits and the content hash the store keys use."""
    root: str
    train_split: str
    test_split: str
    on_bad_annotation: str
    hash: str

    def split(self, which: str):
        """The loaded train or test split (read once per process)."""
        return _load_split(self.root, self.train_split if which == "train" else self.test_split, self.on_bad_annotation)

    def key(self) -> dict:
        return {"hash": self.hash, "train": self.train_split, "test": self.test_split,
                "on_bad_annotation": self.on_bad_annotation}


@lru_cache(maxsize=8)
def _load_split(root: str, split: str, on_bad_annotation: str):
    from .data import load_coco

    return load_coco(root, split, on_bad_annotation=on_bad_annotation)


@dataclass(frozen=True)
class ClipDataRef:
    """A clip dataset as a worker finds it (`data.load_clips`): the folder, kind, frames and loader options,
    the content hash of its train and test splits, and the seed of the shuffled view. Each view of a split
    ("forward", "reversed", "shuffled", "repeated", or views composed with "+", e.g. "shuffled+reversed") is
    a clip set of its own in the feature store, keyed by `view_hash(view)`."""
    root: str
    kind: str
    frames: int
    on_bad_video: str
    options: dict = field(hash=False)
    hash: str = ""
    seed: int = 0

    def split(self, which: str, view: str = "forward"):
        """The loaded split (read and checked once per process), as seen in `view`."""
        from .data.video import clip_view

        clips = _load_clip_split(self.root, self.kind, which, self.frames, self.on_bad_video,
                                 json.dumps(self.options, sort_keys=True))
        for step in view.split("+"):
            clips = clip_view(clips, step, self.seed)
        return clips

    def view_hash(self, view: str) -> str:
        """The store's dataset key of a view: the split's own hash for "forward" (its features are the
        clips' own), else one that names the view (and the seed that shuffles it)."""
        if view == "forward":
            return self.hash
        return cache_key(clips=self.hash, view=view, seed=self.seed if "shuffled" in view else None)[:16]

    def key(self) -> dict:
        return {"hash": self.hash, "kind": self.kind, "frames": self.frames, "on_bad_video": self.on_bad_video,
                "options": self.options, "seed": self.seed}


@lru_cache(maxsize=8)
def _load_clip_split(root: str, kind: str, split: str, frames: int, on_bad_video: str, options: str):
    from .data import load_clips

    return load_clips(kind, root, split, frames=frames, on_bad_video=on_bad_video, **json.loads(options))


@dataclass(frozen=True)
class RunInfo:
    """One measured model or control as its results are named: the run's name and label, and the spec it reads."""
    name: str
    label: str
    family: str
    variant: str  # none | pixels | random_init | lora:<id> | reference
    spec: ModelSpec
    stages: tuple[str, ...] | None  # requested patterns; None: every stage
    #: the hybrid run this is one part of (named "<hybrid>.<part>"): it is extracted, its hybrid is measured
    part_of: str | None = None
    #: a lora:<id> run (Mod C): the run of the model it fine-tunes
    base: "RunInfo | None" = None


def open_spec(spec: ModelSpec, config: RunConfig):
    """A backbone loaded from its spec on the run's device (a random-init variant re-initialized in place, a
    lora:<id> variant with its adapter applied)."""
    from .models import load_backbone
    from .spec import thaw

    options = {**thaw(spec.load), **thaw(spec.options)}
    if spec.revision:
        options["revision"] = spec.revision
    if spec.quantization:
        options["quantization"] = spec.quantization
    if spec.parts:
        options["parts"] = spec.part_options()
    backbone = load_backbone(spec.family, spec.path, device=config.device, dtype=spec.dtype, **options)
    if spec.variant == "random_init":
        backbone.randomize_weights(seed=spec.seed)
    if spec.adapter:  # lora:<id>: the base checkpoint with its Mod C adapter, probed like the original
        from .finetune.variant import apply_adapter

        apply_adapter(backbone, spec.adapter)
    return backbone


def open_job_model(job) -> Any:
    """The executor's `open_model`: every model job carries its spec and the run config."""
    return open_spec(job.spec, job.config)


def run_model_job(backbone, job) -> Any:
    """The executor's `run_job` for model jobs."""
    return job.run(backbone)


def run_task_job(job) -> list[dict]:
    """The executor's `fn` for task jobs."""
    return job.run()


def spec_group(job) -> str:
    return job.spec.key()


def info_key(spec: ModelSpec) -> str:
    """Where a model's `InfoJob` output (its description and stage list) is kept in the run's result store."""
    from .store.results import result_key

    return result_key(what="model-info", model=spec.key(), info=2)  # 2: clip readers describe how they read clips


@dataclass(frozen=True)
class InfoJob:
    """What the loaded model is: its description (weights fingerprint, preprocessing) and its stage list."""
    spec: ModelSpec
    config: RunConfig

    def run(self, backbone) -> dict:
        # a family that reads clips says how (frames per time step, fps...): the manifest records it
        described = backbone.describe(clips="video" in backbone.modalities)
        describe = {k: v for k, v in described.items() if k != "label"}
        return {"describe": describe, "stages": list(backbone.stages)}


@dataclass(frozen=True)
class VerifyJob:
    """The planted-patch check of the token mapping at every requested stage, before any extraction."""
    spec: ModelSpec
    config: RunConfig
    stages: tuple[str, ...] | None

    def run(self, backbone) -> dict:
        from .verify import failure_message, verify_report, verify_stages

        checks = verify_stages(backbone, backbone.resolve_stages(self.stages))
        report = verify_report(backbone, checks)
        return {"report": report, "passed": sum(c.passed for c in checks), "total": len(checks),
                "message": failure_message(backbone, checks, name=backbone.label)}


@dataclass(frozen=True)
class ExtractJob:
    """One data shard of one split through one model: every stage it needs, stored per stage."""
    spec: ModelSpec
    config: RunConfig
    data: DataRef
    store_root: str
    split: str
    start: int
    stop: int
    stages: tuple[str, ...] | None

    def run(self, backbone) -> dict:
        from .store.shards import FeatureCache
        from .extract import ShardJob, run_shard

        begun = time.perf_counter()
        stages = backbone.resolve_stages(self.stages)
        run_shard(backbone, self.spec.key(), self.data.split(self.split), self.data.hash,
                  ShardJob(self.split, self.start, self.stop), stages, FeatureCache(self.store_root),
                  self.config.batch_size, pool=self.spec.pool)
        return {"seconds": time.perf_counter() - begun, "images": self.stop - self.start}


@dataclass(frozen=True)
class ComposeJob:
    """One data shard of a hybrid: its stages composed on the host from its parts' stored stages (no model
    loaded) and stored under the hybrid's key, with the shard's index."""
    model_key: str  # the hybrid spec's key
    parts: tuple[tuple[str, str, str], ...]  # (part name, part spec key, the part's resolved stage), in part order
    side: int  # the common raster's side
    data: DataRef
    store_root: str
    split: str
    start: int
    stop: int
    stages: tuple[str, ...]  # the hybrid stages to store

    def run(self) -> dict:
        from .models.hybrid import compose, hybrid_stages
        from .store.shards import FeatureCache, stage_key
        from .store.sources import MissingShard

        cache, begun = FeatureCache(self.store_root), time.perf_counter()
        parts = {}
        for name, key, stage in self.parts:
            parts[name] = cache.load(stage_key(key, self.data.hash, self.split, self.start, self.stop, stage))
            if parts[name] is None:
                raise MissingShard(f"feature store {self.store_root}: no {stage} features of {self.split} images "
                                   f"{self.start}-{self.stop} for hybrid part {name!r} (model key {key[:12]})")
        composed = compose(parts, self.side)
        for stage in self.stages:
            cache.save(stage_key(self.model_key, self.data.hash, self.split, self.start, self.stop, stage),
                       composed.pop(stage))
        cache.write_shard_index(self.model_key, self.data.hash, self.split, self.start, self.stop,
                                stages=list(self.stages), all_stages=hybrid_stages(parts),
                                seconds=time.perf_counter() - begun, images=self.stop - self.start)
        return {"seconds": time.perf_counter() - begun, "images": self.stop - self.start}
