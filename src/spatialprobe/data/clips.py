"""`load_clips`: one entry point to every clip dataset kind (the loaders live in `video` and `ssv2`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import SpatialProbeError
from .ssv2 import load_ssv2
from .video import SPLITS, ClipSplit, OnBadVideo, load_moving_shapes, load_video_folder


def load_clips(kind: str, root: str | Path, split: str, *, frames: int = 16, on_bad_video: OnBadVideo = "error",
               **options) -> ClipSplit:
    """One checked split of clips of `kind` ("moving_shapes" | "ssv2" | "folder") under `root`.

    options: for "ssv2" see `ssv2.load_ssv2` (directions, videos, val_fraction, clips_per_label);
    for "folder": labels_file (default labels.csv). Moving shapes take none."""
    root = Path(root)
    if on_bad_video not in ("error", "skip"):
        raise SpatialProbeError(f"on_bad_video: {on_bad_video!r} is neither 'error' nor 'skip'")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise SpatialProbeError(f"frames: {frames!r} is not a positive integer")
    if split not in SPLITS:
        raise SpatialProbeError(f"split {split!r}: choose from {', '.join(SPLITS)}")
    if not root.is_dir():
        raise SpatialProbeError(f"dataset folder not found: {root}")
    loaders = {"moving_shapes": load_moving_shapes, "ssv2": load_ssv2, "folder": load_video_folder}
    loader = loaders.get(kind.replace("-", "_"))
    if loader is None:
        raise SpatialProbeError(f"clip dataset kind {kind!r}: choose from {', '.join(loaders)}")
    return loader(root, split, frames=frames, on_bad_video=on_bad_video, **options)
