"""Florence-2 (transformers' native Florence2ForConditionalGeneration), traced in full.

Token layout (transformers 5.x, checked by the tests):
- The DaViT vision tower keeps a [B, C, H, W] feature map throughout. A convolutional embedding opens
  each of its 4 stages (7x7 stride 4, then 3x3 stride 2 three times), so a block of stage s holds an
  (R / 4 / 2^s)-sided raster of R x R pixels: 192, 96, 48, 24 cells per side at 768 px. Blocks are
  numbered across stages (`vision.block.<i>`, Florence-2-base: 1+1+9+1 = 12), each with its own grid.
- The projector adds learned 2D row/column position embeddings to the last map, flattens it in raster
  order, adds one temporal embedding and PREPENDS the mean over all cells; then linear + LayerNorm.
  So it emits 1 + (R/32)^2 tokens: token 0 is a global mean (no place: `extra["global"]`), the rest
  are the R/32 x R/32 grid in raster order.
- The processor puts those 1 + (R/32)^2 `<image>` tokens first, then `<s> prompt </s>`; the model
  scatters the projector output into them and feeds the BART ENCODER (bidirectional: the prompt
  changes the features at the image positions, so it is recorded). `llm.layer.<i>` are the encoder's
  layers at the image positions; the decoder is never traced.
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
from .layout import check_multiple, gather_tokens, grid_features, standard_stages, token_positions
from .vit import resize_whole, whole_image_preprocessing

TASK = "<CAPTION>"  # the processor expands it to "What does the image describe?"


@dataclass
class Layout:
    image_positions: torch.Tensor  # [B, 1 + side^2] positions of the image tokens in the encoder input


class Florence2Backbone(HookedBackbone):
    family = "florence2"
    stage_summary = ("vision.embed, vision.block.<i> (DaViT blocks over 4 stages, each its stage's grid), "
                     "projector.out (global mean -> extra['global'], then the last stage's grid), "
                     "llm.layer.<i> (BART ENCODER layers at the image tokens)")
    weights_source = "hub id or folder (florence-community/Florence-2-*, native transformers format)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.model = self.load_model(Florence2ForConditionalGeneration)
        self.processor = self.load_processor(AutoProcessor)
        # pixels per side of one cell of the last DaViT stage: 4 * 2 * 2 * 2 = 32 for the hub checkpoints
        self.stride = math.prod(int(s) for s in self.model.config.vision_config.patch_stride)
        self.resolution = int(resolution or self._processor_size())
        self.side = self._check_resolution(self.resolution)
        # the processor writes a fixed number of <image> placeholders; make it match this resolution
        self.processor.num_image_tokens = 1 + self.side * self.side

    def _processor_size(self) -> int:
        """The checkpoint's own square input size (768 for the hub checkpoints)."""
        size = self.processor.image_processor.size
        return int(size.get("height") or size.get("shortest_edge") or 768)

    def _check_resolution(self, resolution: int) -> int:
        check_multiple(self.family, resolution, self.stride, "the DaViT tower's total stride")
        side = resolution // self.stride
        limit = int(self.model.config.vision_config.max_position_embeddings)
        if side > limit:
            raise SpatialProbeError(f"{self.family}: resolution {resolution} makes a {side}x{side} grid; the "
                                    f"projector's position embeddings stop at {limit} per side")
        return side

    @property
    def tower(self) -> torch.nn.Module:
        return self.unwrapped_model.model.vision_tower

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        blocks = [block for stage in self.tower.blocks for block in stage]
        encoder = self.unwrapped_model.model.language_model.encoder
        return standard_stages(self.tower.convs[0], blocks, {"out": self.unwrapped_model.model.multi_modal_projector},
                               encoder.layers)

    def preprocessing(self) -> dict[str, Any]:
        image_processor = self.processor.image_processor
        return whole_image_preprocessing(image_processor, self.resolution, image_tokens=f"1 global + {self.side}x{self.side}", prompt=TASK,
                prompt_text=self.processor._construct_prompts(TASK)[0])

    def _inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        return self.processor(text=prompts, images=resize_whole(images, self.resolution), return_tensors="pt",
                              images_kwargs={"do_resize": False, "do_center_crop": False})

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Layout]:
        inputs = self._inputs(images, [TASK] * len(images))
        is_image = inputs["input_ids"] == self.model.config.image_token_id
        positions = token_positions(is_image)
        return self.move_inputs(inputs), Layout(positions)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout) -> TokenFeatures:
        if stage.startswith("vision."):  # a [B, C, H, W] map: raster order is a flatten away
            _, _, rows, cols = raw.shape
            return self._grid(stage, raw.flatten(2).transpose(1, 2), rows, cols, {})
        if stage.startswith("llm."):
            raw = gather_tokens(raw, layout.image_positions)
        # [global mean, grid in raster order]
        return self._grid(stage, raw[:, 1:], self.side, self.side, {"global": raw[:, :1].float()})

    def _grid(self, stage: str, tokens: torch.Tensor, rows: int, cols: int, extra: dict) -> TokenFeatures:
        if tokens.shape[1] != rows * cols:
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} tokens, expected {rows}x{cols}")
        return grid_features(tokens, rows, cols, extra)

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers: the question is the encoder prompt, the decoder writes the reply."""
        replies = []
        for image, question in zip(images, questions):
            inputs = self.move_inputs(self._inputs([image], [question]))
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            replies.append(self.processor.batch_decode(output, skip_special_tokens=True)[0].strip())
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.florence2 import save_tiny_florence2

        save_tiny_florence2(Path(path), seed)
