"""Tokens of any layout onto a target raster of cells, by footprint overlap."""
from __future__ import annotations

import torch

from ..features import grid_footprints, overlap_weights

#: The overlap weights of one chunk hold at most this many numbers (B x cells x tokens); overlap_weights
#: makes a few temporaries of that size, so 2^24 float32 keeps a chunk near a few hundred MB at worst.
MAX_WEIGHTS_PER_CHUNK = 1 << 24


def latent_cells(rows: int, cols: int) -> torch.Tensor:
    """Footprints [rows*cols, 4] of a latent raster covering the whole image, in raster order."""
    return grid_footprints(rows, cols)


def resample_onto(tokens: torch.Tensor, footprints: torch.Tensor, cells: torch.Tensor,
                  max_weights: int = MAX_WEIGHTS_PER_CHUNK, allow_uncovered: bool = False) -> torch.Tensor:
    """Tokens [B, N, C] with footprints [B, N, 4] onto target cells [M, 4]: [B, M, C] float32.

    Each cell takes the mean of the tokens overlapping it, weighted by the overlap area, so a global
    thumbnail token and the tile tokens over a cell both count, each by how much of the cell it covers.
    Cells are taken in chunks so the B x M x N weights never exceed `max_weights` numbers.
    A cell no token overlaps (e.g. outside a centre crop) raises, or with `allow_uncovered` gets zeros."""
    if tokens.ndim != 3 or footprints.shape != (*tokens.shape[:2], 4) or cells.ndim != 2 or cells.shape[1] != 4:
        raise ValueError(f"tokens {tuple(tokens.shape)}, footprints {tuple(footprints.shape)} and cells "
                         f"{tuple(cells.shape)} must be [B, N, C], [B, N, 4] and [M, 4]")
    b, n, _ = tokens.shape
    source, values = footprints.float(), tokens.float()
    target = cells.to(source.device, torch.float32)
    per_chunk = max(1, max_weights // max(1, b * n))
    parts = []
    for chunk in target.split(per_chunk):
        weights = overlap_weights(chunk, source)
        if not allow_uncovered and (weights.sum(-1) == 0).any():
            raise ValueError("the tokens' footprints leave some target cells uncovered")
        parts.append(weights @ values)
    return torch.cat(parts, dim=1)
