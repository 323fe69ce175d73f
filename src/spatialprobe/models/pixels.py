"""The `pixels` control: each token is the raw RGB pixels of one patch, on a grid.

It has no weights, so every probe result on it says what the image alone gives a linear reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import Backbone
from .layout import grid_features
from .vit import FramesAsTimeSteps, resize_whole


class PixelsBackbone(FramesAsTimeSteps, Backbone):
    family = "pixels"
    stage_summary = "vision.embed (raw patch pixels; clips frame by frame, time-major)"
    weights_source = "none"
    offline_test = "yes"
    label = "raw pixels (control)"

    def __init__(self, name_or_path: str = "pixels", device: str = "cpu", dtype: str = "float32",
                 resolution: int = 224, patch_size: int = 14):
        super().__init__(name_or_path, device, dtype)
        if resolution % patch_size:
            raise SpatialProbeError(f"pixels: resolution {resolution} is not a multiple of patch_size {patch_size}")
        self.resolution, self.patch = resolution, patch_size
        self.side = resolution // patch_size

    @property
    def stages(self) -> list[str]:
        return ["vision.embed"]

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "whole image, bicubic, no crop", "resolution": self.resolution,
                "patch_size": self.patch, "scale": "[0, 1]"}

    def weights_fingerprint(self) -> str:
        return "no-weights"

    def _extract_batch(self, images: list[Image.Image], stages: list[str]) -> dict[str, TokenFeatures]:
        arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in resize_whole(images, self.resolution)])
        pixels = torch.from_numpy(arrays)  # [B, H, W, 3]
        b, s, p = pixels.shape[0], self.side, self.patch
        patches = pixels.reshape(b, s, p, s, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, s * s, p * p * 3)
        return {"vision.embed": grid_features(patches, s, s)}

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        """Nothing to save: the control has no weights (kept so every family supports `save_tiny`)."""
