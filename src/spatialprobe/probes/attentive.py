"""The attentive temporal probe: V-JEPA 2's attentive pooler over all of a clip stage's tokens.

Each token is standardized (per channel, with the training tokens' statistics) and joined with sinusoidal
codes of its footprint centre (x, y), its time centre, and place x time products (`place_time_codes`),
projected to `width`, then pooled by transformers' `VJEPA2AttentivePooler` (one learned query,
cross-attention, MLP; no self-attention layers, so the cost is linear in the number of tokens) and
classified by one linear layer. Trained with a fixed budget (steps, lr, batch) from one seed:
deterministic on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import SpatialProbeError
from ..features import TokenFeatures

def require_times(features: TokenFeatures) -> torch.Tensor:
    if features.times is None:
        raise SpatialProbeError("temporal probe: this stage has no token `times` (still images); it needs clip features")
    return features.times



#: frequencies (times pi) of the sinusoidal codes of each coordinate in [0, 1]
FREQUENCIES = (1.0, 2.0, 4.0, 8.0)
WAVES = 2 * len(FREQUENCIES)  # a sine and a cosine per frequency
CODE_DIM = 3 * WAVES + 2 * WAVES * WAVES  # x, y, t alone; x times t and y times t


def waves(coordinate: torch.Tensor) -> torch.Tensor:
    """[..., WAVES]: sin and cos of a coordinate in [0, 1] at each frequency."""
    angles = coordinate[..., None] * (math.pi * torch.tensor(FREQUENCIES))
    return torch.cat([angles.sin(), angles.cos()], -1)


def place_time_codes(features: TokenFeatures) -> torch.Tensor:
    """[B, N, CODE_DIM]: sinusoidal codes of each token's footprint centre (x, y) and time-interval centre t,
    and the products of the place codes with the time codes. Why the products: attention pools codes as
    a weighted mean, and a weighted mean of separate place and time codes holds where the object is on
    average and when, but not how place changes with time (a direction). That would need heads that
    learn to look at one time each, which a small training set does not teach (the probe memorizes
    content instead: on 160 moving-shapes clips it scored chance on test). A mean of place x time codes
    holds that covariance directly, linearly."""
    footprints = features.footprints.float()
    x, y = (footprints[..., 0] + footprints[..., 2]) / 2, (footprints[..., 1] + footprints[..., 3]) / 2
    place_x, place_y, time = waves(x), waves(y), waves(require_times(features).float().mean(-1))
    def with_time(place: torch.Tensor) -> torch.Tensor:
        return (place[..., :, None] * time[..., None, :]).flatten(-2)
    return torch.cat([place_x, place_y, time, with_time(place_x), with_time(place_y)], -1)


class AttentiveClassifier(nn.Module):
    def __init__(self, channels: int, classes: int, width: int, heads: int):
        super().__init__()
        from transformers import VJEPA2Config
        from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler

        # sdpa named here: a config outside a model has no attention implementation set (transformers warns)
        config = VJEPA2Config(hidden_size=width, num_attention_heads=heads, num_pooler_layers=0, attn_implementation="sdpa")
        self.embed = nn.Linear(channels + CODE_DIM, width)
        self.pooler = VJEPA2AttentivePooler(config)
        # the pooler's query starts at zero (its checkpoints' init draws it); V-JEPA's init: truncated normal
        nn.init.trunc_normal_(self.pooler.query_tokens, std=config.initializer_range)
        self.classifier = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(self.embed(torch.cat([tokens, codes], -1))))


@dataclass
class AttentiveProbe:
    model: AttentiveClassifier
    mean: torch.Tensor  # [C] training tokens' channel means
    std: torch.Tensor  # [C]
    batch: int

    def logits(self, features: TokenFeatures) -> torch.Tensor:
        codes = place_time_codes(features)
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.model(self.standardized(features.tokens[i:i + self.batch]), codes[i:i + self.batch])
                              for i in range(0, len(codes), self.batch)])

    def predict(self, features: TokenFeatures) -> np.ndarray:
        return self.logits(features).argmax(-1).numpy()

    def standardized(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens.float() - self.mean) / self.std


def fit_attentive(train: TokenFeatures, labels, steps: int = 300, lr: float = 1e-3, batch: int = 32,
                  width: int = 64, heads: int = 4, weight_decay: float = 1e-2, seed: int = 0) -> AttentiveProbe:
    """Train the pooler and classifier on the train clips' labels: `steps` AdamW steps on batches of
    `batch` clips drawn with replacement, everything drawn from `seed`."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    codes = place_time_codes(train)
    flat = train.tokens.float().flatten(0, 1)
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-6)  # a constant channel stays 0, not NaN
    with torch.random.fork_rng(devices=[]):  # the init draws from `seed` without moving the global RNG
        torch.manual_seed(seed)
        model = AttentiveClassifier(train.tokens.shape[-1], int(labels.max()) + 1, width, heads)
    probe = AttentiveProbe(model, mean, std, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (min(batch, len(labels)),), generator=generator)
        loss = F.cross_entropy(model(probe.standardized(train.tokens[index]), codes[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe
