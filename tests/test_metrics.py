"""Metrics against their reference implementations: torchvision for box IoU, pycocotools for AP."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from spatialprobe import metrics


def random_boxes(n, generator, degenerate=0):
    corners = torch.rand(n, 4, generator=generator)
    boxes = torch.cat([torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1)
    boxes[:degenerate, 2] = boxes[:degenerate, 0]  # zero width
    return boxes


def test_box_iou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(50, g, degenerate=3), random_boxes(40, g, degenerate=2)
    ours = metrics.box_iou(a, b)
    theirs = tv_box_iou(a.double(), b.double()).nan_to_num(0.0)
    assert ours.shape == (50, 40)
    assert torch.allclose(ours, theirs, atol=1e-12)
    assert torch.allclose(metrics.box_iou(a, a).diagonal()[3:], torch.ones(47, dtype=torch.float64))


def test_paired_iou_is_the_diagonal():
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(20, g), random_boxes(20, g)
    assert np.allclose(metrics.paired_box_iou(a, b), metrics.box_iou(a, b).diagonal().numpy())


@pytest.mark.parametrize("seed", range(12))
def test_ap_at_iou_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    g = torch.Generator().manual_seed(seed)
    target = random_boxes(n, g)
    pred = (target + torch.from_numpy(rng.normal(0, 0.08, (n, 4))).float()).clamp(0, 1)
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])], 1)
    scores = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.random(n)  # odd seeds: many ties
    reference = metrics.coco_map(pred.numpy(), scores, target.numpy(), (0.5, 0.75))
    ious = metrics.paired_box_iou(pred, target)
    for thr in (0.5, 0.75):
        assert metrics.ap_at_iou(ious, scores, thr) == pytest.approx(reference[thr], abs=1e-9)


def test_coco_map_known_cases():
    target = np.array([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]])
    assert metrics.coco_map(target, [0.9, 0.8], target) == {0.5: pytest.approx(1.0), 0.75: pytest.approx(1.0)}
    # a confident miss ranked first, then a hit: recall reaches 1/2 at precision 1/2;
    # 51 of the 101 recall points (0.00 ... 0.50) see precision 0.5
    miss = np.array([[0.6, 0.0, 0.9, 0.3], [0.5, 0.5, 0.9, 0.9]])
    assert metrics.coco_map(miss, [0.9, 0.8], target)[0.5] == pytest.approx(0.5 * 51 / 101)
    # ranked the other way round, the hit comes first: precision 1 up to recall 0.5 -> 51/101
    assert metrics.coco_map(miss, [0.1, 0.8], target)[0.5] == pytest.approx(51 / 101)


def test_mask_iou():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2], b[0, :, :2] = True, True  # 8 and 8 pixels, 4 shared
    assert metrics.mask_iou(a, b).tolist() == [pytest.approx(4 / 12), 0.0]  # image 1: both empty


def test_empty_target_is_never_a_perfect_match():
    empty, full = torch.zeros(1, 4, 4, dtype=torch.bool), torch.ones(1, 4, 4, dtype=torch.bool)
    # predicting nothing where there is nothing to find earns nothing: otherwise the best constant
    # mask (the floor) and any probe could score by predicting empty masks
    assert metrics.mask_iou(empty, empty).tolist() == [0.0]
    assert metrics.mask_iou(full, empty).tolist() == [0.0] and metrics.mask_iou(empty, full).tolist() == [0.0]


@pytest.mark.parametrize("box", [[0.2, 0.2, 0.2, 0.6], [0.2, 0.6, 0.5, 0.6], [0.3, 0.3, 0.3, 0.3]])
def test_zero_area_boxes_never_match(box):
    same = torch.tensor([box, [0.1, 0.1, 0.5, 0.5]], dtype=torch.float64)
    assert metrics.paired_box_iou(same, same).tolist() == [0.0, 1.0]
    assert metrics.box_iou(same, same)[0, 0] == 0.0
    # pycocotools agrees: the zero-area pair is a miss even when ranked first
    assert metrics.coco_map(same.numpy(), [0.9, 0.8], same.numpy())[0.5] == pytest.approx(0.5 * 51 / 101)
    assert metrics.ap_at_iou(metrics.paired_box_iou(same, same), np.array([0.9, 0.8]), 0.5) == pytest.approx(0.5 * 51 / 101)


def test_bootstrap_intervals_cover_the_mean_and_are_seeded():
    values = np.random.default_rng(0).random(200)
    low, high = metrics.mean_ci(values, 1000, seed=3)
    assert low < values.mean() < high and (low, high) == metrics.mean_ci(values, 1000, seed=3)
    generic = metrics.bootstrap_ci(lambda idx: values[idx].mean(), len(values), 1000, seed=3)
    assert generic == pytest.approx((low, high), abs=0.01)
