"""CLIP vision tower (also the tower inside LLaVA): [CLS, patches]; loads CLIPModel checkpoints too."""
from __future__ import annotations

from pathlib import Path

from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from .vit import TINY_TOWER, VitTowerBackbone, save_tiny_tower


class ClipBackbone(VitTowerBackbone):
    family = "clip"
    stage_summary = "vision.embed, vision.block.<i>"
    weights_source = "hub id or folder (CLIPModel or CLIPVisionModel)"
    offline_test = "yes (tiny)"
    model_class = CLIPVisionModel
    passes_interpolation_flag = True

    def leading_tokens(self) -> dict[str, int]:
        return {"cls": 1}

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        save_tiny_tower(path, seed, CLIPVisionModel, CLIPVisionConfig(**TINY_TOWER, projection_dim=16), processor)
