"""The report in a real browser (headless Chromium): it loads with no console messages, holds the
verdict first, fetches nothing from the network, and renders to a screenshot."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from spatialprobe.report import write_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1200,900"]


def chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: install Debian's chromium (scripts/setup.sh does as root)")
        pytest.skip("no Chromium on this machine: apt-get install chromium to run the browser test")
    return found


def browse(page, tmp_path, *args):
    result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result, console


def record(model, metric, value, probe="dense", stage="vision.block.1", **extra):
    return {"model": model, "label": model, "family": "dinov2", "task": "spatial_probe", "control": "none",
            "stage": stage, "probe": probe, "metric": metric, "value": value, "ci_low": value - 0.02 if value else None,
            "ci_high": value + 0.02 if value else None, "floor": 0.1, "ceiling": 0.8, "n": 100, "seed": 0, **extra}


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    manifest = {"config": {"name": "browser <check> & escape"}, "models": {
        "enc": {"label": "encoder <b>not bold</b>", "control": "none", "stages": ["vision.block.0", "vision.block.1"]}}}
    results = [record("enc", "spatial_iou", 0.7), record("enc", "bbox_iou", 0.65), record("enc", "spatial_iou", 0.5, stage="vision.block.0"),
               record("enc", "lpips_adapter", None, probe="conv", unavailable="no AlexNet weights here")]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    write_report(folder)
    return folder


def test_report_loads_cleanly_with_the_verdict_first(run_dir, tmp_path):
    result, console = browse(run_dir / "report.html", tmp_path, "--dump-dom")
    assert result.returncode == 0 and console == []
    dom = result.stdout
    assert dom.index("Verdict: Switch to that model") < dom.index("Layer-by-layer trace")
    assert "lpips_adapter unavailable: no AlexNet weights here" in dom
    assert "&lt;b&gt;not bold&lt;/b&gt;" in dom and "<b>not bold</b>" not in dom  # escaped, not rendered
    assert "http://" not in dom and "https://" not in dom  # works offline: nothing to fetch


def test_screenshot_shows_the_verdict_box(run_dir, tmp_path):
    shot = tmp_path / "shot.png"
    result, console = browse(run_dir / "report.html", tmp_path, f"--screenshot={shot}")
    assert result.returncode == 0 and console == [] and shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("L"))
    top = pixels[: pixels.shape[0] // 3]
    # the verdict's dark 2-px frame spans most of the page width near the top
    dark_rows = [(row < 80).mean() for row in top]
    assert max(dark_rows) > 0.6


def test_console_messages_are_caught(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><script>console.error("broken page")</script>')
    _, console = browse(page, tmp_path, "--dump-dom")
    assert console and "broken page" in console[0]


def test_markdown_summary_beside_the_report(run_dir):
    summary = (run_dir / "summary.md").read_text()
    assert summary.splitlines()[2] == "**Verdict: Switch to that model — enc**"
    assert ("| enc | vision.block.1 | spatial\\_iou | 40% | > 0.6 | 0.700 \\[0.680, 0.720\\] | pass | target |  |  | "
            "vision.block.1: 0.700 |") in summary
    assert "| enc | vision.block.1 | lpips\\_adapter | 15% | &lt; 0.35 | — | unavailable |" in summary


def test_figures_are_shown_at_their_own_size(run_dir, tmp_path):
    # the trace's text is sized for the PNG's own pixels: the page must not scale a figure down
    page = tmp_path / "measured.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", (
        "<script>window.onload = () => document.querySelectorAll('img').forEach(img => "
        "console.log('figure', img.naturalWidth, img.clientWidth));</script></body>")))
    result, console = browse(page, tmp_path, "--dump-dom")  # a 1,200 px window: the page at its widest
    sizes = [line.split('"figure ')[1].split('"')[0].split() for line in console if '"figure ' in line]
    assert result.returncode == 0 and len(sizes) == 2  # spatial_iou and bbox_iou
    assert all(int(natural) == int(shown) > 1000 for natural, shown in sizes)
