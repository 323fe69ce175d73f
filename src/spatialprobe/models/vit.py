"""Shared reading of plain ViT towers (DINOv2, CLIP, SigLIP): embed, blocks, a square patch grid.

Images are resized here, whole and uncropped, to `resolution` x `resolution`, and the processor only
normalizes: so a token's footprint is an exact cell of the original image.

Clips are read frame by frame (`FramesAsTimeSteps`, which the pixels control shares): every frame of a batch's
clips goes through the still-image path as one batch of images, and each stage comes back time-major, frame f's
raster with times [f/F, (f+1)/F).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone, Sample
from .frames import clip_lengths
from .layout import frames_as_time_steps, grid_features, standard_stages


def resize_whole(images: list[Image.Image], size: int) -> list[Image.Image]:
    return [im.convert("RGB").resize((size, size), Image.BICUBIC) for im in images]


def whole_image_preprocessing(image_processor, resolution: int, **facts) -> dict[str, Any]:
    """What changes the features of a family that resizes whole images: the size, the normalization and
    the family's own facts (patch size, prompt, tiling...). Goes into cache keys and manifests."""
    return {"resize": "whole image, bicubic, no crop", "resolution": resolution, **facts,
            "image_mean": list(map(float, image_processor.image_mean)),
            "image_std": list(map(float, image_processor.image_std))}


class FramesAsTimeSteps:
    """Mixin (before the backbone class in the bases) for an image family that reads a clip frame by frame.

    A batch of still images takes the family's own path, untouched. A batch of clips (all of one length, no still
    images among them: one line otherwise, before compute) runs as ONE batch of all their frames through that same
    path, so a frame's tokens are exactly the tokens of that frame read as an image; every stage then comes back
    time-major, one time step per frame (`layout.frames_as_time_steps`).
    """

    modalities = ("image", "video")

    def check_modalities(self, samples: Sequence[Sample]) -> None:
        super().check_modalities(samples)
        clip_lengths(self.family, samples)

    def forward_features(self, samples: Sequence[Sample], stages: Iterable[str] | None = None,
                         grad: bool = False) -> dict[str, TokenFeatures]:
        frames = clip_lengths(self.family, samples)
        if frames is None:
            return super().forward_features(samples, stages, grad)
        self.check_modalities(samples)
        every_frame = [frame for clip in samples for frame in clip]
        per_frame = super().forward_features(every_frame, stages, grad)
        return {stage: frames_as_time_steps(f, len(samples), frames) for stage, f in per_frame.items()}

    def clip_preprocessing(self) -> dict[str, Any]:
        return {"clip": "frame by frame: every frame read as a still image (preprocessing), one time step per frame; "
                        "tokens time-major, extras per frame in time order"}


class VitTowerBackbone(FramesAsTimeSteps, HookedBackbone):
    """A ViT whose sequence is [special tokens..., patch tokens in raster order]."""

    model_class: Any = None
    passes_interpolation_flag = False
    #: names of the leading non-spatial tokens, e.g. ("cls",) — they go to `extra`
    def leading_tokens(self) -> dict[str, int]:
        return {}

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoImageProcessor

        self.model = self.load_model(self.model_class)
        self.processor = self.load_processor(AutoImageProcessor)
        self.patch = int(self.model.config.patch_size)
        self.resolution = int(resolution or self.default_resolution())
        if self.resolution % self.patch:
            raise SpatialProbeError(
                f"{self.family}: resolution {self.resolution} is not a multiple of the patch size {self.patch}"
            )
        self.side = self.resolution // self.patch

    def default_resolution(self) -> int:
        return int(self.model.config.image_size)

    def embeddings(self) -> torch.nn.Module:
        return self.model.embeddings

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.model.encoder.layers)

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        return standard_stages(self.embeddings(), self.blocks())

    def preprocessing(self) -> dict[str, Any]:
        return whole_image_preprocessing(self.processor, self.resolution, patch_size=self.patch)

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], None]:
        options = {"do_resize": False, "return_tensors": "pt"}
        if hasattr(self.processor, "do_center_crop"):
            options["do_center_crop"] = False
        pixels = self.processor(images=resize_whole(images, self.resolution), **options)["pixel_values"]
        return {**self.move_inputs({"pixel_values": pixels}), **self.forward_options()}, None

    def forward_options(self) -> dict[str, Any]:
        if not self.passes_interpolation_flag:
            return {}
        # CLIP and SigLIP only resample their position embeddings when asked to
        return {"interpolate_pos_encoding": self.resolution != int(self.model.config.image_size)}

    def to_features(self, stage: str, raw: torch.Tensor, layout: None) -> TokenFeatures:
        extra, start = {}, 0
        for name, count in self.leading_tokens().items():
            extra[name] = raw[:, start : start + count].float()
            start += count
        tokens = raw[:, start:]
        if tokens.shape[1] != self.side * self.side:
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} patch tokens, expected {self.side}^2")
        return grid_features(tokens, self.side, self.side, extra)
