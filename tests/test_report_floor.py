"""The report reads a spatial-probe value at its floor for what it is: the proposal's Q2 sentence, once."""
import json

from spatialprobe.report import write_report

Q2 = "IoU ~0.10 at the patch embedding"


def row(model, stage, probe, value, low, high, floor=0.124):
    return {"model": model, "label": model, "family": "dinov2", "task": "spatial_probe", "control": "none",
            "stage": stage, "probe": probe, "metric": "bbox_iou", "value": value, "ci_low": low, "ci_high": high,
            "floor": floor, "ceiling": 0.9, "n": 100, "seed": 0}


def page(tmp_path, results) -> str:
    folder = tmp_path / "run"
    folder.mkdir()
    manifest = {"config": {"name": "run"}, "models": {"m": {"label": "m", "control": "none", "stages": ["vision.embed"]}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    write_report(folder)
    return (folder / "report.html").read_text()


def test_a_value_whose_interval_includes_its_floor_gets_the_q2_sentence_once(tmp_path):
    html = page(tmp_path, [row("m", "vision.embed", "linear", 0.134, 0.110, 0.158),
                           row("m", "vision.block.1", "linear", 0.134, 0.118, 0.150)])
    assert html.count(Q2) == 1 and html.count("(at floor: see the note") == 2  # each such value is marked
    assert "2 spatial-probe value(s) sit at their floor" in html and "0.134 against a floor of 0.124" in html


def test_values_clear_of_their_floor_get_no_floor_sentence(tmp_path):
    html = page(tmp_path, [row("m", "vision.embed", "linear", 0.40, 0.35, 0.45)])
    assert Q2 not in html
