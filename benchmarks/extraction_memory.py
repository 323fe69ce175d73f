"""Peak host RSS of one extraction job (one shard, every stage) with and without the spool's spill.

A stub Backbone (benchmark only: no model) emits random float16 tokens for many stages, like a VLM's
vision and LLM blocks; `extract.run_shard` stores one 64-image shard of all of them. Each setting runs in
a subprocess of its own so its peak RSS (getrusage) is that job's alone:

- `kept`: spill budget above the shard (the old behaviour: every stage of the shard held until the end);
- `default`: `store.spool.SPILL_BYTES`;
- `every batch`: spill budget 0.

    .venv/bin/python benchmarks/extraction_memory.py [--stages 24 --tokens 576 --channels 1024]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARD, BATCH = 64, 8


def stub_backbone(stages: int, tokens: int, channels: int):
    from spatialprobe.features import TokenFeatures, grid_footprints
    from spatialprobe.models.base import Backbone

    side = int(tokens ** 0.5)

    class ManyStagesBackbone(Backbone):
        family = "extraction-memory-stub"

        def __init__(self) -> None:
            super().__init__("random-features")
            self.generator = torch.Generator().manual_seed(0)

        @property
        def stages(self) -> list[str]:
            return [f"block.{i}" for i in range(stages)]

        def preprocessing(self) -> dict:
            return {}

        def weights_fingerprint(self) -> str:
            return "none"

        def _extract_batch(self, images, wanted):
            footprints = grid_footprints(side, side).expand(len(images), -1, -1)
            return {s: TokenFeatures(torch.randn(len(images), side * side, channels, generator=self.generator),
                                     footprints, (side, side)) for s in wanted}

    return ManyStagesBackbone()


class Images:
    split = "train"

    def __len__(self) -> int:
        return SHARD

    def load_image(self, i: int):
        from PIL import Image

        return Image.new("RGB", (8, 8))


def child(spill: int, stages: int, tokens: int, channels: int) -> None:
    from spatialprobe.extract import ShardJob, run_shard
    from spatialprobe.store.shards import FeatureCache

    backbone = stub_backbone(stages, tokens, channels)
    with tempfile.TemporaryDirectory(prefix="extraction_memory_") as tmp:
        begun = time.perf_counter()
        run_shard(backbone, "stub", Images(), "hash", ShardJob("train", 0, SHARD), backbone.stages,
                  FeatureCache(tmp), BATCH, spill_bytes=spill)
        seconds = time.perf_counter() - begun
    print(json.dumps({"spill_bytes": spill, "seconds": seconds,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def measure(spill: int, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(spill), "--stages", str(args.stages),
                          "--tokens", str(args.tokens), "--channels", str(args.channels)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.stages, args.tokens, args.channels)
    from spatialprobe.store.spool import SPILL_BYTES

    shard_gib = SHARD * args.stages * args.tokens * args.channels * 2 / 2**30
    print(f"one shard: {SHARD} images x {args.stages} stages x {args.tokens} x {args.channels} float16 = {shard_gib:.2f} GiB")
    results = {name: measure(spill, args) for name, spill in
               (("kept", 2**62), ("default", SPILL_BYTES), ("every batch", 0))}
    for name, r in results.items():
        print(f"{name:12s} peak RSS {r['peak_rss_gib']:.2f} GiB, {r['seconds']:.1f} s, "
              f"time x{r['seconds'] / results['kept']['seconds']:.2f} of kept")


if __name__ == "__main__":
    main()
