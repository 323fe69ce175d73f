"""The LTX-Video VAE (diffusers' AutoencoderKLLTXVideo): the latent space a video decoder reads, as a family.

Its one stage, `vae.latent`, is what LTX-Video's pipeline works in: the mean of the encoder's latent
distribution, normalized as `LTXPipeline._normalize_latents` does, `(mean - latents_mean) * scaling_factor /
latents_std` per channel (buffers and factor from the checkpoint). `encode_latents`, `decode_latents` and
`reconstruct` give the same latents as a [B, 128, T', h, w] volume and take them back to frames, for the
adapter task (whose floor and ceiling are decoded latents).

Layout (diffusers 0.30+, checked by the tests):
- A sample is a clip of F = 8k+1 frames (the causal encoder keeps the first frame alone, then compresses 8
  frames per latent frame); a still image is a 1-frame clip. Every frame is resized whole to `resolution`
  square (bicubic, no crop) and mapped to [-1, 1], as the pipeline's video processor does.
- Latent cell (j, row, col) covers the 32x32-pixel cell (row, col) of the resized frame (spatial ratio 32,
  read from the model) and, in time, frame 0 for j = 0, frames 8(j-1)+1 .. 8j for j >= 1 (temporal ratio 8).
- Tokens are [B, T'*h*w, 128] in (time, row, column) order; footprints repeat the h x w raster per latent
  frame. `times` holds each token's interval of the clip ([B, N, 2]) when the batch holds clips; a batch of
  still images has `times` None and `grid_shape` (h, w), like every image family. A 1-frame clip gives one
  latent frame with times [0, 1] and the same grid.

Decoding: checkpoints whose config has `timestep_conditioning` (LTX-Video 0.9.1 and later) are decoded at
timestep 0 with no added noise, the pipeline's defaults (`decode_timestep=0`, `decode_noise_scale` = the
timestep). Their decoders inject noise inside; it is drawn from a fixed seed, so a decode is reproducible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SpatialProbeError
from ..features import TokenFeatures
from .base import HookedBackbone, Sample, as_rgb, is_clip
from .layout import batch_grid_footprints, check_multiple
from .vit import resize_whole

#: the pipeline's default decode timestep (and noise scale) for timestep-conditioned decoders
DECODE_TIMESTEP = 0.0
#: seeds the noise a 0.9.1+ decoder injects, so decoding the same latents gives the same frames
DECODE_NOISE_SEED = 0


def frames_of(sample: Sample) -> list[Image.Image]:
    """A sample as its frames: a still image is a 1-frame clip."""
    return list(sample) if is_clip(sample) else [sample]


def latent_frame_times(frames: int, ratio: int) -> torch.Tensor:
    """[T', 2] each latent frame's interval of a clip of `frames` frames, as fractions of the clip: latent frame
    0 covers frame 0 alone, latent frame j >= 1 frames ratio*(j-1)+1 .. ratio*j (frame i of F is [i/F, (i+1)/F))."""
    latent = (frames - 1) // ratio + 1
    starts = torch.tensor([0] + [ratio * (j - 1) + 1 for j in range(1, latent)], dtype=torch.float64)
    ends = torch.tensor([1] + [ratio * j + 1 for j in range(1, latent)], dtype=torch.float64)
    return (torch.stack([starts, ends], dim=-1) / frames).float()


def pipeline_subfolder(name_or_path: str, subfolder: str | None) -> str | None:
    """Where the VAE sits: the given subfolder; a local folder as is when it holds config.json, else its vae/;
    a hub id's `vae` subfolder (pipeline repos such as Lightricks/LTX-Video keep the VAE there)."""
    if subfolder is not None:
        return subfolder or None
    folder = Path(name_or_path)
    if folder.is_dir():
        return "vae" if not (folder / "config.json").exists() and (folder / "vae").is_dir() else None
    return "vae"


class LtxVideoVaeBackbone(HookedBackbone):
    family = "ltx_video_vae"
    modalities = ("image", "video")
    stage_summary = ("vae.latent (normalized latent mean, 128 channels; one 32x32-px cell per token, per latent "
                     "frame: frame 0, then 8 frames each; clips of 8k+1 frames, an image is a 1-frame clip)")
    weights_source = "hub id (vae subfolder of Lightricks/LTX-Video*) or folder (the VAE's, or a pipeline's)"
    offline_test = "yes (tiny)"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str = "float32", resolution: int = 512,
                 subfolder: str | None = None, **load_options):
        super().__init__(name_or_path, device, dtype, **load_options)
        from diffusers import AutoencoderKLLTXVideo

        if self.load_options.quantization:
            raise SpatialProbeError(f"{self.family}: quantization is not supported for the VAE (it is small); "
                                    "drop `quantization`")
        self.subfolder = pipeline_subfolder(self.name_or_path, subfolder)
        self.model = self.load_vae(AutoencoderKLLTXVideo)
        self.spatial_ratio = int(self.model.spatial_compression_ratio)
        self.temporal_ratio = int(self.model.temporal_compression_ratio)
        check_multiple(self.family, int(resolution), self.spatial_ratio,
                       f"the VAE compresses space {self.spatial_ratio}x")
        self.resolution = int(resolution)
        self.side = self.resolution // self.spatial_ratio

    def load_vae(self, loader) -> torch.nn.Module:
        """diffusers' from_pretrained with the load options (diffusers takes `torch_dtype` and `subfolder`, and
        no transformers quantization config), placed on the device, in eval mode; errors in one line."""
        options = {"torch_dtype": self.dtype, "subfolder": self.subfolder, "revision": self.load_options.revision,
                   "use_safetensors": not self.load_options.allow_pickle or None,
                   "device_map": self.load_options.device_map}
        model = self._from_pretrained(loader, None, {k: v for k, v in options.items() if v is not None})
        if not self.load_options.places_itself():
            model.to(self.device)
        return model.eval()

    def _load_error(self, path: str, err: Exception) -> str:
        message = super()._load_error(path, err)
        # diffusers names the repo or folder only: say where in it the VAE was looked for
        if not self.subfolder:
            return message
        return message.replace(f"{path!r}:", f"{path!r} (subfolder {self.subfolder!r}):", 1)

    # --- the stage ------------------------------------------------------------------------------
    def stage_modules(self) -> dict[str, torch.nn.Module]:
        # the encoder's output holds the latent distribution's parameters; `to_features` takes its mean
        return {"vae.latent": self.model.encoder}

    def preprocessing(self) -> dict[str, Any]:
        return {"resize": "whole image (every frame), bicubic, no crop", "resolution": self.resolution,
                "scale": "[-1, 1] (2 * x / 255 - 1, as LTX's video processor)",
                "clip": f"{self.temporal_ratio}k+1 frames; an image is a 1-frame clip",
                "latent": "mean of the latent distribution, (mean - latents_mean) * scaling_factor / latents_std",
                "spatial_compression": self.spatial_ratio, "temporal_compression": self.temporal_ratio,
                "subfolder": self.subfolder}

    def check_modalities(self, samples: Sequence[Sample]) -> None:
        """Every sample a clip of 8k+1 frames (an image counts as 1), all of one length: one line, before compute."""
        super().check_modalities(samples)
        counts = [len(frames_of(s)) for s in samples]
        for index, count in enumerate(counts):
            if count < 1 or (count - 1) % self.temporal_ratio:
                raise SpatialProbeError(
                    f"{self.family}: sample {index} is a clip of {count} frames; the VAE reads "
                    f"{self.temporal_ratio}k+1 frames (1, {self.temporal_ratio + 1}, {2 * self.temporal_ratio + 1}, "
                    "...): trim or pad the clip")
        if len(set(counts)) > 1:
            raise SpatialProbeError(f"{self.family}: samples of {sorted(set(counts))} frames in one call; one "
                                    "stage's tokens need one clip length: extract each length separately")

    def pixels(self, samples: Sequence[Sample]) -> torch.Tensor:
        """[B, 3, F, R, R] in [-1, 1]: every frame resized whole, as the model reads it."""
        clips = [np.stack([np.asarray(f) for f in resize_whole(frames_of(s), self.resolution)]) for s in samples]
        video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3)  # [B, F, R, R, 3] -> [B, 3, F, R, R]
        return video.float() / 127.5 - 1.0

    def prepare(self, images: list[Sample]) -> tuple[dict[str, Any], dict[str, Any]]:
        layout = {"frames": len(frames_of(images[0])), "clips": any(is_clip(s) for s in images)}
        return self.move_inputs({"sample": self.pixels(images)}), layout

    def run(self, inputs: dict[str, Any]) -> None:
        self.model.encode(inputs["sample"])

    def normalize(self, mean: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, T', h, w] as the LTX pipeline normalizes them (`LTXPipeline._normalize_latents`)."""
        shift = self.model.latents_mean.view(1, -1, 1, 1, 1).to(mean.device, mean.dtype)
        scale = self.model.latents_std.view(1, -1, 1, 1, 1).to(mean.device, mean.dtype)
        return (mean - shift) * self.model.config.scaling_factor / scale

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize` (`LTXPipeline._denormalize_latents`)."""
        shift = self.model.latents_mean.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        scale = self.model.latents_std.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        return latents * scale / self.model.config.scaling_factor + shift

    def latent_mean(self, encoder_output: torch.Tensor) -> torch.Tensor:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(encoder_output).mean

    def to_features(self, stage: str, raw: torch.Tensor, layout: dict[str, Any]) -> TokenFeatures:
        latents = self.normalize(self.latent_mean(raw))  # [B, C, T', h, w]
        b, c, t, h, w = latents.shape
        if (h, w) != (self.side, self.side):
            raise RuntimeError(f"{self.label} {stage}: a {h}x{w} latent grid, expected {self.side}x{self.side}")
        tokens = latents.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c).float()
        footprints = batch_grid_footprints(b, h, w).repeat(1, t, 1)
        times = None
        if layout["clips"]:
            per_frame = latent_frame_times(layout["frames"], self.temporal_ratio)  # [T', 2]
            times = per_frame.repeat_interleave(h * w, dim=0).expand(b, -1, -1).to(tokens.device).contiguous()
        return TokenFeatures(tokens, footprints.to(tokens.device), (h, w) if t == 1 else None, {}, times)

    # --- the latent volume, for adapters ----------------------------------------------------------
    def encode_latents(self, samples: Sequence[Sample]) -> torch.Tensor:
        """[B, 128, T', h, w] normalized latent means of `samples` (images or 8k+1-frame clips), on the model's
        device: the `vae.latent` stage before flattening."""
        self.check_modalities(samples)
        inputs, _ = self.prepare([as_rgb(s) for s in samples])
        with torch.no_grad():  # not inference_mode: the latents may serve as training targets
            return self.normalize(self.model.encode(inputs["sample"]).latent_dist.mean)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames [B, 3, T, H, W] in [0, 1] from normalized latents [B, 128, T', h, w] (T = 8(T'-1)+1), decoded
        as the LTX pipeline decodes (see the module docstring for timestep-conditioned decoders)."""
        z = self.denormalize(latents.to(self.device, self.dtype))
        timestep = None
        if self.model.config.timestep_conditioning:
            timestep = torch.full((len(z),), DECODE_TIMESTEP, device=z.device, dtype=z.dtype)
        devices = [z.device] if z.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(DECODE_NOISE_SEED)
            video = self.model.decode(z, timestep, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1)  # the pipeline's postprocessing: [-1, 1] -> [0, 1]

    def reconstruct(self, samples: Sequence[Sample]) -> torch.Tensor:
        """The VAE's own reconstruction of `samples`: encoded then decoded, frames [B, 3, T, H, W] in [0, 1]."""
        return self.decode_latents(self.encode_latents(samples))

    # --- controls and tiny checkpoints ------------------------------------------------------------
    def randomize_weights(self, seed: int) -> None:
        """A fresh random initialization of the same VAE (its latent statistics reset to 0 and 1 too: a
        random encoder's latents have no trained statistics). Built on the CPU and copied in place, as
        `base.randomize_in_place` does for transformers models (diffusers builds from a config with `from_config`)."""
        torch.manual_seed(seed)
        with torch.device("cpu"):
            fresh = type(self.model).from_config(self.model.config).to(self.dtype)
        self.model.load_state_dict(fresh.state_dict())
        del fresh

    @classmethod
    def save_tiny(cls, path: Path, seed: int = 0) -> None:
        from .tiny.ltx_video_vae import save_tiny_ltx_video_vae

        save_tiny_ltx_video_vae(Path(path), seed)
