"""A hybrid backbone: stages of two or more backbones on one footprint grid, side by side.

The proposal's contingency (section 9.4) pairs a spatial encoder (OWL-ViT, DETR) with a VLM's
semantics. Each part contributes one stage; its tokens are resampled onto a common raster by
footprint overlap (each target cell takes the area-weighted mean of the part tokens that cover it,
so tiles, multi-scale maps and coarse grids all map the same way) and the parts are concatenated
along channels. Stages: `hybrid.<part>` for each part alone on the common grid, then
`hybrid.concat`: probing all of them shows what the spatial pathway adds to the semantic one.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures, grid_footprints
from .base import Backbone


def overlap_weights(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Row-normalized overlap areas [B, T, S] between target footprints [T, 4] and source footprints [B, S, 4]."""
    t, s = target[None, :, None, :], source[:, None, :, :]
    width = (torch.minimum(t[..., 2], s[..., 2]) - torch.maximum(t[..., 0], s[..., 0])).clamp(min=0)
    height = (torch.minimum(t[..., 3], s[..., 3]) - torch.maximum(t[..., 1], s[..., 1])).clamp(min=0)
    area = width * height
    return area / area.sum(-1, keepdim=True).clamp(min=1e-12)


def resample(feats: TokenFeatures, side: int) -> TokenFeatures:
    """A stage's tokens on a side x side raster of the whole image, by footprint overlap."""
    if feats.tokens.shape[1] == 0:
        raise SpatialProbeError("a hybrid part must have tokens with a place in the image (not only queries)")
    target = grid_footprints(side, side)
    weights = overlap_weights(target.double(), feats.footprints.double())
    if (weights.sum(-1) == 0).any():
        raise SpatialProbeError("a hybrid part's tokens do not cover the whole image")
    tokens = (weights @ feats.tokens.double()).float()
    return TokenFeatures(tokens, target.expand(len(tokens), -1, -1).contiguous(), (side, side))


class HybridBackbone(Backbone):
    family = "hybrid"
    stage_summary = "hybrid.<part> (each part's stage on the common grid), hybrid.concat (all parts, channels joined)"
    weights_source = "those of its parts"
    offline_test = "yes (tiny parts)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32",
                 parts: list[dict[str, Any]] | None = None, grid: int | None = None, **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from . import load_backbone

        if not parts or len(parts) < 2:
            raise SpatialProbeError("hybrid: needs at least two parts, each {name, family, path, stage}")
        self.parts: dict[str, tuple[Backbone, str]] = {}
        for part in parts:
            options = {k: v for k, v in part.items() if k not in ("name", "family", "path", "stage", "options")}
            backbone = load_backbone(part["family"], part["path"], device=device, dtype=dtype,
                                     **options, **part.get("options", {}))
            self.parts[part["name"]] = (backbone, backbone.resolve_stages([part["stage"]])[0])
        self.side = int(grid or max(self._part_side(b, s) for b, s in self.parts.values()))

    @staticmethod
    def _part_side(backbone: Backbone, stage: str) -> int:
        """The raster side of a part's stage, read from one blank image (tiles and levels: their finest)."""
        feats = backbone.extract([Image.new("RGB", (64, 64))], stages=[stage])[stage]
        if feats.grid_shape:
            return max(feats.grid_shape)
        widths = feats.footprints[0, :, 2] - feats.footprints[0, :, 0]
        return int(round(1 / float(widths.min())))

    @property
    def stages(self) -> list[str]:
        return [f"hybrid.{name}" for name in self.parts] + ["hybrid.concat"]

    def preprocessing(self) -> dict[str, Any]:
        return {"grid": self.side, "resample": "footprint-overlap mean",
                "parts": {name: {"family": b.family, "path": b.name_or_path, "stage": stage, **b.preprocessing()}
                          for name, (b, stage) in self.parts.items()}}

    def weights_fingerprint(self) -> str:
        joined = "|".join(f"{name}:{b.weights_fingerprint()}" for name, (b, _) in self.parts.items())
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def _extract_batch(self, images: list[Image.Image], stages: list[str]) -> dict[str, TokenFeatures]:
        on_grid = {f"hybrid.{name}": resample(backbone.extract(images, stages=[stage])[stage], self.side)
                   for name, (backbone, stage) in self.parts.items()}
        joined = torch.cat([f.tokens for f in on_grid.values()], dim=-1)
        first = next(iter(on_grid.values()))
        on_grid["hybrid.concat"] = first.with_tokens(joined)
        return {stage: on_grid[stage] for stage in stages}

    @classmethod
    def save_tiny(cls, path, seed: int = 0) -> None:
        raise SpatialProbeError("hybrid: a hybrid has no checkpoint of its own; save_tiny each part")
