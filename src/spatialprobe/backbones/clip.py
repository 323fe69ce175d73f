"""CLIP vision tower (also the tower inside LLaVA): [CLS, patches]; loads CLIPModel checkpoints too."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from .vit import VitTowerBackbone


class ClipBackbone(VitTowerBackbone):
    family = "clip"
    stage_summary = "vision.embed, vision.block.<i>"
    weights_source = "hub id or folder (CLIPModel or CLIPVisionModel)"
    offline_test = "yes (tiny)"
    model_class = CLIPVisionModel

    def leading_tokens(self) -> dict[str, int]:
        return {"cls": 1}

    def forward_options(self) -> dict:
        return {"interpolate_pos_encoding": self.resolution != int(self.model.config.image_size)}

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        torch.manual_seed(seed)
        config = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14, projection_dim=16,
        )
        CLIPVisionModel(config).save_pretrained(path)
        CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(path)
