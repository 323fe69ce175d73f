"""The Phase 2 gate: a Phase 2 config takes on only the models a Phase 1 run passed (interval-aware)."""
import json

import pytest

from spatialprobe.config import parse_config
from spatialprobe.errors import SpatialProbeError
from spatialprobe.gate import gated

STAGES = ["vision.block.0", "vision.block.1"]


def spatial_row(model, value, half_width):
    return {"model": model, "task": "spatial_probe", "control": "none", "stage": "vision.block.1", "probe": "dense",
            "metric": "spatial_iou", "value": value, "ci_low": value - half_width, "ci_high": value + half_width}


@pytest.fixture
def phase1(tmp_path):
    """A Phase 1 run: `passes` clears 0.50 with its whole interval, `straddles` does not, `fails` is below."""
    folder = tmp_path / "phase1"
    folder.mkdir()
    models = {m: {"label": m, "control": "none", "stages": STAGES} for m in ("passes", "straddles", "fails")}
    (folder / "manifest.json").write_text(json.dumps({"config": {"name": "p1"}, "models": models}))
    rows = [spatial_row("passes", 0.62, 0.03), spatial_row("straddles", 0.52, 0.05), spatial_row("fails", 0.30, 0.02)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def phase2_config(phase1_run, gate=True):
    return parse_config({
        "models": [{"name": m, "family": "dinov2", "path": "tiny"} for m in ("passes", "straddles", "fails", "new")],
        "tasks": ["spatial_probe", "latent_alignment"],
        "alignment": {"phase1_run": str(phase1_run), "gate": gate}})


def test_only_models_past_the_phase1_gate_are_taken_on(phase1):
    said = []
    config = gated(phase2_config(phase1), said.append)
    assert [m.name for m in config.models] == ["passes"]
    assert len(said) == 3 and any("straddles left out (uncertain" in s for s in said)
    assert any("new left out (missing: not in the Phase 1 run" in s for s in said)


def test_the_gate_can_be_turned_off(phase1):
    assert len(gated(phase2_config(phase1, gate=False), print).models) == 4


def test_a_missing_phase1_run_stops_a_run_and_is_noted_by_a_dry_run(tmp_path):
    config = phase2_config(tmp_path / "nowhere")
    with pytest.raises(SpatialProbeError, match=r"^alignment\.phase1_run: .*nowhere/manifest\.json is missing"):
        gated(config, print)
    said = []
    assert len(gated(config, said.append, dry_run=True).models) == 4 and "no Phase 1 run" in said[0]


def test_no_model_past_the_gate_is_one_line(phase1):
    config = parse_config({"models": [{"name": "fails", "family": "dinov2", "path": "tiny"}],
                           "alignment": {"phase1_run": str(phase1)}})
    with pytest.raises(SpatialProbeError, match="no model of this config passed the Phase 1 gate"):
        gated(config, print)
