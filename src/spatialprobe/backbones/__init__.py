"""The registry of backbone families: one adapter module per family."""
from __future__ import annotations

import importlib

from ..errors import SpatialProbeError
from .base import Backbone, HookedBackbone

#: family name -> "module:Class" (imported lazily so `spatialprobe --help` stays fast)
FAMILIES: dict[str, str] = {
    "pixels": "spatialprobe.backbones.pixels:PixelsBackbone",
    "dinov2": "spatialprobe.backbones.dinov2:Dinov2Backbone",
    "clip": "spatialprobe.backbones.clip:ClipBackbone",
    "siglip": "spatialprobe.backbones.siglip:SiglipBackbone",
    "qwen2_5_vl": "spatialprobe.backbones.qwen2_5_vl:Qwen25VLBackbone",
    "llava_next": "spatialprobe.backbones.llava_next:LlavaNextBackbone",
    "internvl": "spatialprobe.backbones.internvl:InternVLBackbone",
    "glm4v": "spatialprobe.backbones.glm4v:Glm4vBackbone",
    "cogvlm2": "spatialprobe.backbones.cogvlm2:CogVLM2Backbone",
    "owlvit": "spatialprobe.backbones.owlvit:OwlViTBackbone",
    "owlv2": "spatialprobe.backbones.owlvit:Owlv2Backbone",
    "detr": "spatialprobe.backbones.detr:DetrBackbone",
    "grounding_dino": "spatialprobe.backbones.grounding_dino:GroundingDinoBackbone",
    "florence2": "spatialprobe.backbones.florence2:Florence2Backbone",
    "kosmos2": "spatialprobe.backbones.kosmos2:Kosmos2Backbone",
    "vjepa2": "spatialprobe.backbones.vjepa2:VJepa2Backbone",
    "hybrid": "spatialprobe.backbones.hybrid:HybridBackbone",
}


def backbone_class(family: str) -> type[Backbone]:
    if family not in FAMILIES:
        raise SpatialProbeError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
    module_name, class_name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_backbone(family: str, name_or_path: str, device: str = "cpu", dtype: str = "float32", **options) -> Backbone:
    """Load a backbone of `family` from a hub id or a local folder (`from_pretrained`)."""
    return backbone_class(family)(name_or_path, device=device, dtype=dtype, **options)


__all__ = ["Backbone", "HookedBackbone", "FAMILIES", "backbone_class", "load_backbone"]
