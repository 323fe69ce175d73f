"""SigLIP vision tower: patches only, no CLS token."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from .vit import VitTowerBackbone


class SiglipBackbone(VitTowerBackbone):
    family = "siglip"
    stage_summary = "vision.embed, vision.block.<i>"
    weights_source = "hub id or folder"
    offline_test = "yes (tiny)"
    model_class = SiglipVisionModel

    def forward_options(self) -> dict:
        return {"interpolate_pos_encoding": self.resolution != int(self.model.config.image_size)}

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        torch.manual_seed(seed)
        config = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14,
        )
        SiglipVisionModel(config).save_pretrained(path)
        SiglipImageProcessor(size={"height": 56, "width": 56}).save_pretrained(path)
