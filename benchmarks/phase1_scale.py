"""Phase 1 at scale: one stage per (model, tower) of Qwen2.5-VL-7B (448 px) and LLaVA-NeXT-7B, with random
float16 features of the real shapes streamed through the real extraction-store-probe path.

Per stage: a stub `Backbone` (defined here, for this benchmark only) whose `_extract_batch` emits random
tokens of the stage's shape on a grid of footprints; `extract.run_shard` writes them into a `FeatureCache`
in shards of 64 images; then `probes.run_spatial_probes` fits each probe on `ProbeSplit`s built as
`tasks.spatial_probe.stored_split` builds them (a `StoreSource` per split, its footprints, and targets:
random boxes and masks at 112 x 112). Every stage of a tower has the same shape, so one stage stands for
all of them. The write and the fit each run in a subprocess of their own, so each peak RSS (getrusage)
is that step's alone; the stage's shards are deleted before the next stage is written.

    .venv/bin/python benchmarks/phase1_scale.py --stage llava-next-7b:vision           # 1,000 / 500 images
    .venv/bin/python benchmarks/phase1_scale.py --stage llava-next-7b:llm --train 128 --test 64
    .venv/bin/python benchmarks/phase1_scale.py --quick   # every stage at 64 / 32 images: a smoke test

Each measurement is printed and appended as one JSON line to --out (default phase1_scale.jsonl in the
working directory).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

#: (model, tower) -> (grid rows, grid cols, channels) of one stage
SHAPES = {
    "qwen2.5-vl-7b:vision": (32, 32, 1280),  # 448 px / 14 px patches: 1,024 tokens before the 2x2 merger
    "qwen2.5-vl-7b:llm": (16, 16, 3584),  # 256 merged image tokens in the LLM
    "llava-next-7b:vision": (24, 24, 1024),  # CLIP ViT-L/336: 576 patch tokens (one tile)
    "llava-next-7b:llm": (54, 54, 4096),  # ~2,900 image tokens (base tile + anyres mosaic): 2,916 here
}
SHARD_SIZE = 64
BATCH_SIZE = 8
MASK_SIZE = 112
BOOTSTRAP = 50
DATA_HASH = "phase1-scale-random"
#: float16 random numbers the stub draws its images from (a random window per image): drawing fresh
#: normals for 36 GB of features would time the random generator, not the store
POOL_NUMBERS = 2**26


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def stub_backbone(rows: int, cols: int, channels: int, stage: str):
    """A Backbone whose one stage is random float16 tokens on a rows x cols grid (no model at all)."""
    from spatialprobe.features import TokenFeatures, grid_footprints
    from spatialprobe.models.base import Backbone

    class RandomStageBackbone(Backbone):
        family = "phase1-stub"

        def __init__(self) -> None:
            super().__init__("random-features")
            self.generator = torch.Generator().manual_seed(0)
            self.pool = torch.randn(POOL_NUMBERS, generator=self.generator).half()
            self.footprints = grid_footprints(rows, cols)

        @property
        def stages(self) -> list[str]:
            return [stage]

        def preprocessing(self) -> dict:
            return {}

        def weights_fingerprint(self) -> str:
            return "none"

        def _extract_batch(self, images, stages):
            per_image = rows * cols * channels
            starts = torch.randint(0, POOL_NUMBERS - per_image, (len(images),), generator=self.generator)
            tokens = torch.stack([self.pool[s:s + per_image] for s in starts.tolist()]).reshape(-1, rows * cols, channels)
            footprints = self.footprints.expand(len(images), -1, -1)
            return {stage: TokenFeatures(tokens, footprints, (rows, cols))}

    return RandomStageBackbone()


class BlankImages:
    """A split of n images for `run_shard`: the stub ignores pixels, so every image is one tiny blank."""

    def __init__(self, split: str, n: int) -> None:
        from PIL import Image

        self.split, self.n, self.image = split, n, Image.new("RGB", (8, 8))

    def __len__(self) -> int:
        return self.n

    def load_image(self, i: int):
        return self.image


def model_key(name: str) -> str:
    return f"phase1-scale-stub:{name}"


def stage_name(name: str) -> str:
    return "vision.block.0" if name.endswith(":vision") else "llm.layer.0"


def write(args) -> dict:
    """Every shard of both splits through `run_shard` into the store: time and bytes written."""
    from spatialprobe.extract import plan_shards, run_shard
    from spatialprobe.store.shards import FeatureCache

    backbone = stub_backbone(*SHAPES[args.stage], stage_name(args.stage))
    cache = FeatureCache(args.dir)
    begun = time.perf_counter()
    for split, n in (("train", args.train), ("test", args.test)):
        data = BlankImages(split, n)
        for job in plan_shards(split, n, SHARD_SIZE):
            run_shard(backbone, model_key(args.stage), data, DATA_HASH, job, [stage_name(args.stage)], cache, BATCH_SIZE)
    seconds = time.perf_counter() - begun
    written = sum(p.stat().st_size for p in Path(args.dir).rglob("*") if p.is_file())
    return {"write_seconds": seconds, "bytes_written": written}


def random_masks(n: int, seed: int) -> torch.Tensor:
    """n boolean masks [n, S, S]: one random rectangle each, sides 15-50% of the image."""
    generator = torch.Generator().manual_seed(seed)
    sides = (torch.rand(n, 2, generator=generator) * 0.35 + 0.15) * MASK_SIZE
    corners = torch.rand(n, 2, generator=generator) * (MASK_SIZE - sides)
    grid = torch.arange(MASK_SIZE)
    x0, y0 = corners[:, 0, None].long(), corners[:, 1, None].long()
    x1, y1 = (corners[:, 0] + sides[:, 0]).long()[:, None], (corners[:, 1] + sides[:, 1]).long()[:, None]
    in_x = (grid[None] >= x0) & (grid[None] < x1)
    in_y = (grid[None] >= y0) & (grid[None] < y1)
    return in_y[:, :, None] & in_x[:, None, :]


def stored_split(args, split: str, n: int, seed: int):
    """As `tasks.spatial_probe.stored_split`: tokens streamed from the store, targets in memory."""
    from spatialprobe.probes import ProbeSplit
    from spatialprobe.probes.footprints import mask_boxes
    from spatialprobe.store.shards import FeatureCache
    from spatialprobe.store.sources import StoreSource

    source = StoreSource(FeatureCache(args.dir), model_key(args.stage), DATA_HASH, split, n, SHARD_SIZE,
                         stage_name(args.stage))
    masks = random_masks(n, seed)
    return ProbeSplit(source, source.footprints(), mask_boxes(masks), masks, None)


def fit(args) -> dict:
    """Each probe through `run_spatial_probes`, one after the other in this process (as a task job runs
    them): its time, and this process's peak RSS once it is done."""
    from spatialprobe.probes import run_spatial_probes
    from spatialprobe.probes.bounds import ceilings, floors

    begun = time.perf_counter()
    train, test = stored_split(args, "train", args.train, 1), stored_split(args, "test", args.test, 2)
    result = {"splits_seconds": time.perf_counter() - begun, "splits_peak_rss_gib": peak_rss_gib()}
    begun = time.perf_counter()
    floors(train, test), ceilings(test)  # noqa: B018 -- timed once: every run_spatial_probes call repeats them
    result["bounds_seconds"] = time.perf_counter() - begun
    for probe in args.probes:
        begun = time.perf_counter()
        rows = run_spatial_probes(train, test, probes=(probe,), n_boot=BOOTSTRAP, seed=0)
        result[probe] = {"seconds": time.perf_counter() - begun, "peak_rss_gib": peak_rss_gib(),
                         "fit": rows[0].get("fit", "exact"),
                         "values": {r["metric"]: round(r["value"], 4) for r in rows},
                         "finite": all(r["value"] == r["value"] for r in rows)}
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def child(args) -> None:
    torch.set_num_threads(args.threads)
    result = {"write": write, "fit": fit}[args.child](args)
    result.setdefault("peak_rss_gib", peak_rss_gib())
    print(json.dumps(result))


def run_child(step: str, args, root: Path) -> dict:
    argv = [sys.executable, __file__, "--child", step, "--stage", args.stage, "--train", str(args.train),
            "--test", str(args.test), "--dir", str(root), "--threads", str(args.threads), "--probes", *args.probes]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{args.stage} {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def needed_bytes(stage: str, images: int) -> int:
    rows, cols, channels = SHAPES[stage]
    return images * rows * cols * (2 * channels + 16)  # float16 tokens + float32 footprints


def measure(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="phase1_scale_", dir=args.dir))
    try:
        free = shutil.disk_usage(root).free
        need = needed_bytes(args.stage, args.train + args.test)
        if need > free - 2 * 2**30:
            raise SystemExit(f"{args.stage}: needs {need / 1e9:.1f} GB in {root}, {free / 1e9:.1f} GB free")
        row = {"stage": args.stage, "shape": SHAPES[args.stage], "train": args.train, "test": args.test}
        row["write"] = run_child("write", args, root)
        row["fit"] = run_child("fit", args, root)
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)  # one stage on disk at a time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=list(SHAPES), action="append", help="default: all four")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--probes", nargs="+", default=["linear", "pooled", "dense"])
    parser.add_argument("--quick", action="store_true", help="64 / 32 images per stage (smoke test)")
    parser.add_argument("--dir", default=None, help="where the store goes (default: the system's temporary folder)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="phase1_scale.jsonl")
    parser.add_argument("--child", choices=["write", "fit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.stage = args.stage[0]
        return child(args)
    if args.quick:
        args.train, args.test = 64, 32
    for stage in args.stage or list(SHAPES):
        row = measure(argparse.Namespace(**{**vars(args), "stage": stage}))
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
