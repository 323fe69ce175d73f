"""A loader for any COCO-format folder: root/annotations/instances_<split>.json plus images.

Every image and annotation is checked when the split is loaded, before any model runs (see
`checks`). A problem is a one-line error naming the annotation file and the annotation or image;
with on_bad_annotation="skip" the bad annotation (or image) is dropped instead, counted in
`skipped` (reason -> count) and summed up in one warning, and an image left with no annotation
is dropped too.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..errors import SpatialProbeError
from .checks import annotation_problem, box_pixels, image_problem, segmentation_rle, to_rgb

OnBadAnnotation = Literal["error", "skip"]


@dataclass
class ImageRecord:
    file: Path
    width: int
    height: int
    annotations: list[dict] = field(default_factory=list)


def _read_annotations(path: Path) -> dict:
    if not path.is_file():
        raise SpatialProbeError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpatialProbeError(f"{path}: not valid JSON ({err})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SpatialProbeError(f"{path}: missing or invalid field {key!r}")
    return data


def _image_folder(root: Path, split: str, first_file: str) -> Path:
    tried = [root / "images" / split, root / "images", root]
    for folder in tried:
        if (folder / first_file).exists():
            return folder
    raise SpatialProbeError(f"image {first_file!r} not found in any of: {', '.join(map(str, tried))}")


def _image_records(data: dict, path: Path) -> dict:
    """image id -> record, in file order; `file` is still relative to the image folder."""
    by_id = {}
    for i, image in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if k not in image]
        if missing:
            raise SpatialProbeError(f"{path}: images[{i}] lacks field {missing[0]!r}")
        width, height = (_pixel_count(image[key], f"{path}: images[{i}].{key}") for key in ("width", "height"))
        if image["id"] in by_id:
            raise SpatialProbeError(f"{path}: images[{i}].id {image['id']!r} is used by another image too")
        by_id[image["id"]] = ImageRecord(Path(image["file_name"]), width, height)
    return by_id


def _pixel_count(value, where: str) -> int:
    """A positive whole number (some converters write 640.0)."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value <= 0:
        raise SpatialProbeError(f"{where} {value!r} is not a positive integer")
    return int(value)


def annotation_label(ann: dict, index: int) -> str:
    return f"annotation id {ann['id']}" if "id" in ann else f"annotations[{index}]"


class CocoSplit:
    """One split of a COCO-format dataset; the probe target is each image's largest object."""

    def __init__(self, root: Path, split: str, skip_empty: bool = False, on_bad_annotation: OnBadAnnotation = "error") -> None:
        if on_bad_annotation not in ("error", "skip"):
            raise SpatialProbeError(f"on_bad_annotation: {on_bad_annotation!r} is neither 'error' nor 'skip'")
        self.root, self.split, self.on_bad_annotation = Path(root), split, on_bad_annotation
        self.path = path = self.root / "annotations" / f"instances_{split}.json"
        #: reason -> number of annotations (or images, for reasons starting with "image_") dropped
        self.skipped: Counter[str] = Counter()
        #: one line per dropped item: what the error would have said after the annotation file's name
        self.problems: list[str] = []
        self._dropped: list[str] = []  # path-independent names of dropped items, for `dataset_hash`
        data = _read_annotations(path)
        if not data["images"]:
            raise SpatialProbeError(f"{path}: no images")
        self.categories = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        by_id = _image_records(data, path)
        folder = _image_folder(self.root, split, str(next(iter(by_id.values())).file))
        for record in by_id.values():
            record.file = folder / record.file
        usable = {image_id: record for image_id, record in by_id.items() if self._image_ok(record)}
        for i, ann in enumerate(data["annotations"]):
            record = self._annotation_image(ann, i, by_id, usable)
            if record is not None:
                record.annotations.append(ann)
        self.records = self._with_annotations(list(usable.values()), skip_empty or on_bad_annotation == "skip")
        self._report_skipped()

    def _reject(self, reason: str, what: str, name: str) -> None:
        """Raise `what` as a one-line error naming the annotation file, or (skip) count it and go on."""
        if self.on_bad_annotation == "error":
            raise SpatialProbeError(f"{self.path}: {what}")
        self.skipped[reason] += 1
        self.problems.append(what)
        self._dropped.append(name)

    def _image_name(self, record: ImageRecord) -> str:
        return f"image {record.file.relative_to(self.root).as_posix()}"

    def _image_ok(self, record: ImageRecord) -> bool:
        problem = image_problem(record.file, record.width, record.height)
        if problem:
            self._reject(problem.reason, problem.detail, self._image_name(record))
        return problem is None

    def _annotation_image(self, ann: dict, index: int, by_id: dict, usable: dict) -> ImageRecord | None:
        """The image an annotation belongs to, if the annotation is sound and its image usable."""
        label = annotation_label(ann, index)
        if "image_id" not in ann:
            raise SpatialProbeError(f"{self.path}: annotations[{index}] lacks field 'image_id'")
        if ann["image_id"] not in by_id:
            self._reject("image_id_unknown", f"annotations[{index}].image_id {ann['image_id']} names no image", label)
            return None
        record = usable.get(ann["image_id"])
        if record is None:  # its image was dropped (and counted) already
            return None
        if "bbox" not in ann:
            self._reject("bbox_missing", f"annotations[{index}] lacks field 'bbox'", label)
            return None
        problem = annotation_problem(ann, record.width, record.height)
        if problem:
            self._reject(problem.reason, f"{label} (image {record.file.name}): {problem.detail}", label)
            return None
        return record

    def _with_annotations(self, records: list[ImageRecord], drop_empty: bool) -> list[ImageRecord]:
        empty = [r for r in records if not r.annotations]
        if empty and not drop_empty:
            raise SpatialProbeError(f"{self.path}: image {empty[0].file.name} has no annotation "
                                    "(set dataset.on_bad_annotation: skip to drop such images)")
        for record in empty:
            self.skipped["image_without_annotations"] += 1
            self._dropped.append(self._image_name(record))
        kept = [r for r in records if r.annotations]
        if not kept:
            raise SpatialProbeError(f"{self.path}: no image with a usable annotation is left "
                                    f"(skipped: {dict(self.skipped)})")
        return kept

    def _report_skipped(self) -> None:
        if not self.skipped:
            return
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        first = f"; first: {self.problems[0]}" if self.problems else ""
        warnings.warn(f"{self.path}: dropped ({counts}){first}", stacklevel=4)  # at the caller of load_coco

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, i: int) -> Image.Image:
        """The image as 8-bit RGB (16-bit and float images scaled by value range, see `to_rgb`)."""
        file = self.records[i].file
        try:
            with Image.open(file) as image:
                return to_rgb(image)
        except FileNotFoundError:
            raise SpatialProbeError(f"image file not found: {file}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise SpatialProbeError(f"cannot read image {file}: {err}") from None

    def boxes(self, i: int) -> np.ndarray:
        """[K, 4] xyxy boxes in pixels."""
        xywh = np.array([a["bbox"] for a in self.records[i].annotations], dtype=np.float64).reshape(-1, 4)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    def _object_mask(self, record: ImageRecord, ann: dict) -> np.ndarray:
        seg = ann.get("segmentation")
        if not seg:  # no segmentation: the box is the best mask we have
            x0, y0, x1, y1 = box_pixels(ann["bbox"], record.width, record.height)
            mask = np.zeros((record.height, record.width), bool)
            mask[y0:y1, x0:x1] = True
            return mask
        return mask_utils.decode(segmentation_rle(seg, record.width, record.height)).astype(bool)

    def mask(self, i: int, size: tuple[int, int] | None = None, annotations: list[dict] | None = None) -> np.ndarray:
        """Union of the image's object masks (or of `annotations`), optionally resized (nearest) to (H, W)."""
        record = self.records[i]
        union = np.zeros((record.height, record.width), bool)
        for ann in annotations if annotations is not None else record.annotations:
            union |= self._object_mask(record, ann)
        if size is not None and union.shape != tuple(size):
            resized = Image.fromarray(union.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
            union = np.asarray(resized) > 127
        return union

    def target(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The probe target: the largest object's box, normalized xyxy in [0, 1], and its mask."""
        record = self.records[i]
        largest = max(record.annotations, key=lambda a: a.get("area", a["bbox"][2] * a["bbox"][3]))
        x, y, w, h = largest["bbox"]
        box = np.array([x / record.width, y / record.height, (x + w) / record.width, (y + h) / record.height])
        return np.clip(box, 0.0, 1.0), self.mask(i, annotations=[largest])


def load_coco(root: str | Path, split: str, skip_empty: bool = False,
              on_bad_annotation: OnBadAnnotation = "error") -> CocoSplit:
    """One checked split; on_bad_annotation="skip" drops (and counts, in `.skipped`) what fails a check."""
    root = Path(root)
    if not root.is_dir():
        raise SpatialProbeError(f"dataset folder not found: {root}")
    return CocoSplit(root, split, skip_empty, on_bad_annotation)


def dataset_hash(root: str | Path, *splits: CocoSplit) -> str:
    """A content hash of every annotation and image file under `root` (names included), and of
    what the given splits dropped: skipping changes which images and targets a run reads. With
    nothing dropped it is the hash of the files alone, so existing cache keys stay valid."""
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "dataset.json" and not p.name.startswith("."))
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    dropped = {split.split: split._dropped for split in splits if split._dropped}
    if dropped:
        digest.update(json.dumps(dropped, sort_keys=True).encode())
    return digest.hexdigest()[:16]
