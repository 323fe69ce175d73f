"""Adapter training throughput: `bridging.train_adapter` against a bare AdamW loop of the same head, same process.

Both heads at a real width: a 1,280-channel stage (Qwen2.5-VL-7B's vision width) onto a 14 x 14 grid of 128
latent channels (LTX-Video's VAE at 448 px), sized by `bridging.sized_for` to about 10M parameters; the
attention head reads 1,024 tokens (32 x 32 patches). The baseline is the plain loop (forward, the same loss,
backward, AdamW step) on the same random data; `train_adapter` adds the seeded minibatch draws and a
checkpoint every `--checkpoint-every` steps. Images per second and the ratio to the baseline are printed.

    .venv/bin/python benchmarks/adapter_throughput.py [--steps 6 --batch 16]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

CHANNELS, GRID, TOKENS_SIDE, IMAGES = 1280, (14, 14), 32, 64


def data(kind: str, generator: torch.Generator):
    from spatialprobe.features import grid_footprints

    targets = torch.randn(IMAGES, 128, *GRID, generator=generator)
    if kind == "conv":
        return torch.randn(IMAGES, CHANNELS, *GRID, generator=generator), targets
    tokens = torch.randn(IMAGES, TOKENS_SIDE ** 2, CHANNELS, generator=generator)
    footprints = grid_footprints(TOKENS_SIDE, TOKENS_SIDE).expand(IMAGES, -1, -1).contiguous()
    return (tokens, footprints, None), targets


def bare_loop(head, inputs, targets, steps: int, batch: int) -> float:
    from spatialprobe.bridging.train import adapter_loss

    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    begun = time.perf_counter()
    for step in range(steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % IMAGES
        x = inputs[rows] if isinstance(inputs, torch.Tensor) else tuple(t if t is None else t[rows] for t in inputs)
        loss = adapter_loss(head(x) if isinstance(inputs, torch.Tensor) else head(*x), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - begun


def main() -> None:
    from spatialprobe.bridging import AdapterBudget, build_head, parameter_count, sized_for, train_adapter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    args = parser.parse_args()
    for kind in ("conv", "attention"):
        inputs, targets = data(kind, torch.Generator().manual_seed(0))
        kwargs = sized_for(CHANNELS, kind=kind, grid=GRID)
        torch.manual_seed(0)
        head = build_head(kind, **kwargs)
        bare = bare_loop(head, inputs, targets, args.steps, args.batch)
        torch.manual_seed(0)
        head = build_head(kind, **kwargs)
        budget = AdapterBudget(steps=args.steps, batch_size=args.batch, checkpoint_every=args.checkpoint_every)
        with tempfile.TemporaryDirectory() as folder:
            begun = time.perf_counter()
            train_adapter(head, inputs, targets, budget, Path(folder))
            ours = time.perf_counter() - begun
        images = args.steps * args.batch
        print(f"{kind}: {parameter_count(head) / 1e6:.1f}M parameters; bare loop {images / bare:.2f} images/s, "
              f"train_adapter {images / ours:.2f} images/s (checkpoint every {args.checkpoint_every} steps); "
              f"time ratio train_adapter / bare = {ours / bare:.2f}")


if __name__ == "__main__":
    main()
