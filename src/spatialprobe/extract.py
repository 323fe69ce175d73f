"""Extraction jobs: one (model, dataset split, shard of images) is one independent, storable job.

A job runs one forward pass per batch for all requested stages, gathers the batches (on disk past a
memory budget: `store.spool`), stores each stage of the shard in the feature store and then the shard's
index (stages stored, seconds taken). A killed run loses at most
the shard it was working on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .store.shards import FeatureCache, ModelKey, stage_key
from .store.spool import SPILL_BYTES, StageSpool
from .features import TokenFeatures

if TYPE_CHECKING:
    from .models.base import Backbone


@dataclass(frozen=True)
class ShardJob:
    split: str
    start: int
    stop: int


def plan_shards(split: str, n_images: int, shard_size: int) -> list[ShardJob]:
    return [ShardJob(split, s, min(s + shard_size, n_images)) for s in range(0, n_images, shard_size)]


def shard_keys(model_key: ModelKey, dataset_hash: str, job: ShardJob, stages: list[str]) -> dict[str, str]:
    return {stage: stage_key(model_key, dataset_hash, job.split, job.start, job.stop, stage) for stage in stages}


def stored_shard(cache: FeatureCache, keys: dict[str, str]) -> dict[str, TokenFeatures] | None:
    """Every stage of a shard from the store, or None when any is missing or damaged."""
    if not all(cache.path(key).exists() for key in keys.values()):
        return None  # a partly stored shard is extracted again whole: one forward gives every stage
    loaded = {stage: cache.load(key) for stage, key in keys.items()}
    return loaded if all(f is not None for f in loaded.values()) else None


def run_shard(backbone: "Backbone", model_key: ModelKey, data, dataset_hash: str, job: ShardJob,
              stages: list[str], cache: FeatureCache, batch_size: int, pool: int = 1,
              spill_bytes: int = SPILL_BYTES) -> None:
    """Every stage of one shard into the store (extracted, stored and indexed), unless all are stored already.

    Batches are gathered in a `StageSpool`: past `spill_bytes` of features they wait on disk, so host memory
    holds one stage of the shard at a time, not every stage. `pool` > 1 stores raster stages averaged over
    pool x pool tokens (`TokenFeatures.pool_grid`); the model key must say so (`ModelSpec.pool` is in it)."""
    keys = shard_keys(model_key, dataset_hash, job, stages)
    if stored_shard(cache, keys) is not None:
        return
    images = [data.load_image(i) for i in range(job.start, job.stop)]
    with StageSpool(cache.root, spill_bytes) as spool:
        begun = time.perf_counter()
        for batch in backbone.extract_batches(images, stages=stages, batch_size=batch_size, host_dtype=torch.float16):
            spool.add(batch)
        seconds = time.perf_counter() - begun
        for stage, key in keys.items():
            cache.save(key, spool.pop(stage).pool_grid(pool))
    cache.write_shard_index(model_key, dataset_hash, job.split, job.start, job.stop, stages=list(stages),
                            all_stages=list(backbone.stages), seconds=seconds, images=job.stop - job.start)


def extract_split_to_store(backbone: "Backbone", data, dataset_hash: str, stages: list[str], cache: FeatureCache,
                           shard_size: int = 64, batch_size: int = 8,
                           on_shard: Callable[[ShardJob], None] | None = None,
                           model_key: ModelKey | None = None) -> None:
    """Every shard of a split into the store, keeping nothing: peak memory is one shard.
    `model_key` defaults to the backbone's description (the key older callers used)."""
    key = backbone.describe() if model_key is None else model_key
    for job in plan_shards(data.split, len(data), shard_size):
        run_shard(backbone, key, data, dataset_hash, job, stages, cache, batch_size)
        if on_shard:
            on_shard(job)


def extract_split(backbone: "Backbone", data, dataset_hash: str, stages: list[str], cache: FeatureCache,
                  shard_size: int = 64, batch_size: int = 8,
                  on_shard: Callable[[ShardJob], None] | None = None,
                  model_key: ModelKey | None = None) -> dict[str, TokenFeatures]:
    """Every shard of a split, stored and joined in memory (for data that fits; else `extract_split_to_store`)."""
    key = backbone.describe() if model_key is None else model_key
    parts: dict[str, list[TokenFeatures]] = {s: [] for s in stages}
    for job in plan_shards(data.split, len(data), shard_size):
        run_shard(backbone, key, data, dataset_hash, job, stages, cache, batch_size)
        got = stored_shard(cache, shard_keys(key, dataset_hash, job, stages))
        for stage in stages:
            parts[stage].append(got[stage])
        if on_shard:
            on_shard(job)
    return {s: TokenFeatures.concat(p) for s, p in parts.items()}
