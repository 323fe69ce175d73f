"""The two adapter heads from a VLM stage to a VAE latent grid, and their sizing.

(a) `ConvHead`: the stage's tokens already resampled onto the latent grid ([B, C, h, w]); a per-cell
    LayerNorm over channels, a 1x1 projection, residual 3x3 conv blocks and a 1x1 output.
(b) `CrossAttentionHead`: one learned query per latent cell plus a fixed sinusoidal code of the cell's
    centre (x, y, t) attends over the stage's tokens, each carrying the same code of its footprint's centre.
    Positions come from footprints, so tiles, pyramid levels and unequal grids need no resampling.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .resample import latent_cells


def parameter_count(module: nn.Module) -> int:
    """The number of trainable parameters (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each cell of a [B, C, h, w] map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def group_count(width: int) -> int:
    """GroupNorm groups: 32 when the width allows it, else the largest divisor of width up to 32."""
    return next(g for g in range(min(32, width), 0, -1) if width % g == 0)


class ResidualBlock(nn.Module):
    """x + conv3x3(act(norm(conv3x3(act(norm(x)))))): pre-activation, so the identity path stays clean."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(group_count(width), width), nn.GELU(), nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(group_count(width), width), nn.GELU(), nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvHead(nn.Module):
    """[B, in_channels, h, w] tokens on the latent grid -> [B, out_channels, h, w] latents."""

    def __init__(self, in_channels: int, out_channels: int = 128, width: int = 256, blocks: int = 4):
        super().__init__()
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "width": width, "blocks": blocks}
        self.norm = ChannelNorm(in_channels)
        self.project = nn.Conv2d(in_channels, width, 1)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.out = nn.Sequential(nn.GroupNorm(group_count(width), width), nn.GELU(), nn.Conv2d(width, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.project(self.norm(x.float()))))


def sinusoidal_code(points: torch.Tensor, dim: int, max_frequency: float = 64.0) -> torch.Tensor:
    """Fixed codes [..., dim] of points [..., 3] (x, y, t in [0, 1]): sin and cos at `dim // 6` frequencies
    per axis, spaced geometrically from 1 to `max_frequency` cycles per image, zero-padded to `dim`.

    The dot product of two codes is a sum of cos(2 pi f (a - b)) terms, largest where the points meet, so
    attention can find a token by where it is; 64 cycles separate cells 1/128 of the image apart."""
    per_axis = max(1, dim // 6)
    frequencies = torch.logspace(0, math.log2(max_frequency), per_axis, base=2, device=points.device)
    angles = 2 * math.pi * points[..., :, None].float() * frequencies  # [..., 3, per_axis]
    code = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [..., 6 * per_axis]
    return nn.functional.pad(code, (0, dim - code.shape[-1]))[..., :dim]


def footprint_points(footprints: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
    """Centres [..., 3] (x, y, t) of footprints [..., 4] and time intervals [..., 2] (t = 0.5 for stills)."""
    x = (footprints[..., 0] + footprints[..., 2]) / 2
    y = (footprints[..., 1] + footprints[..., 3]) / 2
    t = torch.full_like(x, 0.5) if times is None else (times[..., 0] + times[..., 1]) / 2
    return torch.stack([x, y, t], dim=-1).float()


def footprint_extent(footprints: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
    """Sizes [..., 3] (width, height, duration) of footprints: tells a thumbnail token from a tile token
    at the same centre (duration 1 for stills)."""
    size = footprints[..., 2:] - footprints[..., :2]
    duration = torch.ones_like(size[..., :1]) if times is None else times[..., 1:] - times[..., :1]
    return torch.cat([size, duration], dim=-1).float()


def uniform_frame_times(frames: int) -> torch.Tensor:
    """Time intervals [frames, 2] of equal latent frames over the clip."""
    edges = torch.linspace(0, 1, frames + 1)
    return torch.stack([edges[:-1], edges[1:]], dim=-1)


class CrossAttentionLayer(nn.Module):
    """Queries attend over the token memory, then an MLP; pre-norm residuals on both."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.query_norm = nn.LayerNorm(width)
        self.memory_norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory = self.memory_norm(memory)
        queries = queries + self.attention(self.query_norm(queries), memory, memory, need_weights=False)[0]
        return queries + self.mlp(self.mlp_norm(queries))


class CrossAttentionHead(nn.Module):
    """Tokens [B, N, C] with footprints [B, N, 4] (and times [B, N, 2] or None) -> latents
    [B, out_channels, h, w], or [B, out_channels, frames, h, w] when frames > 1.

    `frame_times` [frames, 2] are the latent frames' intervals of the clip (default: equal intervals);
    for LTX-Video the first latent frame covers one frame and the others eight, as the VAE stage's `times` say."""

    def __init__(self, in_channels: int, out_channels: int = 128, width: int = 256, heads: int = 4,
                 layers: int = 4, grid: tuple[int, int] = (16, 16), frames: int = 1,
                 frame_times: torch.Tensor | None = None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "width": width, "heads": heads,
                       "layers": layers, "grid": tuple(grid), "frames": frames}
        self.grid, self.frames, self.width = tuple(grid), frames, width
        self.token_norm = nn.LayerNorm(in_channels)
        self.project = nn.Linear(in_channels, width)
        self.extent = nn.Linear(3, width)  # the tokens' footprint sizes, learned; positions stay fixed codes
        self.queries = nn.Parameter(torch.randn(frames * grid[0] * grid[1], width) * 0.02)
        self.register_buffer("query_points", self.cell_points(grid, frames, frame_times), persistent=False)
        self.layers = nn.ModuleList([CrossAttentionLayer(width, heads) for _ in range(layers)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_channels)

    @staticmethod
    def cell_points(grid: tuple[int, int], frames: int, frame_times: torch.Tensor | None) -> torch.Tensor:
        """Centres [frames * h * w, 3] of the latent cells, frame-major then raster order (as [T', h, w])."""
        times = uniform_frame_times(frames) if frame_times is None else torch.as_tensor(frame_times).float()
        if times.shape != (frames, 2):
            raise ValueError(f"frame_times {tuple(times.shape)} must be [{frames}, 2]")
        cells = latent_cells(*grid)  # [h*w, 4]
        per_frame = [footprint_points(cells, t.expand(len(cells), 2)) for t in times]
        return torch.cat(per_frame)

    def forward(self, tokens: torch.Tensor, footprints: torch.Tensor,
                times: torch.Tensor | None = None) -> torch.Tensor:
        b = tokens.shape[0]
        memory = (self.project(self.token_norm(tokens.float()))
                  + sinusoidal_code(footprint_points(footprints, times), self.width)
                  + self.extent(footprint_extent(footprints, times)))
        queries = (self.queries + sinusoidal_code(self.query_points, self.width)).expand(b, -1, -1)
        for layer in self.layers:
            queries = layer(queries, memory)
        latents = self.out(self.out_norm(queries)).transpose(1, 2)  # [B, out, frames*h*w]
        h, w = self.grid
        shape = (b, -1, h, w) if self.frames == 1 else (b, -1, self.frames, h, w)
        return latents.reshape(shape)


#: Fixed depths; the width is what `sized_for` chooses.
CONV_BLOCKS = 4
ATTENTION_LAYERS = 4
#: A head is never wider than its input (or this): past that, width adds parameters, not information.
MIN_WIDTH = 32


def attention_heads(width: int) -> int:
    """Heads of 64 channels (`sized_for` gives attention widths in multiples of 64), else one head."""
    return width // 64 if width % 64 == 0 else 1


def head_kwargs(kind: str, in_channels: int, width: int, out_channels: int, grid: tuple[int, int],
                frames: int) -> dict:
    """The constructor kwargs of a head of `kind` at `width`."""
    if kind == "conv":
        return {"in_channels": in_channels, "out_channels": out_channels, "width": width, "blocks": CONV_BLOCKS}
    return {"in_channels": in_channels, "out_channels": out_channels, "width": width,
            "heads": attention_heads(width), "layers": ATTENTION_LAYERS, "grid": tuple(grid), "frames": frames}


def build_head(kind: str, **kwargs) -> nn.Module:
    """A head of `kind` ("conv" or "attention") from constructor kwargs."""
    return (ConvHead if kind == "conv" else CrossAttentionHead)(**kwargs)


def sized_for(in_channels: int, target_params: int = 10_000_000, kind: str = "conv", *, out_channels: int = 128,
              grid: tuple[int, int] = (16, 16), frames: int = 1) -> dict:
    """Constructor kwargs of a `kind` head ("conv" | "attention") whose parameter count is nearest
    `target_params`. The width is a multiple of 32 (conv) or 64 (attention, one head per 64 channels) and
    at most max(in_channels, 32), so tiny test models get small heads; depths are fixed.
    `build_head(kind, **sized_for(in_channels, kind=kind))` builds it."""
    if kind not in ("conv", "attention"):
        raise ValueError(f"kind {kind!r} is not 'conv' or 'attention'")
    cap = max(MIN_WIDTH, in_channels)

    def count(width: int) -> int:
        with torch.device("meta"):  # no memory, no init cost: only the shapes are needed
            head = build_head(kind, **head_kwargs(kind, in_channels, width, out_channels, grid, frames))
        return parameter_count(head)

    step = 32 if kind == "conv" else 64
    counts = {}
    for width in list(range(step, cap + 1, step)) or [MIN_WIDTH]:
        counts[width] = count(width)
        if counts[width] > target_params:  # the count grows with width: no wider one comes nearer
            break
    best = min(counts, key=lambda width: abs(counts[width] - target_params))
    return head_kwargs(kind, in_channels, best, out_channels, grid, frames)
