"""Stored token pooling (`models[].pool`): known means and footprint unions, and a planted patch still found."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

import spatialprobe as sp
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.spec import ModelSpec
from planting import noise_square_image


def raster(h: int, w: int, channels: int = 2) -> TokenFeatures:
    tokens = torch.arange(h * w * channels, dtype=torch.float32).reshape(1, h * w, channels)
    return TokenFeatures(tokens, grid_footprints(h, w)[None], (h, w))


def test_pooling_averages_cells_and_joins_their_footprints():
    pooled = raster(4, 4, 1).pool_grid(2)
    assert pooled.grid_shape == (2, 2)
    # cells (0,0),(0,1),(1,0),(1,1) of a 4x4 raster hold 0, 1, 4, 5
    assert pooled.tokens[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert torch.allclose(pooled.footprints[0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    assert torch.allclose(pooled.footprints[0, 3], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_edge_windows_hold_what_is_left():
    pooled = raster(5, 5, 1).pool_grid(2)
    assert pooled.grid_shape == (3, 3)
    assert pooled.tokens[0, 2, 0].item() == pytest.approx((4 + 9) / 2)  # the last column: two cells
    assert pooled.tokens[0, 8, 0].item() == 24.0  # the corner: one cell
    assert torch.allclose(pooled.footprints[0, 8], torch.tensor([0.8, 0.8, 1.0, 1.0]))


def test_stages_that_are_not_one_raster_are_stored_as_they_are():
    tiles = raster(4, 4)
    tiles = TokenFeatures(tiles.tokens, tiles.footprints, None)
    assert tiles.pool_grid(2) is tiles
    clip = raster(2, 2)
    clip = TokenFeatures(clip.tokens, clip.footprints, (2, 2), times=torch.zeros(1, 4, 2))
    assert clip.pool_grid(2) is clip


def test_pool_is_in_the_key_only_when_it_pools():
    spec = ModelSpec("pixels", "pixels", variant="pixels")
    assert dataclasses.replace(spec, pool=1).key() == spec.key()
    assert dataclasses.replace(spec, pool=2).key() != spec.key()


def test_a_planted_patch_is_found_in_the_pooled_token_that_covers_it(tmp_path):
    backbone = sp.load_backbone("pixels", "pixels", resolution=112)  # 8 x 8 patches of 14 px
    size, cells = 112, 4  # the patch fills one cell of a 4 x 4 grid: one pooled token (2 x 2 patches)
    for row, col in ((0, 3), (2, 1)):
        marked = backbone.extract([noise_square_image(size, row, col, size // cells)])["vision.embed"].pool_grid(2)
        base = backbone.extract([Image.new("RGB", (size, size), (60, 60, 60))])["vision.embed"].pool_grid(2)
        found = int((marked.tokens - base.tokens).norm(dim=-1)[0].argmax())
        assert marked.grid_shape == (4, 4)
        assert torch.allclose(marked.footprints[0, found], torch.tensor([col, row, col + 1, row + 1]) / cells)
