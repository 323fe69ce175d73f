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
