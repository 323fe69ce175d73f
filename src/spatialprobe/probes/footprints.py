"""Between tokens and pixels: how much of each token's footprint a mask covers, and painting token
values back into an image through the footprints (which may overlap or leave gaps: no raster assumed).

A pixel belongs to a token when the pixel's centre lies inside the token's footprint; footprint
edges are therefore rounded to whole pixels of the mask grid.
"""
from __future__ import annotations

import torch


def pixel_rects(footprints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Footprints [n, N, 4] in [0, 1] -> integer pixel rectangles [n, N, 4] (r0, c0, r1, c1), end-exclusive."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    x0, y0, x1, y1 = (footprints.to(torch.float64) * scale).round().long().unbind(-1)
    return torch.stack([y0.clamp(0, height), x0.clamp(0, width), y1.clamp(0, height), x1.clamp(0, width)], -1)


def token_coverage(masks: torch.Tensor, footprints: torch.Tensor) -> torch.Tensor:
    """Fraction of each token's pixels inside the mask: masks [n, H, W] bool -> [n, N] float."""
    n, height, width = masks.shape
    integral = torch.zeros(n, height + 1, width + 1, dtype=torch.float64)
    integral[:, 1:, 1:] = masks.to(torch.float64).cumsum(1).cumsum(2)
    r0, c0, r1, c1 = pixel_rects(footprints, height, width).unbind(-1)
    batch = torch.arange(n)[:, None]
    inside = integral[batch, r1, c1] - integral[batch, r0, c1] - integral[batch, r1, c0] + integral[batch, r0, c0]
    area = ((r1 - r0) * (c1 - c0)).to(torch.float64)
    return torch.where(area > 0, inside / area.clamp(min=1), torch.zeros_like(inside)).float()


def paint(values: torch.Tensor, footprints: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-token values [n, N] -> per-pixel mean over the tokens covering each pixel [n, H, W] (0 where none)."""
    n, tokens = values.shape
    rects = pixel_rects(footprints, height, width)
    r0, c0, r1, c1 = rects.unbind(-1)
    total = torch.zeros(n, height + 1, width + 1, dtype=torch.float64)
    count = torch.zeros_like(total)
    batch = torch.arange(n)[:, None].expand(n, tokens)
    ones = torch.ones(n, tokens, dtype=torch.float64)
    v = values.to(torch.float64)
    # 2-D difference arrays: +at top-left, -at top-right and bottom-left, +at bottom-right, then cumsum
    for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        total.index_put_((batch, rows, cols), sign * v, accumulate=True)
        count.index_put_((batch, rows, cols), sign * ones, accumulate=True)
    total = total.cumsum(1).cumsum(2)[:, :height, :width]
    count = count.cumsum(1).cumsum(2)[:, :height, :width]
    return torch.where(count > 0.5, total / count.clamp(min=1), torch.zeros_like(total)).float()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Normalized xyxy boxes of boolean masks [n, H, W] (pixel edges); an empty mask gives a zero box."""
    n, height, width = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        ys, xs = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
        if len(ys):
            boxes[i] = torch.tensor([xs[0] / width, ys[0] / height, (xs[-1] + 1) / width, (ys[-1] + 1) / height])
    return boxes


def token_edges(footprints: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a painted mask's box can have its edges: bool [n, width + 1] (x) and [n, height + 1] (y),
    True at every mask-pixel edge of a footprint that covers at least one pixel.

    A painted mask is a union of cells cut by the footprints' pixel rectangles, so `mask_boxes`
    of any mask painted through these footprints has its edges here (tiles and levels included)."""
    n = len(footprints)
    r0, c0, r1, c1 = pixel_rects(footprints, height, width).unbind(-1)
    paints = (r1 > r0) & (c1 > c0)  # a footprint that covers no pixel centre cuts nothing
    batch = torch.arange(n)[:, None].expand_as(r0)[paints]
    x_edges = torch.zeros(n, width + 1, dtype=torch.bool)
    y_edges = torch.zeros(n, height + 1, dtype=torch.bool)
    for cols in (c0, c1):
        x_edges[batch, cols[paints]] = True
    for rows in (r0, r1):
        y_edges[batch, rows[paints]] = True
    return x_edges, y_edges
