"""Zero-area targets never count as perfect matches: not in the floor, the ceiling or the dense probe's threshold."""
import pytest
import torch

from spatialprobe.probes.bounds import best_constant_mask, ceilings, floors, perfect_scores
from spatialprobe.probes.dense import best_threshold
from test_probes import split_of  # one image per (r0, r1, c0, c1) rectangle; (0, 0, 0, 0): the target vanished


EMPTY = (0, 0, 0, 0)
QUADRANT = (0, 4, 0, 4)  # the top-left 16 px


def test_floor_does_not_learn_to_predict_nothing():
    # two of three training targets are empty: were empty-on-empty a perfect match, the empty
    # constant mask would win (train IoU 2/3 against 1/3) and score 1 on every empty test target
    train = split_of([EMPTY, EMPTY, QUADRANT])
    assert best_constant_mask(train.masks).sum() == 16
    test = split_of([EMPTY, (0, 4, 0, 6)])  # the quadrant against 24 px: IoU 16/24
    assert floors(train, test)["spatial_iou"] == pytest.approx((0 + 16 / 24) / 2)


def test_ceiling_and_perfect_scores_give_nothing_for_an_empty_target():
    test = split_of([EMPTY, QUADRANT])
    assert ceilings(test)["spatial_iou"] == pytest.approx(0.5)
    assert perfect_scores(test)["spatial_iou"] == pytest.approx(0.5)
    assert perfect_scores(test)["bbox_iou"] == pytest.approx(0.5)


def test_dense_threshold_is_not_chosen_to_predict_nothing():
    # coverage 0.5 on the real object, and a false 0.6 spot on the two images without a target:
    # thresholds <= 0.5 find the object (mean IoU 1/3); those above 0.6 predict nothing anywhere,
    # which must not score 2/3 by "matching" the two empty targets
    train = split_of([EMPTY, EMPTY, QUADRANT])
    painted = train.masks.float() * 0.5
    painted[:2, 6:, 6:] = 0.6
    assert best_threshold(painted, train.masks) <= 0.5
