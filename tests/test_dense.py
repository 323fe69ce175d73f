"""The dense probe chooses on left-out images: grouped ridge LOO against explicit refits, and its score head."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from spatialprobe.metrics import paired_box_iou
from spatialprobe.probes import ProbeSplit, run_spatial_probes
from spatialprobe.probes.dense import best_threshold, dense_probe, fit_coverage, painted_predictions, score_head
from spatialprobe.probes.footprints import paint, token_coverage
from spatialprobe.probes.ridge import RidgeSolver
from test_probes import rectangles


def refit_without_each_group(x, y, group_size, alpha, scale):
    """Leave-one-group-out predictions by brute force: drop the block, refit ridge + intercept, predict it."""
    xs = (x - x.mean(0)) / scale  # the same alpha in the same (full-data) units
    groups = np.arange(len(x)) // group_size
    out = np.zeros_like(y)
    for g in np.unique(groups):
        keep = groups != g
        xk, yk = xs[keep], y[keep]
        xc = xk - xk.mean(0)
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (yk - yk.mean(0)))
        out[~keep] = (xs[~keep] - xk.mean(0)) @ w + yk.mean(0)
    return out


# primal and dual regimes; with more tokens per image than the rank, the low-rank (Woodbury) solve
@pytest.mark.parametrize("images,tokens,d", [(7, 5, 4), (6, 4, 40), (7, 30, 5)])
def test_group_loo_predictions_match_explicit_refits(images, tokens, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images * tokens, d, generator=g, dtype=torch.float64)
    y = torch.randn(images * tokens, 2, generator=g, dtype=torch.float64)
    solver = RidgeSolver(x)
    got = solver.group_loo_predictions(y, tokens, alpha=0.7).numpy()
    want = refit_without_each_group(x.numpy(), y.numpy(), tokens, 0.7, solver.scale)
    assert np.abs(got - want).max() < 1e-8


def test_grouped_alpha_is_the_one_explicit_refits_prefer():
    # each image's tokens share image-level features and an offset those features do not explain:
    # per-token LOO lets an image's other tokens vouch for the left-out one (fit the offset from the
    # shared features) and shrinks too little; leaving whole images out does not
    g = torch.Generator().manual_seed(1)
    images, tokens = 12, 6
    shared = torch.randn(images, 8, generator=g, dtype=torch.float64).repeat_interleave(tokens, 0)
    own = torch.randn(images * tokens, 1, generator=g, dtype=torch.float64)
    x = torch.cat([shared + 0.05 * torch.randn(shared.shape, generator=g, dtype=torch.float64), own], 1)
    offset = torch.randn(images, 1, generator=g, dtype=torch.float64).repeat_interleave(tokens, 0)
    y = 0.5 * own + offset
    solver = RidgeSolver(x)
    errors = [((refit_without_each_group(x.numpy(), y.numpy(), tokens, a, solver.scale) - y.numpy()) ** 2).mean()
              for a in solver.alphas.tolist()]
    grouped = solver.fit(y, group_size=tokens)
    assert grouped.alpha == pytest.approx(solver.alphas[int(np.argmin(errors))].item())
    assert grouped.alpha > solver.fit(y).alpha
    want = refit_without_each_group(x.numpy(), y.numpy(), tokens, grouped.alpha, solver.scale)
    assert np.abs(grouped.loo_predictions.numpy() - want).max() < 1e-8


def test_groups_must_tile_the_rows():
    solver = RidgeSolver(torch.randn(10, 3))
    with pytest.raises(ValueError, match="groups of 4"):
        solver.fit(torch.randn(10), group_size=4)


def with_noisy_coverage(split, seed, channels=3, max_noise=0.6):
    """Tokens = coverage + noise whose level differs per image: some images are easy, some hard."""
    g = torch.Generator().manual_seed(seed)
    cover = token_coverage(split.masks, split.footprints)[..., None]
    level = torch.rand(len(cover), 1, 1, generator=g) * max_noise
    noisy = cover + level * torch.randn(cover.shape, generator=g)
    tokens = torch.cat([noisy, torch.randn(*cover.shape[:2], channels, generator=g)], -1)
    return ProbeSplit(tokens, split.footprints, split.boxes, split.masks)


def with_noise_tokens(split, seed):
    split.tokens = torch.randn(len(split.boxes), split.footprints.shape[1], 8, generator=torch.Generator().manual_seed(seed))
    return split


def test_dense_threshold_comes_from_leave_one_image_out_refits():
    train = with_noisy_coverage(rectangles(10, 3, grid=4), 4, channels=2)
    test = with_noisy_coverage(rectangles(5, 5, grid=4), 6, channels=2)
    fit, loio = fit_coverage(train)
    tokens = train.tokens.reshape(-1, train.tokens.shape[-1]).double().numpy()
    coverage = token_coverage(train.masks, train.footprints).reshape(-1, 1).double().numpy()
    scale = RidgeSolver(train.tokens.reshape(-1, train.tokens.shape[-1])).scale
    refits = refit_without_each_group(tokens, coverage, train.tokens.shape[1], fit.alpha, scale)
    painted = paint(torch.from_numpy(refits).reshape(train.tokens.shape[:2]).float(), train.footprints, 64, 64)
    assert torch.allclose(loio, painted, atol=1e-5)
    masks = dense_probe(train, test)[0]
    assert torch.equal(masks, painted_predictions(fit, test) >= best_threshold(painted, train.masks))


def test_learned_score_ranks_test_boxes():
    train, test = with_noisy_coverage(rectangles(120, 20), 30), with_noisy_coverage(rectangles(60, 40), 50)
    _, boxes, scores, kind = dense_probe(train, test)
    assert kind == "learned"
    assert spearmanr(scores.numpy(), paired_box_iou(boxes, test.boxes)).statistic > 0.3


def test_score_head_falls_back_to_a_constant_on_noise():
    g = torch.Generator().manual_seed(7)
    scores, kind = score_head(torch.randn(150, 5, generator=g), torch.rand(150, generator=g, dtype=torch.float64),
                              torch.randn(20, 5, generator=g))
    assert kind == "constant" and scores.unique().numel() == 1


def test_dense_records_say_which_score_ranked_the_boxes():
    learnable = run_spatial_probes(with_noisy_coverage(rectangles(120, 20), 30), with_noisy_coverage(rectangles(60, 40), 50),
                                   probes=("dense",), n_boot=20)
    noise = run_spatial_probes(with_noise_tokens(rectangles(120, 60), 1), with_noise_tokens(rectangles(60, 70), 2),
                               probes=("dense",), n_boot=20)
    assert {r["score"] for r in learnable} == {"learned"}
    assert {r["score"] for r in noise} == {"constant"}
