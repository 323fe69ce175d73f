"""A tiny random-initialized LTX-Video VAE (diffusers' AutoencoderKLLTXVideo), built offline in code.

It keeps what the adapter relies on from the real VAE: 4x4 patches and three 2x down-samplings in space and
time (32x spatial, 8x temporal compression), 128 latent channels, a causal encoder, and per-channel
`latents_mean` / `latents_std` buffers plus a `scaling_factor`: the encoder's own statistics on synthetic shapes
(`set_latent_statistics`; not the identity, so a missing normalization step shows). Its blocks are 8-16 channels wide with one layer each: 462,929 parameters (575,698 with the
timestep-conditioned decoder). The encoder's conv taps that reach past a cell's own pixels and frames are
damped (`damp_neighbour_taps`), so a planted patch shows which latent cell reads which place and time.

Its decoder is fitted (`fit_decoder`): a random decoder turns every latent into almost the same picture, so the
adapter task's floor (the mean latent, decoded) and ceiling (the VAE's own reconstruction) would coincide and no
adapter could land between them. The decoder alone is trained, the encoder frozen, for `FIT_STEPS` seeded steps
to reconstruct synthetic shapes: the latents (and the planted-patch locality) stay those of the random encoder,
and the reconstruction beats the decoded mean latent by about 3.5 dB on shapes images. The fit takes about half
a minute on 2 CPU cores, so its result is kept in `<SPATIALPROBE_HOME or ~/.cache/spatialprobe>/tiny-fits/`
and every later build of the same seed reads it.

`timestep_conditioning=True` gives the decoder of LTX-Video 0.9.1 and later (timestep-conditioned norms,
noise injection, residual up-sampling), so the decode path those checkpoints need is tested too.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATENT_CHANNELS = 128
#: what is left of an encoder conv's weights that reach beyond the output's own cell (see damp_neighbour_taps)
LEAK = 0.02
#: the decoder fit: seeded Adam steps on batches of synthetic shapes at this size (bump FIT_VERSION on a change)
FIT_STEPS, FIT_BATCH, FIT_SIZE, FIT_LR, FIT_VERSION = 300, 16, 128, 3e-3, 1
#: images whose latents give the per-channel statistics the pipeline normalizes with
STATS_IMAGES = 64


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


def shapes_batch(rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
    """[count, 3, 1, size, size] synthetic-shapes images in [-1, 1] (half on the `easy` preset, half plain with
    palette colours), drawn in memory by the dataset generator's own renderer."""
    from ...data.shapes import PALETTE, SHAPES, render_image

    def params(preset: str | None) -> dict:
        return {"image_size": size, "objects_per_image": 1, "shapes": list(SHAPES), "colors": list(PALETTE),
                "size_range": [0.15, 0.5], "background": "plain", "preset": preset, "distractors": 0,
                "min_contrast": 100.0}

    images = [render_image(params("easy" if i % 2 else None), rng)[0] for i in range(count)]
    pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1)
    return pixels.permute(0, 3, 1, 2)[:, :, None].contiguous()


def set_latent_statistics(vae: torch.nn.Module, seed: int, images: int = STATS_IMAGES) -> None:
    """`latents_mean` / `latents_std`: the encoder's own per-channel mean and spread on synthetic shapes, as a
    trained VAE's buffers are its data's. The pipeline's normalization then gives latents of spread about the
    scaling factor: the targets an adapter learns have the scale they have for LTX-Video, not this tiny random
    encoder's (whose raw latents differ from image to image by a few thousandths)."""
    pixels = shapes_batch(np.random.default_rng(seed + 1), images, FIT_SIZE)
    with torch.no_grad():
        latents = vae.encoder(pixels)[:, :LATENT_CHANNELS]
        vae.latents_mean.copy_(latents.mean(dim=(0, 2, 3, 4)))
        vae.latents_std.copy_(latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-6))


def fit_decoder(vae: torch.nn.Module, seed: int, steps: int = FIT_STEPS) -> None:
    """Train the decoder, encoder frozen, to reconstruct synthetic shapes from the encoder's latent mean (what
    `decode_latents` decodes): seeded data and optimizer, MSE on [-1, 1] pixels."""
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    optimizer = torch.optim.Adam(vae.decoder.parameters(), lr=FIT_LR)
    for _ in range(steps):
        pixels = shapes_batch(rng, FIT_BATCH, FIT_SIZE)
        with torch.no_grad():
            latents = vae.encoder(pixels)[:, :LATENT_CHANNELS]
        loss = torch.nn.functional.mse_loss(vae.decoder(latents), pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def fit_cache(seed: int, config: dict[str, Any]) -> Path:
    """Where the fitted decoder of this seed and architecture is kept (the fit is the same on every build)."""
    home = os.environ.get("SPATIALPROBE_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "spatialprobe"
    what = json.dumps({"config": config, "seed": seed, "steps": FIT_STEPS, "batch": FIT_BATCH, "size": FIT_SIZE,
                       "lr": FIT_LR, "leak": LEAK, "version": FIT_VERSION}, sort_keys=True, default=list)
    return root / "tiny-fits" / f"ltx_video_vae-decoder-{hashlib.sha256(what.encode()).hexdigest()[:16]}.safetensors"


def fitted_decoder(vae: torch.nn.Module, seed: int, config: dict[str, Any]) -> None:
    """The decoder fitted by `fit_decoder`, read from the cache, or fitted now and cached (one process at a time)."""
    from filelock import FileLock
    from safetensors.torch import load_file, save_file

    cache = fit_cache(seed, config)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        if cache.exists():
            vae.decoder.load_state_dict(load_file(cache))
            return
        fit_decoder(vae, seed)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in vae.decoder.state_dict().items()}, partial)
        os.replace(partial, cache)


def save_tiny_ltx_video_vae(path: Path, seed: int = 0, timestep_conditioning: bool = False) -> None:
    """The tiny VAE, its decoder fitted (`fit_decoder`) unless it is the timestep-conditioned one, whose decoder
    is kept random: it exists to test that decode path, not to score adapters."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    config = tiny_config(timestep_conditioning)
    vae = AutoencoderKLLTXVideo(**config)
    damp_neighbour_taps(vae.encoder)
    with torch.no_grad():
        set_latent_statistics(vae, seed)
        for name, scale in vae.decoder.named_parameters():
            if "per_channel_scale" in name:  # zero at init: the injected noise would not show
                scale.normal_(0, 0.1)
    if not timestep_conditioning:
        fitted_decoder(vae, seed, config)
    vae.save_pretrained(path)
