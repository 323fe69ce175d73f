"""Clip datasets behind one interface, `ClipSplit`: moving shapes, Something-Something v2, any folder of videos.

A clip is a list of RGB PIL frames in time order, always exactly `frames` of them: a longer video is
sampled uniformly (frame k of `frames` is the source frame at the centre of the k-th of `frames` equal
parts of the video, so a video of exactly `frames` frames is read whole). Videos are read with PyAV.

Every clip is checked when its split is loaded, before any model runs: a missing or unreadable video,
one shorter than `frames`, or one whose frame count disagrees with its annotations is a one-line
`SpatialProbeError` naming the file (on_bad_video="error"), or is left out and counted in
`ClipSplit.skipped` (on_bad_video="skip"). Checking decodes each video once: a truncated file often
opens fine and fails only on its last frames.

Kinds (`load_clips(kind, ...)`); the on-disk layouts are in docs/video-data.md:
- "moving_shapes": what `spatialprobe data moving-shapes` writes (see `moving_shapes`), with boxes and masks;
- "ssv2": Something-Something v2, a direction subset of its classes (see `ssv2`);
- "folder": any folder of videos with a `labels.csv` (columns file,label[,split]).
"""
from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..errors import SpatialProbeError
from .checks import to_rgb

OnBadVideo = Literal["error", "skip"]
#: the 8 moving-shapes labels: index k is the direction 45*k degrees counter-clockwise from "right", y up
DIRECTIONS = ["right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"]
SPLITS = ("train", "val", "test")
#: a folder's clips without a split column go to train/val/test by a stable hash of the file name
FOLDER_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


class BadVideo(Exception):
    """A clip that cannot be used; the message names its file and says why."""


@dataclass
class ClipRecord:
    clip_id: str
    label: int
    source: Path | tuple[Path, ...]  # one video file, or one image file per frame
    expected_frames: int | None = None  # what the annotations say, when they say it
    boxes: np.ndarray | None = None  # [source frames, 4] x0, y0, x1, y1 pixels
    masks: list[dict] | None = None  # one COCO RLE per source frame
    origin: str | None = None  # the dataset's own class name, when several map to one label
    frame_count: int = 0  # set by the check


def sample_indices(total: int, frames: int) -> list[int]:
    """`frames` source-frame indices spread uniformly over `total` frames (all of them when equal)."""
    return [int((k + 0.5) * total / frames) for k in range(frames)]


def open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise BadVideo(f"video file not found: {path}") from None
    except (av.FFmpegError, OSError, ValueError) as err:
        raise BadVideo(f"cannot read video {path}: {one_line(err)}") from None
    if not container.streams.video:
        container.close()
        raise BadVideo(f"cannot read video {path}: it has no video stream")
    return container


def decoded_frames(path: Path):
    """Every frame of the file's first video stream, in order; a decoding error is a BadVideo."""
    import av

    container = open_video(path)
    try:
        yield from container.decode(container.streams.video[0])
    except (av.FFmpegError, OSError, ValueError) as err:
        raise BadVideo(f"cannot read video {path}: {one_line(err)}") from None
    finally:
        container.close()


def count_video_frames(path: Path) -> int:
    """Frames in the video, by decoding it whole (WebM files do not store the count)."""
    return sum(1 for _ in decoded_frames(path))


def read_video_frames(path: Path, indices: list[int]) -> list[Image.Image]:
    """The frames at `indices` (sorted, repeats allowed) as RGB images."""
    wanted, picked = set(indices), {}
    with closing(decoded_frames(path)) as stream:  # closing: stopping early still closes the file
        for i, frame in enumerate(stream):
            if i in wanted:
                picked[i] = frame.to_image().convert("RGB")
            if i >= indices[-1]:
                break
    missing = [i for i in indices if i not in picked]
    if missing:
        raise BadVideo(f"video {path} ended before frame {missing[0]}")
    return [picked[i] for i in indices]


def read_image_frame(file: Path) -> Image.Image:
    try:
        with Image.open(file) as image:
            return to_rgb(image)
    except FileNotFoundError:
        raise BadVideo(f"frame file not found: {file}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BadVideo(f"cannot read frame {file}: {one_line(err)}") from None


def one_line(err: Exception) -> str:
    """The error's reason in one line; PyAV's own message repeats the file name, which ours gives already."""
    reason = getattr(err, "strerror", None) or str(err).strip()
    return (reason.splitlines() or [type(err).__name__])[0]


def record_files(record: ClipRecord) -> tuple[Path, ...]:
    return record.source if isinstance(record.source, tuple) else (record.source,)


def check_record(record: ClipRecord, frames: int, where: Path) -> None:
    """Set the record's frame count, or raise BadVideo: missing, unreadable, too short, count not as annotated."""
    if isinstance(record.source, tuple):
        missing = [f for f in record.source if not f.is_file()]
        if missing:
            raise BadVideo(f"frame file not found: {missing[0]}")
        record.frame_count, name = len(record.source), f"clip {record.clip_id} ({record.source[0].parent})"
    else:
        record.frame_count, name = count_video_frames(record.source), f"video {record.source}"
    if record.expected_frames is not None and record.frame_count != record.expected_frames:
        raise BadVideo(f"{name} has {record.frame_count} frames where {where} records {record.expected_frames}")
    if record.frame_count < frames:
        raise BadVideo(f"{name} has {record.frame_count} frames, fewer than the {frames} asked for "
                       "(set dataset.on_bad_video: skip to leave such clips out)")


class ClipSplit:
    """One split of a clip dataset: every clip checked, each read as exactly `frames` RGB frames."""

    def __init__(self, kind: str, root: Path, split: str, labels: list[str], records: list[ClipRecord], *,
                 frames: int, on_bad_video: OnBadVideo, where: Path, files: list[Path],
                 classes_used: list[dict] | None = None, options: dict | None = None) -> None:
        self.kind, self.root, self.split, self.labels, self.frames = kind, Path(root), split, list(labels), frames
        self.where = where  # the annotation file (or folder) the clips were listed in
        self.options = options or {}
        #: bad videos left out (on_bad_video="skip"), and what the error would have said for each
        self.skipped, self.problems, self._dropped = 0, [], []
        self.records = self._checked(records, on_bad_video)
        #: every file the split reads (annotations, then each clip's video or frames), for `clips_hash`
        self.files = list(files) + [f for r in self.records for f in record_files(r)]
        counts = Counter(r.origin or self.labels[r.label] for r in self.records)
        #: the classes this split reads (for the manifest): our label, the dataset's class, how many clips
        self.classes_used = [{**entry, "clips": counts[entry["source"]]} for entry in
                             classes_used or [{"label": name, "source": name} for name in self.labels]]

    def _checked(self, records: list[ClipRecord], on_bad_video: OnBadVideo) -> list[ClipRecord]:
        kept = []
        for record in records:
            try:
                check_record(record, self.frames, self.where)
            except BadVideo as bad:
                if on_bad_video == "error":
                    raise SpatialProbeError(str(bad)) from None
                self.skipped += 1
                self.problems.append(str(bad))
                self._dropped.append(record.clip_id)
                continue
            kept.append(record)
        if self.skipped:
            warnings.warn(f"{self.where}: {self.skipped} bad videos left out; first: {self.problems[0]}", stacklevel=4)
        if not kept:
            raise SpatialProbeError(f"{self.where}: no usable clip in split {self.split!r} "
                                    f"({self.skipped} bad videos left out)")
        return kept

    def __len__(self) -> int:
        return len(self.records)

    def _indices(self, i: int) -> list[int]:
        return sample_indices(self.records[i].frame_count, self.frames)

    def load_clip(self, i: int) -> list[Image.Image]:
        """The clip's `frames` RGB frames, in time order."""
        record, indices = self.records[i], self._indices(i)
        try:
            if isinstance(record.source, tuple):
                return [read_image_frame(record.source[k]) for k in indices]
            return read_video_frames(record.source, indices)
        except BadVideo as bad:
            raise SpatialProbeError(str(bad)) from None

    def load_image(self, i: int) -> list[Image.Image]:
        """== load_clip: what feature extraction calls on any split."""
        return self.load_clip(i)

    def label(self, i: int) -> int:
        return self.records[i].label

    def clip_id(self, i: int) -> str:
        return self.records[i].clip_id

    def boxes(self, i: int) -> np.ndarray | None:
        """[frames, 4] x0, y0, x1, y1 pixels of the clip's object in each frame read, when known."""
        boxes = self.records[i].boxes
        return None if boxes is None else np.asarray(boxes, dtype=np.float64)[self._indices(i)]

    def masks(self, i: int) -> np.ndarray | None:
        """[frames, H, W] bool masks of the clip's object in each frame read, when known."""
        masks = self.records[i].masks
        if masks is None:
            return None
        return np.stack([mask_utils.decode(masks[k]).astype(bool) for k in self._indices(i)])

    def fingerprint(self) -> dict:
        """What, besides file contents, decides the clips a run reads."""
        return {"kind": self.kind, "split": self.split, "frames": self.frames, "labels": self.labels,
                "options": self.options, "clips": [r.clip_id for r in self.records], "dropped": self._dropped}


def read_json(path: Path):
    if not path.is_file():
        raise SpatialProbeError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpatialProbeError(f"{path}: not valid JSON ({err})") from None


def load_moving_shapes(root: Path, split: str, *, frames: int, on_bad_video: OnBadVideo) -> ClipSplit:
    """A split written by `moving_shapes.generate_moving_shapes` (layout in that module's docstring)."""
    path = root / split / "annotations.json"
    data = read_json(path)
    for key in ("format", "frames", "labels", "clips"):
        if key not in data:
            raise SpatialProbeError(f"{path}: missing field {key!r}")
    if data["format"] not in ("png", "webm"):
        raise SpatialProbeError(f"{path}: format {data['format']!r} is neither 'png' nor 'webm'")
    records = []
    for i, clip in enumerate(data["clips"]):
        missing = [k for k in ("id", "label", "file", "boxes", "masks") if k not in clip]
        if missing:
            raise SpatialProbeError(f"{path}: clips[{i}] lacks field {missing[0]!r}")
        if not len(clip["boxes"]) == len(clip["masks"]) == data["frames"]:
            raise SpatialProbeError(f"{path}: clip {clip['id']} has {len(clip['boxes'])} boxes and "
                                    f"{len(clip['masks'])} masks for {data['frames']} frames")
        base = root / split / clip["file"]
        source = (tuple(base / f"{t:03d}.png" for t in range(data["frames"])) if data["format"] == "png" else base)
        records.append(ClipRecord(clip["id"], int(clip["label"]), source, data["frames"],
                                  np.asarray(clip["boxes"], dtype=np.float64), clip["masks"]))
    return ClipSplit("moving_shapes", root, split, data["labels"], records, frames=frames, on_bad_video=on_bad_video,
                     where=path, files=[path])


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed by `name` alone (the same on every machine and Python run)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 16 ** 8


def folder_split_of(name: str) -> str:
    point, edge = stable_fraction(name), 0.0
    for split, fraction in FOLDER_SPLIT_FRACTIONS.items():
        edge += fraction
        if point < edge:
            return split
    return "test"


def read_labels_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise SpatialProbeError(f"labels file not found: {path} (columns file,label[,split])")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
        columns = set(rows[0]) if rows else set()
    for column in ("file", "label"):
        if column not in columns:
            raise SpatialProbeError(f"{path}: missing column {column!r} (columns file,label[,split])")
    for i, row in enumerate(rows):
        if not row["file"] or not row["label"]:
            raise SpatialProbeError(f"{path}: row {i + 2} has an empty file or label")
        split = (row.get("split") or "").strip()
        row["split"] = {"validation": "val"}.get(split, split) if split else folder_split_of(row["file"])
        if row["split"] not in SPLITS:
            raise SpatialProbeError(f"{path}: row {i + 2} split {split!r}: choose from {', '.join(SPLITS)}")
    return rows


def load_video_folder(root: Path, split: str, *, frames: int, on_bad_video: OnBadVideo,
                      labels_file: str = "labels.csv") -> ClipSplit:
    """Any folder of videos listed in a CSV with columns file,label[,split] (file relative to the folder).

    Class indices follow the sorted label names of the whole CSV, so every split agrees on them.
    Without a split column a clip's split comes from a stable hash of its file name (70/10/20)."""
    path = root / labels_file
    rows = read_labels_csv(path)
    labels = sorted({row["label"] for row in rows})
    records = [ClipRecord(row["file"], labels.index(row["label"]), root / row["file"])
               for row in rows if row["split"] == split]
    if not records:
        raise SpatialProbeError(f"{path}: no clip in split {split!r}")
    return ClipSplit("folder", root, split, labels, records, frames=frames, on_bad_video=on_bad_video,
                     where=path, files=[path], options={"labels_file": labels_file})


def clips_hash(root: str | Path, *splits: ClipSplit) -> str:
    """A content hash for store keys. With splits: the files they read (names and bytes) and what else
    decides their clips (kind, frames, options, clip ids, dropped ids); without: every file under `root`."""
    root = Path(root)
    if splits:
        files = sorted({f for split in splits for f in split.files})
    else:
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and p.name != "dataset.json" and not p.name.startswith("."))
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        digest.update(name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    if splits:
        digest.update(json.dumps([s.fingerprint() for s in splits], sort_keys=True).encode())
    return digest.hexdigest()[:16]


VIEWS = ("forward", "reversed", "shuffled", "repeated")


class ClipView:
    """A split's clips with their frames reordered, read as a clip set of its own (same interface as ClipSplit).

    The ordering labels come from the data itself: "forward" and "reversed" clips are the two classes of
    the arrow of time. "shuffled" (a seeded permutation per clip, never the identity) and "repeated" (the
    middle frame `frames` times) are controls in which no order is left to read. Boxes and masks follow
    the frames."""

    def __init__(self, base: ClipSplit, view: str, seed: int = 0) -> None:
        if view not in VIEWS:
            raise SpatialProbeError(f"clip view {view!r}: choose from {', '.join(VIEWS)}")
        self.base, self.view, self.seed = base, view, seed
        self.split, self.labels, self.frames, self.skipped = base.split, base.labels, base.frames, base.skipped
        self.files, self.classes_used = base.files, base.classes_used

    def __len__(self) -> int:
        return len(self.base)

    def frame_order(self, i: int) -> list[int]:
        """Which of the base clip's frames (0 .. frames-1) this view shows, in order."""
        n = self.frames
        if self.view == "reversed":
            return list(range(n))[::-1]
        if self.view == "repeated":
            return [n // 2] * n
        if self.view == "shuffled" and n > 1:
            # seeded by the clip id, not its index: a clip keeps its order whatever else the split holds
            rng = np.random.default_rng([self.seed, int(stable_fraction(self.base.clip_id(i)) * 16 ** 8)])
            while True:
                order = rng.permutation(n).tolist()
                if order != list(range(n)):
                    return order
        return list(range(n))

    def load_clip(self, i: int) -> list[Image.Image]:
        frames = self.base.load_clip(i)
        return [frames[k] for k in self.frame_order(i)]

    def load_image(self, i: int) -> list[Image.Image]:
        return self.load_clip(i)

    def label(self, i: int) -> int:
        return self.base.label(i)

    def clip_id(self, i: int) -> str:
        return self.base.clip_id(i)

    def boxes(self, i: int) -> np.ndarray | None:
        boxes = self.base.boxes(i)
        return None if boxes is None else boxes[self.frame_order(i)]

    def masks(self, i: int) -> np.ndarray | None:
        masks = self.base.masks(i)
        return None if masks is None else masks[self.frame_order(i)]

    def fingerprint(self) -> dict:
        return {**self.base.fingerprint(), "view": self.view, "view_seed": self.seed}


def clip_view(split: ClipSplit, view: str, seed: int = 0) -> ClipSplit | ClipView:
    """`split` as seen in `view` ("forward" is the split itself, so its store keys stay those of the split)."""
    return split if view == "forward" else ClipView(split, view, seed)
