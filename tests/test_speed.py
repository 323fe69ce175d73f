"""Speed timing on a fake backbone and a scripted clock: median and IQR of at least 5 repeats, and
speed_ratio against the baseline (1 by definition for the baseline itself, with no interval)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spatialprobe import speed
from spatialprobe.speed import measure_speed, speed_records


class ScriptedClock:
    """perf_counter for the speed module: each extract() call takes the next scripted duration."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, list(durations)

    def perf_counter(self):
        return self.now

    def advance(self):
        self.now += self.durations.pop(0)


class FakeBackbone:
    stages = ["vision.embed", "vision.block.0"]
    device = torch.device("cpu")

    def __init__(self, clock):
        self.clock, self.calls = clock, []

    def extract(self, images, stages=None, batch_size=8):
        self.calls.append((len(images), stages, batch_size))
        if len(self.calls) > 1:  # the first call is the warm-up, which is not timed
            self.clock.advance()
        return {}


def timed(monkeypatch, durations, images=4, batch_size=2, repeats=5):
    clock = ScriptedClock(durations)
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    backbone = FakeBackbone(clock)
    return measure_speed(backbone, [object()] * images, batch_size, repeats=repeats), backbone


def test_speed_is_the_median_of_five_repeats_after_a_warm_up_with_the_iqr(monkeypatch):
    # one slow outlier (the 40 s repeat) moves neither the median nor the IQR much
    result, backbone = timed(monkeypatch, [4.0, 2.0, 6.0, 40.0, 8.0])
    assert backbone.calls[0] == (2, ["vision.block.0"], 2)  # warm-up: one batch, deepest stage
    assert backbone.calls[1:] == [(4, ["vision.block.0"], 2)] * 5
    assert result["seconds_per_image"] == pytest.approx([1.0, 0.5, 1.5, 10.0, 2.0])
    assert result["images_per_second"] == pytest.approx(1 / 1.5)  # median time 1.5 s per image
    assert result["iqr"] == pytest.approx((0.5, 1.0))  # 25th and 75th percentiles of the 5 rates
    assert result["repeats"] == 5


def test_fewer_than_five_repeats_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="at least 5 timed repeats"):
        timed(monkeypatch, [1.0] * 3, repeats=3)


def test_speed_ratio_is_median_over_median_with_the_pairwise_iqr(monkeypatch):
    model, _ = timed(monkeypatch, [4.0, 2.0, 6.0, 40.0, 8.0])
    base, _ = timed(monkeypatch, [2.0, 2.0, 2.0, 3.0, 1.0])
    rows = {(r["model"], r["metric"]): r for r in speed_records({"m": model, "q": base}, "q")}
    ratio = rows[("m", "speed_ratio")]
    assert ratio["value"] == pytest.approx(1.5 / 0.5)
    pairs = np.array(model["seconds_per_image"])[:, None] / np.array(base["seconds_per_image"])[None, :]
    assert (ratio["ci_low"], ratio["ci_high"]) == pytest.approx(tuple(np.percentile(pairs, [25, 75])))
    assert ratio["ci_covers"] == "timing repeats (IQR)" and ratio["baseline"] == "q"
    rate = rows[("m", "images_per_second")]
    assert (rate["ci_low"], rate["ci_high"]) == pytest.approx((0.5, 1.0)) and rate["ci_covers"] == "timing repeats (IQR)"


def test_the_baselines_own_ratio_is_one_with_no_interval(monkeypatch):
    base, _ = timed(monkeypatch, [2.0, 2.0, 2.0, 3.0, 1.0])
    ratio = next(r for r in speed_records({"q": base}, "q") if r["metric"] == "speed_ratio")
    assert ratio["value"] == 1.0 and ratio["ci_low"] is None and ratio["ci_high"] is None and ratio["ci_covers"] == "none"
    missing = next(r for r in speed_records({"q": base}, None) if r["metric"] == "speed_ratio")
    assert missing["value"] is None and "no baseline" in missing["unavailable"]
