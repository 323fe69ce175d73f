"""SigLIP vision tower: patches only, no CLS token."""
from __future__ import annotations

from pathlib import Path

from transformers import SiglipVisionModel

from .vit import VitTowerBackbone


class SiglipBackbone(VitTowerBackbone):
    family = "siglip"
    stage_summary = "vision.embed, vision.block.<i> (clips frame by frame, time-major)"
    weights_source = "hub id or folder"
    offline_test = "yes (tiny)"
    model_class = SiglipVisionModel
    passes_interpolation_flag = True

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.vit import save_tiny_siglip

        save_tiny_siglip(Path(path), seed)
