"""The `reconstruction_probe` task: a small decoder trained on each run's judged stage to redraw the image.

One job per run, on the stage the decision reads. Stages of tiles, levels or a mosaic are first
resampled onto one raster by footprint overlap (`resampled_to` in the row); a stage of placeless
queries only has nothing to lay out and gives no rows.

The stage is streamed from the store (`StoreSource`), never joined in memory: the probe reads a shard,
a block of channels or a minibatch at a time (`probes.reconstruction.streamed_reconstruction_probe`).
A resampled stage is resampled shard by shard into float32 files in a temporary folder (side^2 x C x 4
bytes per image on disk), which the minibatches then read, memory-mapped. What stays in memory grows
with the images only by the 64x64 px targets (49 KB an image).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..report.parts import results_table
from . import NoJobs, PlanContext, cached_records, row_base, stage_source

OUTPUT_SIZE = 64  # as probes.reconstruction.OUTPUT_SIZE (kept here so the report needs no torch)


def image_batch(data, size: int = OUTPUT_SIZE):
    """All images of a split, whole and resized, as [n, 3, size, size] in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(data.load_image(i).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
              for i in range(len(data))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class SourceGrids:
    """A grid stage's token grids [m, h, w, C] straight from a token source's shards (float16, memory-mapped)."""

    def __init__(self, source) -> None:
        self.source, self.shard_size = source, source.shard_size

    def __len__(self) -> int:
        return len(self.source)

    def shards(self):
        return (feats.grid() for feats in self.source.shards())

    def shard(self, number: int):
        return self.source.shard(number).grid()


class RasterSpill:
    """A stage of tiles, levels or a mosaic resampled onto a side x side raster shard by shard (exactly as
    `TokenFeatures.on_raster` on the whole split: each image's weights are its own), written as float32
    safetensors files under `folder` and read back memory-mapped."""

    def __init__(self, source, side: int, folder, watch=None) -> None:
        from pathlib import Path

        from safetensors.torch import save_file

        self.shard_size, self.n, self.folder = source.shard_size, len(source), Path(folder)
        self.folder.mkdir(parents=True)
        for number, feats in enumerate(source.shards()):
            raster = feats.on_raster(side).grid()
            if watch:
                watch("raster shard", raster)
            save_file({"grid": raster.contiguous()}, self.folder / f"{number}.safetensors")
            del raster

    def __len__(self) -> int:
        return self.n

    def shards(self):
        return (self.shard(number) for number in range(-(-self.n // self.shard_size)))

    def shard(self, number: int):
        from safetensors import safe_open

        with safe_open(self.folder / f"{number}.safetensors", framework="pt") as handle:
            return handle.get_tensor("grid")


def finest_side(source) -> int:
    """`TokenFeatures.finest_side` of the whole split (tiles or levels), a shard at a time."""
    first = next(iter(source.shards()))
    if first.grid_shape:
        return max(first.grid_shape)
    narrowest = min(float((f.footprints[..., 2] - f.footprints[..., 0]).min()) for f in source.shards())
    return int(round(1 / narrowest))


def reconstruction_results(train_source, test_source, train_data, test_data, config, **probe_options) -> list[dict]:
    """The reconstruction probe's records on one stage (none for a stage of placeless queries only), its
    tokens streamed from two token sources (`store.sources`: `shards()` and `shard(number)`), one shard,
    block of channels or minibatch in memory at a time. `probe_options` go to
    `probes.reconstruction.streamed_reconstruction_probe` (tests: `watch(what, tensor)` sees every tensor of
    stage data the probe materializes, and also each resampled shard here)."""
    import tempfile

    from ..probes.reconstruction import streamed_reconstruction_records

    first = next(iter(train_source.shards()))
    placed, on_grid = first.tokens.shape[1], first.grid_shape is not None
    del first  # not held (mapped) through the training
    if placed == 0:  # placeless queries only: nothing to lay out as an image
        return []
    images = image_batch(train_data), image_batch(test_data)
    if on_grid:
        return streamed_reconstruction_records(SourceGrids(train_source), images[0], SourceGrids(test_source),
                                               images[1], config.bootstrap, config.seed, **probe_options)
    # tiles, levels or a mosaic: resampled onto one raster by footprint overlap (no finer than the output)
    side = min(finest_side(train_source), OUTPUT_SIZE)
    # beside the feature store (a disk made for features; /tmp may be memory)
    scratch = getattr(getattr(train_source, "cache", None), "root", None)
    with tempfile.TemporaryDirectory(prefix="spatialprobe-raster-", dir=scratch) as folder:
        train, test = (RasterSpill(source, side, f"{folder}/{split}", probe_options.get("watch"))
                       for source, split in ((train_source, "train"), (test_source, "test")))
        records = streamed_reconstruction_records(train, images[0], test, images[1], config.bootstrap, config.seed,
                                                  **probe_options)
    return [{"resampled_to": side, **record} for record in records]


@dataclass(frozen=True)
class ReconstructionJob:
    model: object  # jobs.RunInfo
    stage: str
    ctx: PlanContext

    def run(self) -> list[dict]:
        ctx, run, config = self.ctx, self.model, self.ctx.config
        rows = cached_records(ctx, lambda: reconstruction_results(
            stage_source(ctx, run, "train", self.stage), stage_source(ctx, run, "test", self.stage),
            ctx.data.split("train"), ctx.data.split("test"), config),
            task="reconstruction_probe", model=run.spec.key(), stage=self.stage, data=ctx.data.key(),
            bootstrap=config.bootstrap, seed=config.seed)
        base = row_base(run, "reconstruction_probe", self.stage, ctx)
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
