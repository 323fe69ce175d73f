"""The reconstruction probe on features whose answer is known."""
import torch

from spatialprobe.metrics.perceptual import psnr
from spatialprobe.probes.reconstruction import reconstruction_probe


def blobs(n, seed, size=32):
    """Images of one soft bright blob at a random place on a dark background."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    d2 = (xx - centres[:, 0, None, None]) ** 2 + (yy - centres[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / 0.01)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.5
    return (blob[:, None] * colour).clamp(0, 1)


def patch_grid(images, grid=8):
    """The pixels control: each token holds its patch's raw pixels."""
    n, c, s, _ = images.shape
    p = s // grid
    return images.reshape(n, c, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(n, grid, grid, c * p * p)


def shuffle_each(grid, seed):
    """Token order permuted independently per image (the shuffled-tokens control)."""
    g = torch.Generator().manual_seed(seed)
    flat = grid.flatten(1, 2)
    order = torch.stack([torch.randperm(flat.shape[1], generator=g) for _ in range(len(flat))])
    return torch.gather(flat, 1, order[..., None].expand_as(flat)).reshape(grid.shape)


def test_pixel_tokens_reconstruct_the_image_and_shuffled_tokens_do_not():
    train, test = blobs(96, 0), blobs(32, 1)
    recon = reconstruction_probe(patch_grid(train), train, patch_grid(test), epochs=60, seed=0)
    mean_image = train.mean(0, keepdim=True).expand_as(test)
    assert recon.shape == test.shape
    assert psnr(recon, test).mean() > psnr(mean_image, test).mean() + 6  # far better than no features
    shuffled = reconstruction_probe(shuffle_each(patch_grid(train), 2), train, shuffle_each(patch_grid(test), 3),
                                    epochs=60, seed=0)
    assert psnr(shuffled, test).mean() < psnr(recon, test).mean() - 4


def test_output_size_follows_the_targets():
    train = blobs(8, 3, size=64)
    grid = torch.randn(8, 4, 4, 5)
    assert reconstruction_probe(grid, train, grid[:2], epochs=1).shape == (2, 3, 64, 64)
