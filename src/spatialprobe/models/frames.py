"""What the families that read a clip frame by frame share (LLaVA-NeXT-Video, LLaVA-OneVision, GLM-4V video,
InternVL on frames): the checks on a batch of clips, and each token's place and time.

Tokens of a clip stage are time-major: every token of time step 0 in raster order, then time step 1, ...; a time
step covering frames a..b-1 of F has `times` [a/F, b/F) (frame i of F covers [i/F, (i+1)/F)).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import SpatialProbeError
from .base import Sample, is_clip
from .layout import step_times


def clip_lengths(family: str, samples: Sequence[Sample]) -> int | None:
    """The one frame count of a batch of clips, or None for a batch of still images: one line, before compute,
    when a batch mixes the two or holds clips of different lengths (one stage's tokens need one layout)."""
    kinds = {is_clip(s) for s in samples}
    if len(kinds) > 1:
        raise SpatialProbeError(f"{family}: one call mixes still images and clips; extract each kind separately")
    if not samples or not is_clip(samples[0]):
        return None
    counts = sorted({len(s) for s in samples})
    if len(counts) > 1:
        raise SpatialProbeError(f"{family}: clips of {counts} frames in one call; one stage's tokens need one clip "
                                "length: extract each length separately")
    if counts[0] < 1:
        raise SpatialProbeError(f"{family}: a clip of 0 frames; give at least one frame")
    return counts[0]


def check_context(family: str, name: str, frames: int, tokens: int, context: int | None) -> None:
    """A clip whose `tokens` do not fit the language model's context: one line naming the frame count and model."""
    if context and tokens > context:
        raise SpatialProbeError(f"{family}: a clip of {frames} frames makes {tokens} tokens, more than the {context} "
                                f"positions of {name!r}; give fewer frames")


def llm_context(text_config) -> int | None:
    """The positions a language model is built for: `max_position_embeddings`, stretched by a linear or dynamic
    RoPE scaling factor (LLaVA-NeXT-Video-7B: 4096 x 2); None when the config does not say."""
    context = getattr(text_config, "max_position_embeddings", None)
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    if context and rope.get("rope_type", rope.get("type")) in ("linear", "dynamic"):
        context = int(context * float(rope.get("factor", 1.0)))
    return context


def frame_times(frames: int, tokens_per_step: int, batch: int, frames_per_step: int = 1) -> torch.Tensor:
    """[batch, steps * tokens_per_step, 2] times of time-major tokens, every token of time step k with step k's
    interval (`layout.step_times`: frames k*frames_per_step .. (k+1)*frames_per_step - 1, the last step only up to
    the clip's end)."""
    per_step = step_times(frames, frames_per_step)
    return per_step.repeat_interleave(tokens_per_step, dim=0).expand(batch, -1, -1).contiguous()


def repeat_per_step(footprints: torch.Tensor, steps: int, batch: int) -> torch.Tensor:
    """[batch, steps * n, 4]: the [n, 4] footprints of one time step, repeated for every step (time-major)."""
    return footprints.repeat(steps, 1).expand(batch, -1, -1).contiguous()
