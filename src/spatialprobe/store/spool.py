"""A shard's stages gathered batch by batch, spilled to disk past a memory budget.

One forward pass gives every requested stage of a batch, and the store keeps one file per stage of a
shard. Holding every stage of a whole shard until its end costs, for a 7B VLM's ~60 stages, tens of GB
of host RAM (one shard of LLaVA-NeXT-7B: ~60 GB at 64 images). The spool keeps batches in memory while
they fit `budget` bytes; past it, every batch held so far and every later one goes to a temporary
safetensors file per (stage, batch) under the store's `.spool/` folder, and a stage is joined only when
it is stored (`pop`). Peak host memory is then one stage of one shard plus one batch of every stage.
Values are the store's (`stored_form`): spilling changes no bit.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..features import TokenFeatures
from .shards import feature_tensors, features_from, stored_form

#: bytes of features held in memory before the spool writes them away (about one stage of a large shard)
SPILL_BYTES = 2**30


def nbytes(feats: TokenFeatures) -> int:
    return sum(t.numel() * t.element_size() for t in feature_tensors(feats).values())


class StageSpool:
    """Batches of every stage of one shard, in memory up to `budget` bytes, on disk beyond."""

    def __init__(self, store_root: Path, budget: int = SPILL_BYTES) -> None:
        self.store_root, self.budget = Path(store_root), budget
        self.held: dict[str, list[TokenFeatures | Path]] = {}
        self.grid_shapes: dict[str, tuple[int, int] | None] = {}
        self.bytes_held, self.folder, self.files = 0, None, 0

    def __enter__(self) -> "StageSpool":
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def spilled(self) -> bool:
        return self.folder is not None

    def add(self, batch: dict[str, TokenFeatures]) -> None:
        for stage, feats in batch.items():
            stored = stored_form(feats)
            self.grid_shapes[stage] = stored.grid_shape
            self.held.setdefault(stage, []).append(stored)
            self.bytes_held += nbytes(stored)
        if self.spilled or self.bytes_held > self.budget:
            self.spill()

    def spill(self) -> None:
        """Every batch still in memory to its own file."""
        if self.folder is None:
            (self.store_root / ".spool").mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(dir=self.store_root / ".spool"))
        for stage, parts in self.held.items():
            for i, part in enumerate(parts):
                if isinstance(part, TokenFeatures):
                    self.files += 1
                    path = self.folder / f"{self.files}.safetensors"
                    save_file({k: v.contiguous() for k, v in feature_tensors(part).items()}, path)
                    parts[i] = path
        self.bytes_held = 0

    def pop(self, stage: str) -> TokenFeatures:
        """The stage's batches joined (spilled ones read back, then deleted); the spool forgets the stage."""
        parts = []
        for part in self.held.pop(stage):
            if isinstance(part, Path):
                with safe_open(part, framework="pt") as handle:
                    part_feats = features_from({name: handle.get_tensor(name) for name in handle.keys()},
                                              self.grid_shapes[stage])
                part.unlink()
                part = part_feats
            parts.append(part)
        return TokenFeatures.concat(parts)
