"""Qwen2.5-VL, traced in full: patch embedding, vision blocks, the 2x2 merger, LLM layers.

Token order (transformers 5.x, checked by the planted-patch test): the image processor emits
patches in 2x2-group order (groups in raster order, then the 4 patches of a group in raster order);
after the patch embedding the vision tower permutes whole groups by `window_index` for window
attention, so every block output — and the merger's own output — is in window order; the tower
undoes that (`argsort(window_index)`) only after the merger. The LLM sees merged tokens in raster
order at the image-pad positions. The vision tower runs all images of a batch as one sequence.
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
from .layout import (check_multiple, gather_tokens, grid_features, group_order_to_raster, standard_stages,
                     token_positions)
from .vit import resize_whole, whole_image_preprocessing

PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n"
QUESTION = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Layout:
    side: int  # patches per image side
    window_index: torch.Tensor  # group permutation of the whole batch (from the model's own helper)
    image_positions: torch.Tensor  # [B, M] positions of image tokens in the LLM sequence


class Qwen25VLBackbone(HookedBackbone):
    family = "qwen2_5_vl"
    stage_summary = "vision.embed, vision.block.<i>, projector.out (2x2 merger), llm.layer.<i> (image tokens)"
    weights_source = "hub id or folder (Qwen/Qwen2.5-VL-*-Instruct)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 max_pixels: int | None = None, **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        if resolution and max_pixels:
            raise SpatialProbeError(f"{self.family}: give resolution or max_pixels, not both")
        self.model = self.load_model(Qwen2_5_VLForConditionalGeneration)
        self.processor = self.load_processor(AutoProcessor)
        vision = self.model.config.vision_config
        self.patch, self.merge = int(vision.patch_size), int(vision.spatial_merge_size)
        if max_pixels:  # Qwen's own budget: the largest square of whole 2x2 merge cells within it
            resolution = int(max_pixels ** 0.5) // (self.patch * self.merge) * (self.patch * self.merge)
        resolution = resolution or 224
        check_multiple(self.family, resolution, self.patch * self.merge, "patch size x merge size")
        self.resolution = resolution
        self.side = resolution // self.patch
        self.raster = group_order_to_raster(self.side, self.merge)

    @property
    def visual(self) -> torch.nn.Module:
        return self.unwrapped_model.model.visual

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        return standard_stages(self.visual.patch_embed, self.visual.blocks, {"out": self.visual.merger},
                               self.unwrapped_model.model.language_model.layers)

    def preprocessing(self) -> dict[str, Any]:
        image_processor = self.processor.image_processor
        return whole_image_preprocessing(image_processor, self.resolution, patch_size=self.patch,
                merge_size=self.merge, prompt=PROMPT)

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Layout]:
        from transformers.vision_utils import get_vision_window_index

        inputs = self.processor(text=[PROMPT] * len(images), images=resize_whole(images, self.resolution),
                                return_tensors="pt", images_kwargs={"do_resize": False})
        grid = inputs["image_grid_thw"]
        if not (grid[:, 1:] == self.side).all():
            raise RuntimeError(f"{self.label}: processor made a {grid[0].tolist()} grid, expected {self.side}x{self.side}")
        config = self.model.config.vision_config
        window_index, _ = get_vision_window_index(grid, self.merge, config.window_size, self.patch)
        positions = token_positions(inputs["input_ids"] == self.model.config.image_token_id)
        return self.move_inputs(inputs), Layout(self.side, window_index, positions)

    def _in_group_order(self, stage: str, raw: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Vision-tower tokens of the whole batch, in the processor's 2x2-group order."""
        unit = 1 if stage == "projector.out" else self.merge * self.merge
        if stage == "vision.embed":  # the permutation happens after the patch embedding
            return raw
        grouped = raw.reshape(-1, unit, raw.shape[-1])
        return grouped[torch.argsort(layout.window_index.to(raw.device))].reshape(raw.shape)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout) -> TokenFeatures:
        merged_side = self.side // self.merge
        if stage.startswith("llm."):
            tokens = gather_tokens(raw, layout.image_positions)
            side = merged_side
        else:
            ordered = self._in_group_order(stage, raw, layout)
            if stage == "projector.out":  # one token per group: group order is the merged raster
                side = merged_side
                tokens = ordered.reshape(-1, side * side, ordered.shape[-1])
            else:
                side = self.side
                tokens = ordered.reshape(-1, side * side, ordered.shape[-1])[:, self.raster.to(raw.device)]
        return grid_features(tokens, side, side)

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers (one image and question at a time: no padding to get wrong)."""
        replies = []
        for image, question in zip(images, questions):
            inputs = self.processor(text=[QUESTION.format(question)], images=resize_whole([image], self.resolution),
                                    return_tensors="pt", images_kwargs={"do_resize": False})
            replies.append(self.greedy_reply(self.move_inputs(inputs), max_new_tokens))
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.qwen import save_tiny_qwen2_5_vl

        save_tiny_qwen2_5_vl(Path(path), seed)
