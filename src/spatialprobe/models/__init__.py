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
    "llava_next_video": "spatialprobe.models.llava_next_video:LlavaNextVideoBackbone",
    "llava_onevision": "spatialprobe.models.llava_onevision:LlavaOnevisionBackbone",
    "internvl": "spatialprobe.models.internvl:InternVLBackbone",
    "glm4v": "spatialprobe.models.glm4v:Glm4vBackbone",
    "cogvlm2": "spatialprobe.models.cogvlm2:CogVLM2Backbone",
    "cogvlm2_video": "spatialprobe.models.cogvlm2_video:CogVLM2VideoBackbone",
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

#: families the proposal names that no adapter can load here: family -> (why not, what would make it possible);
#: `spatialprobe models` lists them so that a missing row is a known gap, not an oversight
UNSUPPORTED: dict[str, tuple[str, str]] = {
    "cambrian1": (
        "Cambrian-1 (proposal appendix B; nyu-visionx/cambrian-8b, -13b, -34b): transformers has no class for "
        "it (model type cambrian_llama; not in transformers 5.x), and its hub checkpoints ship no remote code "
        "(weights, tokenizer and config only): the model code (CambrianLlamaForCausalLM, its Spatial Vision "
        "Aggregator over four vision encoders: SigLIP, CLIP, DINOv2, OpenCLIP ConvNeXt, each loaded from its own "
        "hub id) lives only in the GitHub repository cambrian-mllm/cambrian, which is not on PyPI",
        "a transformers class (cambrian-mllm/cambrian issue 17 asks for one), or remote code in the checkpoint; "
        "or installing that repository's package at a pinned commit and writing an adapter around its model "
        "(with the four encoders' weights available offline), tested on a tiny random config"),
}


def backbone_class(family: str) -> type[Backbone]:
    if family not in FAMILIES:
        raise SpatialProbeError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
    module_name, class_name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_backbone(family: str, name_or_path: str, device: str = "cpu", dtype: str = "float32", **options) -> Backbone:
    """Load a backbone of `family` from a hub id or a local folder (`from_pretrained`)."""
    return backbone_class(family)(name_or_path, device=device, dtype=dtype, **options)


__all__ = ["Backbone", "HookedBackbone", "FAMILIES", "UNSUPPORTED", "backbone_class", "load_backbone"]
