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
from ..features import TokenFeatures, grid_footprints
from .base import HookedBackbone
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
        stages = {"vision.embed": self.vision_model.embeddings}
        stages.update({f"vision.block.{i}": layer for i, layer in enumerate(self.vision_model.encoder.layers)})
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
        tokens = raw.reshape(raw.shape[0], -1, raw.shape[-1]).float()
        if tokens.shape[1] != self.side * self.side:
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} patch tokens, expected {self.side}^2")
        footprints = grid_footprints(self.side, self.side).expand(tokens.shape[0], -1, -1).contiguous()
        return TokenFeatures(tokens, footprints, (self.side, self.side), extra)


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

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from transformers import OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

        save_tiny_owl(Path(path), seed, OwlViTForObjectDetection, OwlViTProcessor,
                      OwlViTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}))


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

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

        save_tiny_owl(Path(path), seed, Owlv2ForObjectDetection, Owlv2Processor,
                      Owlv2ImageProcessor(size={"height": 64, "width": 64}))


# --- tiny checkpoints -----------------------------------------------------------------------------
TINY_WORDS = ["!", "a", "photo", "of", "the", "red", "green", "blue", "circle", "square", "triangle", "object",
              "[UNK]"]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_clip_tokenizer():
    """A word-level stand-in for CLIP's BPE with its conventions: "!" (id 0) pads, EOS has the highest id
    (the text tower pools at the argmax id), every query is BOS ... EOS, 16 tokens long."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(TINY_WORDS + [BOS, EOS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([BOS, EOS])
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                           special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token="!",
                                        unk_token="[UNK]", model_max_length=16)
    return tokenizer, vocab


def tiny_owl_config(config_class, vocab: dict[str, int]):
    return config_class(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": vocab["!"],
                     "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]},
        # 64 px at patch 8: an 8x8 patch grid
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 8},
        projection_dim=32,  # the class head compares text embeds with patches mapped to the text width
    )


def save_tiny_owl(path: Path, seed: int, model_class, processor_class, image_processor) -> None:
    torch.manual_seed(seed)
    tokenizer, vocab = tiny_clip_tokenizer()
    model_class(tiny_owl_config(model_class.config_class, vocab)).save_pretrained(path)
    processor_class(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
