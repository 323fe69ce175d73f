"""Checks of a COCO image and annotation before any model sees them.

Bad data must not become wrong numbers: a box outside its image gave a clipped box but an empty
mask, a negative width an inverted box, and a JSON size that disagrees with the file a NumPy
broadcast error. Each check returns a `Problem` (a short reason, counted when skipped, and what
is wrong) or None; the loader turns it into a one-line error or a skip.

Tolerances are for float rounding only: real COCO boxes are floats, and pycocotools rasterizes a
polygon to whole pixels, so a mask can reach up to a pixel past its box (COCO's own crowd boxes
are a pixel short of their masks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

#: how far (px) a box may reach past the image, or a mask past its box
TOLERANCE_PX = 1.0
#: how far an `area` field may stray from its mask's pixel count, as a fraction of that count;
#: COCO's crowd areas differ from their RLE by ~6%
AREA_TOLERANCE = 0.1


@dataclass(frozen=True)
class Problem:
    reason: str  # a short key, counted in the manifest when skipped
    detail: str  # what is wrong, for the one-line message


def image_problem(file: Path, width: int, height: int) -> Problem | None:
    """The file's size against the JSON's (PIL reads only the header here)."""
    try:
        with Image.open(file) as image:
            size = image.size
    except FileNotFoundError:
        return Problem("image_missing", f"image file not found: {file}")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return Problem("image_unreadable", f"cannot read image {file}: {err}")
    if size != (width, height):
        return Problem("image_size_mismatch", f"image {file} is {size[0]}x{size[1]} px but the JSON says {width}x{height}")
    return None


def fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def box_pixels(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels (x0, y0, x1, y1, end-exclusive) that an annotation without segmentation covers."""
    x, y, w, h = bbox
    return (min(max(round(x), 0), width), min(max(round(y), 0), height),
            min(max(round(x + w), 0), width), min(max(round(y + h), 0), height))


def segmentation_rle(seg, width: int, height: int) -> dict:
    """A polygon list, an uncompressed or a compressed RLE, as one compressed RLE (pycocotools' own
    conversions). Raises ValueError when it cannot be read or is sized for another image."""
    if isinstance(seg, list):
        if not all(isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 for poly in seg):
            raise ValueError("polygons must be lists of at least 3 x, y pairs")
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ValueError("neither polygons nor an RLE with counts and size")
    if list(seg["size"]) != [height, width]:
        raise ValueError(f"its RLE size {list(seg['size'])} is not the image's [height, width] [{height}, {width}]")
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def mask_extent(ann: dict, width: int, height: int) -> tuple[int, list[float]]:
    """The annotation's mask as the loader will draw it: (pixel count, [x, y, w, h] of its pixels)."""
    if not ann.get("segmentation"):  # the loader draws the box itself
        x0, y0, x1, y1 = box_pixels(ann["bbox"], width, height)
        area = max(x1 - x0, 0) * max(y1 - y0, 0)
        return area, [x0, y0, x1 - x0, y1 - y0]
    rle = segmentation_rle(ann["segmentation"], width, height)
    return int(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def bbox_problem(bbox, width: int, height: int) -> Problem | None:
    numbers = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    if not numbers:
        return Problem("bbox_malformed", f"bbox {bbox!r} is not [x, y, width, height]")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return Problem("bbox_not_positive", f"bbox {fmt(bbox)} has width {w:g} and height {h:g}; both must be positive")
    if x < -TOLERANCE_PX or y < -TOLERANCE_PX or x + w > width + TOLERANCE_PX or y + h > height + TOLERANCE_PX:
        return Problem("bbox_outside_image", f"bbox {fmt(bbox)} reaches outside the {width}x{height} image")
    return None


def mask_problem(ann: dict, width: int, height: int) -> Problem | None:
    """The mask against its (valid) box, and the `area` field against the mask."""
    x, y, w, h = ann["bbox"]
    try:
        area, (mx, my, mw, mh) = mask_extent(ann, width, height)
    except (ValueError, TypeError, KeyError) as err:  # pycocotools raises these on malformed input
        return Problem("segmentation_invalid", f"segmentation cannot be read: {err}")
    if area == 0:
        return Problem("mask_empty", f"its mask covers no pixel (bbox {fmt(ann['bbox'])})")
    t = TOLERANCE_PX
    if mx < x - t or my < y - t or mx + mw > x + w + t or my + mh > y + h + t:
        return Problem("mask_outside_bbox", f"its mask spans {fmt([mx, my, mw, mh])}, beyond its bbox {fmt(ann['bbox'])}")
    if area > (w + t) * (h + t):  # rasterizing a box may add one row and one column, no more
        return Problem("mask_larger_than_bbox", f"its mask has {area} px, more than its bbox {fmt(ann['bbox'])} holds")
    return area_problem(ann.get("area"), area, w, h)


def area_problem(stated, area: int, w: float, h: float) -> Problem | None:
    """`area` (optional) against the mask's pixel count. A polygon's exact area and its rasterized
    pixels differ by at most a ring of boundary pixels, 2 (w + h); beyond that (and beyond the
    relative tolerance) the field belongs to another object or another scale."""
    if stated is None:
        return None
    if isinstance(stated, bool) or not isinstance(stated, (int, float)) or not math.isfinite(stated):
        return Problem("area_mismatch", f"area {stated!r} is not a number")
    if abs(stated - area) > max(AREA_TOLERANCE * area, 2 * (w + h)):
        return Problem("area_mismatch", f"area {stated:g} disagrees with the {area} px of its mask")
    return None


def annotation_problem(ann: dict, width: int, height: int) -> Problem | None:
    """Everything the loader relies on for one annotation, in the order it relies on it."""
    return bbox_problem(ann.get("bbox"), width, height) or mask_problem(ann, width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB by value range. PIL's convert("RGB") clips values above 255, so a 16-bit image
    would come out white: 16-bit modes are scaled from 0-65535; 32-bit integer and float images
    from the smallest usual range that holds them (0-1 for floats, 0-255, 0-65535), else their
    own min-max. A fixed range per mode keeps the brightness of images of one dataset comparable."""
    if image.mode.startswith("I;16"):
        return _gray(np.asarray(image, dtype=np.float64), 0.0, 65535.0)
    if image.mode in ("I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return _gray(values, *_value_range(values, image.mode == "F"))
    return image.convert("RGB")


def _value_range(values: np.ndarray, is_float: bool) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    if low >= 0:
        for full_scale in ((1.0,) if is_float else ()) + (255.0, 65535.0):
            if high <= full_scale:
                return 0.0, full_scale
    return low, high


def _gray(values: np.ndarray, low: float, high: float) -> Image.Image:
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8)).convert("RGB")
