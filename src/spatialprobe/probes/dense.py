"""`dense` probe: a per-token linear model of object coverage, painted back into a mask and a box.

The coverage threshold that turns painted coverage into a mask is chosen on the training images,
from the ridge's leave-one-out predictions (so the choice is not fitted to the training tokens).
"""
from __future__ import annotations

import torch

from ..metrics import iou_of
from .footprints import mask_boxes, paint, token_coverage
from .ridge import fit_ridge

THRESHOLDS = torch.linspace(0.1, 0.9, 17)


def best_threshold(painted: torch.Tensor, masks: torch.Tensor) -> float:
    """The threshold on painted coverage with the best mean IoU over these images."""
    flat, truth = painted.flatten(1), masks.flatten(1).float()
    ious = []
    for threshold in THRESHOLDS:
        predicted = (flat >= threshold).float()
        inter = (predicted * truth).sum(1)
        union = predicted.sum(1) + truth.sum(1) - inter
        ious.append(iou_of(inter, union).mean())  # scored as the metric scores it
    return float(THRESHOLDS[int(torch.stack(ious).argmax())])


def dense_probe(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted masks [n, H, W], their boxes [n, 4] and scores [n] (mean coverage inside the mask)."""
    channels = train.tokens.shape[-1]
    coverage = token_coverage(train.masks, train.footprints)
    fit = fit_ridge(train.tokens.reshape(-1, channels), coverage.reshape(-1, 1))
    height, width = test.masks.shape[1:]
    loo = fit.loo_predictions.float().reshape(coverage.shape)
    threshold = best_threshold(paint(loo, train.footprints, *train.masks.shape[1:]), train.masks)
    predicted = fit.predict(test.tokens.reshape(-1, channels)).reshape(test.tokens.shape[:2])
    painted = paint(predicted, test.footprints, height, width)
    masks = painted >= threshold
    inside = (painted * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
    return masks, mask_boxes(masks), inside
