"""Mod C's spatial objective: a light per-token head reads the tuned stage's tokens and predicts each
token's coverage of the image's largest object (the dense target of `spatial_probe`), optionally each
token's mean colour (a coarse image reconstruction), plus an optional distillation term toward the
frozen original's tokens at the same stage (limits drift).

The head is linear per token on purpose: the dense probe that scores the tuned model is linear too, so
the encoder, not the head, has to carry the layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..probes.footprints import token_coverage
from ..tasks.spatial_probe import MASK_SIZE, resize_mask


class TokenHead(nn.Module):
    """Per-token linear read-out: channel 0 is the coverage logit, channels 1-3 (when `colour`) the token's
    mean RGB in [0, 1]."""

    def __init__(self, channels: int, colour: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, 4 if colour else 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)  # [B, N, 1 or 4]


@dataclass(frozen=True)
class LossWeights:
    reconstruction: float = 0.0  # mean-colour term; off by default
    distill: float = 0.0  # MSE toward the frozen original's tokens


def target_mask(data, index: int) -> torch.Tensor:
    """The largest object's mask at MASK_SIZE (the resolution the probes compare masks at) [S, S] bool."""
    return torch.from_numpy(resize_mask(data.target(index)[1], MASK_SIZE))


def mean_colours(images, footprints: torch.Tensor) -> torch.Tensor:
    """Each token's mean RGB over its footprint [B, N, 3] in [0, 1]: the coverage integral read on colour planes."""
    planes = []
    for image in images:
        array = np.asarray(image.convert("RGB").resize((MASK_SIZE, MASK_SIZE)), dtype=np.float64) / 255
        planes.append(torch.from_numpy(array).permute(2, 0, 1))  # [3, S, S]
    planes = torch.stack(planes)  # [B, 3, S, S]
    per_channel = [token_coverage(planes[:, c], footprints) for c in range(3)]
    return torch.stack(per_channel, -1)


def spatial_loss(prediction: torch.Tensor, coverage: torch.Tensor, colours: torch.Tensor | None = None,
                 tokens: torch.Tensor | None = None, original: torch.Tensor | None = None,
                 weights: LossWeights = LossWeights()) -> torch.Tensor:
    """BCE of the coverage logits against coverage in [0, 1], + weighted MSE of the mean colours, + weighted
    MSE of the tuned tokens toward the original's (both terms only when weighted and given)."""
    loss = nn.functional.binary_cross_entropy_with_logits(prediction[..., 0], coverage)
    if weights.reconstruction and colours is not None:
        loss = loss + weights.reconstruction * nn.functional.mse_loss(prediction[..., 1:4], colours)
    if weights.distill and original is not None:
        loss = loss + weights.distill * nn.functional.mse_loss(tokens, original)
    return loss
