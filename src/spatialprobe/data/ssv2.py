"""Something-Something v2 as a direction subset: clips whose class says which way the object moves.

The layout is the official download's:
    <root>/labels/labels.json        class name (template without brackets) -> class id (a string)
    <root>/labels/train.json         [{"id": "78687", "label": ..., "template": "Pushing [something] from left
    <root>/labels/validation.json      to right", "placeholders": [...]}, ...]
    <root>/20bn-something-something-v2/<id>.webm
The json files may also sit in <root> itself, and the videos in <root>/videos, <root> or `videos=`.

Templates are matched after stripping the square brackets (and case and extra spaces): "Pushing
[something] from left to right" is the class "Pushing something from left to right". Only clips
whose class is in the `directions` subset are read; every other clip is left out.

Splits: SSv2's test labels are not public, so "test" reads validation.json, and "val" is a fixed
`val_fraction` of train.json (chosen by a hash of the clip id), which "train" then leaves out:
no clip is both tuned on and tested on.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import SpatialProbeError
from .video import ClipRecord, ClipSplit, OnBadVideo, read_json, stable_fraction

#: our label -> the SSv2 templates whose object moves that way (camera view); all four are SSv2 classes
DEFAULT_DIRECTIONS = {
    "right": ["Pushing [something] from left to right"],
    "left": ["Pushing [something] from right to left"],
    "up": ["Moving [something] up"],
    "down": ["Moving [something] down"],
}
VIDEO_FOLDERS = ("20bn-something-something-v2", "videos", ".")
DEFAULT_VAL_FRACTION = 0.1


def class_name(template: str) -> str:
    """The comparable form of a template or class name: no brackets, lower case, single spaces."""
    return " ".join(re.sub(r"[\[\]]", "", template).lower().split())


def labels_folder(root: Path) -> Path:
    return root / "labels" if (root / "labels" / "labels.json").is_file() else root


def video_folder(root: Path, videos: str | Path | None) -> Path:
    if videos is not None:
        folder = Path(videos) if Path(videos).is_absolute() else root / videos
        if not folder.is_dir():
            raise SpatialProbeError(f"SSv2 video folder not found: {folder}")
        return folder
    return next(root / name for name in VIDEO_FOLDERS if (root / name).is_dir())


def subset_classes(directions: dict, labels_path: Path) -> tuple[dict[str, tuple[str, str]], list[dict]]:
    """SSv2 class (comparable form) -> (our label, SSv2 class name), and the classes used (for the manifest);
    every template must name an SSv2 class, and none may go to two labels."""
    if not isinstance(directions, dict) or not directions:
        raise SpatialProbeError("ssv2 directions: give a mapping of label -> list of SSv2 templates")
    classes = read_json(labels_path)
    if not isinstance(classes, dict):
        raise SpatialProbeError(f"{labels_path}: expected a mapping of class name -> class id")
    known = {class_name(name): (name, int(i)) for name, i in classes.items()}
    to_label, used = {}, []  # to_label: comparable class name -> (our label, SSv2's own spelling)
    for label, templates in directions.items():
        for template in [templates] if isinstance(templates, str) else templates:
            key = class_name(template)
            if key not in known:
                raise SpatialProbeError(f"{labels_path}: no SSv2 class {template!r} (direction {label!r})")
            if key in to_label:
                raise SpatialProbeError(f"ssv2 directions: {template!r} is given for both {to_label[key][0]!r} "
                                        f"and {label!r}")
            to_label[key] = (label, known[key][0])
            used.append({"label": label, "source": known[key][0], "ssv2_id": known[key][1]})
    return to_label, used


def split_entries(labels: Path, split: str, val_fraction: float) -> tuple[Path, list[dict]]:
    """The annotation file a split reads, and its entries (val: a fixed fraction of train.json)."""
    path = labels / ("validation.json" if split == "test" else "train.json")
    entries = read_json(path)
    if not isinstance(entries, list):
        raise SpatialProbeError(f"{path}: expected a list of clips")
    for i, entry in enumerate(entries):
        missing = [k for k in ("id", "template") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise SpatialProbeError(f"{path}: entry [{i}] lacks field {missing[0]!r}")
    if split == "test":
        return path, entries
    in_val = [stable_fraction(str(e["id"])) < val_fraction for e in entries]
    return path, [e for e, v in zip(entries, in_val) if v == (split == "val")]


def load_ssv2(root: Path, split: str, *, frames: int, on_bad_video: OnBadVideo, directions: dict | None = None,
              videos: str | Path | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
              clips_per_label: int | None = None) -> ClipSplit:
    """The clips of `split` whose class is in `directions` (our label -> SSv2 templates; default
    DEFAULT_DIRECTIONS), labelled by our label; at most `clips_per_label` of each, in file order."""
    directions = DEFAULT_DIRECTIONS if directions is None else directions
    if not 0 < val_fraction < 1:
        raise SpatialProbeError(f"ssv2 val_fraction {val_fraction!r} must lie between 0 and 1")
    labels_dir = labels_folder(root)
    to_label, used = subset_classes(directions, labels_dir / "labels.json")
    path, entries = split_entries(labels_dir, split, val_fraction)
    folder, names = video_folder(root, videos), list(directions)
    records, per_label = [], dict.fromkeys(names, 0)
    for entry in entries:
        label, ssv2_class = to_label.get(class_name(entry["template"]), (None, None))
        if label is None or (clips_per_label is not None and per_label[label] >= clips_per_label):
            continue
        per_label[label] += 1
        records.append(ClipRecord(str(entry["id"]), names.index(label), folder / f"{entry['id']}.webm",
                                  origin=ssv2_class))
    if not records:
        raise SpatialProbeError(f"{path}: no clip of the direction classes in split {split!r}")
    options = {"directions": {k: [v] if isinstance(v, str) else list(v) for k, v in directions.items()},
               "val_fraction": val_fraction, "clips_per_label": clips_per_label}
    return ClipSplit("ssv2", root, split, names, records, frames=frames, on_bad_video=on_bad_video, where=path,
                     files=[labels_dir / "labels.json", path], classes_used=used, options=options)
