"""Floor and ceiling of every spatial_probe metric, beside every number.

floor:   the metric with no features at all — the best constant prediction learned from the
         training labels (the mean training box; the mean training mask thresholded at the level
         that maximizes training IoU).
ceiling: the best the stage's token resolution allows — the ground-truth coverage of each test
         token thresholded at 0.5 and painted back through the footprints (its mask, and its box,
         ranked by an oracle for mAP).
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import paired_box_iou
from .footprints import mask_boxes, paint, token_coverage
from .scoring import evaluate

MASK_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def best_constant_mask(train_masks: torch.Tensor) -> torch.Tensor:
    mean_mask = train_masks.float().mean(0)
    candidates = torch.stack([(mean_mask >= t).flatten() for t in MASK_THRESHOLDS], 1).float()  # [P, T]
    flat = train_masks.flatten(1).float()
    inter = flat @ candidates  # every (image, threshold) intersection in one product
    union = flat.sum(1, keepdim=True) + candidates.sum(0, keepdim=True) - inter
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter)).mean(0)
    return mean_mask >= float(MASK_THRESHOLDS[int(ious.argmax())])


def floors(train, test) -> dict[str, float]:
    n = len(test.boxes)
    boxes = train.boxes.mean(0, keepdim=True).expand(n, 4)
    constant = best_constant_mask(train.masks)
    if constant.shape != test.masks.shape[1:]:
        raise ValueError("train and test masks must share a resolution")
    result = evaluate(boxes, torch.zeros(n), test, constant.expand_as(test.masks), with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}


def ceiling_masks(test) -> torch.Tensor:
    height, width = test.masks.shape[1:]
    covered = (token_coverage(test.masks, test.footprints) >= 0.5).float()
    return paint(covered, test.footprints, height, width) >= 0.5


def ceilings(test) -> dict[str, float]:
    masks = ceiling_masks(test)
    boxes = mask_boxes(masks)
    # an oracle ranking (each box scored by its own IoU) makes the mAP ceiling a true upper bound
    oracle_scores = torch.from_numpy(paired_box_iou(boxes, test.boxes)).float()
    result = evaluate(boxes, oracle_scores, test, masks, with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}
