"""The registry of backbone families: one adapter module per family."""
from __future__ import annotations

import importlib

from ..errors import SpatialProbeError
from .base import Backbone, HookedBackbone

#: family name -> "module:Class" (imported lazily so `spatialprobe --help` stays fast)
FAMILIES: dict[str, str] = {
    "pixels": "spatialprobe.models.pixels:PixelsBackbone",
    "dinov2": "spatialprobe.models.dinov2:Dinov2Backbone",
    "clip": "spatialprobe.models.clip:ClipBackbone",
    "siglip": "spatialprobe.models.siglip:SiglipBackbone",
    "qwen2_5_vl": "spatialprobe.models.qwen2_5_vl:Qwen25VLBackbone",
    "llava_next": "spatialprobe.models.llava_next:LlavaNextBackbone",
    "internvl": "spatialprobe.models.internvl:InternVLBackbone",
    "glm4v": "spatialprobe.models.glm4v:Glm4vBackbone",
    "cogvlm2": "spatialprobe.models.cogvlm2:CogVLM2Backbone",
    "owlvit": "spatialprobe.models.owlvit:OwlViTBackbone",
    "owlv2": "spatialprobe.models.owlvit:Owlv2Backbone",
    "detr": "spatialprobe.models.detr:DetrBackbone",
    "grounding_dino": "spatialprobe.models.grounding_dino:GroundingDinoBackbone",
    "florence2": "spatialprobe.models.florence2:Florence2Backbone",
    "kosmos2": "spatialprobe.models.kosmos2:Kosmos2Backbone",
    "vjepa2": "spatialprobe.models.vjepa2:VJepa2Backbone",
    "ltx_video_vae": "spatialprobe.models.ltx_video_vae:LtxVideoVaeBackbone",
    "hybrid": "spatialprobe.models.hybrid:HybridBackbone",
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
