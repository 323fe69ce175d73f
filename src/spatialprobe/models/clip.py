"""CLIP vision tower (also the tower inside LLaVA): [CLS, patches]; loads CLIPModel checkpoints too."""
from __future__ import annotations

from pathlib import Path

from transformers import CLIPVisionModel

from .vit import VitTowerBackbone


class ClipBackbone(VitTowerBackbone):
    family = "clip"
    stage_summary = "vision.embed, vision.block.<i> (clips frame by frame, time-major)"
    weights_source = "hub id or folder (CLIPModel or CLIPVisionModel)"
    offline_test = "yes (tiny)"
    model_class = CLIPVisionModel
    passes_interpolation_flag = True

    def leading_tokens(self) -> dict[str, int]:
        return {"cls": 1}

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.vit import save_tiny_clip

        save_tiny_clip(Path(path), seed)
