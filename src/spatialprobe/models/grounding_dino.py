"""Grounding DINO: the Swin feature maps, the multi-scale input projections and the deformable encoder.

Token layout (transformers 5.x, checked by the tests): the Swin backbone returns the maps of its
`out_features` (stage2..4 of Swin-T: strides 8, 16, 32), each layer-normed by
`hidden_states_norms[stage]` on the flattened raster [B, h*w, C] - that module's output is
`vision.block.<i>`. `input_proj_vision[l]` (1x1 conv + GroupNorm) turns map l into level l; the
levels beyond the backbone's maps come from 3x3 stride-2 convs, the first on the last backbone map
(stride 64 for Swin-T). Each level is `detector.level.<l>`, its own raster. The encoder flattens
every level with `flatten(2).transpose(1, 2)` (raster) and concatenates them finest level first
(`level_start_index`); each encoder layer (text fusion, text enhancer, deformable attention) keeps
that order, so `detector.encoder.<i>` holds all levels in a row, grid_shape None, each token with
its own level's footprint. Text tokens are not read (no place in the image).

Geometry: Swin pads the image (patch embedding) and odd maps (patch merging) at the bottom/right
and the extra levels' stride-2 convs round up, so a level of stride s has ceil(R / s) cells per
side and cell k covers pixels [k*s, min((k+1)*s, R)) of the R x R input: the last cell is cut at
the image edge when s does not divide R (e.g. the stride-64 level at the default 800 px).

Text: a fixed prompt (PROMPT) is fed with every image; Grounding DINO's vision tokens are fused with
the text inside every encoder layer, so the prompt is part of `preprocessing()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone
from .detr import feature_map_modules
from .vit import resize_whole

PROMPT = "object ."


@dataclass(frozen=True)
class Level:
    stride: int
    side: int  # cells per side of the square input


def level_footprints(level: Level, resolution: int) -> torch.Tensor:
    """Footprints [side*side, 4] of a level's cells in raster order, the last row/column cut at the image edge."""
    edges = torch.clamp(torch.arange(level.side + 1, dtype=torch.float64) * level.stride, max=resolution) / resolution
    rows, cols = torch.meshgrid(torch.arange(level.side), torch.arange(level.side), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    return torch.stack([edges[cols], edges[rows], edges[cols + 1], edges[rows + 1]], dim=-1).float()


def backbone_strides(backbone_config) -> list[int]:
    """Stride of each output feature map of a Swin or ResNet backbone config."""
    if backbone_config.model_type not in ("swin", "resnet"):
        raise SpatialProbeError(f"grounding_dino: unsupported backbone {backbone_config.model_type!r} (Swin or ResNet)")
    names = list(backbone_config.stage_names)
    first = int(backbone_config.patch_size) if backbone_config.model_type == "swin" else 4
    # the stem and the first stage keep the stem's stride (Swin maps are read before patch merging);
    # every later stage halves the map
    return [first * 2 ** max(names.index(name) - 1, 0) for name in backbone_config.out_features]


class GroundingDinoBackbone(HookedBackbone):
    family = "grounding_dino"
    stage_summary = ("vision.block.<i> (Swin feature maps), detector.level.<l> (input projections, own grids), "
                     "detector.encoder.<i> (all levels concatenated, per-level footprints)")
    weights_source = "hub id or folder (IDEA-Research/grounding-dino-tiny, -base)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int = 800,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.model = self.load_model(GroundingDinoForObjectDetection)
        self.processor = self.load_processor(AutoProcessor)
        self.resolution = resolution
        self.levels = self._levels()

    def _levels(self) -> list[Level]:
        strides = backbone_strides(self.model.config.backbone_config)
        while len(strides) < self.model.config.num_feature_levels:  # each extra level is a stride-2 conv
            strides.append(strides[-1] * 2)
        return [Level(s, math.ceil(self.resolution / s)) for s in strides]

    @property
    def dino(self) -> torch.nn.Module:
        return self.unwrapped_model.model

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        swin = self.dino.backbone.conv_encoder.model
        if hasattr(swin, "hidden_states_norms"):  # Swin: the map leaves the backbone through its own LayerNorm
            maps = [swin.hidden_states_norms[name] for name in swin.out_features]
        else:
            maps = feature_map_modules(swin)
        stages = {f"vision.block.{i}": module for i, module in enumerate(maps)}
        stages.update({f"detector.level.{i}": proj for i, proj in enumerate(self.dino.input_proj_vision)})
        stages.update({f"detector.encoder.{i}": layer for i, layer in enumerate(self.dino.encoder.layers)})
        return stages

    def preprocessing(self) -> dict[str, Any]:
        image_processor = self.processor.image_processor
        return {"resize": "whole image, bicubic, no crop, no padding", "resolution": self.resolution,
                "prompt": PROMPT, "level_strides": [level.stride for level in self.levels],
                "image_mean": list(map(float, image_processor.image_mean)),
                "image_std": list(map(float, image_processor.image_std))}

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], None]:
        inputs = self.processor(images=resize_whole(images, self.resolution), text=[PROMPT] * len(images),
                                do_resize=False, return_tensors="pt")
        if inputs["pixel_values"].shape[-2:] != (self.resolution, self.resolution) or not inputs["pixel_mask"].all():
            raise RuntimeError(f"{self.label}: processor padded or resized the {self.resolution}^2 images")
        return self.move_inputs(inputs), None

    def to_features(self, stage: str, raw: torch.Tensor, layout: None) -> TokenFeatures:
        tokens = raw.flatten(2).transpose(1, 2) if raw.ndim == 4 else raw
        if stage.startswith("detector.encoder."):
            levels, grid = self.levels, None
        else:
            level = self.levels[int(stage.rpartition(".")[2])]
            levels, grid = [level], (level.side, level.side)
        expected = sum(level.side**2 for level in levels)
        if tokens.shape[1] != expected or (raw.ndim == 4 and raw.shape[-1] != levels[0].side):
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} tokens, expected {expected}")
        footprints = torch.cat([level_footprints(level, self.resolution) for level in levels])
        return TokenFeatures(tokens.float(), footprints.expand(tokens.shape[0], -1, -1).contiguous(), grid)

    def level_slices(self) -> list[slice]:
        """Where each level's tokens sit in an encoder stage's token axis."""
        starts = [0]
        for level in self.levels:
            starts.append(starts[-1] + level.side**2)
        return [slice(a, b) for a, b in zip(starts, starts[1:])]

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.grounding_dino import save_tiny_grounding_dino

        save_tiny_grounding_dino(Path(path), seed)
