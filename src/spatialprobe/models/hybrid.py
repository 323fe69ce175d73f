"""A hybrid backbone: stages of two or more backbones on one footprint grid, side by side.

The proposal's contingency (section 9.4) pairs a spatial encoder (OWL-ViT, DETR) with a VLM's
semantics. Each part contributes one stage; its tokens are resampled onto a common raster by
footprint overlap (each target cell takes the area-weighted mean of the part tokens that cover it,
so tiles, multi-scale maps and coarse grids all map the same way) and the parts are concatenated
along channels. Stages: `hybrid.<part>` for each part alone on the common grid, then
`hybrid.concat`: probing all of them shows what the spatial pathway adds to the semantic one.

A run never loads this adapter to extract: each part is extracted as a model of its own (so a part
that is also a standalone model of the run is read once) and `compose` makes the hybrid's stages
from the parts' stored stages on the host (`jobs.ComposeJob`). The adapter reads its parts live with
the same `compose` (the speed task, the Python API).
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


#: every part is rounded to the precision the feature store keeps a stage in before it is resampled, so a
#: hybrid composed from stored parts (`jobs.ComposeJob`) and one read live give the same bits
PART_DTYPE = torch.float16
RESAMPLING = "footprint-overlap mean"


def hybrid_stages(part_names) -> list[str]:
    """A hybrid's stages: each part on the common grid, then all of them joined."""
    return [f"hybrid.{name}" for name in part_names] + ["hybrid.concat"]


def common_side(part_feats, grid: int | None = None) -> int:
    """The common raster's side: `grid` when configured, else the finest raster among the parts' stages
    (each `TokenFeatures`; tiles and levels count by their finest cells)."""
    return int(grid or max(feats.finest_side() for feats in part_feats))


def compose(parts: dict[str, TokenFeatures], side: int) -> dict[str, TokenFeatures]:
    """Every hybrid stage of one batch from its parts' stages ({part name: features}, in part order): each
    part at store precision resampled onto the side x side raster, then all of them joined along channels."""
    on_grid = {f"hybrid.{name}": resample(feats.with_tokens(feats.tokens.to(PART_DTYPE)), side)
               for name, feats in parts.items()}
    first = next(iter(on_grid.values()))
    on_grid["hybrid.concat"] = first.with_tokens(torch.cat([f.tokens for f in on_grid.values()], dim=-1))
    return on_grid


def hybrid_preprocessing(side: int | None, parts: dict[str, dict]) -> dict[str, Any]:
    """The hybrid's preprocessing facts; `parts`: name -> {family, path, stage, **its preprocessing}."""
    return {"grid": side, "resample": RESAMPLING, "parts": parts}


def hybrid_fingerprint(part_weights: dict[str, str]) -> str:
    """The hybrid's weights fingerprint from its parts' (name -> fingerprint, in part order)."""
    joined = "|".join(f"{name}:{weights}" for name, weights in part_weights.items())
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def describe_hybrid(path: str, dtype: str, load: dict, side: int | None, parts: dict[str, tuple[dict, str]]) -> dict:
    """What `HybridBackbone.describe()` says (but the label), built from its parts' descriptions without loading
    them: `parts` is name -> (the part's describe(), its resolved stage), in part order."""
    return {"family": HybridBackbone.family, "name_or_path": path, "dtype": dtype,
            "weights": hybrid_fingerprint({name: d["weights"] for name, (d, _) in parts.items()}),
            "preprocessing": hybrid_preprocessing(side, {
                name: {"family": d["family"], "path": d["name_or_path"], "stage": stage, **d["preprocessing"]}
                for name, (d, stage) in parts.items()}),
            "load": load}


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
        self.side = common_side([self._blank(b, s) for b, s in self.parts.values()], grid)

    @staticmethod
    def _blank(backbone: Backbone, stage: str) -> TokenFeatures:
        """A part's stage of one blank image: its footprints give the part's raster side."""
        return backbone.extract([Image.new("RGB", (64, 64))], stages=[stage])[stage]

    @property
    def stages(self) -> list[str]:
        return hybrid_stages(self.parts)

    def preprocessing(self) -> dict[str, Any]:
        return hybrid_preprocessing(self.side, {
            name: {"family": b.family, "path": b.name_or_path, "stage": stage, **b.preprocessing()}
            for name, (b, stage) in self.parts.items()})

    def weights_fingerprint(self) -> str:
        return hybrid_fingerprint({name: b.weights_fingerprint() for name, (b, _) in self.parts.items()})

    def _extract_batch(self, images: list[Image.Image], stages: list[str]) -> dict[str, TokenFeatures]:
        on_grid = compose({name: backbone.extract(images, stages=[stage])[stage]
                           for name, (backbone, stage) in self.parts.items()}, self.side)
        return {stage: on_grid[stage] for stage in stages}

    def randomize_weights(self, seed: int) -> None:
        for number, (part, _stage) in enumerate(self.parts.values()):
            part.randomize_weights(seed + number)

    @classmethod
    def save_tiny(cls, path, seed: int = 0) -> None:
        raise SpatialProbeError("hybrid: a hybrid has no checkpoint of its own; save_tiny each part")
