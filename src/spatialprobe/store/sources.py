"""Sources of one stage's tokens for one split, read shard by shard: what the probes consume, so that
no fit needs every image of a stage in memory at once.

- `InMemorySource`: a `TokenFeatures` already in memory (tests, small data).
- `StoreSource`: the split's shards of one stage from the feature store, memory-mapped, in image order.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch

from .shards import FeatureCache, ModelKey, stage_key
from ..errors import SpatialProbeError
from ..features import TokenFeatures


@runtime_checkable
class TokenSource(Protocol):
    def __len__(self) -> int: ...  # images

    def shards(self) -> Iterator[TokenFeatures]: ...  # consecutive blocks of images, in image order, on the CPU


class InMemorySource:
    """A TokenFeatures already in memory, served in shards of `shard_size` images (tests, small data)."""

    def __init__(self, feats: TokenFeatures, shard_size: int = 64) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.feats = feats
        self.shard_size = shard_size

    def __len__(self) -> int:
        return len(self.feats.tokens)

    def shards(self) -> Iterator[TokenFeatures]:
        for start in range(0, len(self), self.shard_size):
            yield self.feats.select(slice(start, start + self.shard_size))

    def shard(self, number: int) -> TokenFeatures:
        """Shard `number` alone (images number * shard_size onwards): random access to a few images."""
        start = number * self.shard_size
        return self.feats.select(slice(start, start + self.shard_size))


class MissingShard(SpatialProbeError):
    """A shard the store should hold is absent (never extracted, or found damaged and deleted)."""


class StoreSource:
    """One stage of one split from the feature store: the shards extraction wrote (same `shard_size`), in
    image order. Each shard is memory-mapped as it is read, so streaming keeps about one shard resident;
    a missing shard raises `MissingShard` (one line naming it)."""

    def __init__(self, cache: FeatureCache, model_key: ModelKey, data_hash: str, split: str, n_images: int,
                 shard_size: int, stage: str) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.cache, self.model_key, self.data_hash = cache, model_key, data_hash
        self.split, self.n_images, self.shard_size, self.stage = split, n_images, shard_size, stage

    def __len__(self) -> int:
        return self.n_images

    def shards(self) -> Iterator[TokenFeatures]:
        for number in range(-(-self.n_images // self.shard_size)):
            feats = self.shard(number)
            yield feats
            del feats  # not held (mapped) while the next shard loads

    def shard(self, number: int) -> TokenFeatures:
        """Shard `number` alone (images number * shard_size onwards), memory-mapped: random access to the
        images of a minibatch reads only the shards they fall in."""
        start = number * self.shard_size
        stop = min(start + self.shard_size, self.n_images)
        feats = self.cache.load(stage_key(self.model_key, self.data_hash, self.split, start, stop, self.stage))
        if feats is None:
            model = self.model_key if isinstance(self.model_key, str) else self.model_key.get("name_or_path", "?")
            raise MissingShard(f"feature store {self.cache.root}: no {self.stage} features of {self.split} "
                               f"images {start}-{stop} for model {str(model)[:40]}: extract them first")
        return feats

    def footprints(self) -> torch.Tensor:
        """[n, N, 4] float32 footprints of every image (small: the tokens stay on disk)."""
        return torch.cat([f.footprints.clone() for f in self.shards()])

    def extras_mean(self) -> torch.Tensor | None:
        """[n, C] float32: each image's mean of its placeless tokens (CLS, global, ...); None when there are none."""
        means = [torch.cat(list(f.extra.values()), dim=1).float().mean(1) for f in self.shards() if f.extra]
        return torch.cat(means) if means else None

    def gather(self) -> TokenFeatures:
        """Every shard joined in memory (small data only: this holds the whole split)."""
        return TokenFeatures.concat(list(self.shards()))
