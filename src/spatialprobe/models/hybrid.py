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
from ..features import TokenFeatures
from .base import Backbone


def resample(feats: TokenFeatures, side: int) -> TokenFeatures:
    """A part's stage on the common raster (footprint-overlap mean), with the reason in the error."""
    try:
        return feats.on_raster(side)
    except ValueError as err:
        raise SpatialProbeError(f"hybrid part: {err}") from None


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
        return backbone.extract([Image.new("RGB", (64, 64))], stages=[stage])[stage].finest_side()

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

    def randomize_weights(self, seed: int) -> None:
        for number, (part, _stage) in enumerate(self.parts.values()):
            part.randomize_weights(seed + number)

    @classmethod
    def save_tiny(cls, path, seed: int = 0) -> None:
        raise SpatialProbeError("hybrid: a hybrid has no checkpoint of its own; save_tiny each part")
