"""DINOv2 (and its registers variant's layout): [CLS, registers..., patches]."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

from .vit import TINY_TOWER, VitTowerBackbone, save_tiny_tower


class Dinov2Backbone(VitTowerBackbone):
    family = "dinov2"
    stage_summary = "vision.embed, vision.block.<i>"
    weights_source = "hub id or folder; installed:dinov2-small-imgfocus offline"
    offline_test = "yes (tiny)"
    model_class = Dinov2Model

    def default_resolution(self) -> int:
        # the config's 518 is the pretraining size; 224 (16x16 patches) is the usual probing size
        return 224

    def leading_tokens(self) -> dict[str, int]:
        registers = int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        return {"cls": 1, **({"registers": registers} if registers else {})}

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.model.encoder.layer)

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        processor = BitImageProcessor(do_resize=False, do_center_crop=False,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        tower = {k: v for k, v in TINY_TOWER.items() if k != "intermediate_size"}  # DINOv2 sets it by mlp_ratio
        save_tiny_tower(path, seed, Dinov2Model, Dinov2Config(**tower, mlp_ratio=2), processor)
