"""Adapters that bridge a VLM stage's tokens into a video VAE's latent grid (issue 10, Phase 2).

- `resample_onto`, `latent_cells`: tokens of any layout (grids, tiles, levels) onto the latent cells by
  footprint overlap, the input of the conv head and of spatial CKA.
- `ConvHead`, `CrossAttentionHead`, `sized_for`, `parameter_count`: the two adapter heads and their sizing.
- `AdapterBudget`, `train_adapter`, `predict`, `adapter_loss`: seeded, resumable training.
"""
from .heads import ConvHead, CrossAttentionHead, build_head, parameter_count, sized_for
from .resample import latent_cells, resample_onto
from .train import AdapterBudget, TrainResult, adapter_loss, predict, train_adapter

__all__ = ["AdapterBudget", "ConvHead", "CrossAttentionHead", "TrainResult", "adapter_loss", "build_head",
           "latent_cells", "parameter_count", "predict", "resample_onto", "sized_for", "train_adapter"]
