"""A tiny random-initialized LTX-Video VAE (diffusers' AutoencoderKLLTXVideo), built offline in code.

It keeps what the adapter relies on from the real VAE: 4x4 patches and three 2x down-samplings in space and
time (32x spatial, 8x temporal compression), 128 latent channels, a causal encoder, and per-channel
`latents_mean` / `latents_std` buffers plus a `scaling_factor` (not the identity, so a missing normalization
step shows). Its blocks are 8-16 channels wide with one layer each: 462,929 parameters (575,698 with the
timestep-conditioned decoder). The encoder's conv taps that reach past a cell's own pixels and frames are
damped (`damp_neighbour_taps`), so a planted patch shows which latent cell reads which place and time.

`timestep_conditioning=True` gives the decoder of LTX-Video 0.9.1 and later (timestep-conditioned norms,
noise injection, residual up-sampling), so the decode path those checkpoints need is tested too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LATENT_CHANNELS = 128
#: what is left of an encoder conv's weights that reach beyond the output's own cell (see damp_neighbour_taps)
LEAK = 0.02


def tiny_config(timestep_conditioning: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        latent_channels=LATENT_CHANNELS, patch_size=4, patch_size_t=1,
        block_out_channels=(8, 16, 16, 16), layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        # equal decoder widths: diffusers' up block conditions its channel-changing conv on the raw timestep
        decoder_block_out_channels=(16, 16, 16, 16), decoder_layers_per_block=(1, 1, 1, 1, 1),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        scaling_factor=0.5, encoder_causal=True, decoder_causal=False,
        timestep_conditioning=timestep_conditioning,
    )
    if timestep_conditioning:
        config.update(decoder_inject_noise=(True, True, True, False, False),
                      upsample_residual=(True, True, True, False))
    return config


def own_cell_taps(kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """[kt, kh, kw] 1 on the taps of a causal conv that read the output's own cell, 0 elsewhere.

    A causal conv's output t reads frames t-kt+1 .. t (the last tap is its own frame); a stride-2 output t
    reads 2t-2 .. 2t, whose last two taps are the frames it compresses (2t-1, 2t). In space a 3-wide kernel
    with padding 1 reads 2i-1 .. 2i+1 at stride 2, whose own cells are 2i, 2i+1 (the middle and last taps)."""
    mask = torch.zeros(kernel)
    t_taps = slice(kernel[0] - stride[0], kernel[0])
    h_taps = slice(kernel[1] // 2, kernel[1] // 2 + stride[1])
    w_taps = slice(kernel[2] // 2, kernel[2] // 2 + stride[2])
    mask[t_taps, h_taps, w_taps] = 1.0
    return mask


def damp_neighbour_taps(encoder: torch.nn.Module, damping: float = LEAK) -> None:
    """Scale every encoder conv's taps outside the output's own cell by `damping`.

    Why: a trained VAE keeps a latent cell about its own 32x32 pixels and its own frames; a random one of this
    depth does not (its receptive field spans a 4x4 latent grid, and the stride-2 convs centre each output on
    its first child), so no planted patch could show where a cell looks. Damped, the tiny encoder is still the
    real architecture with all its weights, but mostly local, so tests can check the adapter's token order,
    footprints and times against a known answer."""
    from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d

    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, LTXVideoCausalConv3d):
                conv = module.conv
                own = own_cell_taps(tuple(conv.kernel_size), tuple(conv.stride))
                conv.weight.mul_(damping + (1 - damping) * own)


def save_tiny_ltx_video_vae(path: Path, seed: int = 0, timestep_conditioning: bool = False) -> None:
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(**tiny_config(timestep_conditioning))
    damp_neighbour_taps(vae.encoder)
    with torch.no_grad():
        vae.latents_mean.copy_(0.1 * torch.randn(LATENT_CHANNELS))
        vae.latents_std.copy_(torch.empty(LATENT_CHANNELS).uniform_(0.5, 2.0))
        for name, scale in vae.decoder.named_parameters():
            if "per_channel_scale" in name:  # zero at init: the injected noise would not show
                scale.normal_(0, 0.1)
    vae.save_pretrained(path)
