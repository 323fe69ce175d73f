"""A loader for any COCO-format folder: root/annotations/instances_<split>.json plus images."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..errors import SpatialProbeError


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


def _records(data: dict, path: Path) -> list[ImageRecord]:
    """Validated records; `file` is still relative to the image folder."""
    records, by_id = [], {}
    for i, image in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if k not in image]
        if missing:
            raise SpatialProbeError(f"{path}: images[{i}] lacks field {missing[0]!r}")
        record = ImageRecord(Path(image["file_name"]), int(image["width"]), int(image["height"]))
        by_id[image["id"]] = record
        records.append(record)
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ("image_id", "bbox") if k not in ann]
        if missing:
            raise SpatialProbeError(f"{path}: annotations[{i}] lacks field {missing[0]!r}")
        if ann["image_id"] not in by_id:
            raise SpatialProbeError(f"{path}: annotations[{i}].image_id {ann['image_id']} names no image")
        by_id[ann["image_id"]].annotations.append(ann)
    return records


class CocoSplit:
    """One split of a COCO-format dataset; the probe target is each image's largest object."""

    def __init__(self, root: Path, split: str, skip_empty: bool = False) -> None:
        self.root, self.split = Path(root), split
        path = self.root / "annotations" / f"instances_{split}.json"
        data = _read_annotations(path)
        if not data["images"]:
            raise SpatialProbeError(f"{path}: no images")
        self.categories = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        self.records = _records(data, path)
        folder = _image_folder(self.root, split, str(self.records[0].file))
        for record in self.records:
            record.file = folder / record.file
        empty = [r.file.name for r in self.records if not r.annotations]
        if empty and not skip_empty:
            raise SpatialProbeError(f"{path}: image {empty[0]} has no annotation (pass skip_empty to drop such images)")
        self.records = [r for r in self.records if r.annotations]

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, i: int) -> Image.Image:
        file = self.records[i].file
        try:
            with Image.open(file) as image:
                return image.convert("RGB")
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
            x, y, w, h = ann["bbox"]
            mask = np.zeros((record.height, record.width), bool)
            mask[int(round(y)): int(round(y + h)), int(round(x)): int(round(x + w))] = True
            return mask
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, record.height, record.width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, record.height, record.width)
        else:
            rle = seg
        return mask_utils.decode(rle).astype(bool)

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


def load_coco(root: str | Path, split: str, skip_empty: bool = False) -> CocoSplit:
    root = Path(root)
    if not root.is_dir():
        raise SpatialProbeError(f"dataset folder not found: {root}")
    return CocoSplit(root, split, skip_empty)


def dataset_hash(root: str | Path) -> str:
    """A content hash of every annotation and image file under `root` (names included)."""
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "dataset.json" and not p.name.startswith("."))
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]
