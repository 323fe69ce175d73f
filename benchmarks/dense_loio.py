"""The dense probe's ridge fit: leave-one-image-out (grouped) against per-token leave-one-out, same arrays.

Grouped LOO selects alpha and the coverage threshold without letting an image's own tokens vouch for
it; this measures what that costs, as a ratio to the per-token fit in the same process, at the
quickstart's shape and at shapes where images have more tokens than the features have dimensions
(the low-rank Woodbury path).

    .venv/bin/python benchmarks/dense_loio.py [--repeats 3]
"""
from __future__ import annotations

import argparse

import torch
from extraction_throughput import best_time  # run as a script: its folder is on the path

from spatialprobe.probes.ridge import RidgeSolver

#: (images, tokens per image, channels): the quickstart's DINOv2-S stage; a Qwen-like merged grid at
#: 448 px with tiny channels; a high-resolution map with few channels (Woodbury); DINOv2-S at 448 px
SHAPES = [(300, 256, 384), (300, 256, 64), (64, 4096, 16), (300, 1024, 384)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| images x tokens x channels | path | per-token LOO fit (s) | grouped LOO fit (s) | grouped / per-token |")
    print("|---|---|---|---|---|")
    for images, tokens, channels in SHAPES:
        x = torch.randn(images * tokens, channels)
        y = torch.rand(images * tokens, 1)
        solver = RidgeSolver(x)  # the decomposition is shared by both: timed apart below
        rank = (solver.p.shape[1]) + 1
        path = "Woodbury (rank + 1 < tokens)" if rank < tokens else "direct (tokens x tokens solve)"
        per_token = best_time(lambda: solver.fit(y), args.repeats)
        grouped = best_time(lambda: solver.fit(y, group_size=tokens), args.repeats)
        print(f"| {images} x {tokens} x {channels} | {path} | {per_token:.2f} | {grouped:.2f} | {grouped / per_token:.1f} |")


if __name__ == "__main__":
    main()
