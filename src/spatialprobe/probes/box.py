"""`linear` and `pooled` probes: ridge from features to the 4 box coordinates, plus a score head.

mAP needs a confidence per box: a second ridge head predicts, from the same features, how well the
box head did on each training image when that image was left out (exact LOO from the same solver).
"""
from __future__ import annotations

import torch

from ..metrics import paired_box_iou
from .ridge import RidgeFit, RidgeSolver


def valid_boxes(raw: torch.Tensor) -> torch.Tensor:
    """Clip to the image and order the corners, so every prediction is a real box."""
    raw = raw.clamp(0, 1)
    x0, x1 = torch.minimum(raw[:, 0], raw[:, 2]), torch.maximum(raw[:, 0], raw[:, 2])
    y0, y1 = torch.minimum(raw[:, 1], raw[:, 3]), torch.maximum(raw[:, 1], raw[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


def box_probe(train_x: torch.Tensor, train_boxes: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    box_head, score_head = fit_heads(RidgeSolver(train_x), train_boxes)
    return valid_boxes(box_head.predict(test_x)), score_head.predict(test_x).flatten()


def gram_box_probe(gram: torch.Tensor, cross: torch.Tensor, d: int,
                   train_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`box_probe` from the centered Gram [n, n] and cross Gram [m, n] of d features (`gram.centered_grams`):
    the same dual ridge, alphas, exact LOO and predictions, without the features themselves."""
    box_head, score_head = fit_heads(RidgeSolver.from_gram(gram, d), train_boxes)
    return valid_boxes(box_head.predict_from_cross(cross)), score_head.predict_from_cross(cross).flatten()


def fit_heads(solver: RidgeSolver, train_boxes: torch.Tensor) -> tuple[RidgeFit, RidgeFit]:
    """The box head, and the score head fitted to the box head's leave-one-out IoUs."""
    box_head = solver.fit(train_boxes)
    loo_iou = paired_box_iou(valid_boxes(box_head.loo_predictions.float()), train_boxes)
    return box_head, solver.fit(torch.from_numpy(loo_iou))
