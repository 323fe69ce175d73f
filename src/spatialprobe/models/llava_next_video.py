"""LLaVA-NeXT-Video (`LlavaNextVideoForConditionalGeneration`), traced in full on still images and on clips.

Still images go exactly as in LLaVA-NeXT (`llava_next.py`: anyres tiles, packing, newlines), whose code this
family reuses: the image path of LLaVA-NeXT-Video is LLaVA-NeXT's.

Clips (transformers 5.x `get_video_features`, checked by tests/test_video_llava.py):
- every frame is resized here, whole, to one tile (the tower's input size; no crop) and goes through the CLIP
  tower on its own: [clips * frames, 1 + side^2, C], CLS first (to `extra["cls"]`, [B, frames, C]);
- the penultimate block without CLS (strategy "default") is pooled per frame by `vision_resampler` (a
  stride x stride average / max pool or a conv of that stride, `spatial_pool_stride`, 2 for the llava-hf
  checkpoints): token (i, j) of a frame's pooled raster covers patches stride*i .. stride*i + stride - 1 (and the
  same in columns); `multi_modal_projector` maps each pooled token; the LLM receives frame after frame, each
  frame's pooled raster in raster order, no newline tokens, at the `<video>` placeholders.
Every clip stage is time-major (frame 0's raster, then frame 1's ...), each token's `times` its frame's interval;
`projector.out` and the LLM layers hold the pooled tokens, whose footprints are stride x stride patches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import SpatialProbeError
from ..features import TokenFeatures, grid_footprints
from .base import Sample, is_clip
from .frames import check_context, clip_lengths, frame_times, llm_context, repeat_per_step
from .layout import gather_tokens, token_positions
from .llava_next import DESCRIBE, LlavaNextBackbone
from .vit import resize_whole

FALLBACK_VIDEO_PROMPT = "USER: <video>\n{} ASSISTANT:"


@dataclass
class ClipBatch:
    clips: int
    frames: int
    video_positions: torch.Tensor  # [B, frames * pooled tokens] positions of the <video> tokens in the LLM sequence


def pooled_footprints(side: int, stride: int) -> torch.Tensor:
    """[(side // stride)^2, 4]: each pooled token covers stride x stride patches of a side x side raster (a pool
    with kernel = stride drops a remainder row / column, which no pooled token covers)."""
    pooled = side // stride
    extent = pooled * stride / side
    return grid_footprints(pooled, pooled, (0.0, 0.0, extent, extent))


class LlavaNextVideoBackbone(LlavaNextBackbone):
    family = "llava_next_video"
    modalities = ("image", "video")
    stage_summary = ("vision.embed, vision.block.<i> (CLIP per tile or frame), projector.out (images: after anyres "
                     "packing; clips: after the 2x2 frame pooling), llm.layer.<i>; clips time-major, frame by frame")
    weights_source = "hub id or folder (llava-hf/LLaVA-NeXT-Video-*-hf)"
    offline_test = "yes (tiny)"
    model_class = "LlavaNextVideoForConditionalGeneration"
    #: tokens the model appends to a clip's pooled frames in the LLM sequence (OneVision: one newline)
    video_newlines = 0

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, resolution, **load_options)  # LLaVA-NeXT's, with model_class
        self.video_prompt = self.video_prompt_for(DESCRIBE)
        self.frame_side = self.tile // self.patch
        self.pooled_footprints = self.video_pooled_footprints()

    def video_pooled_footprints(self) -> torch.Tensor:
        """[pooled tokens per frame, 4]: what each token of a frame covers after the video pooling."""
        return pooled_footprints(self.frame_side, int(self.model.config.spatial_pool_stride))

    def video_prompt_for(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            message = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(message, add_generation_prompt=True)
        return FALLBACK_VIDEO_PROMPT.format(question).replace("<video>", self.processor.video_token)

    def clip_preprocessing(self) -> dict[str, Any]:
        video_processor = self.processor.video_processor
        return {"clip": f"every frame resized whole to {self.tile} px (one tile), bicubic, no crop",
                "video_prompt": self.video_prompt, "pool": self.video_pool(),
                "video_mean": list(map(float, video_processor.image_mean)),
                "video_std": list(map(float, video_processor.image_std))}

    def video_pool(self) -> list:
        return [self.model.config.spatial_pool_mode, self.model.config.spatial_pool_stride]

    # --- clips ----------------------------------------------------------------------------------
    def check_modalities(self, samples: Sequence[Sample]) -> None:
        super().check_modalities(samples)
        frames = clip_lengths(self.family, samples)
        if frames is not None:
            check_context(self.family, self.name_or_path, frames,
                          frames * len(self.pooled_footprints) + self.video_newlines,
                          llm_context(self.model.config.text_config))

    def video_inputs(self, clips: list[Sample], prompts: list[str]):
        # every frame arrives at the tower's input size already: the processor only rescales and normalizes
        videos = [resize_whole(list(clip), self.tile) for clip in clips]
        return self.processor(text=prompts, videos=videos, return_tensors="pt",
                              videos_kwargs={"do_resize": False, "do_center_crop": False})

    def prepare(self, images: list[Sample]) -> tuple[dict[str, Any], Any]:
        if not is_clip(images[0]):
            return super().prepare(images)
        frames = len(images[0])
        inputs = self.video_inputs(images, [self.video_prompt] * len(images))
        is_video = inputs["input_ids"] == self.model.config.video_token_id
        expected = frames * len(self.pooled_footprints) + self.video_newlines
        if not (is_video.sum(1) == expected).all():
            raise SpatialProbeError(f"{self.label}: the processor writes {is_video.sum(1).tolist()} video tokens, the "
                                    f"model makes {expected} for {frames} frames (check the processor's patch_size "
                                    "and the model's video pooling)")
        return self.move_inputs(inputs), ClipBatch(len(images), frames, token_positions(is_video))

    def to_features(self, stage: str, raw: torch.Tensor, batch) -> TokenFeatures:
        if not isinstance(batch, ClipBatch):
            return super().to_features(stage, raw, batch)
        b, frames = batch.clips, batch.frames
        extra: dict[str, torch.Tensor] = {}
        if stage.startswith("vision."):
            lead = raw.shape[1] - self.frame_side ** 2  # CLS, where the tower has one
            if lead:
                extra["cls"] = raw[:, :lead].reshape(b, frames * lead, -1).float()
            raw, footprints = raw[:, lead:], grid_footprints(self.frame_side, self.frame_side)
        else:
            footprints = self.pooled_footprints
            pooled = frames * len(footprints)
            if stage.startswith("llm."):  # the clip's newline(s) follow its pooled frames
                at_video = gather_tokens(raw, batch.video_positions)
                raw, newlines = at_video[:, :pooled], at_video[:, pooled:].float()
            else:
                newlines = self.unwrapped_model.model.image_newline.float().expand(b, self.video_newlines, -1)
            if self.video_newlines:
                extra["newline"] = newlines.to(raw.device)
        per_frame = len(footprints)
        tokens = raw.reshape(b, frames * per_frame, -1).float()
        side = int(round(per_frame ** 0.5))
        return TokenFeatures(tokens, repeat_per_step(footprints, frames, b).to(tokens.device),
                             (side, side) if frames == 1 else None, extra,
                             frame_times(frames, per_frame, b).to(tokens.device))

    @torch.inference_mode()
    def answer(self, images: list[Sample], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers, about an image or a clip (one at a time: no padding to get wrong)."""
        replies = []
        for sample, question in zip(images, questions):
            if not is_clip(sample):
                replies += super().answer([sample], [question], max_new_tokens)
                continue
            inputs = self.video_inputs([sample], [self.video_prompt_for(question)])
            replies.append(self.greedy_reply(self.move_inputs(inputs), max_new_tokens))
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.llava_next_video import save_tiny_llava_next_video

        save_tiny_llava_next_video(Path(path), seed)
