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
