"""GLM-4.1V / GLM-4.5V / GLM-4.6V (`Glm4vForConditionalGeneration` and its MoE / 4.6V siblings, which share this
vision tower and module paths), traced in full: embeddings, vision blocks, the 2x2 downsampling conv, the merger,
LLM layers.

Token layout (transformers 5.x, checked by the planted-patch test):
- the image processor (Qwen2-VL style) emits patches in merge-group order: 2x2 groups in raster order, then the
  4 patches of a group in raster order; each patch is repeated `temporal_patch_size` times along the channels
  (an image is a 2-frame still), so the Conv3d patch embedding sees it once.
- `visual.embeddings` adds the learned position table, bicubically resampled to the patch grid, to the patch
  embedding (after `post_conv_layernorm`); its output is what block 0 reads. The tower has no window attention
  and no reordering: every block output stays in group order. All images of a batch run as one sequence,
  split by `cu_seqlens`.
- after `post_layernorm` (not a stage: the last vision.block is read before it), `visual.downsample` (Conv2d, kernel = stride = merge size) reads each run of 4
  consecutive tokens as one 2x2 group: one token per group, groups in raster order = the merged raster.
  `visual.merger` (linear, LayerNorm, GELU, SwiGLU) maps those tokens one by one: its output is what the
  LLM receives (`get_image_features(...).pooler_output`), scattered over the `<|image|>` placeholders in
  raster order.

Clips (`get_video_features`, checked by tests/test_video_glm4v.py): every frame is resized here, whole, to
`resolution`; the video processor groups frames in pairs (`temporal_patch_size` 2: the Conv3d patch embedding
reads frames 2k and 2k+1 together; an odd last frame is paired with itself) and each pair is one time step: the
tower runs every step as its own image (grid [1, h, w], its own attention span), in merge-group order, then the
same downsample and merger. The LLM receives, step after step, `<|begin_of_image|>`, the step's merged raster
at `<|image|>` placeholders, `<|end_of_image|>` and the step's timestamp in seconds, inside one
`<|begin_of_video|>` ... `<|end_of_video|>`; timestamps assume the frames were sampled at the video
processor's own rate (`fps`, 2 for the zai-org checkpoints). Clip stages are time-major, each token's `times`
the interval of its pair of frames.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone, Sample, is_clip
from .frames import check_context, clip_lengths, llm_context
from .layout import (check_multiple, clip_grid_features, gather_tokens, grid_features, group_order_to_raster,
                     standard_stages, step_times, token_positions)
from .vit import resize_whole, whole_image_preprocessing

# GLM-4.1V's chat format (zai-org/GLM-4.1V-9B-Thinking: [gMASK]<sop><|user|>\n<|begin_of_image|>...)
PROMPT = "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Describe the image.<|assistant|>\n"
QUESTION = "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>{}<|assistant|>\n"
VIDEO_PROMPT = "[gMASK]<sop><|user|>\n<|begin_of_video|><|video|><|end_of_video|>Describe the video.<|assistant|>\n"

#: model_type -> native class; all three have model.visual (this tower) and model.language_model.layers
MODEL_CLASSES = {"glm4v": "Glm4vForConditionalGeneration", "glm4v_moe": "Glm4vMoeForConditionalGeneration",
                 "glm46v": "Glm46VForConditionalGeneration"}


@dataclass
class Layout:
    side: int  # patches per image side
    image_positions: torch.Tensor  # [B, M] positions of the <|image|> tokens in the LLM sequence


@dataclass
class ClipLayout:
    side: int  # patches per frame side
    frames: int
    steps: int  # time steps: pairs of frames
    video_positions: torch.Tensor  # [B, steps * merged tokens] positions of the frames' <|image|> tokens


class Glm4vBackbone(HookedBackbone):
    family = "glm4v"
    modalities = ("image", "video")
    stage_summary = ("vision.embed, vision.block.<i>, projector.downsample (2x2 conv), projector.out (merger), "
                     "llm.layer.<i> (image tokens); all rasters")
    weights_source = "hub id or folder (zai-org/GLM-4.1V-9B-*, zai-org/GLM-4.5V, zai-org/GLM-4.6V*)"
    offline_test = "yes (tiny)"

    # 336 px: the real checkpoints' position table is 24x24 patches, so it is used without resampling
    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int = 336,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from transformers import AutoProcessor

        self.model = self.load_model(self._model_class())
        self.processor = self.load_processor(AutoProcessor)
        vision = self.model.config.vision_config
        self.patch, self.merge = int(vision.patch_size), int(vision.spatial_merge_size)
        check_multiple(self.family, resolution, self.patch * self.merge, "patch size x merge size")
        self.resolution = resolution
        self.side = resolution // self.patch
        self.raster = group_order_to_raster(self.side, self.merge)

    def _model_class(self):
        """The native class of this checkpoint: GLM-4.1V, GLM-4.5V (MoE text model) and GLM-4.6V share the tower."""
        import transformers

        config = self._from_pretrained(transformers.AutoConfig, None, self.load_options.processor_kwargs())
        if config.model_type not in MODEL_CLASSES:
            raise SpatialProbeError(f"{self.family}: {self.name_or_path!r} is a {config.model_type!r} model, "
                                    f"not one of {', '.join(MODEL_CLASSES)}")
        return getattr(transformers, MODEL_CLASSES[config.model_type])

    @property
    def visual(self) -> torch.nn.Module:
        return self.unwrapped_model.model.visual

    def stage_modules(self) -> dict[str, torch.nn.Module]:
        projector = {"downsample": self.visual.downsample, "out": self.visual.merger}
        return standard_stages(self.visual.embeddings, self.visual.blocks, projector,
                               self.unwrapped_model.model.language_model.layers)

    def preprocessing(self) -> dict[str, Any]:
        image_processor = self.processor.image_processor
        return whole_image_preprocessing(image_processor, self.resolution, patch_size=self.patch,
                merge_size=self.merge, prompt=PROMPT)

    def clip_preprocessing(self) -> dict[str, Any]:
        video_processor = self.processor.video_processor
        return {"clip": "every frame resized whole to the resolution; frames in pairs, an odd last frame with itself",
                "frames_per_step": self.temporal_patch, "video_prompt": VIDEO_PROMPT,
                "fps": float(video_processor.fps),  # the frame timestamps written in the prompt
                "video_mean": list(map(float, video_processor.image_mean)),
                "video_std": list(map(float, video_processor.image_std))}

    @property
    def temporal_patch(self) -> int:
        return int(self.model.config.vision_config.temporal_patch_size)

    def _inputs(self, prompts: list[str], images: list[Image.Image]):
        # the images arrive at the working size already: the processor only rescales, normalizes, patchifies
        return self.processor(text=prompts, images=resize_whole(images, self.resolution), return_tensors="pt",
                              images_kwargs={"do_resize": False})

    def prepare(self, images: list[Image.Image]) -> tuple[dict[str, Any], Layout]:
        if is_clip(images[0]):
            return self._prepare_clips(images)
        inputs = self._inputs([PROMPT] * len(images), images)
        grid = inputs["image_grid_thw"]
        if not (grid[:, 1:] == self.side).all():
            raise RuntimeError(f"{self.label}: processor made a {grid[0].tolist()} grid, expected {self.side}x{self.side}")
        is_image = inputs["input_ids"] == self.model.config.image_token_id
        positions = token_positions(is_image)
        return self.move_inputs(inputs), Layout(self.side, positions)

    # --- clips ----------------------------------------------------------------------------------
    def check_modalities(self, samples: Sequence[Sample]) -> None:
        super().check_modalities(samples)
        frames = clip_lengths(self.family, samples)
        if frames is not None:
            steps = -(-frames // self.temporal_patch)
            per_step = (self.side // self.merge) ** 2 + 3  # + <|begin_of_image|>, <|end_of_image|>, the timestamp
            check_context(self.family, self.name_or_path, frames, steps * per_step,
                          llm_context(self.model.config.text_config))

    def _video_inputs(self, prompts: list[str], clips: list[Sample]):
        frames = len(clips[0])
        # the frames are the clip as sampled: no resampling, timestamps at the processor's own rate
        metadata = [{"total_num_frames": frames, "fps": float(self.processor.video_processor.fps),
                     "frames_indices": list(range(frames))} for _ in clips]
        videos = [resize_whole(list(clip), self.resolution) for clip in clips]
        return self.processor(text=prompts, videos=videos, return_tensors="pt",
                              videos_kwargs={"do_resize": False, "do_sample_frames": False,
                                             "video_metadata": metadata})

    def _prepare_clips(self, clips: list[Sample]) -> tuple[dict[str, Any], ClipLayout]:
        frames = len(clips[0])
        inputs = self._video_inputs([VIDEO_PROMPT] * len(clips), clips)
        steps = -(-frames // self.temporal_patch)
        if not (inputs["video_grid_thw"] == torch.tensor([steps, self.side, self.side])).all():
            raise RuntimeError(f"{self.label}: processor made a {inputs['video_grid_thw'][0].tolist()} video grid, "
                               f"expected {[steps, self.side, self.side]}")
        is_frame_token = inputs["input_ids"] == self.model.config.image_token_id  # GLM's frames use <|image|>
        return self.move_inputs(inputs), ClipLayout(self.side, frames, steps, token_positions(is_frame_token))

    def _clip_features(self, stage: str, raw: torch.Tensor, layout: ClipLayout) -> TokenFeatures:
        batch, steps = layout.video_positions.shape[0], layout.steps
        side = layout.side // self.merge
        if stage.startswith("llm."):
            tokens = gather_tokens(raw, layout.video_positions)
        elif stage.startswith("projector."):  # per step, one token per 2x2 group, groups in raster order
            tokens = raw.reshape(batch, steps * side * side, -1)
        else:  # per step, patch tokens in group order
            side = layout.side
            per_step = raw.reshape(batch, steps, side * side, -1)[:, :, self.raster.to(raw.device)]
            tokens = per_step.reshape(batch, steps * side * side, -1)
        return clip_grid_features(tokens, side, side, step_times(layout.frames, self.temporal_patch))

    def run(self, inputs: dict[str, Any]) -> None:
        self.model(**inputs, use_cache=False)

    def to_features(self, stage: str, raw: torch.Tensor, layout: Layout) -> TokenFeatures:
        if isinstance(layout, ClipLayout):
            return self._clip_features(stage, raw, layout)
        batch = layout.image_positions.shape[0]
        merged_side = layout.side // self.merge
        if stage.startswith("llm."):
            tokens = gather_tokens(raw, layout.image_positions)
            side = merged_side
        elif stage.startswith("projector."):  # one token per 2x2 group, groups in raster order
            tokens = raw.reshape(batch, merged_side * merged_side, -1)  # downsample's [G, C, 1, 1] too
            side = merged_side
        else:  # patch tokens in group order
            tokens = raw.reshape(batch, layout.side * layout.side, -1)[:, self.raster.to(raw.device)]
            side = layout.side
        return grid_features(tokens, side, side)

    def _question_prompt(self, question: str) -> str:
        """The checkpoint's own chat template when it has one (thinking off where the template allows it)."""
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=False)
        return QUESTION.format(question)

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """The model's own greedy answers (one image and question at a time: no padding to get wrong)."""
        replies = []
        for image, question in zip(images, questions):
            inputs = self.move_inputs(self._inputs([self._question_prompt(question)], [image]))
            text = self.greedy_reply(inputs, max_new_tokens)
            replies.append(re.sub(r"^\s*<think>.*?</think>", "", text, flags=re.S).strip())
        return replies

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.glm4v import save_tiny_glm4v

        save_tiny_glm4v(Path(path), seed)
