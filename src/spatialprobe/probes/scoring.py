"""Scoring predictions of the spatial_probe task: metric -> value, 95% interval and, when the interval
is not a bootstrap interval, a note saying what it is."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import ap_interval, coco_map, mask_iou, mean_ci, paired_box_iou

NO_INTERVAL = (np.nan, np.nan)


@dataclass(frozen=True)
class Scored:
    value: float
    low: float | None
    high: float | None
    note: str | None = None  # e.g. "3 hits at IoU 0.75 of 100: exact binomial interval on the hit count, ..."


def score(boxes: torch.Tensor, scores: torch.Tensor, target, masks: torch.Tensor | None = None,
          n_boot: int = 1000, seed: int = 0, with_ci: bool = True) -> dict[str, Scored]:
    """Every metric of predicted boxes (+scores) and, if given, masks, with its interval over the test images."""
    ious = paired_box_iou(boxes, target.boxes)
    out = {"bbox_iou": Scored(float(ious.mean()), *(mean_ci(ious, n_boot, seed) if with_ci else NO_INTERVAL))}
    scores_np = scores.numpy().astype(np.float64)
    maps = coco_map(boxes.numpy(), scores_np, target.boxes.numpy())
    resamples = np.random.default_rng(seed).integers(0, len(ious), (n_boot if with_ci else 0, len(ious)))
    for name, thr in (("map_50", 0.5), ("map_75", 0.75)):
        out[name] = Scored(maps[thr], *(ap_interval(ious, scores_np, thr, resamples) if with_ci else (*NO_INTERVAL, None)))
    if masks is not None:
        per_image = mask_iou(masks, target.masks)
        out["spatial_iou"] = Scored(float(per_image.mean()), *(mean_ci(per_image, n_boot, seed) if with_ci else NO_INTERVAL))
    return out


def evaluate(boxes: torch.Tensor, scores: torch.Tensor, target, masks: torch.Tensor | None = None,
             n_boot: int = 1000, seed: int = 0, with_ci: bool = True) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, ci_low, ci_high), as `score` without the notes."""
    scored = score(boxes, scores, target, masks, n_boot, seed, with_ci)
    return {metric: (s.value, s.low, s.high) for metric, s in scored.items()}
