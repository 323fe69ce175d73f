"""V-JEPA 2 (transformers' VJEPA2Model): the video encoder of the latent-prediction line, read on still images.

Token layout (transformers 5.x, checked by the tests):
- Input is a clip [B, T, C, H, W]; a Conv3d of kernel = stride = (tubelet_size, patch, patch) makes one
  token per tubelet x patch, flattened in (time, row, column) order. There is no CLS token and no
  learned position table: every encoder layer applies 3D RoPE whose row/column ids assume a
  (crop_size / patch)-wide grid, so the resolution is the config's crop size.
- An image is fed as a still clip: the image repeated `tubelet_size` times. That makes exactly one
  temporal slot, so every stage is one (R/patch) x (R/patch) raster in raster order.
- `vision.embed` is the patch embedding's output, `vision.block.<i>` the encoder layers' (the last
  before the encoder's final LayerNorm). The predictor (which predicts masked latents) is not a
  feature stage and never runs: the forward skips it and stops after the deepest requested layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone
from .layout import grid_features, standard_stages
from .vit import resize_whole, whole_image_preprocessing


class VJepa2Backbone(HookedBackbone):
    family = "vjepa2"
    stage_summary = "vision.embed, vision.block.<i> (encoder; image as a still clip of tubelet_size frames: one grid)"
    weights_source = "hub id or folder (facebook/vjepa2-vit*-fpc*-*)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoVideoProcessor, VJEPA2Model

        self.model = self.load_model(VJEPA2Model)
        self.processor = self.load_processor(AutoVideoProcessor)
        config = self.model.config
        self.resolution, self.patch, self.frames = int(config.crop_size), int(config.patch_size), int(config.tubelet_size)
        if resolution is not None and int(resolution) != self.resolution:
            raise SpatialProbeError(f"{self.family}: resolution {resolution} is not supported; the encoder's RoPE "
                                    f"positions assume {self.resolution} px (config crop_size)")
        self.side = self.resolution // self.patch

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.encoder

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        return standard_stages(self.encoder.embeddings, self.encoder.layer)

    def preprocessing(self) -> dict[str, Any]:
        return whole_image_preprocessing(self.processor, self.resolution, patch_size=self.patch,
                clip=f"the image repeated {self.frames} frames (tubelet_size): one temporal token slot")

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], None]:
        clips = [np.stack([np.asarray(image)] * self.frames) for image in resize_whole(images, self.resolution)]
        pixels = self.processor(videos=clips, do_resize=False, do_center_crop=False,
                                return_tensors="pt")["pixel_values_videos"]
        return self.move_inputs({"pixel_values_videos": pixels}), None

    def run(self, inputs: dict[str, Any]) -> None:
        self.model(**inputs, skip_predictor=True)

    def to_features(self, stage: str, raw: torch.Tensor, layout: None) -> TokenFeatures:
        if raw.shape[1] != self.side * self.side:
            raise RuntimeError(f"{self.label} {stage}: {raw.shape[1]} tokens, expected one {self.side}^2 grid")
        return grid_features(raw, self.side, self.side)

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.vjepa2 import save_tiny_vjepa2

        save_tiny_vjepa2(Path(path), seed)
