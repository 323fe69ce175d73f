"""V-JEPA 2 (transformers' VJEPA2Model): the video encoder of the latent-prediction line, on still images and clips.

Token layout (transformers 5.x, checked by the tests):
- Input is a clip [B, T, C, H, W]; a Conv3d of kernel = stride = (tubelet_size, patch, patch) makes one
  token per tubelet x patch, flattened in (time, row, column) order. There is no CLS token and no
  learned position table: every encoder layer applies 3D RoPE whose row/column ids assume a
  (crop_size / patch)-wide grid, so the resolution is the config's crop size.
- An image is fed as a still clip: the image repeated `tubelet_size` times. That makes exactly one
  temporal slot, so every stage is one (R/patch) x (R/patch) raster in raster order.
- A clip of F frames (F a multiple of `tubelet_size`; one line otherwise, before compute: the Conv3d would drop
  the frames left over) is read as it is, every frame resized whole: T = F / tubelet_size time steps, tokens
  time-major (the Conv3d's own order), step t's tokens with times [t*k/F, (t+1)*k/F) for tubelet size k. The
  RoPE's time ids are the token's step (no learned table), so any number of steps is read.
- `vision.embed` is the patch embedding's output, `vision.block.<i>` the encoder layers' (the last
  before the encoder's final LayerNorm). The predictor (which predicts masked latents) is not a
  feature stage and never runs: the forward skips it and stops after the deepest requested layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone, Sample
from .frames import clip_lengths
from .layout import clip_grid_features, grid_features, standard_stages, step_times
from .vit import resize_whole, whole_image_preprocessing


class VJepa2Backbone(HookedBackbone):
    family = "vjepa2"
    modalities = ("image", "video")
    stage_summary = ("vision.embed, vision.block.<i> (encoder; image as a still clip of tubelet_size frames: one grid; "
                     "clips of k*tubelet_size frames: one time step per tubelet, time-major)")
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

    def clip_preprocessing(self) -> dict[str, Any]:
        return {"clip": f"every frame resized whole; a multiple of {self.frames} frames (tubelet_size), one time "
                        "step per tubelet; tokens time-major"}

    def check_modalities(self, samples: Sequence[Sample]) -> None:
        """Clips of one length, a multiple of the tubelet size (the Conv3d drops what is left): one line, before
        compute."""
        super().check_modalities(samples)
        frames = clip_lengths(self.family, samples)
        if frames is not None and frames % self.frames:
            raise SpatialProbeError(f"{self.family}: a clip of {frames} frames; {self.name_or_path!r} reads clips "
                                    f"of a multiple of {self.frames} frames (tubelet_size): trim or pad the clip")

    def prepare(self, images: list[Sample]) -> tuple[dict[str, Any], int | None]:
        """Model inputs, and the clips' frame count (None for still images)."""
        frames = clip_lengths(self.family, images)
        if frames is None:
            clips = [np.stack([np.asarray(image)] * self.frames) for image in resize_whole(images, self.resolution)]
        else:
            clips = [np.stack([np.asarray(f) for f in resize_whole(list(clip), self.resolution)]) for clip in images]
        pixels = self.processor(videos=clips, do_resize=False, do_center_crop=False,
                                return_tensors="pt")["pixel_values_videos"]
        return self.move_inputs({"pixel_values_videos": pixels}), frames

    def run(self, inputs: dict[str, Any]) -> None:
        self.model(**inputs, skip_predictor=True)

    def to_features(self, stage: str, raw: torch.Tensor, frames: int | None) -> TokenFeatures:
        steps = 1 if frames is None else frames // self.frames
        if raw.shape[1] != steps * self.side * self.side:
            raise RuntimeError(f"{self.label} {stage}: {raw.shape[1]} tokens, expected {steps} time step(s) of a "
                               f"{self.side}^2 grid")
        if frames is None:
            return grid_features(raw, self.side, self.side)
        return clip_grid_features(raw, self.side, self.side, step_times(frames, self.frames))

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.vjepa2 import save_tiny_vjepa2

        save_tiny_vjepa2(Path(path), seed)
