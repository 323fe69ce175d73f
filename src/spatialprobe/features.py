"""The core contract: tokens of one stage, each with its footprint in the original image."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenFeatures:
    """Features of one stage for a batch of images.

    tokens:     [B, N, C] float, only tokens that have a place in the image.
    footprints: [B, N, 4] float, each token's region of the ORIGINAL image as normalized
                x0, y0, x1, y1 in [0, 1].
    grid_shape: (H, W) when the N tokens form a raster in raster order (N == H * W), else None.
    extra:      tokens with no place in the image (CLS, global, newline, learned queries), by name,
                each [B, K, C].
    times:      [B, N, 2] float, each token's interval of the clip as t0, t1 in fractions of the clip's
                duration (frame i of F covers [i/F, (i+1)/F)); None for still images.
    """

    tokens: torch.Tensor
    footprints: torch.Tensor
    grid_shape: tuple[int, int] | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    times: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3 or self.footprints.shape != (*self.tokens.shape[:2], 4):
            raise ValueError(
                f"tokens {tuple(self.tokens.shape)} and footprints {tuple(self.footprints.shape)} "
                "must be [B, N, C] and [B, N, 4]"
            )
        if self.grid_shape is not None and self.grid_shape[0] * self.grid_shape[1] != self.tokens.shape[1]:
            raise ValueError(f"grid_shape {self.grid_shape} does not hold {self.tokens.shape[1]} tokens")
        if self.times is not None and self.times.shape != (*self.tokens.shape[:2], 2):
            raise ValueError(f"times {tuple(self.times.shape)} must be [B, N, 2] like tokens {tuple(self.tokens.shape)}")

    def grid(self) -> torch.Tensor:
        """Tokens as a raster [B, H, W, C]; only for stages whose tokens form a grid."""
        if self.grid_shape is None:
            raise ValueError("this stage's tokens do not form a grid")
        b, _, c = self.tokens.shape
        return self.tokens.reshape(b, *self.grid_shape, c)

    def with_tokens(self, tokens: torch.Tensor) -> "TokenFeatures":
        """The same footprints and extras around new tokens (e.g. cast or shuffled)."""
        return TokenFeatures(tokens, self.footprints, self.grid_shape, self.extra, self.times)

    def select(self, index) -> "TokenFeatures":
        """A sub-batch (index into the batch dimension)."""
        return TokenFeatures(
            self.tokens[index], self.footprints[index], self.grid_shape, {k: v[index] for k, v in self.extra.items()},
            None if self.times is None else self.times[index],
        )

    def to_host(self, dtype: torch.dtype | None = None) -> "TokenFeatures":
        """A detached copy on the CPU, tokens and extras cast to `dtype` when given (footprints and times stay
        float32): what leaves the device after every batch, so a shard never accumulates there."""
        def host(t: torch.Tensor, cast: torch.dtype | None) -> torch.Tensor:
            # copy=True: on a CPU tensor of that dtype already, .to() would return the tensor itself
            return t.detach().to("cpu", cast or t.dtype, copy=True)

        return TokenFeatures(host(self.tokens, dtype), host(self.footprints, torch.float32), self.grid_shape,
                             {k: host(v, dtype) for k, v in self.extra.items()},
                             None if self.times is None else host(self.times, torch.float32))

    def finest_side(self) -> int:
        """The side of the finest raster among the tokens (a grid's own; for tiles or levels, the finest cells)."""
        if self.grid_shape:
            return max(self.grid_shape)
        widths = self.footprints[..., 2] - self.footprints[..., 0]
        return int(round(1 / float(widths.min())))

    def on_raster(self, side: int) -> "TokenFeatures":
        """The tokens resampled onto a side x side raster of the whole image by footprint overlap: each cell
        takes the area-weighted mean of the tokens covering it (tiles, levels and coarser grids alike)."""
        if self.tokens.shape[1] == 0:
            raise ValueError("a stage without spatial tokens cannot be put on a raster")
        if self.times is not None:
            raise ValueError("clip tokens cannot be put on one raster: resample each time step (not supported yet)")
        target = grid_footprints(side, side)
        weights = overlap_weights(target.double(), self.footprints.double())
        if (weights.sum(-1) == 0).any():
            raise ValueError("the tokens' footprints do not cover the whole image")
        tokens = (weights @ self.tokens.double()).float()
        return TokenFeatures(tokens, target.expand(len(tokens), -1, -1).contiguous(), (side, side))

    def pool_grid(self, k: int) -> "TokenFeatures":
        """A raster's tokens averaged over k x k cells (edge windows hold what is left), each with the union
        of its cells' footprints: a coarser raster of the same image, for stages too large to store whole.
        Stages that are not one raster (tiles, levels, placeless queries) and clips are returned as they are."""
        if k == 1 or self.grid_shape is None or self.times is not None:
            return self
        import torch.nn.functional as F

        b, _, c = self.tokens.shape
        h, w = self.grid_shape
        raster = self.tokens.float().reshape(b, h, w, c).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(raster, k, ceil_mode=True, count_include_pad=False)
        tokens = pooled.permute(0, 2, 3, 1).reshape(b, -1, c).to(self.tokens.dtype)
        corners = self.footprints.float().reshape(b, h, w, 4).permute(0, 3, 1, 2)
        low = -F.max_pool2d(-corners[:, :2], k, ceil_mode=True)  # x0, y0: the smallest in the window
        high = F.max_pool2d(corners[:, 2:], k, ceil_mode=True)  # x1, y1: the largest
        footprints = torch.cat([low, high], 1).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return TokenFeatures(tokens, footprints, tuple(pooled.shape[-2:]), self.extra)

    @staticmethod
    def concat(parts: list["TokenFeatures"]) -> "TokenFeatures":
        """Join batches of the same stage along the batch dimension."""
        first = parts[0]
        if len({p.times is None for p in parts}) > 1:
            raise ValueError("cannot join clips with still images: every part must have times, or none")
        return TokenFeatures(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.footprints for p in parts]),
            first.grid_shape,
            {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra},
            None if first.times is None else torch.cat([p.times for p in parts]),
        )


def grid_footprints(rows: int, cols: int, region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> torch.Tensor:
    """Footprints [rows*cols, 4] of a raster of equal cells tiling `region` of the image, in raster order."""
    x0, y0, x1, y1 = region
    xs = torch.linspace(x0, x1, cols + 1, dtype=torch.float64)
    ys = torch.linspace(y0, y1, rows + 1, dtype=torch.float64)
    gy, gx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    gy, gx = gy.reshape(-1), gx.reshape(-1)
    return torch.stack([xs[gx], ys[gy], xs[gx + 1], ys[gy + 1]], dim=-1).float()


def overlap_weights(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Row-normalized overlap areas [B, T, S] between target footprints [T, 4] and source footprints [B, S, 4]."""
    t, s = target[None, :, None, :], source[:, None, :, :]
    width = (torch.minimum(t[..., 2], s[..., 2]) - torch.maximum(t[..., 0], s[..., 0])).clamp(min=0)
    height = (torch.minimum(t[..., 3], s[..., 3]) - torch.maximum(t[..., 1], s[..., 1])).clamp(min=0)
    area = width * height
    return area / area.sum(-1, keepdim=True).clamp(min=1e-12)
