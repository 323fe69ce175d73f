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


# --- streaming: the probe reads the stage a shard, a block of channels or a minibatch at a time

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import spatialprobe.metrics.perceptual as perceptual
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.probes import reconstruction as recon_module
from spatialprobe.probes.reconstruction import (TensorGrids, channel_moments, reconstruction_records,
                                                streamed_channel_moments, streamed_reconstruction_probe)
from spatialprobe.store.shards import FeatureCache, stage_key, stored_form
from spatialprobe.store.sources import StoreSource
from spatialprobe.tasks import reconstruction_probe as task_module


def half_grid(n, channels, side=4, seed=0):
    """Token grids [n, side, side, C] holding float16 values, as the store keeps them."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, side, side, channels, generator=g) * 2 + 1).half()


@pytest.mark.parametrize("channels, block_elements", [(200, None), (200, 160 * 64), (330, 160 * 128)])
def test_streamed_moments_are_the_in_memory_moments_bit_for_bit(channels, block_elements):
    grid = half_grid(10, channels)  # 10 images x 16 tokens = 160 values per channel
    blocks = []
    mean, std, how = streamed_channel_moments(TensorGrids(grid, 3), block_elements,
                                              watch=lambda what, t: blocks.append(t.shape[-1]))
    expected_mean, expected_std = channel_moments(grid.float().permute(0, 3, 1, 2))
    assert how is None and torch.equal(mean, expected_mean) and torch.equal(std, expected_std)
    assert sum(blocks) == channels and (block_elements is None or len(blocks) > 1)  # several blocks were used


def test_moments_fall_back_to_float64_and_say_so_when_one_group_of_channels_is_too_big():
    grid = half_grid(10, 200)
    mean, std, how = streamed_channel_moments(TensorGrids(grid, 3), block_elements=1)
    expected_mean, expected_std = channel_moments(grid.float().permute(0, 3, 1, 2))
    assert how == recon_module.STREAMED_FLOAT64
    torch.testing.assert_close(mean, expected_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std, expected_std, rtol=1e-6, atol=1e-6)


def test_streamed_probe_gives_the_in_memory_reconstructions_bit_for_bit():
    train, test, images = half_grid(10, 200, seed=1), half_grid(5, 200, seed=2), blobs(10, 4, size=16)
    expected = reconstruction_probe(train.float(), images, test.float(), epochs=4, batch_size=4, seed=3)
    got, how = streamed_reconstruction_probe(TensorGrids(train, 3), images, TensorGrids(test, 2), epochs=4,
                                             batch_size=4, seed=3, block_elements=160 * 64)
    assert how is None and torch.equal(got, expected)


class Shapes:
    """A split of `n` small images (what `image_batch` reads)."""

    def __init__(self, n, seed):
        self.images = (blobs(n, seed, size=24).permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()

    def __len__(self):
        return len(self.images)

    def load_image(self, i):
        return Image.fromarray(self.images[i])


def grid_feats(n, channels, seed):
    return TokenFeatures(half_grid(n, channels, seed=seed).flatten(1, 2), grid_footprints(4, 4).expand(n, -1, -1), (4, 4))


def level_feats(n, channels, seed):
    """Two levels (a 2x2 grid and a 4x4 grid of the whole image): tokens without one grid, to be resampled."""
    g = torch.Generator().manual_seed(seed)
    footprints = torch.cat([grid_footprints(2, 2), grid_footprints(4, 4)]).expand(n, -1, -1)
    return TokenFeatures(torch.randn(n, 20, channels, generator=g).half(), footprints.contiguous())


def stored_source(root, feats, split, shard_size):
    """`feats` written to a feature store shard by shard (as extraction does); their stored form."""
    cache, n = FeatureCache(root), len(feats.tokens)
    for start in range(0, n, shard_size):
        stop = min(start + shard_size, n)
        cache.save(stage_key("k", "hash", split, start, stop, "s"), feats.select(slice(start, stop)))
    return StoreSource(cache, "k", "hash", split, n, shard_size, "s"), stored_form(feats)


@pytest.fixture
def never_joined(monkeypatch):
    """LPIPS left out (no weights offline), and any joining of a whole split fails the test."""
    monkeypatch.setattr(perceptual, "lpips_unavailable_reason", lambda: "no AlexNet weights (test)")

    def refuse(*args, **kwargs):
        raise AssertionError("the streamed path joined a whole split in memory")

    yield lambda: (monkeypatch.setattr(TokenFeatures, "concat", staticmethod(refuse)),
                   monkeypatch.setattr(StoreSource, "gather", refuse))


def test_the_job_streams_the_store_and_gives_the_in_memory_records(tmp_path, never_joined):
    train_feats, test_feats = grid_feats(5, 130, 1), grid_feats(2, 130, 2)
    train_data, test_data = Shapes(5, 5), Shapes(2, 6)
    config = SimpleNamespace(bootstrap=50, seed=0, shard_size=3)
    _, train_stored = stored_source(tmp_path / "store", train_feats, "train", 3)
    _, test_stored = stored_source(tmp_path / "store", test_feats, "test", 3)
    expected = reconstruction_records(train_stored.grid().float(), task_module.image_batch(train_data),
                                      test_stored.grid().float(), task_module.image_batch(test_data), 50, 0)
    data = SimpleNamespace(hash="hash", key=lambda: {"data": "shapes"},
                           split=lambda split: {"train": train_data, "test": test_data}[split])
    ctx = task_module.PlanContext(config, data, str(tmp_path / "store"), str(tmp_path / "results"))
    run = SimpleNamespace(spec=SimpleNamespace(key=lambda: "k"), name="m", label="m", family="f", variant="none")
    never_joined()
    rows = task_module.ReconstructionJob(run, "s", ctx).run()
    assert [{k: r[k] for k in e} for r, e in zip(rows, expected)] == expected and len(rows) == len(expected)
    assert {(r["stage"], r["task"]) for r in rows} == {("s", "reconstruction_probe")}


def test_a_stage_of_levels_is_resampled_shard_by_shard_with_the_in_memory_records(tmp_path, never_joined):
    train_feats, test_feats = level_feats(5, 70, 1), level_feats(2, 70, 2)
    train_data, test_data = Shapes(5, 5), Shapes(2, 6)
    train, train_stored = stored_source(tmp_path, train_feats, "train", 3)
    test, test_stored = stored_source(tmp_path, test_feats, "test", 3)
    config = SimpleNamespace(bootstrap=50, seed=0)
    side = train_stored.finest_side()
    expected = reconstruction_records(train_stored.on_raster(side).grid(), task_module.image_batch(train_data),
                                      test_stored.on_raster(side).grid(), task_module.image_batch(test_data), 50, 0)
    never_joined()
    rows = task_module.reconstruction_results(train, test, train_data, test_data, config)
    assert rows == [{"resampled_to": 4, **r} for r in expected]
    assert not list(tmp_path.glob("spatialprobe-raster-*"))  # the resampled shards are removed afterwards


@pytest.mark.parametrize("make_feats", [grid_feats, level_feats])
def test_stage_data_held_does_not_grow_with_the_number_of_images(tmp_path, never_joined, make_feats):
    """Every tensor of stage data the probe materializes (shards resampled, blocks of channels, minibatches)
    stays within one shard (3 images here; minibatches of 2), whatever the number of images."""
    never_joined()
    largest, config = {}, SimpleNamespace(bootstrap=20, seed=0)
    for n in (6, 12, 24):
        train, _ = stored_source(tmp_path / f"{n}", make_feats(n, 256, 1), "train", 3)
        test, _ = stored_source(tmp_path / f"{n}", make_feats(3, 256, 2), "test", 3)
        sizes = []
        rows = task_module.reconstruction_results(train, test, Shapes(n, 5), Shapes(3, 6), config, block_elements=1,
                                                  epochs=1, batch_size=2, watch=lambda what, t: sizes.append(t.numel()))
        largest[n] = max(sizes)
        assert largest[n] <= 3 * 16 * 256 < n * 16 * 256  # one shard of the 4x4 raster of 256 channels
        assert ("standardization" in rows[0]) == (n == 24)  # 64 channels of 24 images exceed one shard
    assert len(set(largest.values())) == 1
