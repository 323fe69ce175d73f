"""Probes and bounds where the answer is known."""
import numpy as np
import pytest
import torch

from spatialprobe.probes.bounds import ceilings, floors
from spatialprobe.features import grid_footprints
from spatialprobe.probes import ProbeSplit, run_spatial_probes, shuffle_tokens
from spatialprobe.probes.footprints import paint, token_coverage
from spatialprobe.probes.ridge import RidgeSolver, fit_ridge


# --- ridge ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(60, 8), (20, 90)])  # primal and dual regimes
def test_ridge_matches_direct_solve(n, d):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    solver = RidgeSolver(x)
    fit = solver.fit(y, alpha=2.0)
    # the same problem solved directly: scaled centered features, unpenalized intercept
    x, y = x.numpy(), y.numpy()
    xs = (x - x.mean(0)) / solver.scale
    w = np.linalg.solve(xs.T @ xs + 2.0 * np.eye(d), xs.T @ (y - y.mean(0)))
    direct = xs @ w + y.mean(0)
    assert np.allclose(fit.predict(torch.from_numpy(x)).double().numpy(), direct, atol=1e-4)


@pytest.mark.parametrize("n,d", [(25, 6), (12, 40)])
def test_loo_predictions_match_brute_force(n, d):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    solver = RidgeSolver(x)
    fit = solver.fit(y, alpha=0.7)
    x, y = x.numpy(), y.numpy()
    for i in range(n):
        keep = np.arange(n) != i
        # same alpha in the same (full-data) units: reuse the full solver's scale
        xs = (x - x.mean(0)) / solver.scale
        xk, yk = xs[keep], y[keep]
        w = np.linalg.solve((xk - xk.mean(0)).T @ (xk - xk.mean(0)) + 0.7 * np.eye(d), (xk - xk.mean(0)).T @ (yk - yk.mean(0)))
        pred = (xs[i] - xk.mean(0)) @ w + yk.mean(0)
        assert np.allclose(fit.loo_predictions[i].numpy(), pred, atol=1e-8)


def test_alpha_choice_is_sensible():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 10, generator=g)
    clean = RidgeSolver(x).fit(x @ torch.arange(10.0))
    noise = RidgeSolver(x).fit(torch.randn(200, 1, generator=g))
    assert clean.alpha < noise.alpha
    assert torch.allclose(clean.predict(x).flatten(), (x @ torch.arange(10.0)), atol=0.05)


# --- footprints -------------------------------------------------------------------------------
def test_coverage_and_painting_by_hand():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :3] = True  # three pixels in the top row
    fp = grid_footprints(2, 2)[None]
    assert token_coverage(mask, fp).tolist() == [[0.5, 0.25, 0.0, 0.0]]
    # overlapping footprints: a whole-image token and a top-left token average where both lie
    overlap = torch.tensor([[[0, 0, 1, 1], [0, 0, 0.5, 0.5]]], dtype=torch.float32)
    painted = paint(torch.tensor([[1.0, 3.0]]), overlap, 4, 4)[0]
    assert painted[0, 0] == 2.0 and painted[3, 3] == 1.0 and painted[1, 2] == 1.0
    gap = paint(torch.tensor([[5.0]]), torch.tensor([[[0, 0, 0.5, 1]]]), 4, 4)[0]
    assert gap[:, :2].eq(5).all() and gap[:, 2:].eq(0).all()


# --- floor and ceiling on a hand-made case ---------------------------------------------------------
def split_of(rects, size=8, grid=2):
    masks = torch.zeros(len(rects), size, size, dtype=torch.bool)
    for i, (r0, r1, c0, c1) in enumerate(rects):
        masks[i, r0:r1, c0:c1] = True
    boxes = torch.tensor([[c0 / size, r0 / size, c1 / size, r1 / size] for r0, r1, c0, c1 in rects])
    fp = grid_footprints(grid, grid).expand(len(rects), -1, -1).contiguous()
    return ProbeSplit(torch.zeros(len(rects), grid * grid, 1), fp, boxes, masks)


def test_floor_and_ceiling_by_hand():
    # train: A, A = top-left quadrant (rows 0-3, cols 0-3); B = rows 0-3, cols 0-5
    train = split_of([(0, 4, 0, 4), (0, 4, 0, 4), (0, 4, 0, 6)])
    # test: C = rows 1-6, cols 0-5 (36 px), box [0, .125, .75, .875]
    test = split_of([(1, 7, 0, 6)])
    floor, ceiling = floors(train, test), ceilings(test)
    # floor box = mean train box [0, 0, 7/12, 1/2]; with C: inter 7/12*3/8 = .21875,
    # union 7/24 + 9/16 - .21875 = .635417 -> IoU .344262 (< .5: no AP)
    assert floor["bbox_iou"] == pytest.approx(0.21875 / (7 / 24 + 9 / 16 - 0.21875))
    assert floor["map_50"] == 0.0 and floor["map_75"] == 0.0
    # mean train mask: 1 on the quadrant, 1/3 on cols 4-5; thresholds <= 1/3 give the 24-px mask
    # (train IoU (2/3+2/3+1)/3 = .778), higher ones the 16-px quadrant ((1+1+2/3)/3 = .889): quadrant.
    # with C: inter rows 1-3 x cols 0-3 = 12, union 16 + 36 - 12 = 40 -> .3
    assert floor["spatial_iou"] == pytest.approx(0.3)
    # token coverage of C: TL 12/16, TR 6/16, BL 12/16, BR 6/16. Token-aligned masks: the left
    # column (32 px: inter 24, union 44 -> 6/11 = .545) or all four tokens (inter 36, union 64 ->
    # 9/16 = .5625): the best is all four
    assert ceiling["spatial_iou"] == pytest.approx(9 / 16)
    # that mask's box is the whole image; with C's box [0, .125, .75, .875]: .5625 / 1
    assert ceiling["bbox_iou"] == pytest.approx(9 / 16)
    assert ceiling["map_50"] == pytest.approx(1.0) and ceiling["map_75"] == 0.0


# --- probes on constructed features ------------------------------------------------------------
def rectangles(n, seed, size=64, grid=8):
    g = torch.Generator().manual_seed(seed)
    rects = []
    for _ in range(n):
        h, w = torch.randint(12, 36, (2,), generator=g).tolist()
        r0, c0 = torch.randint(0, size - h, (1,), generator=g).item(), torch.randint(0, size - w, (1,), generator=g).item()
        rects.append((r0, r0 + h, c0, c0 + w))
    return split_of(rects, size, grid)


def with_coverage_features(split, seed, distractors=7, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    cover = token_coverage(split.masks, split.footprints)[..., None]
    tokens = torch.cat([cover + noise * torch.randn(cover.shape, generator=g),
                        torch.randn(*cover.shape[:2], distractors, generator=g)], -1)
    return ProbeSplit(tokens, split.footprints, split.boxes, split.masks)


def by_key(records):
    return {(r["probe"], r["metric"]): r for r in records}


@pytest.fixture(scope="module")
def coverage_case():
    train = with_coverage_features(rectangles(200, 0), 10)
    test = with_coverage_features(rectangles(80, 1), 11)
    return train, test


def test_dense_probe_reaches_ceiling_and_shuffle_falls_to_floor(coverage_case):
    train, test = coverage_case
    got = by_key(run_spatial_probes(train, test, n_boot=200))
    for metric in ("spatial_iou", "bbox_iou"):
        r = got[("dense", metric)]
        assert r["value"] == pytest.approx(r["ceiling"], abs=0.02) and r["value"] > r["floor"] + 0.3
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    shuffled = by_key(run_spatial_probes(shuffle_tokens(train, 0), shuffle_tokens(test, 1), n_boot=200))
    for metric in ("spatial_iou", "bbox_iou", "map_50"):
        r = shuffled[("dense", metric)]
        assert r["value"] <= r["floor"] + 0.03
    assert shuffled[("linear", "bbox_iou")]["value"] <= got[("linear", "bbox_iou")]["floor"] + 0.05
    # mean pooling ignores order: the pooled probe cannot tell shuffled from unshuffled tokens
    assert shuffled[("pooled", "bbox_iou")]["value"] == pytest.approx(got[("pooled", "bbox_iou")]["value"], abs=1e-4)


def test_linear_probe_reads_a_linearly_encoded_box():
    train, test = rectangles(150, 2), rectangles(60, 3)
    g = torch.Generator().manual_seed(4)
    mixing = torch.randn(4, 16, generator=g)
    for split in (train, test):
        split.tokens = (split.boxes @ mixing)[:, None, :].expand(-1, 64, -1).contiguous()
    got = by_key(run_spatial_probes(train, test, probes=("linear", "pooled"), n_boot=100))
    assert got[("linear", "bbox_iou")]["value"] > 0.97 and got[("pooled", "bbox_iou")]["value"] > 0.97
    assert got[("linear", "map_75")]["value"] > 0.95


def test_noise_features_stay_at_the_floor():
    train, test = rectangles(150, 5), rectangles(60, 6)
    g = torch.Generator().manual_seed(7)
    for split in (train, test):
        split.tokens = torch.randn(len(split.boxes), 64, 8, generator=g)
    got = by_key(run_spatial_probes(train, test, n_boot=100))
    for probe in ("linear", "pooled", "dense"):
        r = got[(probe, "bbox_iou")]
        assert r["value"] <= r["floor"] + 0.05


def test_stage_without_spatial_tokens_gets_only_the_pooled_probe_on_its_placeless_tokens():
    # Kosmos-2's resampled queries: no footprints, so only pooling can read them
    train, test = rectangles(150, 8), rectangles(60, 9)
    g = torch.Generator().manual_seed(10)
    mixing = torch.randn(4, 16, generator=g)
    for split in (train, test):
        n = len(split.boxes)
        split.placeless_mean = split.boxes @ mixing
        split.tokens, split.footprints = torch.zeros(n, 0, 16), torch.zeros(n, 0, 4)
    got = by_key(run_spatial_probes(train, test, n_boot=100))
    assert {probe for probe, _ in got} == {"pooled"}
    r = got[("pooled", "bbox_iou")]
    assert r["value"] > 0.97 and r["ceiling"] == pytest.approx(1.0) and r["floor"] < 0.5
