"""What the adapter tests share: planted images and a count of a module's forward calls."""
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image


def noise_square_image(size: int, row: int, col: int, cell: int, background=(60, 60, 60)) -> Image.Image:
    """A plain `size`-px image with a bright noise square filling grid cell (row, col) of `cell` pixels."""
    array = np.full((size, size, 3), background, dtype=np.uint8)
    noise = np.random.default_rng(row * 31 + col).integers(150, 256, (cell, cell, 3))
    array[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = noise
    return Image.fromarray(array)


@contextmanager
def forward_calls(module: torch.nn.Module):
    """A list that gains one entry each time `module` runs forward inside the block."""
    calls: list[int] = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def assert_peaks_in_planted_cells(backbone, plants: list[tuple[int, int]], cells_per_side: int, size: int) -> None:
    """Plant a noise square in grid cell (row, col) of each image (cells_per_side x cells_per_side cells of a
    `size`-px image); at every stage, the token that changes most must lie inside its image's planted cell."""
    cell_px = size // cells_per_side
    images = [noise_square_image(size, row, col, cell_px) for row, col in plants]
    marked = backbone.extract(images)
    base = backbone.extract([Image.new("RGB", (size, size), (60, 60, 60))] * len(images))
    for stage in backbone.stages:
        change = (marked[stage].tokens - base[stage].tokens).norm(dim=-1)  # [B, N]
        for image, (row, col) in enumerate(plants):
            found = int(change[image].argmax())
            footprint = marked[stage].footprints[image, found]
            cell = torch.tensor([col, row, col + 1, row + 1]) / cells_per_side
            inside = bool((footprint[:2] >= cell[:2] - 1e-6).all() and (footprint[2:] <= cell[2:] + 1e-6).all())
            assert inside, (f"{stage} image {image}: change peaks at token {found} {footprint.tolist()}, "
                            f"planted in cell {(row, col)} of {cells_per_side}x{cells_per_side}")


def noise_square_clip(frames: int, frame: int, size: int, row: int, col: int, cell: int,
                      background=(60, 60, 60)) -> list[Image.Image]:
    """A plain clip of `frames` frames with a noise square in grid cell (row, col) of frame `frame` only
    (frame -1: no square anywhere, the baseline)."""
    plain = Image.new("RGB", (size, size), background)
    return [noise_square_image(size, row, col, cell, background) if index == frame else plain.copy()
            for index in range(frames)]


def assert_peaks_in_planted_cells_in_time(backbone, plants: list[tuple[int, int, int]], frames: int,
                                          cells_per_side: int, size: int, stages=None) -> None:
    """Plant a noise square in grid cell (row, col) of frame `frame` only, for each (frame, row, col) of
    `plants` (one clip each); at every stage, the token that changes most must lie inside the planted cell
    and its `times` must cover that frame (frame i of F covers [i/F, (i+1)/F))."""
    cell_px = size // cells_per_side
    clips = [noise_square_clip(frames, frame, size, row, col, cell_px) for frame, row, col in plants]
    marked = backbone.extract(clips, stages)
    base = backbone.extract([noise_square_clip(frames, -1, size, 0, 0, cell_px)] * len(clips), stages)
    for stage in marked:
        assert marked[stage].times is not None, f"{stage}: clip tokens carry no times"
        change = (marked[stage].tokens.float() - base[stage].tokens.float()).norm(dim=-1)  # [B, N]
        for index, (frame, row, col) in enumerate(plants):
            found = int(change[index].argmax())
            footprint = marked[stage].footprints[index, found]
            t0, t1 = marked[stage].times[index, found].tolist()
            cell = torch.tensor([col, row, col + 1, row + 1]) / cells_per_side
            inside = bool((footprint[:2] >= cell[:2] - 1e-6).all() and (footprint[2:] <= cell[2:] + 1e-6).all())
            covers = t0 <= frame / frames + 1e-6 and (frame + 1) / frames <= t1 + 1e-6
            assert inside and covers, (f"{stage} clip {index}: change peaks at token {found} {footprint.tolist()} "
                                       f"times {[t0, t1]}, planted in cell {(row, col)} of frame {frame}/{frames}")
