"""Inference speed and peak memory of each model on the same images, hardware and batch size.

Timing reads each model up to its deepest stage (the whole vision tower, merger and LLM layers:
everything but the LM head): the median of at least 5 timed repeats after a warm-up batch, with the
interquartile range (IQR) of the repeats as its interval. Peak memory is the CUDA
allocator's peak on a GPU; on a CPU it is the process's peak resident memory during the timing,
read from Linux's VmHWM after resetting it (None elsewhere).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .models.base import Backbone

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


MIN_REPEATS = 5
TIMING_INTERVAL = "timing repeats (IQR)"


def measure_speed(backbone: Backbone, images: list[Image.Image], batch_size: int, repeats: int = MIN_REPEATS) -> dict:
    """Seconds per image of each of `repeats` timed passes over `images` (after a warm-up batch), their
    median as images/s with the IQR, and peak memory, for reading every stage up to the deepest."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"speed needs at least {MIN_REPEATS} timed repeats for a median and an IQR, got {repeats}")
    deepest = [backbone.stages[-1]]
    backbone.extract(images[:batch_size], stages=deepest, batch_size=batch_size)  # warm-up: lazy init, caches
    reset_peak_memory(backbone.device)
    seconds = []
    for _ in range(repeats):
        synchronize(backbone.device)
        start = time.perf_counter()
        backbone.extract(images, stages=deepest, batch_size=batch_size)
        synchronize(backbone.device)
        seconds.append((time.perf_counter() - start) / len(images))
    rates = 1.0 / np.asarray(seconds)
    low, high = np.percentile(rates, [25, 75])
    return {"seconds_per_image": seconds, "images_per_second": float(np.median(rates)),
            "iqr": (float(low), float(high)), "peak_memory_mb": peak_memory_mb(backbone.device),
            "images": len(images), "batch_size": batch_size, "device": str(backbone.device), "repeats": repeats}


def ratio_with_iqr(model: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Median time per image of `model` over the baseline's, and the IQR of the ratios over every pair
    of repeats (model repeat i, baseline repeat j): how far timing noise moves the ratio."""
    value = float(np.median(model) / np.median(baseline))
    pairs = np.asarray(model)[:, None] / np.asarray(baseline)[None, :]
    low, high = np.percentile(pairs, [25, 75])
    # with an even number of repeats the ratio of medians can sit just outside the pairs' IQR
    return value, float(min(low, value)), float(max(high, value))


def speed_records(speeds: dict[str, dict], baseline: str | None) -> list[dict]:
    """Result lines for each model's speed, memory and `speed_ratio`.

    speed_ratio = how many times longer than the baseline the model takes per image (the proposal's
    "< 2x Qwen baseline"): median over median, interval the IQR over all pairs of timing repeats. The
    baseline's own ratio is 1 by definition, with no interval."""
    records = []
    for model, s in speeds.items():
        common = {"model": model, "task": "speed", "stage": None, "probe": None, "floor": None, "ceiling": None,
                  "n": s["images"], "batch_size": s["batch_size"], "device": s["device"], "repeats": s["repeats"]}
        records.append({**common, "metric": "images_per_second", "value": s["images_per_second"],
                        "ci_low": s["iqr"][0], "ci_high": s["iqr"][1], "ci_covers": TIMING_INTERVAL})
        records.append({**common, "metric": "peak_memory_mb", "value": s["peak_memory_mb"], "ci_low": None, "ci_high": None,
                        "ci_covers": "none"})
        records.append(ratio_record(common, model, speeds, baseline))
    return records


def ratio_record(common: dict, model: str, speeds: dict[str, dict], baseline: str | None) -> dict:
    if baseline not in speeds:
        return {**common, "metric": "speed_ratio", "value": None, "ci_low": None, "ci_high": None, "ci_covers": "none",
                "unavailable": "no baseline model in this run (set decision.baseline, or add Qwen2.5-VL)"}
    if model == baseline:
        return {**common, "metric": "speed_ratio", "value": 1.0, "ci_low": None, "ci_high": None, "ci_covers": "none",
                "baseline": baseline}  # 1 by definition: nothing to resample
    value, low, high = ratio_with_iqr(speeds[model]["seconds_per_image"], speeds[baseline]["seconds_per_image"])
    return {**common, "metric": "speed_ratio", "value": value, "ci_low": low, "ci_high": high,
            "ci_covers": TIMING_INTERVAL, "baseline": baseline}
