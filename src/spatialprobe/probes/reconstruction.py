"""`reconstruction_probe` (b): a small convolutional decoder trained on the frozen token grid of one
stage to reproduce the input image, scored with LPIPS, PSNR and SSIM.

The decoder is deliberately small (a 1x1 projection, then x2 upsampling stages) so that what it
reconstructs must already be in the tokens; it only sees a stage whose tokens form a grid.

Two entry points give the same numbers bit for bit: `reconstruction_probe` on grids in memory, and
`streamed_reconstruction_probe` on grids read a shard at a time (`GridShards`), which never holds a
whole split: the standardization statistics come from blocks of channels of every image (the very
reduction the in-memory code runs, column by column), and minibatches are gathered from the shards
they fall in.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from torch.nn import functional as F

OUTPUT_SIZE = 64  # reconstructions and targets are compared at 64x64 px


class GridDecoder(nn.Module):
    def __init__(self, channels: int, grid: int, output: int = OUTPUT_SIZE, width: int = 64) -> None:
        super().__init__()
        self.output = output
        self.project = nn.Conv2d(channels, width, 1)
        stages, size = [], grid
        for _ in range(max(0, math.ceil(math.log2(output / grid)))):
            narrower = max(16, width // 2)
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, narrower, 3, padding=1), nn.GELU()]
            width, size = narrower, size * 2
        self.body = nn.Sequential(*stages)
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.body(F.gelu(self.project(grid)))
        x = F.interpolate(x, size=(self.output, self.output), mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(x))


def channel_moments(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [1, C, 1, 1] of float32 grids [n, C, h, w] (torch's float32 reductions)."""
    return train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True).clamp(min=1e-6)


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = channel_moments(train)
    return (train - mean) / std, (test - mean) / std


def reconstruction_probe(train_grid: torch.Tensor, train_images: torch.Tensor, test_grid: torch.Tensor,
                         epochs: int = 30, batch_size: int = 32, seed: int = 0) -> torch.Tensor:
    """Train on (grid [n, h, w, C], images [n, 3, S, S] in [0, 1]); return test reconstructions [m, 3, S, S]."""
    torch.manual_seed(seed)
    x_train, x_test = standardize(train_grid.permute(0, 3, 1, 2).float(), test_grid.permute(0, 3, 1, 2).float())
    decoder = GridDecoder(x_train.shape[1], x_train.shape[2], train_images.shape[-1])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=generator).split(batch_size):
            loss = F.mse_loss(decoder(x_train[batch]), train_images[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    decoder.eval()
    with torch.inference_mode():
        return torch.cat([decoder(part) for part in x_test.split(64)])


def reconstruction_records(train_grid: torch.Tensor, train_images: torch.Tensor, test_grid: torch.Tensor,
                           test_images: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """LPIPS (or why it is unavailable), PSNR and SSIM of the decoder's test reconstructions.

    floor: the training set's mean image as every reconstruction (no features); ceiling: a perfect
    reconstruction (PSNR is capped at 120 dB, where the error clamps)."""
    return score_reconstructions(reconstruction_probe(train_grid, train_images, test_grid, seed=seed), train_images,
                                 test_images, n_boot, seed)


def score_reconstructions(recon: torch.Tensor, train_images: torch.Tensor, test_images: torch.Tensor,
                          n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """The records of `reconstruction_records` for reconstructions already made."""
    from ..metrics import mean_ci
    from ..metrics.perceptual import LPIPS, lpips_unavailable_reason, psnr, ssim

    mean_image = train_images.mean(0, keepdim=True).expand_as(test_images)
    scorers = {"psnr": psnr, "ssim": ssim}
    unavailable = lpips_unavailable_reason()
    if unavailable is None:
        scorers["lpips"] = LPIPS()
    n = len(test_images)
    records = []
    for metric, scorer in scorers.items():
        values = scorer(recon, test_images).numpy()
        low, high = mean_ci(values, n_boot, seed)
        records.append({"probe": "decoder", "metric": metric, "value": float(values.mean()), "ci_low": low,
                        "ci_high": high, "ci_covers": "test", "floor": float(scorer(mean_image, test_images).mean()),
                        "ceiling": float(scorer(test_images, test_images).mean()), "n": n})
    if unavailable:
        records.append({"probe": "decoder", "metric": "lpips", "value": None, "ci_low": None, "ci_high": None,
                        "ci_covers": "none", "floor": None, "ceiling": 0.0, "n": n, "unavailable": unavailable})
    return records


# --- streaming: the same probe on grids read a shard at a time

#: A column block of the statistics holds every image's values of 64k channels: at least one shard's worth
#: of float32 values is always allowed, and at least this many (256 MiB), so small runs use one block.
STATS_BLOCK_ELEMENTS = 64 * 2**20
#: torch's float32 sum groups channels by up to 64 (4 vectors of 16 under AVX-512): blocks that start at
#: multiples of 64, the last one ending at C, see every channel in the same group as the whole tensor does.
CHANNEL_GROUP = 64
STREAMED_FLOAT64 = "float64, streamed shard by shard"

Watch = Callable[[str, torch.Tensor], None]  # (what, tensor) for every tensor of stage data materialized


class GridShards(Protocol):
    """One split's token grids, in consecutive shards of `shard_size` images, in image order."""
    shard_size: int

    def __len__(self) -> int: ...  # images

    def shards(self) -> Iterator[torch.Tensor]: ...  # [m, h, w, C], any float dtype (memory-mapped is fine)

    def shard(self, number: int) -> torch.Tensor: ...  # shard `number` alone


class TensorGrids:
    """Grids [n, h, w, C] already in memory, served as shards (tests, small data)."""

    def __init__(self, grid: torch.Tensor, shard_size: int = 64) -> None:
        self.grid, self.shard_size = grid, shard_size

    def __len__(self) -> int:
        return len(self.grid)

    def shards(self) -> Iterator[torch.Tensor]:
        return iter(self.grid.split(self.shard_size))

    def shard(self, number: int) -> torch.Tensor:
        return self.grid[number * self.shard_size:(number + 1) * self.shard_size]


def _ignore(what: str, tensor: torch.Tensor) -> None:
    pass


def take(grids: GridShards, indices: torch.Tensor, watch: Watch = _ignore) -> torch.Tensor:
    """Images `indices` (in that order) as contiguous float32 [b, h, w, C], reading only the shards they fall in."""
    shard_of = indices // grids.shard_size
    out = None
    for number in shard_of.unique().tolist():
        where = (shard_of == number).nonzero().squeeze(1)
        rows = grids.shard(number)[indices[where] - number * grids.shard_size].float()
        if out is None:
            out = torch.empty((len(indices), *rows.shape[1:]))
        out[where] = rows
    watch("batch", out)
    return out


def column_blocks(channels: int, width: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive channel blocks of `width` (a multiple of CHANNEL_GROUP) and the rest; a rest
    narrower than one group joins the block before it (alone, torch would sum it by another kernel)."""
    starts = list(range(0, channels, width))
    if len(starts) > 1 and channels - starts[-1] < CHANNEL_GROUP:
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [channels])]


def grid_shape(grids: GridShards) -> tuple[int, int, int]:
    """(h, w, C) of the grids (reads the first shard's header, maps no values)."""
    return tuple(next(iter(grids.shards())).shape[1:])


def streamed_channel_moments(grids: GridShards, block_elements: int | None = None,
                             watch: Watch = _ignore) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """`channel_moments` of every image of `grids`, a block of channels at a time: bit for bit the in-memory
    values (the same float32 reduction runs on each channel's values, in the same order). When even one group
    of channels of every image exceeds the block budget, the moments are accumulated in float64 shard by
    shard instead (within a float32 rounding of those), and the third value says so."""
    h, w, channels = grid_shape(grids)
    values = len(grids) * h * w
    budget = max(block_elements or STATS_BLOCK_ELEMENTS, grids.shard_size * h * w * channels)
    width = budget // values // CHANNEL_GROUP * CHANNEL_GROUP
    if width == 0 and channels * values > budget:
        return (*_float64_moments(grids, watch), STREAMED_FLOAT64)
    means, stds = [], []
    for start, stop in column_blocks(channels, max(width, CHANNEL_GROUP)):
        block, at = torch.empty(len(grids), h, w, stop - start), 0
        watch("stats block", block)
        for shard in grids.shards():
            block[at:at + len(shard)] = shard[..., start:stop]  # float16 -> float32 as .float() does: exact
            at += len(shard)
        mean, std = channel_moments(block.permute(0, 3, 1, 2))
        means.append(mean)
        stds.append(std)
        del block
    return torch.cat(means, dim=1), torch.cat(stds, dim=1), None


def _float64_moments(grids: GridShards, watch: Watch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (n - 1) per channel, merged over shards in float64 (Chan et al.'s pairwise update)."""
    count, mean, m2 = 0, None, None
    for shard in grids.shards():
        values = shard.reshape(-1, shard.shape[-1]).double()
        watch("stats shard", values)
        n, shard_mean = len(values), values.mean(0)
        shard_m2 = ((values - shard_mean) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = n, shard_mean, shard_m2
            continue
        delta, total = shard_mean - mean, count + n
        mean, m2 = mean + delta * n / total, m2 + shard_m2 + delta ** 2 * count * n / total
        count = total
    std = (m2 / (count - 1)).sqrt()
    return mean.float().reshape(1, -1, 1, 1), std.float().clamp(min=1e-6).reshape(1, -1, 1, 1)


def streamed_reconstruction_probe(train: GridShards, train_images: torch.Tensor, test: GridShards,
                                  epochs: int = 30, batch_size: int = 32, seed: int = 0,
                                  block_elements: int | None = None,
                                  watch: Watch = _ignore) -> tuple[torch.Tensor, str | None]:
    """`reconstruction_probe` on grids read shard by shard: the same minibatches, the same float32 values in
    the same order, so the same reconstructions [m, 3, S, S]. Also says how the statistics were computed
    (None: exactly as in memory)."""
    torch.manual_seed(seed)
    mean, std, moments = streamed_channel_moments(train, block_elements, watch)

    def standardized(grids: GridShards, indices: torch.Tensor) -> torch.Tensor:
        # the permuted (channels-last) layout of the in-memory path, so the convolutions see the same strides
        return (take(grids, indices, watch).permute(0, 3, 1, 2) - mean) / std

    h, _, channels = grid_shape(train)
    decoder = GridDecoder(channels, h, train_images.shape[-1])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=generator).split(batch_size):
            loss = F.mse_loss(decoder(standardized(train, batch)), train_images[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    decoder.eval()
    with torch.inference_mode():
        recon = torch.cat([decoder(standardized(test, part)) for part in torch.arange(len(test)).split(64)])
    return recon, moments


def streamed_reconstruction_records(train: GridShards, train_images: torch.Tensor, test: GridShards,
                                    test_images: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                                    **probe_options) -> list[dict]:
    """`reconstruction_records` on grids read shard by shard (rows say `standardization` when the moments
    had to be accumulated in float64); `probe_options` go to `streamed_reconstruction_probe`."""
    recon, moments = streamed_reconstruction_probe(train, train_images, test, seed=seed, **probe_options)
    records = score_reconstructions(recon, train_images, test_images, n_boot, seed)
    return [{**r, "standardization": moments} for r in records] if moments else records
