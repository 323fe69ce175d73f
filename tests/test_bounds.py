"""The box ceiling is the best box on the stage's token boundaries (checked against every boundary
combination), and no dense-probe value on a token grid exceeds its ceiling."""
import numpy as np
import pytest
import torch

from spatialprobe.features import grid_footprints
from spatialprobe.metrics import mask_iou, paired_box_iou
from spatialprobe.probes import ProbeSplit, run_spatial_probes
from spatialprobe.probes.bounds import ceiling_boxes, ceiling_masks, ceilings
from spatialprobe.probes.footprints import mask_boxes, paint, token_coverage
from test_probes import by_key, rectangles, split_of, with_coverage_features

SIZE = 32  # mask pixels per side in the random layouts


# --- layouts and targets ---------------------------------------------------------------------------
def grid_between(cuts_x: torch.Tensor, cuts_y: torch.Tensor) -> torch.Tensor:
    """Footprints [N, 4] of the grid whose column and row edges are these ascending cuts."""
    x0, x1, y0, y1 = cuts_x[:-1], cuts_x[1:], cuts_y[:-1], cuts_y[1:]
    rows, cols = torch.meshgrid(torch.arange(len(y0)), torch.arange(len(x0)), indexing="ij")
    return torch.stack([x0[cols], y0[rows], x1[cols], y1[rows]], -1).reshape(-1, 4)


def uneven_grids(n: int, seed: int, span=(0.0, 1.0)) -> torch.Tensor:
    """Per image a 4x5 grid with random cuts inside `span` (outside it no token sees anything)."""
    g = torch.Generator().manual_seed(seed)
    low, high = span
    def cuts(k):
        return torch.cat([torch.tensor([low]), (low + (high - low) * torch.rand(k - 1, generator=g)).sort().values,
                          torch.tensor([high])])
    return torch.stack([grid_between(cuts(5), cuts(4)) for _ in range(n)])


def overlapping_tiles(n: int, seed: int) -> torch.Tensor:
    """Per image two 3x3 tiles that overlap by a random amount, plus a 2x2 thumbnail of the whole image."""
    g = torch.Generator().manual_seed(seed)
    layouts = []
    for _ in range(n):
        left_end, right_start = 0.5 + 0.3 * torch.rand(1, generator=g).item(), 0.2 + 0.3 * torch.rand(1, generator=g).item()
        ys = torch.linspace(0, 1, 4)
        layouts.append(torch.cat([grid_between(torch.linspace(0, left_end, 4), ys),
                                  grid_between(torch.linspace(right_start, 1, 4), ys), grid_footprints(2, 2)]))
    return torch.stack(layouts)


def random_boxes(n: int, seed: int) -> torch.Tensor:
    """Boxes of every size anywhere in the image, some thinner than a mask pixel."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(n, 2, 2, generator=g)
    corners[: n // 4, 1] = corners[: n // 4, 0] + 0.01 * torch.rand(n // 4, 2, generator=g)  # tiny ones
    low, high = corners.min(1).values, corners.max(1).values.clamp(max=1)
    return torch.cat([low, high], 1)


def split_with(footprints: torch.Tensor, boxes: torch.Tensor, size: int = SIZE) -> ProbeSplit:
    """Targets painted at `size` px (pixel centres inside): rectangles filling their boxes, and on every
    other image a triangle filling the box's lower-left half (where the best mask's box is not the best box)."""
    centres = (torch.arange(size) + 0.5) / size
    across = (centres - boxes[:, None, 0]) / (boxes[:, None, 2] - boxes[:, None, 0]).clamp(min=1e-9)
    down = (centres - boxes[:, None, 1]) / (boxes[:, None, 3] - boxes[:, None, 1]).clamp(min=1e-9)
    inside_x, inside_y = (across >= 0) & (across < 1), (down >= 0) & (down < 1)
    masks = inside_y[:, :, None] & inside_x[:, None, :]
    triangle = (torch.arange(len(boxes)) % 2 == 1)[:, None, None]
    masks &= ~triangle | (across[:, None, :] <= down[:, :, None])
    return ProbeSplit(torch.zeros(len(boxes), footprints.shape[1], 1), footprints.float(), boxes.float(), masks)


# --- brute force ------------------------------------------------------------------------------------
def footprint_boxes(split: ProbeSplit, i: int) -> torch.Tensor:
    """The mask box of every single token of image i, painted alone: where a dense mask's edges can lie."""
    tokens, height, width = split.footprints.shape[1], *split.masks.shape[1:]
    alone = paint(torch.eye(tokens), split.footprints[i].expand(tokens, -1, -1), height, width) > 0
    return mask_boxes(alone[alone.flatten(1).any(1)])


def brute_force_best_iou(split: ProbeSplit, i: int) -> tuple[float, bool]:
    """The best IoU over ALL boxes with edges on image i's token boundaries, and whether any has area."""
    edges = footprint_boxes(split, i).double().numpy()
    xs, ys = np.unique(edges[:, [0, 2]]), np.unique(edges[:, [1, 3]])
    x0, x1 = [a.ravel() for a in np.meshgrid(xs, xs, indexing="ij")]
    y0, y1 = [a.ravel() for a in np.meshgrid(ys, ys, indexing="ij")]
    keep_x, keep_y = x1 > x0, y1 > y0
    if not keep_x.any() or not keep_y.any():
        return 0.0, False
    x0, x1, y0, y1 = x0[keep_x][:, None], x1[keep_x][:, None], y0[keep_y][None], y1[keep_y][None]
    tx0, ty0, tx1, ty1 = split.boxes[i].double().tolist()
    inter = np.clip(np.minimum(x1, tx1) - np.maximum(x0, tx0), 0, None) * np.clip(np.minimum(y1, ty1) - np.maximum(y0, ty0), 0, None)
    union = (x1 - x0) * (y1 - y0) + (tx1 - tx0) * (ty1 - ty0) - inter
    return float((inter / union).max()), True


LAYOUTS = {
    "regular grid": lambda n, seed: grid_footprints(4, 4).expand(n, -1, -1),
    "uneven grids": uneven_grids,
    "grid over part of the image": lambda n, seed: uneven_grids(n, seed, span=(0.2, 0.7)),
    "overlapping tiles": overlapping_tiles,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_box_ceiling_equals_the_best_of_all_boundary_combinations(layout):
    n = 60
    split = split_with(LAYOUTS[layout](n, 1), random_boxes(n, 2))
    snapped = ceiling_boxes(split)
    got = paired_box_iou(snapped, split.boxes)
    has_area = (snapped[:, 2] > snapped[:, 0]) & (snapped[:, 3] > snapped[:, 1])
    for i in range(n):
        best, any_positive = brute_force_best_iou(split, i)
        assert got[i] == pytest.approx(best, abs=1e-12), (layout, i, split.boxes[i], snapped[i])
        assert bool(has_area[i]) == any_positive, (layout, i)  # never a zero-area box when one with area exists


def test_ceiling_box_has_area_even_when_the_target_is_outside_every_token():
    footprints = grid_footprints(2, 2)[None] * 0.5  # tokens only in the top-left quarter
    split = split_with(footprints, torch.tensor([[0.7, 0.7, 0.9, 0.9]]))
    box = ceiling_boxes(split)[0]
    assert box[2] > box[0] and box[3] > box[1]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_mask_painted_through_the_footprints_beats_the_ceilings(layout):
    # whatever a reader predicts per token and wherever it thresholds, its mask box stays on the boundaries,
    # and its mask is a union of atoms: on overlapping tiles a painted mask can cut a token in two (where
    # another tile overlaps it), so the mask ceiling must range over those finer pieces, not whole tokens
    n = 40
    split = split_with(LAYOUTS[layout](n, 3), random_boxes(n, 4))
    box_ceiling = paired_box_iou(ceiling_boxes(split), split.boxes)
    mask_ceiling = mask_iou(ceiling_masks(split), split.masks)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        painted = paint(torch.rand(n, split.footprints.shape[1], generator=g), split.footprints, SIZE, SIZE)
        masks = painted >= torch.rand(n, 1, 1, generator=g)
        assert (paired_box_iou(mask_boxes(masks), split.boxes) <= box_ceiling + 1e-12).all()
        assert (mask_iou(masks, split.masks) <= mask_ceiling + 1e-12).all()


# --- a case the box of the best token mask misses -------------------------------------------------------
def triangle_split() -> ProbeSplit:
    """One 8x8 image, 2x2 tokens of 4 px: a right triangle of 16 px in rows 0-3, widening to 7 px in row 3.
    Box [0, 0, 7/8, 1/2]. Token coverage: top-left 12/16, top-right 4/16, bottom row 0."""
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    for row, width in enumerate((1, 3, 5, 7)):
        masks[0, row, :width] = True
    return ProbeSplit(torch.zeros(1, 4, 1), grid_footprints(2, 2)[None], mask_boxes(masks), masks)


def test_box_ceiling_is_the_best_grid_box_not_the_best_masks_box():
    test = triangle_split()
    ceiling = ceilings(test)
    # best token mask: top-left alone (inter 12, union 20: 0.6) beats the top row (16 / 32); its box
    # [0, 0, .5, .5] has box IoU .25 / .4375 = 4/7. The top row's box [0, 0, 1, .5] has .4375 / .5 = 7/8.
    assert ceiling["spatial_iou"] == pytest.approx(0.6)
    assert ceiling_boxes(test)[0].tolist() == [0.0, 0.0, 1.0, 0.5]
    assert ceiling["bbox_iou"] == pytest.approx(7 / 8)
    assert ceiling["map_50"] == pytest.approx(1.0) and ceiling["map_75"] == pytest.approx(1.0)


# --- the dense probe stays below its ceilings ---------------------------------------------------------------
BOUNDED = ("bbox_iou", "map_50", "map_75", "spatial_iou")


def perfect_features(split: ProbeSplit) -> ProbeSplit:
    """Each token's ground-truth coverage as its only feature: the best a reader of these tokens can have."""
    return ProbeSplit(token_coverage(split.masks, split.footprints)[..., None], split.footprints, split.boxes, split.masks)


def assert_within_ceilings(records, metrics=BOUNDED):
    got = by_key(records)
    for metric in metrics:
        r = got[("dense", metric)]
        assert r["value"] <= r["ceiling"] + 1e-9, r
    return got


def small_rects(seed: int, n: int) -> ProbeSplit:
    """Hand-sized splits: 8x8 images, 2x2 tokens, rectangles anywhere (many cut tokens in half)."""
    g = torch.Generator().manual_seed(seed)
    rects = []
    for _ in range(n):
        r0, c0 = torch.randint(0, 6, (2,), generator=g).tolist()
        r1, c1 = r0 + torch.randint(2, 9 - r0, (1,), generator=g).item(), c0 + torch.randint(2, 9 - c0, (1,), generator=g).item()
        rects.append((r0, r1, c0, c1))
    return split_of(rects, 8, 2)


@pytest.mark.parametrize("case", ["noisy coverage", "noise only", "hand-sized rectangles"])
def test_dense_probe_stays_below_its_ceilings(case):
    if case == "noisy coverage":
        train, test = with_coverage_features(rectangles(120, 20), 21, noise=0.2), with_coverage_features(rectangles(60, 22), 23, noise=0.2)
    elif case == "noise only":
        train, test = rectangles(120, 24), rectangles(60, 25)
        g = torch.Generator().manual_seed(26)
        for split in (train, test):
            split.tokens = torch.randn(len(split.boxes), 64, 4, generator=g)
    else:
        train, test = with_coverage_features(small_rects(27, 40), 28), with_coverage_features(small_rects(29, 30), 30)
        test = ProbeSplit(torch.cat([test.tokens, perfect_features(triangle_split()).tokens.expand(-1, -1, 8)]),
                          torch.cat([test.footprints, triangle_split().footprints]),
                          torch.cat([test.boxes, triangle_split().boxes]), torch.cat([test.masks, triangle_split().masks]))
    assert_within_ceilings(run_spatial_probes(train, test, probes=("dense",), n_boot=50))


def test_dense_probe_with_perfect_features_comes_close_to_but_not_above_its_ceilings():
    train, test = perfect_features(rectangles(150, 31)), perfect_features(rectangles(80, 32))
    got = assert_within_ceilings(run_spatial_probes(train, test, probes=("dense",), n_boot=50))
    for metric in ("bbox_iou", "spatial_iou"):
        r = got[("dense", metric)]
        assert r["value"] >= r["ceiling"] - 0.03, r


def test_dense_boxes_on_overlapping_tiles_stay_below_the_box_ceilings():
    # on overlapping footprints the box ceilings still bound the dense probe (its mask edges are footprint edges)
    n_train, n_test = 100, 50
    train = perfect_features(split_with(overlapping_tiles(n_train, 33), random_boxes(n_train, 34)))
    test = perfect_features(split_with(overlapping_tiles(n_test, 35), random_boxes(n_test, 36)))
    assert_within_ceilings(run_spatial_probes(train, test, probes=("dense",), n_boot=50), ("bbox_iou", "map_50", "map_75"))
