"""`linear` and `pooled` probes: ridge from features to the 4 box coordinates, plus a score head.

mAP needs a confidence per box: a second ridge head predicts, from the same features, how well the
box head did on each training image when that image was left out (exact LOO from the same solver).
"""
from __future__ import annotations

import torch

from ..metrics import paired_box_iou
from .ridge import RidgeSolver


def valid_boxes(raw: torch.Tensor) -> torch.Tensor:
    """Clip to the image and order the corners, so every prediction is a real box."""
    raw = raw.clamp(0, 1)
    x0, x1 = torch.minimum(raw[:, 0], raw[:, 2]), torch.maximum(raw[:, 0], raw[:, 2])
    y0, y1 = torch.minimum(raw[:, 1], raw[:, 3]), torch.maximum(raw[:, 1], raw[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


def box_probe(train_x: torch.Tensor, train_boxes: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    solver = RidgeSolver(train_x)
    box_head = solver.fit(train_boxes)
    loo_iou = paired_box_iou(valid_boxes(box_head.loo_predictions.float()), train_boxes)
    score_head = solver.fit(torch.from_numpy(loo_iou))
    return valid_boxes(box_head.predict(test_x)), score_head.predict(test_x).flatten()
