"""Seeded, resumable training of an adapter head on normalized VAE latents.

The loss is MSE plus `cosine_weight` times the mean over latent cells of (1 - cosine similarity over
channels): MSE alone lets a head shrink its predictions towards the mean latent, which decodes to grey;
the cosine term rewards the direction of each cell's latent whatever its norm.

Minibatches come from a seeded CPU `torch.Generator`, whose state is checkpointed with the head and
optimizer, so a killed run resumed from its newest checkpoint retraces the uninterrupted run bit for bit
(on the same device and library versions).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import SpatialProbeError

#: An input: a tensor [n, ...] (ConvHead) or a tuple of tensors [n, ...] or None (CrossAttentionHead:
#: tokens, footprints, times), whose first dimension runs over images.
Inputs = torch.Tensor | Sequence[torch.Tensor | None]

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")


@dataclass(frozen=True)
class AdapterBudget:
    """The fixed training budget of one adapter (from the config)."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.01
    cosine_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpatialProbeError(f"adapter budget: {name} must be a whole number >= 1, got {value!r}")
        for name in ("lr", "weight_decay", "cosine_weight"):
            if getattr(self, name) < 0:
                raise SpatialProbeError(f"adapter budget: {name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class TrainResult:
    """losses: the training loss of every step from step 1 (the curve, resumed steps included);
    steps_done: steps trained in total; resumed_from: the checkpoint's step this call started from (0: none);
    seconds: wall time of the steps this call trained (for throughput)."""

    losses: list[float]
    steps_done: int
    resumed_from: int
    seconds: float = field(default=0.0, compare=False)


def adapter_loss(prediction: torch.Tensor, target: torch.Tensor, cosine_weight: float = 1.0) -> torch.Tensor:
    """MSE + cosine_weight * mean(1 - cos) where the cosine runs over channels (dim 1) in every latent cell."""
    mse = nn.functional.mse_loss(prediction, target)
    if cosine_weight == 0:
        return mse
    cosine = nn.functional.cosine_similarity(prediction, target, dim=1)
    return mse + cosine_weight * (1 - cosine).mean()


def example_count(inputs: Inputs) -> int:
    """n, the first dimension shared by every input tensor."""
    parts = [inputs] if isinstance(inputs, torch.Tensor) else [p for p in inputs if p is not None]
    sizes = {len(p) for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"the inputs disagree on the number of images: {sorted(sizes)}")
    return sizes.pop()


def take(inputs: Inputs, index: torch.Tensor, device: torch.device | str) -> tuple:
    """The rows `index` of every input, on `device`, as the head's positional arguments."""
    if isinstance(inputs, torch.Tensor):
        return (inputs[index].to(device),)
    return tuple(None if p is None else p[index].to(device) for p in inputs)


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:09d}.pt"


def newest_checkpoint(folder: Path | None) -> Path | None:
    """The checkpoint of the highest step in `folder` (temporary files never match the name)."""
    if folder is None or not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Write `state` as the checkpoint of its step, atomically (temporary file in the folder, then rename),
    then remove older checkpoints: the newest is always whole, so a kill at any moment leaves one to resume."""
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, state["step"])
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in folder.iterdir():
        m = CHECKPOINT_NAME.match(old.name)
        if m and int(m.group(1)) < state["step"]:
            old.unlink(missing_ok=True)
    return path


def run_signature(head: nn.Module, budget: AdapterBudget, n: int) -> dict:
    """What a checkpoint must match to be resumed: everything of the run but its length."""
    shapes = {name: list(p.shape) for name, p in head.state_dict().items()}
    return {"budget": {k: v for k, v in asdict(budget).items() if k not in ("steps", "checkpoint_every")},
            "shapes": shapes, "n": n}


def load_checkpoint(path: Path, signature: dict) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["signature"] != signature:
        raise SpatialProbeError(f"checkpoint {path} was written by a different adapter run (head, budget or "
                                f"images differ): remove {path.parent} or train into another folder")
    return state


def train_adapter(head: nn.Module, inputs: Inputs, targets: torch.Tensor, budget: AdapterBudget,
                  checkpoint_dir: str | Path | None = None, device: str | torch.device = "cpu",
                  stop_after: int | None = None) -> TrainResult:
    """Train `head` in place on (inputs, targets [n, out, ...]) for `budget.steps` AdamW steps.

    With `checkpoint_dir`, a checkpoint is written every `budget.checkpoint_every` steps and at the end,
    and a call starts from the newest checkpoint there (a finished run just loads its weights).
    `stop_after` ends the call after that many steps in total without a final checkpoint: what a kill
    does, so tests (and callers splitting work) can interrupt a run cleanly."""
    n = example_count(inputs)
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} input images")
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    head.to(device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    generator = torch.Generator().manual_seed(budget.seed)
    signature = run_signature(head, budget, n)
    losses: list[float] = []
    start = 0
    if (path := newest_checkpoint(folder)) is not None:
        state = load_checkpoint(path, signature)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, losses = state["step"], list(state["losses"])
    last = budget.steps if stop_after is None else min(budget.steps, stop_after)
    batch = min(budget.batch_size, n)
    began = time.perf_counter()
    for step in range(start + 1, last + 1):
        index = torch.randperm(n, generator=generator)[:batch]
        loss = adapter_loss(head(*take(inputs, index, device)), targets[index].to(device).float(),
                            budget.cosine_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if folder is not None and (step % budget.checkpoint_every == 0 or step == budget.steps):
            save_checkpoint(folder, {"step": step, "losses": losses, "head": head.state_dict(),
                                     "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                     "signature": signature})
    return TrainResult(losses, max(start, last), start, time.perf_counter() - began)


def predict(head: nn.Module, inputs: Inputs, batch_size: int = 64) -> torch.Tensor:
    """The head's outputs for every input image, in minibatches, on the CPU as float32."""
    n = example_count(inputs)
    device = next(head.parameters()).device
    head.eval()
    with torch.inference_mode():
        parts = [head(*take(inputs, index, device)).float().cpu() for index in torch.arange(n).split(batch_size)]
    return torch.cat(parts)
