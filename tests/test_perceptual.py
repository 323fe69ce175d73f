"""Reconstruction metrics against their reference libraries."""
import lpips
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from spatialprobe.metrics import perceptual


def images(seed, n=3, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_lpips_wrapper_agrees_with_the_lpips_package():
    # the ImageNet AlexNet is not downloadable here: both sides use the same randomly initialized
    # AlexNet trunk (pnet_rand) with the package's real v0.1 linear heads
    torch.manual_seed(0)
    network = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    a, b = images(1), images(2)
    ours = perceptual.LPIPS(network)(a, b, batch_size=2)
    with torch.inference_mode():
        theirs = network(a, b, normalize=True).flatten()  # the package's own [0, 1] -> [-1, 1] path
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert ours.shape == (3,) and (perceptual.LPIPS(network)(a, a) < 1e-6).all()


def test_lpips_is_reported_unavailable_without_alexnet_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reason = perceptual.lpips_unavailable_reason()
    assert reason and perceptual.ALEXNET_FILE in reason and "torch cache" in reason
    with pytest.raises(RuntimeError, match="LPIPS unavailable"):
        perceptual.LPIPS()


def test_psnr_matches_scikit_image():
    a, b = images(3), images(4)
    ours = perceptual.psnr(a, b)
    theirs = [peak_signal_noise_ratio(x.double().numpy(), y.double().numpy(), data_range=1.0) for x, y in zip(a, b)]
    assert np.allclose(ours.numpy(), theirs, atol=1e-4)


def test_ssim_known_values():
    a = images(5)
    assert torch.allclose(perceptual.ssim(a, a), torch.ones(3))
    assert (perceptual.ssim(a, images(6)) < 0.2).all()
