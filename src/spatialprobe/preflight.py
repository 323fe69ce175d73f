"""Checks of a run config against this machine, made before any compute (and by `run --dry-run`):
the device exists, the output, cache and dataset folders can be written, a COCO dataset is there.

Each failure is one line naming the setting at fault. The config's own checks (keys, options, names)
are made when it is parsed (config.py); these need the machine, so they cannot be.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .store.shards import default_cache_dir
from .config import RunConfig
from .errors import SpatialProbeError


def preflight(config: RunConfig, out: Path | None, dry_run: bool = False) -> list[str]:
    """Raise the first failing check; return notes to print. In a dry run a device this machine lacks
    is a note, not an error: a config for a GPU machine can be planned on a laptop."""
    notes = []
    try:
        check_device(config.device)
    except SpatialProbeError as err:
        if not dry_run:
            raise
        notes.append(f"{err} (planned anyway: a dry run loads nothing; the run would stop here)")
    if out is not None:
        check_writable(Path(out), "--out")
    check_writable(home_dir(config), home_setting(config))
    check_dataset(config)
    check_weights_home(config)
    return notes


def home_dir(config: RunConfig) -> Path:
    """Where the run caches features, datasets and tiny checkpoints (the runner's work_dir)."""
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir().parent


def home_setting(config: RunConfig) -> str:
    if config.cache_dir:
        return "cache_dir"
    if os.environ.get("SPATIALPROBE_HOME"):
        return "$SPATIALPROBE_HOME"
    return "the cache folder (set $SPATIALPROBE_HOME or cache_dir to move it)"


def check_device(device: str) -> None:
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SpatialProbeError(f"device: {device!r} needs CUDA, and torch {torch.__version__} sees no CUDA "
                                    "device on this machine; use device: cpu")
        if index and int(index) >= count:
            raise SpatialProbeError(f"device: {device!r} does not exist; this machine has {count} CUDA "
                                    f"device(s), cuda:0 to cuda:{count - 1}")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise SpatialProbeError(f"device: {device!r} is not available on this machine (Apple GPUs only); "
                                    "use device: cpu")
    elif device != "cpu":
        raise SpatialProbeError(f"device: unknown device {device!r}; use cpu, cuda, cuda:N or mps")


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():  # false also below a regular file; the root always exists
        path = path.parent
    return path


def check_writable(folder: Path, setting: str) -> None:
    """`folder` can be created and written: a probe file is made and removed in its nearest existing
    ancestor. Nothing else is created, so a failed run leaves no empty folders behind."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise SpatialProbeError(f"{setting}: cannot create {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".spatialprobe-write-check-"):
            pass
    except OSError as err:
        raise SpatialProbeError(f"{setting}: cannot write in {existing} ({err.strerror or err}), "
                                f"which {folder} needs") from None


def check_dataset(config: RunConfig) -> None:
    spec = config.dataset
    if spec.kind == "coco":
        root = Path(spec.path)
        if not root.is_dir():
            raise SpatialProbeError(f"dataset.path: dataset folder not found: {root}")
        for split in (spec.train_split, spec.test_split):
            annotations = root / "annotations" / f"instances_{split}.json"
            if not annotations.is_file():
                raise SpatialProbeError(f"dataset.path: {annotations} not found (the {split!r} split)")
    elif spec.path is not None and not (Path(spec.path) / "dataset.json").is_file():
        check_writable(Path(spec.path), "dataset.path")  # synthetic_shapes is written there


def check_weights_home(config: RunConfig) -> None:
    """`installed:` weights not yet installed are converted into the weights folder: it must be writable."""
    from .weights import MARKER, weights_home

    paths = [m.path for m in config.models] + [p.path for m in config.models for p in m.parts or []]
    for name in {p.removeprefix("installed:") for p in paths if p.startswith("installed:")}:
        if not (weights_home() / name / MARKER).is_file():
            check_writable(weights_home() / name, f"installing weights {name!r} ($SPATIALPROBE_HOME)")
