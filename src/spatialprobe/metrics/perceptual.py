"""Image-reconstruction metrics: LPIPS (through the `lpips` package), PSNR and SSIM.

LPIPS v0.1 with AlexNet needs torchvision's ImageNet AlexNet weights. They cannot be downloaded on
an offline machine, and a number from any other backbone would not be LPIPS, so when the weights
are absent from the torch cache the metric is reported unavailable, with the reason and the fix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def lpips_unavailable_reason() -> str | None:
    """None when LPIPS can be computed here; else why not and how to fix it."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "the lpips package is not installed: pip install lpips"
    if not alexnet_weights_path().is_file():
        return (f"ImageNet AlexNet weights are not in the torch cache ({alexnet_weights_path()}); on a machine "
                "with internet run: python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\" "
                "or copy the file there")
    return None


class LPIPS:
    """LPIPS distance between image batches in [0, 1] ([n, 3, H, W]); lower is closer."""

    def __init__(self, network=None) -> None:
        if network is None:
            reason = lpips_unavailable_reason()
            if reason:
                raise RuntimeError(f"LPIPS unavailable: {reason}")
            import lpips

            network = lpips.LPIPS(net="alex", version="0.1", verbose=False)
        self.network = network.eval()

    @torch.inference_mode()
    def __call__(self, a: torch.Tensor, b: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(a), batch_size):
            # the lpips package expects [-1, 1]
            x, y = (t[start : start + batch_size].float() * 2 - 1 for t in (a, b))
            out.append(self.network(x, y).flatten())
        return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-12))).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (scikit-image, Gaussian window as in Wang et al. 2004) for images in [0, 1]."""
    from skimage.metrics import structural_similarity

    values = [structural_similarity(x.permute(1, 2, 0).double().numpy(), y.permute(1, 2, 0).double().numpy(),
                                    channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
              for x, y in zip(a, b)]
    return torch.tensor(np.array(values), dtype=torch.float32)
