"""The `spatial_probe` task: linear, pooled and dense probes on frozen tokens, with floors and ceilings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..bounds import ceilings, floors
from ..metrics import ap_at_iou, coco_map, mask_iou, mean_ci, paired_box_iou

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


def evaluate(boxes: torch.Tensor, scores: torch.Tensor, target: ProbeSplit, masks: torch.Tensor | None = None,
             n_boot: int = 1000, seed: int = 0, with_ci: bool = True) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, ci_low, ci_high) for predicted boxes (+scores) and, if given, masks."""
    ious = paired_box_iou(boxes, target.boxes)
    out = {"bbox_iou": (float(ious.mean()), *(mean_ci(ious, n_boot, seed) if with_ci else (np.nan, np.nan)))}
    scores_np = scores.numpy().astype(np.float64)
    maps = coco_map(boxes.numpy(), scores_np, target.boxes.numpy())
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(ious), (n_boot if with_ci else 0, len(ious)))
    for name, thr in (("map_50", 0.5), ("map_75", 0.75)):
        boot = [ap_at_iou(ious[idx], scores_np[idx], thr) for idx in resamples]
        low, high = (np.percentile(boot, 2.5), np.percentile(boot, 97.5)) if with_ci else (np.nan, np.nan)
        out[name] = (maps[thr], float(low), float(high))
    if masks is not None:
        per_image = mask_iou(masks, target.masks)
        out["spatial_iou"] = (float(per_image.mean()), *(mean_ci(per_image, n_boot, seed) if with_ci else (np.nan, np.nan)))
    return out


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
