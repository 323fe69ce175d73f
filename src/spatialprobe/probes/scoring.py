"""Scoring predictions of the spatial_probe task: metric -> (value, ci_low, ci_high)."""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import ap_at_iou, coco_map, mask_iou, mean_ci, paired_box_iou


def evaluate(boxes: torch.Tensor, scores: torch.Tensor, target, masks: torch.Tensor | None = None,
             n_boot: int = 1000, seed: int = 0, with_ci: bool = True) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, ci_low, ci_high) for predicted boxes (+scores) and, if given, masks."""
    ious = paired_box_iou(boxes, target.boxes)
    out = {"bbox_iou": (float(ious.mean()), *(mean_ci(ious, n_boot, seed) if with_ci else (np.nan, np.nan)))}
    scores_np = scores.numpy().astype(np.float64)
    maps = coco_map(boxes.numpy(), scores_np, target.boxes.numpy())
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(ious), (n_boot if with_ci else 0, len(ious)))
    for name, thr in (("map_50", 0.5), ("map_75", 0.75)):
        boot = [ap_at_iou(ious[idx], scores_np[idx], thr) for idx in resamples]
        low, high = (np.percentile(boot, 2.5), np.percentile(boot, 97.5)) if with_ci else (np.nan, np.nan)
        out[name] = (maps[thr], float(low), float(high))
    if masks is not None:
        per_image = mask_iou(masks, target.masks)
        out["spatial_iou"] = (float(per_image.mean()), *(mean_ci(per_image, n_boot, seed) if with_ci else (np.nan, np.nan)))
    return out
