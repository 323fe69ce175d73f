"""The `latent_alignment` task (Phase 2): linear CKA of every stage with the reference VAE's latents.

The reference (`alignment.reference`, the LTX-Video VAE) is extracted beside the models into the same
store, stage `vae.latent`, for the same images. For each run (models and controls) and each of its
stages, one job computes the forms of `spatialprobe.alignment` on all images of both splits: pooled,
spatial (tokens resampled through their footprints onto the latent grid) and per position. Each row
carries its bootstrap 95% interval, the permutation null (mean; its 95th percentile is the row's
floor), a ceiling of 1, and the protocol (`ref_model`, `ref_stage`, kernel, images, permutations).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report.parts import results_table
from . import NoJobs, PlanContext, cached_records, reference_fields, row_base, stage_source

REFERENCE_STAGE = "vae.latent"
KERNEL = "linear"


def reference_latents(ctx: PlanContext):
    """The reference's latents of every image (train, then test) [n, M, q] and their cells' footprints [M, 4]."""
    import torch

    shards = [f for split in ("train", "test") for f in stage_source(ctx, ctx.reference, split, REFERENCE_STAGE).shards()]
    if shards[0].times is not None and float(shards[0].times[..., 1].max()) < 1.0:
        raise ValueError(f"{ctx.reference.label}: latents of more than one time step; still images only here")
    return torch.cat([f.tokens.float() for f in shards]), shards[0].footprints[0].float()


def alignment_records(source, latents, cells, forms, bootstrap: int, permutations: int, seed: int) -> list[dict]:
    """One record per form: CKA with its interval, null and ceiling (`alignment.CkaEstimate.fields`)."""
    from ..alignment import gram_estimate, image_grams, position_estimate

    records = []
    grams = image_grams(source, latents, cells)
    for form in forms:
        if form in grams:
            estimate = gram_estimate(*grams[form], bootstrap, permutations, seed)
        elif form == "per_position" and "spatial" in grams:
            estimate = position_estimate(source.shards, latents, cells, bootstrap, permutations, seed)
        else:
            continue  # no placed tokens: only the pooled form exists
        records.append({"probe": form, "metric": "cka", **estimate.fields()})
    return records


@dataclass(frozen=True)
class AlignmentJob:
    model: object  # jobs.RunInfo
    stage: str
    ctx: PlanContext

    def run(self) -> list[dict]:
        ctx, run, config = self.ctx, self.model, self.ctx.config
        forms = list(config.alignment.forms)
        rows = cached_records(ctx, lambda: self.records(forms), task="latent_alignment", model=run.spec.key(),
                              stage=self.stage, data=ctx.data.key(), reference=ctx.reference.spec.key(), forms=forms,
                              bootstrap=config.bootstrap, permutations=config.alignment.permutations, seed=config.seed)
        base = {**row_base(run, "latent_alignment", self.stage, ctx), "ref_model": ctx.reference.name,
                "ref_stage": REFERENCE_STAGE, "kernel": KERNEL, **reference_fields(ctx)}
        return [{**base, **r} for r in rows]

    def records(self, forms: list[str]) -> list[dict]:
        from ..alignment import Chained

        ctx, config = self.ctx, self.ctx.config
        latents, cells = reference_latents(ctx)
        source = Chained(stage_source(ctx, self.model, "train", self.stage),
                         stage_source(ctx, self.model, "test", self.stage))
        return alignment_records(source, latents, cells, forms, config.bootstrap, config.alignment.permutations,
                                 config.seed)


class LatentAlignmentTask(NoJobs):
    name = "latent_alignment"

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        return [AlignmentJob(run, stage, ctx) for stage in stages]

    def section(self, manifest: dict, results: list[dict]) -> str:
        from .latent_alignment_report import alignment_section

        return alignment_section(manifest, [r for r in results if r.get("task") == self.name])


TASK = LatentAlignmentTask()
__all__ = ["TASK", "AlignmentJob", "alignment_records", "results_table"]
