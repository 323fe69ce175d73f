"""Inference speed and peak memory of each model on the same images, hardware and batch size.

Timing reads each model up to its deepest stage (the whole vision tower, merger and LLM layers:
everything but the LM head), best of a few repeats after a warm-up batch. Peak memory is the CUDA
allocator's peak on a GPU; on a CPU it is the process's peak resident memory during the timing,
read from Linux's VmHWM after resetting it (None elsewhere).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image

from .backbones.base import Backbone

PROC_STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CLEAR_REFS.exists():
        try:
            CLEAR_REFS.write_text("5")  # "5" resets the peak resident set size (VmHWM)
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if PROC_STATUS.exists():
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speed(backbone: Backbone, images: list[Image.Image], batch_size: int, repeats: int = 3) -> dict:
    """images/s (best and worst of `repeats`) and peak memory for reading every stage of `images`."""
    deepest = [backbone.stages[-1]]
    backbone.extract(images[:batch_size], stages=deepest, batch_size=batch_size)  # warm-up
    reset_peak_memory(backbone.device)
    rates = []
    for _ in range(repeats):
        synchronize(backbone.device)
        start = time.perf_counter()
        backbone.extract(images, stages=deepest, batch_size=batch_size)
        synchronize(backbone.device)
        rates.append(len(images) / (time.perf_counter() - start))
    return {"images_per_second": max(rates), "slowest": min(rates), "peak_memory_mb": peak_memory_mb(backbone.device),
            "images": len(images), "batch_size": batch_size, "device": str(backbone.device)}


def speed_records(speeds: dict[str, dict], baseline: str | None) -> list[dict]:
    """Result lines for each model's speed, memory and `speed_ratio` (baseline time / ... see below).

    speed_ratio = how many times longer than the baseline the model takes per image (the proposal's
    "< 2x Qwen baseline"); its interval comes from the best and worst repeats of both models."""
    records = []
    for model, s in speeds.items():
        common = {"model": model, "task": "speed", "stage": None, "probe": None, "floor": None, "ceiling": None,
                  "n": s["images"], "batch_size": s["batch_size"], "device": s["device"]}
        records.append({**common, "metric": "images_per_second", "value": s["images_per_second"],
                        "ci_low": s["slowest"], "ci_high": s["images_per_second"]})
        records.append({**common, "metric": "peak_memory_mb", "value": s["peak_memory_mb"], "ci_low": None, "ci_high": None})
        if baseline in speeds:
            b = speeds[baseline]
            records.append({**common, "metric": "speed_ratio", "value": b["images_per_second"] / s["images_per_second"],
                            "ci_low": b["slowest"] / s["images_per_second"], "ci_high": b["images_per_second"] / s["slowest"],
                            "baseline": baseline})
        else:
            records.append({**common, "metric": "speed_ratio", "value": None, "ci_low": None, "ci_high": None,
                            "unavailable": "no baseline model in this run (set decision.baseline, or add Qwen2.5-VL)"})
    return records
