"""The `finetune` task (Mod C): the semantic guard's drift curve and the training curve of each tuned run.

The fine-tune itself runs before the other jobs (`runner.train_adapters`); each tuned run ("<model> [Mod C]",
variant lora:<id>) is then probed by every task like any model, and VQA asks it the original's questions. This
task adds, on stored features only:
- `cka_to_original`: per vision stage, linear CKA between the original's and the tuned encoder's features of
  the same test images (flattened tokens, one example per image), with a bootstrap interval over images and a
  permutation null (`alignment.gram_estimate`); 1 where the adapter changed nothing (stages before the first
  LoRA layer), lower where it moved the representation;
- `finetune_val_loss`: the kept adapter's validation loss, the row carrying the training and val curves from
  the adapter's training record.
Turned on by the config's `finetune` section (no need to list it in `tasks`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import NoJobs, PlanContext, cached_records, row_base, stage_source

#: the encoder's stages: where the LoRA adapters sit, so where drift is measured
ENCODER_PREFIX = "vision."


def drift_records(original, tuned, bootstrap: int, permutations: int, seed: int) -> list[dict]:
    """CKA of two token sources of the same images (their flattened tokens), with interval and null."""
    from ..alignment import NoImages, gram_estimate
    from ..probes.gram import centered_grams

    k = centered_grams(original, NoImages())[0]
    l = centered_grams(tuned, NoImages())[0]
    return [{"probe": "drift", "metric": "cka_to_original", **gram_estimate(k, l, bootstrap, permutations, seed).fields(),
             "ci_covers": "test"}]


@dataclass(frozen=True)
class DriftJob:
    model: object  # jobs.RunInfo of the tuned run (its `base`: the original's)
    stage: str
    ctx: PlanContext

    def run(self) -> list[dict]:
        ctx, run, config = self.ctx, self.model, self.ctx.config
        permutations = config.alignment.permutations
        rows = cached_records(ctx, self.records, task="finetune_drift", model=run.spec.key(),
                              original=run.base.spec.key(), stage=self.stage, data=ctx.data.key(),
                              bootstrap=config.bootstrap, permutations=permutations, seed=config.seed)
        return [{**row_base(run, "finetune", self.stage, ctx), "base_model": run.base.name, **r} for r in rows]

    def records(self) -> list[dict]:
        ctx, config = self.ctx, self.ctx.config
        return drift_records(stage_source(ctx, self.model.base, "test", self.stage),
                             stage_source(ctx, self.model, "test", self.stage), config.bootstrap,
                             config.alignment.permutations, config.seed)


@dataclass(frozen=True)
class TrainingJob:
    """The training record of a tuned run's adapter, as one row (its curves in the row's fields)."""
    model: object  # jobs.RunInfo of the tuned run
    ctx: PlanContext

    def run(self) -> list[dict]:
        from ..finetune import RECORD_NAME

        record = json.loads((Path(self.model.spec.adapter) / RECORD_NAME).read_text())
        val = dict((int(step), loss) for step, loss in record["val_losses"])
        return [{**row_base(self.model, "finetune", record["stage"], self.ctx), "probe": "training",
                 "metric": "finetune_val_loss", "value": val[record["chosen_step"]], "base_model": self.model.base.name,
                 "chosen_step": record["chosen_step"], "steps": record["steps"],
                 "train_losses": record["train_losses"], "val_losses": record["val_losses"],
                 "budget": record["budget"], "mixed_precision": record["mixed_precision"],
                 "gradient_checkpointing": record["gradient_checkpointing"]}]


class FinetuneTask(NoJobs):
    name = "finetune"

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        if getattr(run, "base", None) is None:
            return []
        drift = [DriftJob(run, stage, ctx) for stage in stages if stage.startswith(ENCODER_PREFIX)]
        return [*drift, TrainingJob(run, ctx)]

    def section(self, manifest: dict, results: list[dict]) -> str:
        from .finetune_report import mod_c_section

        return mod_c_section(manifest, results)


TASK = FinetuneTask()
