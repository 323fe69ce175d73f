"""Extraction jobs: one (model, dataset split, shard of images) is one independent, cacheable job.

A job runs one forward pass per batch for all requested stages and stores each stage of the shard
in the feature cache. A killed run loses at most the shard it was working on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .backbones.base import Backbone
from .cache import FeatureCache, cache_key
from .features import TokenFeatures


@dataclass(frozen=True)
class ShardJob:
    split: str
    start: int
    stop: int


def plan_shards(split: str, n_images: int, shard_size: int) -> list[ShardJob]:
    return [ShardJob(split, s, min(s + shard_size, n_images)) for s in range(0, n_images, shard_size)]


def shard_keys(model_desc: dict, dataset_hash: str, job: ShardJob, stages: list[str]) -> dict[str, str]:
    return {
        stage: cache_key(model=model_desc, dataset=dataset_hash, split=job.split, images=[job.start, job.stop], stage=stage)
        for stage in stages
    }


def run_shard(backbone: Backbone, model_desc: dict, data, dataset_hash: str, job: ShardJob,
              stages: list[str], cache: FeatureCache, batch_size: int) -> dict[str, TokenFeatures]:
    """Features of one shard for every stage: from the cache when every stage is there, else extracted."""
    keys = shard_keys(model_desc, dataset_hash, job, stages)
    cached = {stage: cache.load(key) for stage, key in keys.items()}
    if all(f is not None for f in cached.values()):
        return cached
    images = [data.load_image(i) for i in range(job.start, job.stop)]
    feats = backbone.extract(images, stages=stages, batch_size=batch_size)
    for stage, key in keys.items():
        cache.save(key, feats[stage])
    # reload so a fresh run and a resumed run see exactly the same (float16) values
    return {stage: cache.load(key) for stage, key in keys.items()}


def extract_split(backbone: Backbone, data, dataset_hash: str, stages: list[str], cache: FeatureCache,
                  shard_size: int = 64, batch_size: int = 8,
                  on_shard: Callable[[ShardJob], None] | None = None) -> dict[str, TokenFeatures]:
    model_desc = backbone.describe()
    parts: dict[str, list[TokenFeatures]] = {s: [] for s in stages}
    for job in plan_shards(data.split, len(data), shard_size):
        got = run_shard(backbone, model_desc, data, dataset_hash, job, stages, cache, batch_size)
        for stage in stages:
            parts[stage].append(got[stage])
        if on_shard:
            on_shard(job)
    return {s: TokenFeatures.concat(p) for s, p in parts.items()}
