"""Metrics: box IoU, mask IoU, COCO mAP (pycocotools) and bootstrap intervals.

The point value of mAP comes from pycocotools' COCOeval. Bootstrapping it 1000 times through
COCOeval would take minutes per stage, so intervals use `ap_at_iou`, a vectorized copy of COCO's
AP for our case (one ground truth and one detection per image), tested to equal pycocotools.

Zero-area targets never count as matches: an IoU whose union is empty is 0, not 1. A target that
vanished (a zero-area box, or a small object lost when its mask is resized) has nothing to find,
and scoring an empty prediction on it as perfect would lift the floor (the best constant mask
becomes "predict nothing") and reward every probe that learns to predict nothing.
"""
from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np
import torch

COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
NOMINAL_SIZE = 1000.0  # normalized boxes are scaled to this many "pixels" for COCOeval


def iou_of(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """intersection / union, and 0 where the union is empty: nothing to match is never a perfect match."""
    return torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)), torch.zeros_like(inter))


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes that broadcast against each other (zero-area boxes give 0)."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    extent = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = extent.prod(dim=-1)
    return iou_of(inter, area_a + area_b - inter)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M] (float64)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return _iou(a[:, None, :], b[None, :, :])


def paired_box_iou(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """IoU of each predicted box with its own target box: [n, 4] x [n, 4] -> [n]."""
    return _iou(torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)).numpy()


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image IoU of boolean masks [n, H, W]; an empty target with an empty prediction scores 0 (see above)."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    inter = (pred & target).sum(1).double()
    union = (pred | target).sum(1).double()
    return iou_of(inter, union).numpy()


def _coco_objects(pred: np.ndarray, scores: np.ndarray, target: np.ndarray):
    from pycocotools.coco import COCO

    def xywh(box):
        x0, y0, x1, y1 = (np.asarray(box, dtype=np.float64) * NOMINAL_SIZE).tolist()
        return [x0, y0, x1 - x0, y1 - y0]

    images = [{"id": i + 1, "width": NOMINAL_SIZE, "height": NOMINAL_SIZE} for i in range(len(target))]
    gts = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": xywh(t), "area": xywh(t)[2] * xywh(t)[3],
            "iscrowd": 0} for i, t in enumerate(target)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "object"}]}
    gt.createIndex()
    dets = [{"image_id": i + 1, "category_id": 1, "bbox": xywh(p), "score": float(s)}
            for i, (p, s) in enumerate(zip(pred, scores))]
    return gt, gt.loadRes(dets)


def coco_map(pred, scores, target, iou_thresholds=(0.5, 0.75)) -> dict[float, float]:
    """Class-agnostic AP at each IoU threshold from pycocotools' COCOeval (101-point, area all, 100 dets)."""
    from pycocotools.cocoeval import COCOeval

    pred, target, scores = np.asarray(pred), np.asarray(target), np.asarray(scores)
    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = _coco_objects(pred, scores, target)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    out = {}
    for thr in iou_thresholds:
        t = int(np.argmin(np.abs(evaluator.params.iouThrs - thr)))
        curve = precision[t, :, 0, 0, -1]
        out[thr] = float(curve[curve > -1].mean()) if (curve > -1).any() else -1.0
    return out


def ap_at_iou(ious: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """COCO AP for one ground truth and one detection per image, as COCOeval computes it."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")  # COCOeval's order, ties kept in image order
    hits = np.asarray(ious)[order] >= min(threshold, 1 - 1e-10)
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall = tp / len(ious)
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCO's interpolation: max to the right
    at = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
    sampled = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def ap_at_iou_resampled(ious: np.ndarray, scores: np.ndarray, threshold: float, resamples: np.ndarray) -> np.ndarray:
    """`ap_at_iou` of every resample at once (rows of image indices [B, n] -> [B]), as the loop computes it."""
    ious, scores = np.asarray(ious)[resamples], np.asarray(scores)[resamples]
    order = np.argsort(-scores, axis=1, kind="mergesort")
    hits = np.take_along_axis(ious, order, axis=1) >= min(threshold, 1 - 1e-10)
    tp, fp = np.cumsum(hits, axis=1), np.cumsum(~hits, axis=1)
    recall = tp / ious.shape[1]
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    # searchsorted(recall, t, "left") per row is how many recalls lie below t (recall never decreases);
    # recall only takes the values k/n, so count each row's positions per k and compare k/n once
    n_boot, n = tp.shape
    per_count = np.bincount((tp + (n + 1) * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * (n + 1))
    below = (np.arange(n + 1)[:, None] / n < COCO_RECALL_THRESHOLDS).astype(np.int64)
    at = per_count.reshape(n_boot, n + 1) @ below
    sampled = np.take_along_axis(precision, np.minimum(at, recall.shape[1] - 1), axis=1)
    return np.where(at < recall.shape[1], sampled, 0.0).mean(axis=1)


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `statistic(indices)` over `n_boot` resamples of n items with replacement."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def mean_ci(per_item: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of a mean, vectorized."""
    rng = np.random.default_rng(seed)
    means = np.asarray(per_item)[rng.integers(0, len(per_item), (n_boot, len(per_item)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


#: the fewest hits at an IoU threshold for which the percentile bootstrap of AP is used (see `ap_interval`)
MIN_BOOTSTRAP_HITS = 10


def hit_rate_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of a hit rate: never zero-width, also at 0 or n hits."""
    from scipy.stats import binomtest

    interval = binomtest(hits, n).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def best_ap_up_to(recall: float) -> float:
    """The largest AP any ranking can reach when recall ends at `recall`: precision 1 at every one of
    COCO's 101 recall points that `recall` reaches (the tolerance absorbs t/100 vs linspace rounding)."""
    return float(np.count_nonzero(COCO_RECALL_THRESHOLDS <= recall + 1e-12)) / len(COCO_RECALL_THRESHOLDS)


def ap_interval(ious: np.ndarray, scores: np.ndarray, threshold: float, resamples: np.ndarray,
                min_hits: int = MIN_BOOTSTRAP_HITS, level: float = 0.95) -> tuple[float, float, str | None]:
    """95% interval of `ap_at_iou` over the images, and a note when it is not a bootstrap interval.

    With few hits (images whose IoU reaches the threshold) the percentile bootstrap collapses: most
    resamples hold the same handful of hits or none, so map_75 got [0, 0] and covered the true value
    41.5% of the time. Below `min_hits` hits the interval comes from the hit count alone, through an
    exact (Clopper-Pearson) interval [q_lo, q_hi] of the hit rate q and two bounds that hold for any
    ranking of the boxes: AP is at most `best_ap_up_to(q)` (precision 1 wherever recall reaches) and at
    least `best_ap_up_to(q) * q` (interpolated precision never falls below the overall precision q).
    Both grow with q, so [best_ap_up_to(q_lo) * q_lo, best_ap_up_to(q_hi)] holds the population's AP
    whenever [q_lo, q_hi] holds its hit rate: at least 95% of the time, whatever the scores. It always
    holds the value, is never zero-width, and is wide: with so few hits the data say little more than
    "at most this much". (Scaling the value by q_lo / q instead covered only 87-90% with a noisy
    ranking, since a small sample's AP is biased upwards; see tests/test_intervals.py.) From `min_hits`
    hits on, the percentile bootstrap over `resamples` (rows of image indices) is used, as for every metric.
    """
    ious, scores = np.asarray(ious), np.asarray(scores)
    hits, n = int(np.count_nonzero(ious >= min(threshold, 1 - 1e-10))), len(ious)
    tail = (1 - level) / 2 * 100
    if hits >= min_hits:
        boot = ap_at_iou_resampled(ious, scores, threshold, resamples)
        return float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)), None
    rate_low, rate_high = hit_rate_interval(hits, n, level)
    note = (f"{hits} hit{'s' if hits != 1 else ''} at IoU {threshold:g} of {n}: exact binomial interval "
            "on the hit count, not a bootstrap")
    return best_ap_up_to(rate_low) * rate_low, best_ap_up_to(rate_high), note


from .cka import StreamingCKA, cka  # noqa: E402  (at the end: CKA needs nothing above)
