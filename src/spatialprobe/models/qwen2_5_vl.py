"""Qwen2.5-VL, traced in full: patch embedding, vision blocks, the 2x2 merger, LLM layers.

Token order (transformers 5.x, checked by the planted-patch test): the image processor emits
patches in 2x2-group order (groups in raster order, then the 4 patches of a group in raster order);
after the patch embedding the vision tower permutes whole groups by `window_index` for window
attention, so every block output — and the merger's own output — is in window order; the tower
undoes that (`argsort(window_index)`) only after the merger. The LLM sees merged tokens in raster
order at the image-pad positions. The vision tower runs all images of a batch as one sequence.

Clips (`pixel_values_videos`, `video_grid_thw`; the same code paths, checked by tests/test_video_qwen2_5_vl.py):
every frame is resized whole here; the video processor groups frames 2 by 2 (temporal_patch_size: the patch
embedding is a Conv3d over 2 frames; an odd clip is padded with a copy of its last frame, so the last time step
covers that frame alone) and emits, per clip, time step after time step, each in the 2x2-group order above.
`window_index` permutes groups within each time step, the merger merges 2x2 groups of one step, and the LLM
sees each clip's merged tokens at its video-pad positions, time step after time step, each in raster order.
Every clip stage is time-major with `times` per token: time step t covers frames 2t and 2t+1 of F.
The LLM's temporal positions scale with seconds per time step: `fps` (default 24, what the processor assumes
for frames without metadata) sets them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone, Sample
from .frames import clip_lengths
from .layout import (check_multiple, clip_grid_features, gather_tokens, grid_features, group_order_to_raster,
                     standard_stages, step_times, token_positions)
from .vit import resize_whole, whole_image_preprocessing

PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n"
VIDEO_PROMPT = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe the video.<|im_end|>\n"
                "<|im_start|>assistant\n")
#: frames per second assumed for a clip: the Qwen2.5-VL processor's own default for frames without metadata
DEFAULT_FPS = 24.0
QUESTION = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Layout:
    side: int  # patches per image side
    window_index: torch.Tensor  # group permutation of the whole batch (from the model's own helper)
    image_positions: torch.Tensor  # [B, M] positions of image (or video) tokens in the LLM sequence
    frames: int | None = None  # a clip's frame count; None for still images
    steps: int = 1  # time steps per sample (a still image is one)


class Qwen25VLBackbone(HookedBackbone):
    family = "qwen2_5_vl"
    modalities = ("image", "video")
    stage_summary = ("vision.embed, vision.block.<i>, projector.out (2x2 merger), llm.layer.<i> (image or video "
                     "tokens); clips: one time step per 2 frames (temporal patch), time-major")
    weights_source = "hub id or folder (Qwen/Qwen2.5-VL-*-Instruct)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 max_pixels: int | None = None, fps: float = DEFAULT_FPS, **load_options):
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
        self.frames_per_step = int(vision.temporal_patch_size)
        if not fps > 0:
            raise SpatialProbeError(f"{self.family}: fps {fps} must be positive")
        self.fps = float(fps)

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

    def clip_preprocessing(self) -> dict[str, Any]:
        video_processor = self.processor.video_processor
        return {"clip": f"every frame resized whole; {self.frames_per_step} frames per time step (temporal patch), "
                        "an odd clip padded with its last frame; tokens time-major",
                "video_prompt": VIDEO_PROMPT, "fps": self.fps,
                "video_mean": list(map(float, video_processor.image_mean)),
                "video_std": list(map(float, video_processor.image_std))}

    def check_modalities(self, samples: list[Sample]) -> None:
        """Clips of one length, no still images among them (any length: the processor pads an odd one): one line,
        before compute."""
        super().check_modalities(samples)
        clip_lengths(self.family, samples)

    def prepare(self, images: list[Sample]) -> tuple[dict[str, Any], Layout]:
        frames = clip_lengths(self.family, images)
        if frames is not None:
            return self.prepare_clips(images, frames)
        inputs = self.processor(text=[PROMPT] * len(images), images=resize_whole(images, self.resolution),
                                return_tensors="pt", images_kwargs={"do_resize": False})
        return self.move_inputs(inputs), self.layout_of(inputs["image_grid_thw"], inputs["input_ids"],
                                                        self.model.config.image_token_id)

    def prepare_clips(self, clips: list[Sample], frames: int) -> tuple[dict[str, Any], Layout]:
        videos = [resize_whole(list(clip), self.resolution) for clip in clips]
        inputs = self.processor(text=[VIDEO_PROMPT] * len(clips), videos=videos, return_tensors="pt",
                                videos_kwargs={"do_resize": False, "cap_pixels_per_frame": False})
        # the LLM's time positions: seconds per time step at the configured fps, not the processor's guess
        inputs["second_per_grid_ts"] = torch.full((len(clips),), self.frames_per_step / self.fps)
        layout = self.layout_of(inputs["video_grid_thw"], inputs["input_ids"], self.model.config.video_token_id,
                                frames)
        return self.move_inputs(inputs), layout

    def layout_of(self, grid: torch.Tensor, input_ids: torch.Tensor, token_id: int,
                  frames: int | None = None) -> Layout:
        """The batch's layout from the processor's grids (checked against the resolution and frame count)."""
        from transformers.vision_utils import get_vision_window_index

        steps = 1 if frames is None else -(-frames // self.frames_per_step)
        if not ((grid[:, 1:] == self.side).all() and (grid[:, 0] == steps).all()):
            raise RuntimeError(f"{self.label}: processor made a {grid[0].tolist()} grid, expected "
                               f"{[steps, self.side, self.side]}")
        config = self.model.config.vision_config
        window_index, _ = get_vision_window_index(grid, self.merge, config.window_size, self.patch)
        positions = token_positions(input_ids == token_id)
        return Layout(self.side, window_index, positions, frames, steps)

    def _in_group_order(self, stage: str, raw: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Vision-tower tokens of the whole batch, in the processor's 2x2-group order (per time step for clips)."""
        unit = 1 if stage == "projector.out" else self.merge * self.merge
        if stage == "vision.embed":  # the permutation happens after the patch embedding
            return raw
        grouped = raw.reshape(-1, unit, raw.shape[-1])
        return grouped[torch.argsort(layout.window_index.to(raw.device))].reshape(raw.shape)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout) -> TokenFeatures:
        merged_side = self.side // self.merge
        steps = layout.steps
        if stage.startswith("llm."):
            tokens = gather_tokens(raw, layout.image_positions)
            side = merged_side
        else:
            ordered = self._in_group_order(stage, raw, layout)
            if stage == "projector.out":  # one token per group: group order is the merged raster
                side = merged_side
                tokens = ordered.reshape(-1, steps * side * side, ordered.shape[-1])
            else:  # each time step's patches from group order to raster order
                side = self.side
                per_step = ordered.reshape(-1, steps, side * side, ordered.shape[-1])
                tokens = per_step[:, :, self.raster.to(raw.device)].reshape(-1, steps * side * side, raw.shape[-1])
        if layout.frames is None:
            return grid_features(tokens, side, side)
        return clip_grid_features(tokens, side, side, step_times(layout.frames, self.frames_per_step))

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
