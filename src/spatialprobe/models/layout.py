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
