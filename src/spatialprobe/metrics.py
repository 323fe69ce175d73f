"""Metrics (placeholder: being written)."""
import torch
from torchvision.ops import box_iou as _tv_box_iou


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _tv_box_iou(a, b)
