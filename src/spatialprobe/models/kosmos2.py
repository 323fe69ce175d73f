"""Kosmos-2 (transformers' Kosmos2ForConditionalGeneration), traced in full.

Token layout (transformers 5.x, checked by the tests):
- The vision tower is a CLIP-style ViT: [CLS, patches in raster order], a (R/14)^2 grid at R = 224.
  `vision.embed` is the embeddings' output (before the pre-LayerNorm), `vision.block.<i>` the layers'.
  Its position embeddings are fixed to the config's image size and the model's forward cannot ask for
  interpolation, so the resolution is the config's.
- `image_to_text_projection` (dense + cross-attention of `latent_query_num` = 64 learned queries over
  [patches, queries]) resamples the whole image into 64 tokens that have NO place in the image: from
  `projector.out` on, a stage has zero spatial tokens and the queries go to `extra["queries"]`.
- The processor writes `<s> <image> [64 placeholders] </image> prompt`; the text model (a causal
  decoder) puts the projector output at the placeholders (`image_embeds_position_mask`), scales it by
  sqrt(embed_dim) and adds sinusoidal positions. `llm.layer.<i>` reads its layers at those 64 positions;
  being causal and before the prompt, they do not depend on the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone
from .layout import gather_tokens, grid_features, standard_stages, token_positions
from .vit import resize_whole, whole_image_preprocessing

PROMPT = "<grounding> An image of"  # the model card's captioning prompt
QUESTION = "Question: {} Answer:"  # Kosmos-2's zero-shot VQA format


@dataclass
class Layout:
    image_positions: torch.Tensor  # [B, 64] positions of the image placeholders in the text sequence


class Kosmos2Backbone(HookedBackbone):
    family = "kosmos2"
    stage_summary = ("vision.embed, vision.block.<i> (CLS -> extra['cls'], patch grid); projector.out, "
                     "llm.layer.<i>: no spatial tokens, the 64 resampled queries -> extra['queries']")
    weights_source = "hub id or folder (microsoft/kosmos-2-patch14-224)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

        self.model = self.load_model(Kosmos2ForConditionalGeneration)
        self.processor = self.load_processor(AutoProcessor)
        vision = self.model.config.vision_config
        self.resolution, self.patch = int(vision.image_size), int(vision.patch_size)
        if resolution is not None and int(resolution) != self.resolution:
            raise SpatialProbeError(f"{self.family}: resolution {resolution} is not supported; Kosmos-2 reads "
                                    f"{self.resolution} px images only (its forward cannot interpolate positions)")
        self.side = self.resolution // self.patch
        self.queries = int(self.model.config.latent_query_num)

    @property
    def tower(self) -> torch.nn.Module:
        return self.model.vision_model.model

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        return standard_stages(self.tower.embeddings, self.tower.encoder.layers,
                               {"out": self.model.image_to_text_projection}, self.model.text_model.model.layers)

    def preprocessing(self) -> dict[str, Any]:
        image_processor = self.processor.image_processor
        return whole_image_preprocessing(image_processor, self.resolution, patch_size=self.patch,
                latent_queries=self.queries, prompt=PROMPT)

    def _inputs(self, images: list[Image.Image], texts: list[str]) -> dict[str, Any]:
        return self.processor(text=texts, images=resize_whole(images, self.resolution), return_tensors="pt",
                              num_image_tokens=self.queries,
                              images_kwargs={"do_resize": False, "do_center_crop": False})

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Layout]:
        inputs = self._inputs(images, [PROMPT] * len(images))
        positions = token_positions(inputs["image_embeds_position_mask"].bool())
        return self.move_inputs(inputs), Layout(positions)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout) -> TokenFeatures:
        if stage.startswith("vision."):
            tokens = raw[:, 1:]
            if tokens.shape[1] != self.side * self.side:
                raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} patch tokens, expected {self.side}^2")
            return grid_features(tokens, self.side, self.side, {"cls": raw[:, :1].float()})
        if stage.startswith("llm."):
            raw = gather_tokens(raw, layout.image_positions)
        batch, _, channels = raw.shape
        none = raw.new_zeros(batch, 0, channels, dtype=torch.float32)
        return TokenFeatures(none, none.new_zeros(batch, 0, 4), None, {"queries": raw.float()})

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers, grounding markup removed (one image and question at a time: no padding)."""
        replies = []
        for image, question in zip(images, questions):
            inputs = self.move_inputs(self._inputs([image], [QUESTION.format(question)]))
            text = self.greedy_reply(inputs, max_new_tokens, num_beams=1)
            # the processor's own cleanup drops grounding markup (<phrase>, <patch_index_*>, ...)
            replies.append(self.processor.post_process_generation(text)[0].strip())
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.kosmos2 import save_tiny_kosmos2

        save_tiny_kosmos2(Path(path), seed)
