"""Layout helpers that several adapters share: stage names in model order, image-token positions in an LLM
sequence, the 2x2-group order of Qwen-style processors, and a batch's features on one raster.

Each helper is the one logic its adapters had written out alike; the adapters keep what is their own
(which module is which stage, which tokens are CLS or global, the checks and their messages).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import SpatialProbeError
from ..features import TokenFeatures, grid_footprints


def standard_stages(embed: torch.nn.Module, blocks: Sequence[torch.nn.Module],
                    projector: dict[str, torch.nn.Module] | None = None,
                    llm_layers: Sequence[torch.nn.Module] = ()) -> dict[str, torch.nn.Module]:
    """Stage name -> module, in model order: vision.embed, vision.block.<i>, projector.<name> (in the dict's
    order, e.g. {"downsample": ..., "out": ...}), llm.layer.<i>."""
    stages = {"vision.embed": embed}
    stages.update({f"vision.block.{i}": block for i, block in enumerate(blocks)})
    stages.update({f"projector.{name}": module for name, module in (projector or {}).items()})
    stages.update({f"llm.layer.{i}": layer for i, layer in enumerate(llm_layers)})
    return stages


def token_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, M] positions of the True entries of each row of a [B, L] mask (every row holds M of them)."""
    return torch.stack([row.nonzero().flatten() for row in mask])


def gather_tokens(raw: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, M, C]: the tokens of a [B, L, C] sequence at [B, M] positions (e.g. the image placeholders)."""
    index = positions.to(raw.device)
    return torch.gather(raw, 1, index[..., None].expand(-1, -1, raw.shape[-1]))


def group_order_to_raster(side: int, merge: int) -> torch.Tensor:
    """index[k] = position, in merge-group order, of the k-th patch in raster order (Qwen2-VL-style processors
    emit merge x merge groups in raster order, then the patches of a group in raster order)."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    groups_per_row = side // merge
    group = (rows // merge) * groups_per_row + cols // merge
    within = (rows % merge) * merge + cols % merge
    return (group * merge * merge + within).reshape(-1)


def check_multiple(family: str, resolution: int, unit: int, why: str, what: str = "resolution") -> None:
    """A resolution that does not tile into whole units (patches, merge groups, a total stride): one line."""
    if resolution % unit:
        raise SpatialProbeError(f"{family}: {what} {resolution} is not a multiple of {unit} ({why})")


def batch_grid_footprints(batch: int, rows: int, cols: int) -> torch.Tensor:
    """[batch, rows*cols, 4] footprints of a whole-image raster, the same for every image of the batch."""
    return grid_footprints(rows, cols).expand(batch, -1, -1).contiguous()


def grid_features(tokens: torch.Tensor, rows: int, cols: int,
                  extra: dict[str, torch.Tensor] | None = None) -> TokenFeatures:
    """Features of a batch whose [B, rows*cols, C] tokens are one whole-image raster in raster order."""
    return TokenFeatures(tokens.float(), batch_grid_footprints(tokens.shape[0], rows, cols), (rows, cols),
                         extra or {})


# --- clips: time-major tokens with the interval of the clip each covers ---------------------------------------
def step_times(frames: int, frames_per_step: int) -> torch.Tensor:
    """[T, 2] each time step's interval of a clip of `frames` frames, as fractions of the clip (frame i of F covers
    [i/F, (i+1)/F)): step t covers frames t*p .. (t+1)*p - 1, the last step only the frames left when p does not
    divide F (a processor that pads a clip with copies of its last frame adds no time), T = ceil(F / p)."""
    steps = -(-frames // frames_per_step)
    starts = torch.arange(steps, dtype=torch.float64) * frames_per_step
    ends = (starts + frames_per_step).clamp(max=frames)
    return (torch.stack([starts, ends], dim=-1) / frames).float()


def clip_grid_features(tokens: torch.Tensor, rows: int, cols: int, times: torch.Tensor,
                       extra: dict[str, torch.Tensor] | None = None) -> TokenFeatures:
    """Features of a batch of clips whose [B, T*rows*cols, C] tokens are T whole-frame rasters in time-major order
    (step 0's raster in raster order, then step 1's...), `times` [T, 2] each step's interval (`step_times`).
    `grid_shape` is the raster only when there is one time step."""
    batch, steps = tokens.shape[0], times.shape[0]
    if tokens.shape[1] != steps * rows * cols:
        raise ValueError(f"{tokens.shape[1]} tokens are not {steps} time steps of {rows}x{cols}")
    footprints = batch_grid_footprints(batch, rows, cols).repeat(1, steps, 1)
    per_token = times.repeat_interleave(rows * cols, dim=0).expand(batch, -1, -1).contiguous()
    return TokenFeatures(tokens.float(), footprints.to(tokens.device), (rows, cols) if steps == 1 else None,
                         extra or {}, per_token.to(tokens.device))


def frames_as_time_steps(per_frame: TokenFeatures, clips: int, frames: int) -> TokenFeatures:
    """A stage read frame by frame ([clips*frames, N, C], the frames of each clip in order, as still images) as
    the clips' time-major tokens [clips, frames*N, C]: frame f's tokens keep their footprints, with times
    [f/F, (f+1)/F). Extras (CLS, registers...) are every frame's in time order, [clips, frames*K, C]."""
    def per_clip(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(clips, frames * tensor.shape[1], *tensor.shape[2:])

    n = per_frame.tokens.shape[1]
    times = step_times(frames, 1).repeat_interleave(n, dim=0).expand(clips, -1, -1).contiguous()
    return TokenFeatures(per_clip(per_frame.tokens), per_clip(per_frame.footprints),
                         per_frame.grid_shape if frames == 1 else None,
                         {name: per_clip(tensor) for name, tensor in per_frame.extra.items()},
                         times.to(per_frame.tokens.device))
