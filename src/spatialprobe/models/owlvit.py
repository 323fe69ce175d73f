"""OWL-ViT and OWLv2: the CLIP-like vision tower and the patch feature map the detection heads read.

Token layout (transformers 5.x, checked by the tests): the vision tower's sequence is
[CLS, patches in raster order] at the embedding and after every encoder layer (CLS goes to
`extra`). `image_embedder` then post-layer-norms the last hidden state, multiplies every patch
token by the CLS token ("merges the class token in"), applies the detector's own `layer_norm` and
reshapes to [B, h, w, C]: that map is what the class, box (and OWLv2 objectness) heads read, and
it is `detector.image_embeds` here, taken from the output of `layer_norm` ([B, h*w, C], raster).
No text is needed for any stage, so the forward pass is `image_embedder` alone.

Preprocessing: the whole image is resized (bicubic, no crop) to a square here. OWL-ViT's processor
is told not to resize or crop. OWLv2's processor pads to a square and cannot skip its resize
(`do_resize=False` fails in its `_preprocess`), so it is asked to resize to the size the image
already has, which leaves pixels unchanged; its padding is a no-op on a square.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone
from .layout import grid_features, standard_stages
from .vit import resize_whole, whole_image_preprocessing


class _OwlBackbone(HookedBackbone):
    """What OWL-ViT and OWLv2 share; subclasses name the model class and its inner attribute."""

    model_class_name = ""
    inner = ""  # attribute of the detector holding the CLIP-like model: "owlvit" or "owlv2"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        import transformers
        from transformers import AutoImageProcessor

        self.model = self.load_model(getattr(transformers, self.model_class_name))
        self.processor = self.load_processor(AutoImageProcessor)
        vision = self.model.config.vision_config
        self.patch = int(vision.patch_size)
        self.native_resolution = int(vision.image_size)
        self.resolution = int(resolution or self.native_resolution)
        if self.resolution % self.patch:
            raise SpatialProbeError(f"{self.family}: resolution {self.resolution} is not a multiple of the patch "
                                    f"size {self.patch}")
        self.side = self.resolution // self.patch

    @property
    def vision_model(self) -> torch.nn.Module:
        return getattr(self.model, self.inner).vision_model

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        stages = standard_stages(self.vision_model.embeddings, self.vision_model.encoder.layers)
        stages["detector.image_embeds"] = self.model.layer_norm
        return stages

    def preprocessing(self) -> dict[str, Any]:
        return whole_image_preprocessing(self.processor, self.resolution, patch_size=self.patch,
                interpolate_pos_encoding=self.interpolates())

    def interpolates(self) -> bool:
        return self.resolution != self.native_resolution

    def processor_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], None]:
        pixels = self.processor(images=resize_whole(images, self.resolution), return_tensors="pt",
                                **self.processor_options())["pixel_values"]
        if pixels.shape[-2:] != (self.resolution, self.resolution):
            raise RuntimeError(f"{self.label}: processor made {tuple(pixels.shape[-2:])} pixels, "
                               f"expected {self.resolution}^2")
        return self.move_inputs({"pixel_values": pixels}), None

    def run(self, inputs: dict[str, Any]) -> None:
        # the image half of the detector's forward; text queries change no stage
        self.model.image_embedder(pixel_values=inputs["pixel_values"], interpolate_pos_encoding=self.interpolates())

    def to_features(self, stage: str, raw: torch.Tensor, layout: None) -> TokenFeatures:
        extra = {}
        if stage.startswith("vision."):
            extra["cls"] = raw[:, :1].float()
            raw = raw[:, 1:]
        tokens = raw.reshape(raw.shape[0], -1, raw.shape[-1])
        if tokens.shape[1] != self.side * self.side:
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} patch tokens, expected {self.side}^2")
        return grid_features(tokens, self.side, self.side, extra)

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.owlvit import save_tiny_owl

        save_tiny_owl(Path(path), seed, cls.model_class_name)


class OwlViTBackbone(_OwlBackbone):
    family = "owlvit"
    stage_summary = ("vision.embed, vision.block.<i> (patch grid, CLS in extra), "
                     "detector.image_embeds (patch grid the class/box heads read)")
    weights_source = "hub id or folder (google/owlvit-base-patch32, google/owlvit-*-patch16/14)"
    offline_test = "yes (tiny)"
    model_class_name = "OwlViTForObjectDetection"
    inner = "owlvit"

    def processor_options(self) -> dict[str, Any]:
        return {"do_resize": False, "do_center_crop": False}


class Owlv2Backbone(_OwlBackbone):
    family = "owlv2"
    stage_summary = ("vision.embed, vision.block.<i> (patch grid, CLS in extra), "
                     "detector.image_embeds (patch grid the class/box/objectness heads read)")
    weights_source = "hub id or folder (google/owlv2-base-patch16-ensemble, google/owlv2-*)"
    offline_test = "yes (tiny)"
    model_class_name = "Owlv2ForObjectDetection"
    inner = "owlv2"

    def processor_options(self) -> dict[str, Any]:
        # resizing to the size the image already has leaves it unchanged (checked by the tests)
        return {"size": {"height": self.resolution, "width": self.resolution}}
