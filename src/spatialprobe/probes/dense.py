"""`dense` probe: a per-token linear model of object coverage, painted back into a mask and a box."""
from __future__ import annotations

import torch

from .footprints import mask_boxes, paint, token_coverage
from .ridge import fit_ridge

THRESHOLD = 0.5


def dense_probe(train, test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted masks [n, H, W], their boxes [n, 4] and scores [n] (mean coverage inside the mask)."""
    channels = train.tokens.shape[-1]
    coverage = token_coverage(train.masks, train.footprints)
    fit = fit_ridge(train.tokens.reshape(-1, channels), coverage.reshape(-1, 1))
    predicted = fit.predict(test.tokens.reshape(-1, channels)).reshape(test.tokens.shape[:2])
    height, width = test.masks.shape[1:]
    painted = paint(predicted, test.footprints, height, width)
    masks = painted >= THRESHOLD
    inside = (painted * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1)
    return masks, mask_boxes(masks), inside
