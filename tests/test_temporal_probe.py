"""Temporal probes (issue 11, item 3) on clips whose answers are known: moving shapes through the pixels
control (direction), and hand-made clips of a square growing over the clip (an arrow of time, which moving
shapes lack: a clip reversed is a clip of the opposite direction), turned into per-frame patch-pixel tokens
with footprints and times, as the pixels control gives them."""
import math

import numpy as np
import pytest
import torch

from spatialprobe.data.moving_shapes import generate_moving_shapes
from spatialprobe.data import load_clips
from spatialprobe.errors import SpatialProbeError
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.models.pixels import PixelsBackbone
from spatialprobe.probes.attentive import fit_attentive
from spatialprobe.probes.temporal import (
    direction_accuracy, linear_predictions, ordering_accuracy, probe_direction, probe_ordering, probe_pairwise_order, temporal_ceiling,
    temporal_floor, time_steps,
)

SIZE, FRAMES, PATCH = 32, 8, 8


# --- synthetic clips -------------------------------------------------------------------------------
def growing_squares(n: int, seed: int) -> np.ndarray:
    """Clips [n, F, S, S] of a square growing by 2 px a frame about a random centre: an arrow of time."""
    rng = np.random.default_rng(seed)
    clips = np.zeros((n, FRAMES, SIZE, SIZE), np.float32)
    for clip in range(n):
        cx, cy = rng.integers(10, SIZE - 10, 2)
        for frame in range(FRAMES):
            half = 1 + frame
            clips[clip, frame, max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = 1.0
    return clips


def pixel_tokens(clips: np.ndarray, patch: int = PATCH) -> TokenFeatures:
    """Per-frame patch-pixel tokens, time-major (frame 0's patches in raster order, then frame 1's, ...),
    each with its patch's footprint and its frame's interval [f/F, (f+1)/F)."""
    n, frames, size, _ = clips.shape
    s = size // patch
    patches = clips.reshape(n, frames, s, patch, s, patch).transpose(0, 1, 2, 4, 3, 5).reshape(n, frames * s * s, -1)
    footprints = grid_footprints(s, s).repeat(frames, 1).expand(n, -1, -1)
    frame_of_token = torch.arange(frames).repeat_interleave(s * s)
    times = torch.stack([frame_of_token / frames, (frame_of_token + 1) / frames], -1).expand(n, -1, -1)
    return TokenFeatures(torch.from_numpy(patches.copy()), footprints.contiguous(), None, {}, times.contiguous())


def whole_clip_tokens(features: TokenFeatures) -> TokenFeatures:
    """The same tokens, each said to span the whole clip (a stage that merged time away)."""
    whole = torch.tensor([0.0, 1.0]).expand_as(features.times).contiguous()
    return TokenFeatures(features.tokens, features.footprints, None, {}, whole)


# --- time steps ------------------------------------------------------------------------------------
def test_time_steps_pool_each_step_alone_in_time_order():
    clips = growing_squares(3, seed=0)
    features = pixel_tokens(clips)
    # tokens listed in a scrambled order: the steps must still come out in time order
    order = torch.randperm(features.tokens.shape[1], generator=torch.Generator().manual_seed(0))
    scrambled = TokenFeatures(features.tokens[:, order], features.footprints[:, order], None, {}, features.times[:, order])
    steps = time_steps(scrambled)
    assert steps.intervals.tolist() == [[f / FRAMES, (f + 1) / FRAMES] for f in range(FRAMES)]
    per_frame_mean = torch.from_numpy(clips.reshape(3, FRAMES, -1).mean(-1))  # each patch's pixels average to the frame's
    assert torch.allclose(steps.pooled.mean(-1), per_frame_mean, atol=1e-6)
    assert steps.flat().shape == (3, FRAMES * PATCH * PATCH)


def test_still_images_are_refused_in_one_line():
    still = TokenFeatures(torch.zeros(2, 4, 3), grid_footprints(2, 2).expand(2, -1, -1))
    with pytest.raises(SpatialProbeError) as error:
        time_steps(still)
    assert "times" in str(error.value) and "\n" not in str(error.value)


def test_unknown_probes_and_mismatched_clips_are_refused():
    features = pixel_tokens(growing_squares(4, seed=0))
    with pytest.raises(SpatialProbeError, match="unknown probe 'mlp'"):
        probe_direction(features, np.arange(4) % 2, features, np.arange(4) % 2, probe="mlp")
    with pytest.raises(SpatialProbeError, match="different numbers of clips"):
        probe_ordering(features, features.select(slice(0, 3)), features, features)
    # one clip without frame 7's tokens: its steps would not line up with the others'
    clipped = TokenFeatures(features.tokens, features.footprints, None, {},
                            torch.cat([features.times[:1].clamp(max=0.875), features.times[1:]]))
    with pytest.raises(SpatialProbeError, match="clip 0 has no tokens in time step"):
        time_steps(clipped)


# --- known answers ---------------------------------------------------------------------------------
def moving_shapes_pixels(root, split: str) -> tuple[TokenFeatures, np.ndarray]:
    """The pixels control's tokens of a moving-shapes split (8-px patches of 32-px frames) and its labels."""
    clips = load_clips("moving_shapes", root, split, frames=FRAMES)
    features = PixelsBackbone(resolution=SIZE, patch_size=PATCH).extract([clips.load_clip(i) for i in range(len(clips))])
    return features["vision.embed"], np.array([clips.label(i) for i in range(len(clips))])


def test_attentive_probe_on_pixels_reads_direction_on_the_easy_preset(tmp_path):
    root = generate_moving_shapes(tmp_path / "shapes", n_train=160, n_val=0, n_test=80, frames=FRAMES,
                                  image_size=SIZE, preset="easy", seed=0)
    (train, train_labels), (test, test_labels) = (moving_shapes_pixels(root, split) for split in ("train", "test"))
    result = probe_direction(train, train_labels, test, test_labels, probe="attentive", classes=8, seed=0)
    assert result.score.value >= 0.9, result.score
    assert result.floor == np.bincount(test_labels).max() / len(test_labels) and result.ceiling == 1.0


def test_attentive_probe_is_deterministic_from_its_seed():
    features, labels = pixel_tokens(growing_squares(16, seed=3)), np.arange(16) % 2
    first, again = (fit_attentive(features, labels, steps=5, seed=7).logits(features) for _ in range(2))
    other = fit_attentive(features, labels, steps=5, seed=8).logits(features)
    assert torch.equal(first, again) and not torch.equal(first, other)


def views(clips: np.ndarray) -> tuple[TokenFeatures, TokenFeatures]:
    return pixel_tokens(clips), pixel_tokens(clips[:, ::-1])


def shuffled(clips: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([clip[rng.permutation(FRAMES)] for clip in clips])


def test_per_step_pooling_keeps_the_arrow_of_time_and_a_time_mean_loses_it():
    train, test = growing_squares(40, seed=4), growing_squares(40, seed=5)
    per_step = probe_ordering(*views(train), *views(test), probe="linear")
    assert per_step.score.value >= 0.9, per_step
    assert per_step.ceiling == 1.0 and per_step.floor == 0.5
    # the same ridge classifier on the mean over time (and space) of each view: a clip and its reverse
    # have the same mean, so both views get one answer and every clip scores exactly one half
    def time_mean(features):
        return features.tokens.double().mean(1)
    (train_f, train_r), (test_f, test_r) = views(train), views(test)
    x_train = torch.cat([time_mean(train_f), time_mean(train_r)])
    predicted = linear_predictions(x_train, np.r_[np.ones(40, int), np.zeros(40, int)],
                                   torch.cat([time_mean(test_f), time_mean(test_r)])).reshape(2, 40)
    assert ordering_accuracy(predicted[0], predicted[1]).value == 0.5


def test_shuffled_frames_put_ordering_at_chance_within_its_interval():
    train, test = growing_squares(60, seed=6), growing_squares(60, seed=7)
    in_order = probe_ordering(*views(train), *views(test), probe="linear")
    control = probe_ordering(*views(shuffled(train, 8)), *views(shuffled(test, 9)), probe="linear")
    assert in_order.score.low > 0.75, in_order
    assert control.score.low <= 0.5 <= control.score.high, control


def test_pairwise_frame_order_follows_the_arrow_of_time():
    train, test = growing_squares(30, seed=10), growing_squares(30, seed=11)
    ordered = probe_pairwise_order(pixel_tokens(train), pixel_tokens(test), pairs_per_clip=6)
    assert ordered.score.value >= 0.9 and ordered.floor == 0.5, ordered
    assert len(ordered.predictions) == 30 * 6 * 2  # every pair in both orders


def test_shuffled_frames_put_pairwise_order_at_chance_and_its_interval_covers_chance_19_times_in_20():
    # one control is one draw of a 95% interval; twenty seeded draws test what the interval claims:
    # if it covers chance 95% of the time, 15 or fewer covers of 20 happen with probability 0.3%
    values, covers = [], 0
    for seed in range(20):
        train, test = growing_squares(30, seed=100 + seed), growing_squares(30, seed=200 + seed)
        control = probe_pairwise_order(pixel_tokens(shuffled(train, 300 + seed)), pixel_tokens(shuffled(test, 400 + seed)),
                                       pairs_per_clip=6, seed=seed)
        values.append(control.score.value)
        covers += control.score.low <= 0.5 <= control.score.high
    assert covers >= 16 and abs(np.mean(values) - 0.5) < 0.03, (covers, np.mean(values))


def test_a_stage_spanning_the_whole_clip_has_ordering_ceilings_at_chance():
    features = pixel_tokens(growing_squares(4, seed=12))
    merged = whole_clip_tokens(features)
    for metric in ("ordering_accuracy", "pairwise_order_accuracy"):
        value, reason = temporal_ceiling(merged, metric)
        assert value == 0.5 and "one time step" in reason
        assert temporal_ceiling(features, metric)[0] == 1.0
    assert temporal_ceiling(merged, "direction_accuracy")[0] == 1.0
    no_pairs = probe_pairwise_order(merged, merged)
    assert math.isnan(no_pairs.score.value) and no_pairs.ceiling == 0.5 and "no pairs" in no_pairs.score.note
    with pytest.raises(SpatialProbeError, match="unknown metric"):
        temporal_ceiling(features, "speed_accuracy")


def test_interval_holds_the_estimate_and_a_constant_answer_scores_the_floor():
    rng = np.random.default_rng(0)
    truth = rng.choice(4, size=50, p=[0.55, 0.15, 0.15, 0.15])
    floor, reason = temporal_floor(truth, classes=4)
    constant = direction_accuracy(np.full(50, np.bincount(truth).argmax()), truth)
    assert constant.value == floor and "majority" in reason
    noisy = direction_accuracy(np.where(rng.random(50) < 0.7, truth, (truth + 1) % 4), truth, seed=3)
    assert noisy.low <= noisy.value <= noisy.high and noisy.low < noisy.high
    assert temporal_floor(np.arange(40) % 8, classes=8) == (1 / 8, "chance: 8 balanced classes")


def test_the_linear_probe_is_sklearns_ridge_classifier_at_the_alpha_it_chose():
    # reference: sklearn's RidgeClassifier (targets +-1, unpenalized intercept) at the same penalty, in raw
    # units (the solver works on features divided by one overall scale, so its alpha is alpha * scale^2 raw)
    from sklearn.linear_model import RidgeClassifier

    from spatialprobe.probes.temporal import fit_linear
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(60, 90)), rng.normal(size=(40, 90))
    y = rng.integers(0, 3, 60) * 2 + 1  # labels 1, 3, 5: the probe answers in the caller's labels
    x_train[:, 0] += y
    x_test[:, 0] += rng.integers(0, 3, 40) * 2 + 1
    ours = fit_linear(torch.from_numpy(x_train), y)
    centered = x_train - x_train.mean(0)
    scale_squared = (centered ** 2).mean()
    reference = RidgeClassifier(alpha=ours.fit.alpha * scale_squared).fit(x_train, y)
    np.testing.assert_array_equal(ours.predict(torch.from_numpy(x_test)), reference.predict(x_test))
    # +-1 targets are 2 * one-hot - 1, so the reference's scores are an affine map of ours
    np.testing.assert_allclose(reference.decision_function(x_test),
                               2 * ours.fit.predict(torch.from_numpy(x_test)).double().numpy() - 1, atol=1e-5)


def test_the_linear_probe_leaves_a_clips_rows_out_together_when_it_chooses_alpha():
    from spatialprobe.probes.ridge import RidgeSolver
    from spatialprobe.probes.temporal import fit_linear
    rng = np.random.default_rng(1)
    # each clip gives two near-identical rows with one label: row-wise LOO sees the twin and shrinks too little
    base = rng.normal(size=(30, 200))
    x = np.concatenate([base, base + 0.01 * rng.normal(size=base.shape)])
    y = np.tile(rng.integers(0, 2, 30), 2)
    clip = np.r_[np.arange(30), np.arange(30)]
    grouped, rowwise = fit_linear(torch.from_numpy(x), y, groups=clip), fit_linear(torch.from_numpy(x), y)
    order = np.argsort(clip, kind="stable")
    targets = torch.nn.functional.one_hot(torch.from_numpy(y[order])).double()
    expected = RidgeSolver(torch.from_numpy(x[order])).fit(targets, group_size=2).alpha
    assert grouped.fit.alpha == expected and grouped.fit.alpha > rowwise.fit.alpha
    with pytest.raises(SpatialProbeError, match="differ in size"):
        fit_linear(torch.from_numpy(x), y, groups=np.r_[clip[:-1], 0])
