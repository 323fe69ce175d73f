"""SigLIP vision tower: patches only, no CLS token."""
from __future__ import annotations

from pathlib import Path

from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from .vit import TINY_TOWER, VitTowerBackbone, save_tiny_tower


class SiglipBackbone(VitTowerBackbone):
    family = "siglip"
    stage_summary = "vision.embed, vision.block.<i>"
    weights_source = "hub id or folder"
    offline_test = "yes (tiny)"
    model_class = SiglipVisionModel
    passes_interpolation_flag = True

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        processor = SiglipImageProcessor(size={"height": 56, "width": 56})
        save_tiny_tower(path, seed, SiglipVisionModel, SiglipVisionConfig(**TINY_TOWER), processor)
