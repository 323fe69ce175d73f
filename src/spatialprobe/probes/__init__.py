"""The `spatial_probe` task: linear, pooled and dense probes on frozen tokens, with floors and ceilings."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bounds import ceilings, floors
from .scoring import evaluate

PROBES = ("linear", "pooled", "dense")


@dataclass
class ProbeSplit:
    tokens: torch.Tensor  # [n, N, C]
    footprints: torch.Tensor  # [n, N, 4] normalized xyxy in the original image
    boxes: torch.Tensor  # [n, 4] normalized xyxy target box
    masks: torch.Tensor  # [n, H, W] bool target mask


def shuffle_tokens(split: ProbeSplit, seed: int) -> ProbeSplit:
    """The shuffled-order control: tokens permuted per image, footprints left where they are."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(split.tokens.shape[1], generator=generator) for _ in range(len(split.tokens))])
    tokens = torch.gather(split.tokens, 1, order[..., None].expand_as(split.tokens))
    return ProbeSplit(tokens, split.footprints, split.boxes, split.masks)


def run_spatial_probes(train: ProbeSplit, test: ProbeSplit, probes=PROBES, n_boot: int = 1000,
                       seed: int = 0) -> list[dict]:
    """One record per (probe, metric): value, bootstrap 95% interval, floor, ceiling, n."""
    from .box import box_probe
    from .dense import dense_probe

    floor, ceiling = floors(train, test), ceilings(test)
    records = []
    for probe in probes:
        if probe == "dense":
            masks, boxes, scores = dense_probe(train, test)
        else:
            pick = (lambda s: s.tokens.flatten(1)) if probe == "linear" else (lambda s: s.tokens.mean(1))
            boxes, scores = box_probe(pick(train), train.boxes, pick(test))
            masks = None
        for metric, (value, low, high) in evaluate(boxes, scores, test, masks, n_boot, seed).items():
            records.append({"probe": probe, "metric": metric, "value": value, "ci_low": low, "ci_high": high,
                            "floor": floor[metric], "ceiling": ceiling[metric], "n": len(test.boxes)})
    return records
