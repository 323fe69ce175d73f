"""Intervals that mean what they say: coverage where the truth is known, rare-event mAP that does not
collapse, what every row's interval covers, and refits on resampled training images."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spatialprobe.config import parse_config
from spatialprobe.errors import SpatialProbeError
from spatialprobe.features import grid_footprints
from spatialprobe.metrics import MIN_BOOTSTRAP_HITS, ap_at_iou, best_ap_up_to, hit_rate_interval
from spatialprobe.probes import ProbeSplit, run_spatial_probes
from spatialprobe.probes.footprints import token_coverage
from spatialprobe.probes.scoring import evaluate, score

DRAWS = 300  # test sets per coverage check: a 95% interval then covers >= 90% unless it is broken
N_TEST = 100  # the quickstart's test split


# --- synthetic test sets with a known truth --------------------------------------------------------
def as_boxes(ious: np.ndarray) -> tuple[torch.Tensor, SimpleNamespace]:
    """Predicted boxes [0, 0, iou, 1] against the unit target box: each box's IoU is exactly `iou`."""
    n = len(ious)
    pred = torch.zeros(n, 4, dtype=torch.float64)
    pred[:, 2], pred[:, 3] = torch.from_numpy(ious), 1.0
    return pred, SimpleNamespace(boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64).expand(n, 4))


def oracle_draw(rng, n, hit_rate):
    """Hits (IoU 0.8) with probability hit_rate, else IoU uniform in [0, 0.7); scores rank by IoU."""
    ious = np.where(rng.random(n) < hit_rate, 0.8, rng.uniform(0, 0.7, n))
    return ious, ious.copy()


def noisy_draw(rng, n, a=2.0, b=3.5, noise=0.3):
    """Beta IoUs (about 2.8% reach 0.75, 24% reach 0.5) scored by IoU plus noise: an imperfect ranking."""
    ious = rng.beta(a, b, n)
    return ious, ious + noise * rng.standard_normal(n)


@pytest.fixture
def fast_point_values(monkeypatch):
    """COCOeval's mAP point value from `ap_at_iou`, equal to it (test_metrics) and 5x faster: only the
    intervals are under test here, and they never come from COCOeval."""
    from spatialprobe.metrics import paired_box_iou
    from spatialprobe.probes import scoring

    def coco_map(pred, scores, target):
        ious = paired_box_iou(torch.from_numpy(pred), torch.from_numpy(target))
        return {thr: ap_at_iou(ious, scores, thr) for thr in (0.5, 0.75)}

    monkeypatch.setattr(scoring, "coco_map", coco_map)


def coverage(draw, truth: dict[str, float], seed: int) -> dict[str, float]:
    """Share of DRAWS test sets whose interval (as `evaluate` reports it) holds each metric's truth."""
    rng = np.random.default_rng(seed)
    held = {metric: 0 for metric in truth}
    for number in range(DRAWS):
        ious, scores = draw(rng, N_TEST)
        boxes, target = as_boxes(ious)
        result = evaluate(boxes, torch.from_numpy(scores), target, n_boot=200, seed=number)
        for metric, value in truth.items():
            _, low, high = result[metric]
            held[metric] += low <= value <= high
    return {metric: count / DRAWS for metric, count in held.items()}


def test_rare_event_map_75_covers_its_known_value(fast_point_values):
    # 1.5% hits, ranked first: the population's precision is 1 up to recall 0.015, so its AP at 0.75 is
    # 2/101 (recall points 0 and 0.01). With ~1.5 hits per test set, the percentile bootstrap gave
    # [0, 0] whenever a test set had none (22% of them) and missed the truth far more often.
    hit_rate = 0.015
    above_half = hit_rate + (1 - hit_rate) * 0.2 / 0.7
    truth = {"map_75": 2 / 101, "map_50": best_ap_up_to(above_half),
             "bbox_iou": hit_rate * 0.8 + (1 - hit_rate) * 0.35}
    assert truth["map_75"] == best_ap_up_to(hit_rate)
    got = coverage(lambda rng, n: oracle_draw(rng, n, hit_rate), truth, seed=0)
    assert all(share >= 0.9 for share in got.values()), got


def test_rare_event_map_75_covers_the_population_value_with_an_imperfect_ranking(fast_point_values):
    # the truth: AP on a population sample large enough that its own error is far below the intervals'
    population = noisy_draw(np.random.default_rng(123), 400_000)
    truth = {"map_75": ap_at_iou(*population, 0.75), "map_50": ap_at_iou(*population, 0.5),
             "bbox_iou": 2.0 / 5.5}  # the mean of Beta(2, 3.5)
    assert (population[0] >= 0.75).mean() < 0.03  # a rare event
    got = coverage(noisy_draw, truth, seed=1)
    assert all(share >= 0.9 for share in got.values()), got


# --- the rare-event interval by hand ---------------------------------------------------------------
def test_hit_rate_interval_is_clopper_pearson():
    low, high = hit_rate_interval(0, 100)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 100))  # exact for no hits
    low, high = hit_rate_interval(100, 100)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 100))


def test_best_ap_counts_the_coco_recall_points_reached():
    assert best_ap_up_to(0.0) == pytest.approx(1 / 101)
    assert best_ap_up_to(0.29) == pytest.approx(30 / 101)  # 0.29 is reached despite float rounding
    assert best_ap_up_to(0.295) == pytest.approx(30 / 101) and best_ap_up_to(1.0) == pytest.approx(1.0)
    # a perfect ranking reaches exactly that AP
    ious = np.r_[np.full(29, 0.9), np.full(71, 0.1)]
    assert ap_at_iou(ious, ious, 0.75) == pytest.approx(best_ap_up_to(0.29))


@pytest.mark.parametrize("hits", range(0, MIN_BOOTSTRAP_HITS + 3))
def test_map_interval_holds_its_value_and_says_when_it_counts_hits(hits):
    rng = np.random.default_rng(hits)
    ious = np.r_[np.full(hits, 0.8), rng.uniform(0, 0.7, N_TEST - hits)]
    scores = rng.random(N_TEST)  # an uninformative ranking: the hits anywhere
    boxes, target = as_boxes(ious)
    s = score(boxes, torch.from_numpy(scores), target, n_boot=300)["map_75"]
    assert s.low <= s.value <= s.high and s.high > s.low  # never [0, 0], also with no hit at all
    if hits < MIN_BOOTSTRAP_HITS:
        assert s.note.startswith(f"{hits} hit") and "binomial" in s.note
        assert s.high >= best_ap_up_to(hit_rate_interval(hits, N_TEST)[1])
    else:
        assert s.note is None


# --- rows: what an interval covers, and refits on resampled training images --------------------
def squares(n, seed, size=32, grid=4):
    """One random rectangle per image; tokens hold their true coverage plus noise and distractors."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        h, w = torch.randint(8, 20, (2,), generator=g).tolist()
        r0, c0 = torch.randint(0, size - h, (1,), generator=g).item(), torch.randint(0, size - w, (1,), generator=g).item()
        masks[i, r0:r0 + h, c0:c0 + w] = True
        boxes[i] = torch.tensor([c0, r0, c0 + w, r0 + h]) / size
    footprints = grid_footprints(grid, grid).expand(n, -1, -1).contiguous()
    cover = token_coverage(masks, footprints)[..., None]
    tokens = torch.cat([cover + 0.2 * torch.randn(cover.shape, generator=g), torch.randn(n, grid * grid, 3, generator=g)], -1)
    return ProbeSplit(tokens, footprints, boxes, masks)


@pytest.fixture(scope="module")
def small_case():
    return squares(40, 0), squares(30, 1)


def by_key(rows):
    return {(r["probe"], r["metric"]): r for r in rows}


def test_refits_on_resampled_training_images_widen_intervals_and_keep_values(small_case):
    train, test = small_case
    test_only = by_key(run_spatial_probes(train, test, n_boot=100))
    both = by_key(run_spatial_probes(train, test, n_boot=100, resamples=3))
    assert {r["ci_covers"] for r in test_only.values()} == {"test"}
    assert {r["ci_covers"] for r in both.values()} == {"train+test"}
    assert test_only.keys() == both.keys()
    for key, r in both.items():
        assert r["value"] == test_only[key]["value"]  # values come from the fit on all training images
        assert r["ci_low"] <= test_only[key]["ci_low"] and r["ci_high"] >= test_only[key]["ci_high"]
    width = {key: r["ci_high"] - r["ci_low"] for key, r in test_only.items()}
    widened = [key for key, r in both.items() if r["ci_high"] - r["ci_low"] > width[key] + 1e-9]
    assert ("linear", "bbox_iou") in widened and ("dense", "spatial_iou") in widened
    with pytest.raises(ValueError, match="at least 2"):
        run_spatial_probes(train, test, n_boot=50, resamples=1)


def test_probe_resamples_config_and_result_key():
    from spatialprobe.runner import probe_key

    models = [{"name": "d", "family": "dinov2", "path": "facebook/dinov2-small"}]
    off, on = parse_config({"models": models}), parse_config({"models": models, "probe_resamples": 5})
    assert off.probe_resamples == 0 and on.probe_resamples == 5
    keys = [probe_key({"family": "dinov2"}, "vision.block.1", "none", "dense", {"hash": "x"}, c) for c in (off, on)]
    assert keys[0] != keys[1]  # a cached test-only result is never served as train+test
    for bad in (1, -1):
        with pytest.raises(SpatialProbeError, match="probe_resamples"):
            parse_config({"models": models, "probe_resamples": bad})


def test_reconstruction_and_vqa_rows_say_what_their_interval_covers(monkeypatch):
    import spatialprobe.metrics.perceptual as perceptual
    from spatialprobe.probes.reconstruction import reconstruction_records
    from spatialprobe.vqa import vqa_records

    monkeypatch.setattr(perceptual, "lpips_unavailable_reason", lambda: "no AlexNet weights (test)")
    g = torch.Generator().manual_seed(0)
    images, grid = torch.rand(6, 3, 16, 16, generator=g), torch.randn(6, 2, 2, 4, generator=g)
    rows = {r["metric"]: r for r in reconstruction_records(grid[:4], images[:4], grid[4:], images[4:], n_boot=50)}
    assert rows["psnr"]["ci_covers"] == rows["ssim"]["ci_covers"] == "test" and rows["lpips"]["ci_covers"] == "none"

    shape = {"category_id": 1, "bbox": [0, 0, 4, 4], "attributes": {"colour": "red"}}
    data = SimpleNamespace(records=[SimpleNamespace(annotations=[shape])] * 3, categories={1: "circle"},
                           load_image=lambda i: None)
    backbone = SimpleNamespace(answer=lambda images, texts: ["one"] * len(texts))
    (row,) = vqa_records(backbone, data, data, n_boot=50)
    assert row["ci_covers"] == "test"


def test_resampled_ap_equals_ap_of_each_resample():
    from spatialprobe.metrics import ap_at_iou_resampled

    rng = np.random.default_rng(0)
    for n in (1, 7, 100):
        ious, scores = rng.random(n), np.round(rng.random(n), 1)  # rounded scores: ties keep image order
        resamples = rng.integers(0, n, (300, n))
        for threshold in (0.5, 0.75):
            loop = [ap_at_iou(ious[idx], scores[idx], threshold) for idx in resamples]
            assert np.array_equal(ap_at_iou_resampled(ious, scores, threshold, resamples), loop)


def test_report_explains_what_intervals_cover():
    from spatialprobe.report import render

    page = render({}, [])
    assert "ci_covers" in page and "train+test" in page and "probe_resamples" in page
    assert f"fewer than {MIN_BOOTSTRAP_HITS}" in page  # the note states the rule the code applies
