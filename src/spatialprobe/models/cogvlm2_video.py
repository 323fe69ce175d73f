"""CogVLM2-Video (THUDM/cogvlm2-video-llama3-chat, and its -base sibling), traced by module path through the
checkpoint's own code: transformers has no native class, so it loads only with trust_remote_code, as CogVLM2.

Token layout, read from the remote code (`CogVLMVideoForCausalLM` in modeling_cogvlm.py, as vendored in
csbhr/Vivid-VR for its cogvlm2-llama3-caption sibling, and the THUDM/CogVLM2 video_demo; not runnable here: no
weights, no hub — the real-model test runs only with $SPATIALPROBE_COGVLM2_VIDEO_PATH):
- a clip is `images=[video]`, video a [3, T, H, W] tensor of 0..255 values (the demo's decord frames, permuted).
  `build_conversation_input_ids` has no still-image path: it divides by 255, normalizes with the CLIP mean/std,
  scales the short side to `vision_config.image_size` (224) and center-crops, then hands the model [T, 3, 224, 224].
  Frames resized here, whole, to 224 x 224 make that scale and crop no-ops, so footprints are whole-frame cells.
- the demo's `load_video` takes at most 24 frames: template "chat" one frame a second (time index = second),
  "base" 24 frames spread evenly; no checkpoint has seen more, so more than 24 are refused.
- `model.model.vision` (EVA2CLIPModel) runs the T frames as a batch of T images: `patch_embedding` (CLS first, a
  position table for 16x16 patches) -> `transformer.layers[i]` ([T, 1 + 256, C]) -> CLS dropped -> `conv` (2x2
  stride 2 on the NCHW raster: 8x8) -> `linear_proj` -> [T, boi + 64 tokens in raster order + eoi, D].
- the sequence: [bos], then per frame its 66 vision slots (token type 1) and, with template "chat", the tokens of
  its time index str(t) (type 0), then the text "Question: {query} Answer:". `CogVLMVideoModel.forward` writes the
  tower's [T, 66, D] output, flattened frame after frame, over the type-1 positions in order; it encodes only the
  first clip of a batch (`self.vision(images[0])`), so each clip runs as its own forward pass here.
- `model.model.layers[i]`: the decoder layers; all 64 patches of a frame share one rotary position.
Clip stages are time-major (frame 0's raster, then frame 1's...), each token's `times` its frame's interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone, Sample, is_clip
from .cogvlm2 import CLIP_MEAN, CLIP_STD, VISION_TOKEN_TYPE, CogVLM2Backbone, grid_sides, load_remote, split_boi_eoi
from .frames import clip_lengths
from .layout import clip_grid_features, gather_tokens, step_times
from .vit import resize_whole

QUERY = "Describe the video."
MAX_FRAMES = 24  # what the checkpoint's own load_video gives at most (video_demo/cli_video_demo.py)
DEFAULT_TEMPLATE = "chat"  # build_conversation_input_ids falls back to config.template_version, then this


# --- layout facts, as pure functions (tested offline) ----------------------------------------------------------
def slots_per_frame(image_size: int, patch_size: int) -> int:
    """Vision slots of one frame in the sequence: its conv grid plus boi and eoi (66 at 224 px, 14-px patches)."""
    return grid_sides(image_size, patch_size)[1] ** 2 + 2


def check_frame_count(family: str, name: str, frames: int) -> None:
    """More frames than the checkpoint's own loader ever gives it: one line, before compute."""
    if frames > MAX_FRAMES:
        raise SpatialProbeError(f"{family}: a clip of {frames} frames; {name!r} takes at most {MAX_FRAMES} (its own "
                                f"load_video samples one frame a second, up to {MAX_FRAMES}): give fewer frames")


def video_tensor(frames: Sequence[Image.Image], size: int) -> torch.Tensor:
    """[3, T, size, size] uint8: the frames resized whole, laid out as the demo's load_video returns a clip."""
    arrays = np.stack([np.asarray(frame) for frame in resize_whole(list(frames), size)])
    return torch.from_numpy(arrays).permute(3, 0, 1, 2).contiguous()


@dataclass
class ClipLayout:
    frames: int
    boi: torch.Tensor  # [B, T] position of each frame's boi in the LLM sequence
    image_positions: torch.Tensor  # [B, T * M] positions of the frames' image tokens, time-major, raster order
    eoi: torch.Tensor  # [B, T]


def frame_slots(token_type_ids: torch.Tensor, frames: int, per_frame: int) -> ClipLayout:
    """Per row of [B, L] token types: each frame's boi, image-token and eoi positions. The type-1 positions are
    the frames' runs of `per_frame` slots in order (with time-index text between them under template "chat")."""
    rows = [row.nonzero().flatten() for row in token_type_ids == VISION_TOKEN_TYPE]
    counts = sorted({len(r) for r in rows})
    if counts != [frames * per_frame]:
        raise ValueError(f"{frames} frames of {per_frame} vision slots need {frames * per_frame} per row, got {counts}")
    runs = torch.stack(rows).reshape(len(rows), frames, per_frame)
    if not (runs.diff(dim=-1) == 1).all():
        raise ValueError("each frame's vision slots must be one contiguous run")
    return ClipLayout(frames, runs[..., 0], runs[..., 1:-1].reshape(len(rows), -1), runs[..., -1])


def frames_into_clips(per_frame: torch.Tensor, frames: int) -> torch.Tensor:
    """[B*T, N, C] (the tower's batch: each clip's frames in order) as time-major [B, T*N, C]."""
    return per_frame.reshape(-1, frames * per_frame.shape[1], per_frame.shape[2])


class CogVLM2VideoBackbone(HookedBackbone):
    family = "cogvlm2_video"
    modalities = ("video",)  # the remote build_conversation_input_ids reads video tensors only
    stage_summary = ("clips only, at most 24 frames, each frame: vision.embed, vision.block.<i> (16x16 patches, CLS "
                     "in extra), projector.downsample (2x2 conv, 8x8), projector.out (boi/eoi in extra), llm.layer.<i> "
                     "(the frames' image tokens); time-major, times per frame")
    weights_source = "hub id or folder (THUDM/cogvlm2-video-llama3-chat), trust_remote_code only"
    offline_test = "only with $SPATIALPROBE_COGVLM2_VIDEO_PATH"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int | None = None,
                 **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        load_remote(self, resolution, "each frame")
        self.template = getattr(self.model.config, "template_version", None) or DEFAULT_TEMPLATE

    # the same module paths as CogVLM2: CogVLMVideoModel keeps `vision` (EVA2CLIPModel) and `layers`
    vision = CogVLM2Backbone.vision
    stage_modules = CogVLM2Backbone.stage_modules
    _input_device = CogVLM2Backbone._input_device

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "every frame whole, bicubic, no crop", "resolution": self.resolution,
                "patch_size": self.patch, "downsample": "conv 2x2 stride 2", "template": self.template,
                "query": QUERY, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                "code": "remote (CogVLMVideoForCausalLM, build_conversation_input_ids)"}

    def clip_preprocessing(self) -> dict[str, Any]:
        return {"clip": "every frame its own time step, one clip per forward pass", "frames_per_step": 1,
                "max_frames": MAX_FRAMES, "time_indices": self.template == "chat"}

    def check_modalities(self, samples: Sequence[Sample]) -> None:
        if any(not is_clip(s) for s in samples):
            raise SpatialProbeError(f"model family {self.family!r} reads clips only (its remote code has no "
                                    "still-image path): give a list of frames per sample, e.g. [image] for one frame")
        frames = clip_lengths(self.family, samples)
        if frames is not None:  # None: an empty batch
            check_frame_count(self.family, self.name_or_path, frames)

    def _extract_batch(self, clips: list[Sample], stages: list[str]) -> dict[str, TokenFeatures]:
        # the remote forward encodes only the first clip of a batch: one pass per clip
        per_clip = [super(CogVLM2VideoBackbone, self)._extract_batch([clip], stages) for clip in clips]
        return {stage: TokenFeatures.concat([features[stage] for features in per_clip]) for stage in stages}

    def _conversation(self, clip: Sample, query: str) -> dict[str, Any]:
        """The model's own build_conversation_input_ids for one clip (frames already at its size)."""
        built = self.model.build_conversation_input_ids(self.tokenizer, query=query, history=[],
                                                        images=[video_tensor(clip, self.resolution)],
                                                        template_version=self.template)
        device = self._input_device()
        inputs = {key: built[key][None].to(device) for key in ("input_ids", "token_type_ids", "attention_mask")}
        inputs["images"] = [[built["images"][0].to(device, self.dtype)]]
        return inputs

    def prepare(self, clips: list[Sample]) -> tuple[dict[str, Any], ClipLayout]:
        (clip,) = clips  # _extract_batch passes one clip at a time
        inputs = self._conversation(clip, QUERY)
        layout = frame_slots(inputs["token_type_ids"].cpu(), len(clip), slots_per_frame(self.resolution, self.patch))
        return inputs, layout

    def run(self, inputs: dict[str, Any]) -> None:
        self.model(**inputs, use_cache=False)

    def to_features(self, stage: str, raw: torch.Tensor, layout: ClipLayout) -> TokenFeatures:
        frames, side = layout.frames, self.merged_side
        if stage.startswith("llm."):
            tokens = gather_tokens(raw, layout.image_positions)
            extra = {"boi": gather_tokens(raw, layout.boi), "eoi": gather_tokens(raw, layout.eoi)}
        elif stage == "projector.out":  # [T, boi + M + eoi, D]
            per_frame, specials = split_boi_eoi(raw)
            tokens = frames_into_clips(per_frame, frames)
            extra = {name: frames_into_clips(v, frames) for name, v in specials.items()}
        elif stage == "projector.downsample":  # [T, C, h, w] NCHW rasters
            tokens, extra = frames_into_clips(raw.flatten(2).transpose(1, 2), frames), {}
        else:  # [T, CLS + patches in raster order, C]
            tokens, extra = frames_into_clips(raw[:, 1:], frames), {"cls": frames_into_clips(raw[:, :1], frames)}
            side = self.side
        if tokens.shape[1] != frames * side * side:
            raise RuntimeError(f"{self.label} {stage}: {tokens.shape[1]} tokens, expected {frames} frames of "
                               f"{side}x{side}")
        return clip_grid_features(tokens, side, side, step_times(frames, 1), {k: v.float() for k, v in extra.items()})

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        raise SpatialProbeError(f"{cls.family}: no tiny checkpoint can be built offline (the architecture exists only "
                                "as the checkpoint's own code on the hub); the real-model test runs only with "
                                "$SPATIALPROBE_COGVLM2_VIDEO_PATH")
