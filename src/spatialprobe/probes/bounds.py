"""Floor and ceiling of every spatial_probe metric, beside every number.

floor:   the metric with no features at all — the best constant prediction learned from the
         training labels (the mean training box; the mean training mask thresholded at the level
         that maximizes training IoU).
ceiling: the best the stage's token resolution allows.
         spatial_iou: the best-IoU union of atoms (pixels covered by the same tokens), which every
         painted mask is; on a raster, the token coverage painted and thresholded at each image's
         best level.
         bbox_iou: per image, the box with the best IoU among all boxes whose four edges lie on
         the stage's token boundaries — the footprints' edges rounded to whole mask pixels, where
         the dense probe's mask boxes have theirs (`footprints.token_edges`; for tiles and levels,
         the union of all footprints' edges).
         map_50, map_75: those boxes ranked by an oracle (each scored by its own IoU).
         The dense probe cannot beat any of these on a token grid. A box regressor (linear,
         pooled) is not bound to token edges and can exceed the box ceilings.
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import iou_of, paired_box_iou
from .footprints import paint, pixel_rects, token_coverage, token_edges
from .scoring import evaluate

MASK_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)
#: boundaries tried on each side of each target edge. One per side already holds the best box
#: (IoU only falls as an edge moves away from the target's edge, whichever side it is on); the
#: second keeps a box of positive area within reach when every boundary lies on one side of the
#: target. tests/test_bounds.py checks this against all boundary combinations.
NEIGHBOURS = 2


def best_constant_mask(train_masks: torch.Tensor) -> torch.Tensor:
    mean_mask = train_masks.float().mean(0)
    candidates = torch.stack([(mean_mask >= t).flatten() for t in MASK_THRESHOLDS], 1).float()  # [P, T]
    flat = train_masks.flatten(1).float()
    inter = flat @ candidates  # every (image, threshold) intersection in one product
    union = flat.sum(1, keepdim=True) + candidates.sum(0, keepdim=True) - inter
    ious = iou_of(inter, union).mean(0)  # the metric's own rule: an empty target is never matched
    return mean_mask >= float(MASK_THRESHOLDS[int(ious.argmax())])


def floors(train, test) -> dict[str, float]:
    n = len(test.boxes)
    boxes = train.boxes.mean(0, keepdim=True).expand(n, 4)
    constant = best_constant_mask(train.masks)
    if constant.shape != test.masks.shape[1:]:
        raise ValueError("train and test masks must share a resolution")
    result = evaluate(boxes, torch.zeros(n), test, constant.expand_as(test.masks), with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}


def overlapping(footprints: torch.Tensor, height: int, width: int) -> bool:
    """Whether any pixel of the mask grid lies in two footprints: their areas then add up to more than
    the pixels they cover."""
    r0, c0, r1, c1 = pixel_rects(footprints, height, width).unbind(-1)
    areas = ((r1 - r0).clamp(min=0) * (c1 - c0).clamp(min=0)).sum(1)
    covered = (paint(torch.ones(footprints.shape[:2]), footprints, height, width) > 0).flatten(1).sum(1)
    return bool((areas > covered).any())


def atom_coverage(masks: torch.Tensor, footprints: torch.Tensor) -> torch.Tensor:
    """Per pixel [n, H*W], the share of its atom inside the mask (0 where no token covers it). An atom is
    the set of pixels covered by the same tokens: painting (a mean over the covering tokens) is constant
    on each, so every mask a reader can paint is a union of atoms. On a raster an atom is a token's cell,
    and this is the painted token coverage; on overlapping tiles atoms are finer than tokens."""
    n, height, width = masks.shape
    if not overlapping(footprints, height, width):  # a raster or disjoint levels: atoms are the tokens' cells
        return paint(token_coverage(masks, footprints), footprints, height, width).flatten(1).double()
    generator = torch.Generator().manual_seed(0)
    # integer weights: their sums are exact in float64, so every pixel of an atom gets the same signature
    weights = torch.randint(1, 2**20, (2, footprints.shape[1]), generator=generator).double()
    signatures = torch.stack([paint(w.expand(n, -1), footprints, height, width).flatten(1) for w in weights], -1)
    truth = masks.flatten(1).double()
    coverage = torch.zeros(n, height * width, dtype=torch.float64)
    for i in range(n):
        _, atom = torch.unique(signatures[i], dim=0, return_inverse=True)
        inside = torch.zeros(int(atom.max()) + 1, dtype=torch.float64).index_add_(0, atom, truth[i])
        coverage[i] = (inside / torch.bincount(atom).double())[atom]
    return torch.where(signatures[..., 0] > 0, coverage, torch.zeros_like(coverage))


def ceiling_masks(test) -> torch.Tensor:
    """Per image, the best-IoU mask that the tokens can paint: the atoms (pixels covered by the same tokens)
    above the coverage level that is best for that image (an optimal union of atoms is always all atoms
    above some coverage, since IoU is a linear-fractional objective)."""
    painted = atom_coverage(test.masks, test.footprints)
    truth = test.masks.flatten(1)
    order = painted.argsort(dim=1, descending=True)
    sorted_cover = painted.gather(1, order)
    inter = truth.gather(1, order).double().cumsum(1)
    size = torch.arange(1, truth.shape[1] + 1, dtype=torch.float64)
    iou = inter / (truth.sum(1, keepdim=True) + size - inter)
    # a threshold can only stop at the end of a run of equal coverage, and never include uncovered pixels
    run_end = torch.ones_like(sorted_cover, dtype=torch.bool)
    run_end[:, :-1] = sorted_cover[:, :-1] > sorted_cover[:, 1:]
    iou = torch.where(run_end & (sorted_cover > 0), iou, torch.full_like(iou, -1.0))
    best = iou.argmax(1)
    threshold = sorted_cover.gather(1, best[:, None])
    keep = (iou.max(1).values > 0)[:, None]
    return ((painted >= threshold) & keep).reshape(test.masks.shape)


def edge_positions(is_edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [n, P + 1] -> ascending normalized positions [n, P + 1] (inf after the last edge), count [n].
    Normalized as `mask_boxes` normalizes (float32 pixel / P), so equal boxes give equal IoUs."""
    pixels = is_edge.shape[1] - 1
    position = torch.where(is_edge, torch.arange(pixels + 1) / pixels, torch.tensor(float("inf")))
    return position.sort(1).values, is_edge.sum(1)


def nearest_edges(positions: torch.Tensor, count: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The NEIGHBOURS edges below and the NEIGHBOURS at or above each target value: [n] -> [n, 2K]
    (clamped to the edges there are; 0 for an image without edges)."""
    first_above = torch.searchsorted(positions, target[:, None].contiguous().to(positions.dtype))
    index = first_above + torch.arange(-NEIGHBOURS, NEIGHBOURS)
    index = torch.minimum(index.clamp(min=0), (count[:, None] - 1).clamp(min=0))
    found = positions.gather(1, index)
    return torch.where(torch.isfinite(found), found, torch.zeros_like(found))


def ceiling_boxes(test) -> torch.Tensor:
    """Per image, the box [n, 4] with the best IoU whose edges lie on the stage's token boundaries,
    each target edge snapped to one of its neighbouring boundaries (all combinations at once)."""
    height, width = test.masks.shape[1:]
    x_edges, y_edges = token_edges(test.footprints, height, width)
    (xs, x_count), (ys, y_count) = edge_positions(x_edges), edge_positions(y_edges)
    target = test.boxes.float()
    sides = [nearest_edges(xs, x_count, target[:, 0]), nearest_edges(ys, y_count, target[:, 1]),
             nearest_edges(xs, x_count, target[:, 2]), nearest_edges(ys, y_count, target[:, 3])]
    k = sides[0].shape[1]
    # every combination: axis j of [n, k, k, k, k] holds edge j of the box -> [n, k^4, 4]
    candidates = torch.stack([side.reshape(-1, *[k if j == i else 1 for j in range(4)]).expand(-1, k, k, k, k)
                              for i, side in enumerate(sides)], -1).reshape(len(target), -1, 4)
    iou = torch.from_numpy(paired_box_iou(candidates.reshape(-1, 4),
                                          target.repeat_interleave(candidates.shape[1], 0))).reshape(len(target), -1)
    positive = (candidates[..., 2] > candidates[..., 0]) & (candidates[..., 3] > candidates[..., 1])
    best = torch.where(positive, iou, torch.full_like(iou, -1.0)).argmax(1)  # never a zero-area box if any has area
    return candidates[torch.arange(len(target)), best]


def ceilings(test) -> dict[str, float]:
    masks = ceiling_masks(test)
    boxes = ceiling_boxes(test)
    # an oracle ranking (each box scored by its own IoU) makes the mAP ceiling a true upper bound:
    # the best box of every image, the hits ranked first
    oracle_scores = torch.from_numpy(paired_box_iou(boxes, test.boxes)).float()
    result = evaluate(boxes, oracle_scores, test, masks, with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}


def perfect_scores(test) -> dict[str, float]:
    """The metrics of a perfect prediction (the ceiling where no token grid limits the reader)."""
    result = evaluate(test.boxes, torch.ones(len(test.boxes)), test, test.masks, with_ci=False)
    return {metric: value for metric, (value, _, _) in result.items()}
