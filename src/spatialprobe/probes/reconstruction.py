"""`reconstruction_probe` (b): a small convolutional decoder trained on the frozen token grid of one
stage to reproduce the input image, scored with LPIPS, PSNR and SSIM.

The decoder is deliberately small (a 1x1 projection, then x2 upsampling stages) so that what it
reconstructs must already be in the tokens; it only sees a stage whose tokens form a grid.
"""
from __future__ import annotations

import math

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


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True).clamp(min=1e-6)
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
    from ..metrics import mean_ci
    from ..metrics.perceptual import LPIPS, lpips_unavailable_reason, psnr, ssim

    recon = reconstruction_probe(train_grid, train_images, test_grid, seed=seed)
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
