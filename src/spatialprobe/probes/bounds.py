"""Floor and ceiling of every spatial_probe metric, beside every number.

floor:   the metric with no features at all — the best constant prediction learned from the
         training labels (the mean training box; the mean training mask thresholded at the level
         that maximizes training IoU).
ceiling: the best the stage's token resolution allows — for masks, the token-aligned mask with
         the best IoU (ground-truth token coverage painted through the footprints, thresholded at
         each image's best level); for boxes, that mask turned into a box, ranked by an
         oracle for mAP. The dense probe's mask cannot beat it on a token grid; a box regressor
         (linear, pooled) is not bound to token edges and can.
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import iou_of, paired_box_iou
from .footprints import mask_boxes, paint, token_coverage
from .scoring import evaluate

MASK_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def best_constant_mask(train_masks: torch.Tensor) -> torch.Tensor:
    mean_mask = train_masks.float().mean(0)
    candidates = torch.stack([(mean_mask >= t).flatten() for t in MASK_THRESHOLDS], 1).float()  # [P, T]
    flat = train_masks.flatten(1).float()
    inter = flat @ candidates  # every (image, threshold) intersection in one product
    union = flat.sum(1, keepdim=True) + candidates.sum(0, keepdim=True) - inter
    ious = iou_of(inter, union).mean(0)  # the metric's own rule: an empty target is never matched
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
    """Per image, the token-aligned mask with the best IoU: the painted ground-truth coverage
    thresholded at the level that is best for that image (an optimal token subset is always all
    tokens above some coverage, since IoU is a linear-fractional objective)."""
    height, width = test.masks.shape[1:]
    painted = paint(token_coverage(test.masks, test.footprints), test.footprints, height, width).flatten(1)
    truth = test.masks.flatten(1)
    order = painted.argsort(dim=1, descending=True)
    sorted_cover = painted.gather(1, order)
    inter = truth.gather(1, order).double().cumsum(1)
    size = torch.arange(1, truth.shape[1] + 1, dtype=torch.float64)
    iou = inter / (truth.sum(1, keepdim=True) + size - inter)
    # a threshold can only stop at the end of a run of equal coverage, and never include uncovered pixels
    run_end = torch.ones_like(sorted_cover, dtype=torch.bool)
    run_end[:, :-1] = sorted_cover[:, :-1] > sorted_cover[:, 1:]
    iou = torch.where(run_end & (sorted_cover > 0), iou, torch.full_like(iou, -1.0))
    best = iou.argmax(1)
    threshold = sorted_cover.gather(1, best[:, None])
    keep = (iou.max(1).values > 0)[:, None]
    return ((painted >= threshold) & keep).reshape(test.masks.shape)


def ceilings(test) -> dict[str, float]:
    masks = ceiling_masks(test)
    boxes = mask_boxes(masks)  # the ground-truth token-coverage mask turned into a box
    # an oracle ranking (each box scored by its own IoU) makes the mAP ceiling a true upper bound
    oracle_scores = torch.from_numpy(paired_box_iou(boxes, test.boxes)).float()
    result = evaluate(boxes, oracle_scores, test, masks, with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}


def perfect_scores(test) -> dict[str, float]:
    """The metrics of a perfect prediction (the ceiling where no token grid limits the reader)."""
    result = evaluate(test.boxes, torch.ones(len(test.boxes)), test, test.masks, with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}
