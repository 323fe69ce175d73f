"""The `reconstruction_probe` task: a small decoder trained on each run's judged stage to redraw the image.

One job per run, on the stage the decision reads. Stages of tiles, levels or a mosaic are first
resampled onto one raster by footprint overlap (`resampled_to` in the row); a stage of placeless
queries only has nothing to lay out and gives no rows.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report.parts import results_table
from . import NoJobs, PlanContext

OUTPUT_SIZE = 64  # as probes.reconstruction.OUTPUT_SIZE (kept here so the report needs no torch)


def image_batch(data, size: int = OUTPUT_SIZE):
    """All images of a split, whole and resized, as [n, 3, size, size] in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(data.load_image(i).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
              for i in range(len(data))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def reconstruction_results(train_feats, test_feats, train_data, test_data, config) -> list[dict]:
    """The reconstruction probe's records on one stage (none for a stage of placeless queries only)."""
    from ..probes.reconstruction import reconstruction_records

    if train_feats.tokens.shape[1] == 0:  # placeless queries only: nothing to lay out as an image
        return []
    extra = {}
    if train_feats.grid_shape is None:
        # tiles, levels or a mosaic: resampled onto one raster by footprint overlap (no finer than the output)
        side = min(train_feats.finest_side(), OUTPUT_SIZE)
        train_feats, test_feats, extra = train_feats.on_raster(side), test_feats.on_raster(side), {"resampled_to": side}
    return [{**extra, **record} for record in reconstruction_records(
        train_feats.grid().float(), image_batch(train_data), test_feats.grid().float(), image_batch(test_data),
        config.bootstrap, config.seed)]


@dataclass(frozen=True)
class ReconstructionJob:
    model: object  # jobs.RunInfo
    stage: str
    ctx: PlanContext

    def run(self) -> list[dict]:
        from ..jobs import stored_stage
        from ..store.results import ResultCache, result_key

        ctx, run, config = self.ctx, self.model, self.ctx.config
        key = result_key(task="reconstruction_probe", model=run.spec.key(), stage=self.stage, data=ctx.data.key(),
                         bootstrap=config.bootstrap, seed=config.seed)
        store = ResultCache(ctx.results_root)
        rows = store.get(key)
        if rows is None:
            rows = reconstruction_results(stored_stage(ctx, run.spec.key(), "train", self.stage),
                                          stored_stage(ctx, run.spec.key(), "test", self.stage),
                                          ctx.data.split("train"), ctx.data.split("test"), config)
            store.put(key, rows)
        base = {"model": run.name, "label": run.label, "family": run.family, "task": "reconstruction_probe",
                "seed": config.seed, "control": run.variant, "variant": run.variant, "stage": self.stage}
        return [{**base, **r} for r in rows]


class ReconstructionTask(NoJobs):
    name = "reconstruction_probe"

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        return [ReconstructionJob(run, judged, ctx)]

    def section(self, manifest: dict, results: list[dict]) -> str:
        return ('<h2>Reconstruction probe</h2><p class="note">A small convolutional decoder trained on each model\'s '
                "judged stage to reproduce the image (64x64 px). floor: the mean training image; ceiling: a perfect "
                f"reconstruction.</p>{results_table([r for r in results if r.get('task') == self.name])}")


TASK = ReconstructionTask()
