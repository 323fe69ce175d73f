"""DINOv2 (and its registers variant's layout): [CLS, registers..., patches]."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import Dinov2Model

from .vit import VitTowerBackbone


class Dinov2Backbone(VitTowerBackbone):
    family = "dinov2"
    stage_summary = "vision.embed, vision.block.<i> (clips frame by frame, time-major)"
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
        from .tiny.vit import save_tiny_dinov2

        save_tiny_dinov2(Path(path), seed)
