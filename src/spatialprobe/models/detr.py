"""DETR: the ResNet feature maps, the input projection and the transformer encoder.

Token layout (transformers 5.x, checked by the tests): the conv backbone returns one feature map
per output stage ([B, C, H, W], strides 4, 8, 16, 32 for ResNet-50 with out_indices 1..4); DETR
keeps only the last one, applies `input_projection` (a 1x1 conv to d_model) and flattens it with
`flatten(2).transpose(1, 2)` - raster order - into the encoder. Encoder layers keep that order
(the sine position embedding is added to queries and keys only, never to the hidden states).
Decoder queries have no place in the image and are not read (no stage).

Each stage is its own raster with its own footprints: a cell of a map at stride s covers s x s
pixels of the square input, so the resolution must be a multiple of the total stride (32). Every
image is resized whole to the same square, so the processor pads nothing and the pixel mask is
all ones (checked in `prepare`). Footprints are these nominal cells, the convention DETR's own
mask downsampling uses; note that a ResNet token's receptive field is centred near the top-left
corner of its cell (stride-2 "same" convolutions centre token k of a stride-s map on pixel k*s),
half a cell from the footprint's centre on the coarsest map.

Backbones: the transformers-native ResNet (`use_timm_backbone=False`, feature maps = the outputs
of `embedder` / `encoder.stages[i]`) and, for the original hub checkpoints, timm's ResNet
(feature maps = the outputs of the timm modules named in `feature_info`; needs `pip install timm`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..features import TokenFeatures
from .base import HookedBackbone
from .layout import check_multiple, grid_features
from .vit import resize_whole

TOTAL_STRIDE = 32  # ResNet's deepest feature map; DC5 (dilated) variants stop at 16, which divides it


def feature_map_modules(conv_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose outputs are the backbone's feature maps, in output order."""
    if hasattr(conv_model, "feature_info"):  # a timm features_only model (FeatureListNet)
        return [conv_model[name.replace(".", "_")] for name in conv_model.feature_info.module_name()]
    # a transformers backbone: hidden state 0 is the stem (embedder), hidden state k the output of stage k
    stage_names = list(conv_model.stage_names)
    modules = [conv_model.embedder, *conv_model.encoder.stages]
    return [modules[stage_names.index(name)] for name in conv_model.out_features]


def map_to_tokens(raw: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, C, H, W] -> raster tokens [B, H*W, C]; [B, N, C] tokens of a square map pass through."""
    if raw.ndim == 4:
        return raw.flatten(2).transpose(1, 2), tuple(raw.shape[-2:])
    side = math.isqrt(raw.shape[1])
    if side * side != raw.shape[1]:
        raise RuntimeError(f"{raw.shape[1]} tokens do not form a square map")
    return raw, (side, side)


class DetrBackbone(HookedBackbone):
    family = "detr"
    stage_summary = ("vision.block.<i> (each backbone feature map, own grid), projector.out (input projection), "
                     "detector.encoder.<i> (raster over the last map)")
    weights_source = "hub id or folder (facebook/detr-resnet-50, -101; timm backbones need `pip install timm`)"
    offline_test = "yes (tiny, transformers ResNet backbone)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int = 800,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoImageProcessor, DetrForObjectDetection

        check_multiple(self.family, resolution, TOTAL_STRIDE, "the backbone's total stride")
        self.model = self.load_model(DetrForObjectDetection)
        self.processor = self.load_processor(AutoImageProcessor)
        self.resolution = resolution

    @property
    def detr(self) -> torch.nn.Module:
        return self.unwrapped_model.model

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        maps = feature_map_modules(self.detr.backbone.model)
        stages = {f"vision.block.{i}": module for i, module in enumerate(maps)}
        stages["projector.out"] = self.detr.input_projection
        stages.update({f"detector.encoder.{i}": layer for i, layer in enumerate(self.detr.encoder.layers)})
        return stages

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "whole image, bicubic, no crop, no padding", "resolution": self.resolution,
                "image_mean": list(map(float, self.processor.image_mean)),
                "image_std": list(map(float, self.processor.image_std))}

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], None]:
        inputs = self.processor(images=resize_whole(images, self.resolution), do_resize=False, return_tensors="pt")
        if inputs["pixel_values"].shape[-2:] != (self.resolution, self.resolution) or not inputs["pixel_mask"].all():
            raise RuntimeError(f"{self.label}: processor padded or resized the {self.resolution}^2 images")
        return self.move_inputs(inputs), None

    def to_features(self, stage: str, raw: torch.Tensor, layout: None) -> TokenFeatures:
        tokens, (rows, cols) = map_to_tokens(raw)
        if self.resolution % rows or self.resolution % cols:
            raise RuntimeError(f"{self.label} {stage}: a {rows}x{cols} map does not tile {self.resolution} pixels")
        return grid_features(tokens, rows, cols)

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.detr import save_tiny_detr

        save_tiny_detr(Path(path), seed)
