"""A tiny random-initialized V-JEPA 2 (encoder and predictor) with its video processor, built offline in code:
64-px clips at patch 16, tubelets of 2 frames."""
from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_vjepa2(path: Path, seed: int = 0) -> None:
    from transformers import VJEPA2Config, VJEPA2Model, VJEPA2VideoProcessor

    torch.manual_seed(seed)
    config = VJEPA2Config(patch_size=16, crop_size=64, frames_per_clip=4, tubelet_size=2, hidden_size=32,
                          num_attention_heads=2, num_hidden_layers=2, mlp_ratio=2.0, pred_hidden_size=16,
                          pred_num_attention_heads=2, pred_num_hidden_layers=1, num_pooler_layers=1)
    VJEPA2Model(config).save_pretrained(path)
    VJEPA2VideoProcessor(crop_size=64).save_pretrained(path)
