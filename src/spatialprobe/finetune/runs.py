"""Mod C in a run: the `finetune` config section as tuned runs, the splits they train on, and the pre-phase job.

Each model named in `finetune.models` gets one more run, "<model> [Mod C]" (`spec.tuned_runs`): the base model's
spec with variant `lora:<id>` and the adapter folder `<work dir>/finetune/<model>-<id>/adapter`, where <id>
hashes what the training depends on (budget, stage, the base spec, the dataset config). The runner trains the adapters first
(`FinetuneJob`, one per tuned run, each in a freshly opened backbone: `finetune` wraps the model in place);
a finished adapter (its training record present) is not trained again, a killed one resumes from its checkpoint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpatialProbeError

#: the name a tuned run's results carry
TUNED_SUFFIX = " [Mod C]"


def tuned_name(model: str) -> str:
    return f"{model}{TUNED_SUFFIX}"


def budget_of(config):
    """The config section's budget as `FinetuneBudget` (the same fields)."""
    from .train import FinetuneBudget

    section = config.finetune.model_dump(exclude={"models", "stage"})
    return FinetuneBudget(**section)


def adapter_id(config, base_spec) -> str:
    """What the adapter's training depends on, hashed: a change of any of it trains a new adapter elsewhere."""
    from ..store.shards import cache_key

    return cache_key(budget=config.finetune.model_dump(exclude={"models"}), base=base_spec.key(),
                     dataset=config.dataset.model_dump(mode="json"), seed=config.seed)[:12]


def work_folder(config) -> Path:
    from ..store.shards import default_cache_dir

    return Path(config.cache_dir) if config.cache_dir else default_cache_dir().parent


def adapter_home(config, model: str, ident: str) -> Path:
    """`<work dir>/finetune/<model>-<id>`: checkpoints/ while training, adapter/ once done."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return work_folder(config) / "finetune" / f"{safe}-{ident}"


# --- the splits: train, and val from the dataset's val split or held out of train -------------------------------

class Subset:
    """Some images of a split, re-indexed 0..n-1 (what `finetune` reads: `load_image`, `target`, `len`)."""

    def __init__(self, split, indices: list[int]) -> None:
        self.split, self.indices = split, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, i: int):
        return self.split.load_image(self.indices[i])

    def target(self, i: int):
        return self.split.target(self.indices[i])


def val_split_name(root: str | Path, config) -> str | None:
    """The configured val split, else "val" when the folder has one with images (synthetic shapes with n_val: 0
    writes an empty one), else None (hold out of train)."""
    import json

    if config.dataset.val_split is not None:
        return config.dataset.val_split
    path = Path(root) / "annotations" / "instances_val.json"
    return "val" if path.is_file() and json.loads(path.read_text()).get("images") else None


def finetune_splits(root: str | Path, train, config, val_split: str | None):
    """(train, val) of the fine-tune: the training split and the val split, or, without one, the training
    split less a seeded `dataset.val_fraction` of it held out as val. The test split is never read."""
    import numpy as np

    from ..data import load_coco

    if val_split is not None:
        path = Path(root) / "annotations" / f"instances_{val_split}.json"
        if not path.is_file():
            raise SpatialProbeError(f"dataset.val_split: {path} not found (the fine-tune's validation split)")
        return train, load_coco(root, val_split, on_bad_annotation=config.dataset.on_bad_annotation)
    n = len(train)
    held = max(1, round(n * config.dataset.val_fraction))
    if n - held < 1:
        raise SpatialProbeError(f"dataset.val_fraction: {n} training images leave none to fine-tune on")
    order = np.random.default_rng(config.seed).permutation(n).tolist()
    return Subset(train, sorted(order[held:])), Subset(train, sorted(order[:held]))


# --- the pre-phase job ----------------------------------------------------------------------------------------

def adapter_done(adapter: str | Path) -> bool:
    from .train import RECORD_NAME

    return (Path(adapter) / RECORD_NAME).is_file()


@dataclass(frozen=True)
class FinetuneJob:
    """Train one tuned run's adapter on the base model (a model job; its backbone is opened for it alone)."""
    spec: object  # the base model's ModelSpec
    config: object  # RunConfig
    data: object  # jobs.DataRef
    val_split: str | None
    adapter: str  # the tuned spec's adapter folder: <home>/adapter
    name: str  # the tuned run's name (progress)

    def run(self, backbone) -> dict:
        from .train import finetune

        train, val = finetune_splits(self.data.root, self.data.split("train"), self.config, self.val_split)
        result = finetune(backbone, train, val, budget_of(self.config), Path(self.adapter).parent,
                          stage=self.config.finetune.stage, base_key=self.spec.key())
        return {"adapter": str(result.adapter), "steps": result.steps_done, "resumed_from": result.resumed_from,
                "chosen_step": result.chosen_step, "seconds": result.seconds}


def finetune_jobs(config, runs: list, data, val_split: str | None) -> list[FinetuneJob]:
    """A job per tuned run (`jobs.RunInfo` with `base`, the original's run) whose adapter is not finished yet."""
    return [FinetuneJob(r.base.spec, config, data, val_split, r.spec.adapter, r.name)
            for r in runs if r.base is not None and not adapter_done(r.spec.adapter)]


def finetune_group(job) -> str:
    """The executor's group of a fine-tune: its own, so the wrapped backbone is never shared with other jobs."""
    return f"finetune:{job.adapter}"
