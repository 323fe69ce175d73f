"""`synthetic_shapes`: seeded images of simple shapes with exact boxes and masks, written as COCO.

Every object is drawn from its own mask (supersampled polygon, thresholded at half coverage), so
the object's pixels, its mask and its box agree exactly. Each image has its own random stream,
derived from (seed, split, index): changing the number of test images leaves the train images alone.

Colours come from a fixed palette (each one then marks a shape for any reader, trained or not) or,
with `colors="random"`, are any RGB colour at least `min_contrast` from the background's colours.
Distractors are extra shapes smaller than every object, so the probe target (the largest object)
is never one of them and a reader must tell the target from other shapes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ..errors import SpatialProbeError
from .generated import install_dataset, seeded_items

SHAPES = ("circle", "square", "triangle", "ellipse", "star")
BACKGROUNDS = ("plain", "noise", "texture")
PALETTE = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 220, 50),
    "magenta": (210, 50, 200), "cyan": (50, 210, 220), "orange": (245, 140, 30), "white": (245, 245, 245),
}
# the `easy` preset: bright shapes on a near-black background, so raw patch pixels separate them linearly
EASY_PALETTE = {"white": (250, 250, 250), "yellow": (250, 240, 90), "cyan": (90, 240, 250), "pink": (250, 150, 230)}
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 2  # bump whenever the same parameters would produce different files
SUPERSAMPLE = 4
MAX_OVERLAP = 0.1  # at most this fraction of a new object may cover earlier ones
#: a distractor's radius, as a fraction of the smallest object's: at most 0.6 keeps its area below that
#: object's for every pair of shapes (a star or triangle covers about 0.41 of its circle, a circle all of it)
DISTRACTOR_SCALE = (0.3, 0.6)
DEFAULT_MIN_CONTRAST = 100.0  # RGB Euclidean distance between a random-colour shape and its background
MAX_MIN_CONTRAST = 170.0  # every background (a texture's two colours included) leaves a colour this far away
NEW_DEFAULTS = {"distractors": 0, "min_contrast": DEFAULT_MIN_CONTRAST}
#: named bundles of drawing settings; `easy` (bright on dark) also draws from its own palette and background
PRESETS = {"easy": {"colors": "palette"},
           "noise": {"colors": "random", "background": "noise", "distractors": 3},
           "hard": {"colors": "random", "background": "texture", "distractors": 3}}


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float, aspect: float) -> list[tuple[float, float]]:
    """Vertices of a shape whose every point lies within radius r of (cx, cy)."""
    if kind in ("circle", "ellipse"):
        ts = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        ry = r if kind == "circle" else r * aspect
        local = [(r * math.cos(t), ry * math.sin(t)) for t in ts]
    elif kind == "square":
        local = [(r * math.cos(math.pi / 4 + k * math.pi / 2), r * math.sin(math.pi / 4 + k * math.pi / 2)) for k in range(4)]
    elif kind == "triangle":
        local = [(r * math.cos(-math.pi / 2 + k * 2 * math.pi / 3), r * math.sin(-math.pi / 2 + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        local = [((r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                  (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    else:
        raise SpatialProbeError(f"unknown shape {kind!r}; choose from {', '.join(SHAPES)}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in local]


def draw_mask(polygon: list[tuple[float, float]], size: int) -> np.ndarray:
    """The polygon's mask at `size` px: pixels at least half covered (measured on a supersampled grid)."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    ImageDraw.Draw(big).polygon([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in polygon], fill=255)
    cover = np.asarray(big, dtype=np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    return cover >= 127.5


def background(kind: str, size: int, rng: np.random.Generator, avoid: list[np.ndarray], easy: bool) -> np.ndarray:
    if easy:
        return np.broadcast_to(rng.integers(0, 30, 3), (size, size, 3)).astype(np.uint8)
    return background_from(kind, size, rng, far_colour(rng, avoid))[0]


def background_from(kind: str, size: int, rng: np.random.Generator, base: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """A background on colour `base`, and the colours it is made of (a shape must contrast with each)."""
    if kind == "plain":
        return np.broadcast_to(base, (size, size, 3)).astype(np.uint8), [base]
    if kind == "noise":
        return np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8), [base]
    if kind == "texture":
        other = np.clip(base + rng.integers(-50, 51, 3), 0, 255)
        period, angle = rng.uniform(6, 20), rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = (np.floor((xx * math.cos(angle) + yy * math.sin(angle)) / period) % 2).astype(bool)
        return np.where(stripes[..., None], other, base).astype(np.uint8), [base, other]
    raise SpatialProbeError(f"unknown background {kind!r}; choose from {', '.join(BACKGROUNDS)}")


def far_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_distance: float = 120.0) -> np.ndarray:
    """A random colour at least `min_distance` (RGB Euclidean) from every object colour."""
    for _ in range(200):
        colour = rng.integers(0, 256, 3)
        if all(np.linalg.norm(colour - a) >= min_distance for a in avoid):
            return colour
    return np.array([0, 0, 0]) if all(a.sum() > 300 for a in avoid) else np.array([255, 255, 255])


def contrasting_colour(rng: np.random.Generator, around: list[np.ndarray], min_contrast: float) -> np.ndarray:
    """Any RGB colour at least `min_contrast` (RGB Euclidean) from each colour in `around`.

    Rejection sampling keeps the colour uniform over the allowed region; the fallback, the RGB
    corner farthest from `around`, is at least 178 away from any two colours 86 apart (a texture's),
    which `validate` keeps above every allowed min_contrast."""
    for _ in range(1000):
        colour = rng.integers(0, 256, 3)
        if all(np.linalg.norm(colour - a) >= min_contrast for a in around):
            return colour
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
    return corners[np.argmax([min(np.linalg.norm(c - a) for a in around) for c in corners])]


def place_shape(params: dict, rng: np.random.Generator, radius_range: tuple[float, float], scale: float,
                palette: dict | None, union: np.ndarray) -> dict:
    """One shape that overlaps earlier ones by at most MAX_OVERLAP (the last try if none of 50 does)."""
    size = params["image_size"]
    for _attempt in range(50):
        kind = params["shapes"][rng.integers(len(params["shapes"]))]
        colour_name = list(palette)[rng.integers(len(palette))] if palette else "random"
        r = rng.uniform(*radius_range) * scale
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        angle = 0.0 if kind == "circle" else rng.uniform(0, 2 * math.pi)
        mask = draw_mask(shape_polygon(kind, cx, cy, r, angle, rng.uniform(0.45, 0.75)), size)
        fits = mask.any() and (mask & union).sum() <= MAX_OVERLAP * mask.sum()
        if fits:
            break
    rgb = np.array(palette[colour_name]) if palette else None
    return {"shape": kind, "colour": colour_name, "rgb": rgb, "mask": mask, "radius": r, "fits": fits}


def sample_objects(params: dict, rng: np.random.Generator) -> list[dict]:
    """The objects, then the distractors: each smaller than every object, so the target (the largest) is an object."""
    size, (lo, hi) = params["image_size"], params["size_range"]
    palette = None if params["colors"] == "random" else (
        EASY_PALETTE if params["preset"] == "easy" else {k: PALETTE[k] for k in params["colors"]})
    objects, union = [], np.zeros((size, size), bool)
    for _ in range(params["objects_per_image"]):
        obj = place_shape(params, rng, (lo, hi), size / 2, palette, union)
        obj["mask"] = obj["mask"] & ~union  # later objects never claim pixels of earlier ones: masks stay disjoint
        union |= obj["mask"]
        objects.append(obj)
    smallest_radius = min(o["radius"] for o in objects)
    smallest_area = min(o["mask"].sum() for o in objects)
    for _ in range(params.get("distractors", 0)):
        d = place_shape(params, rng, DISTRACTOR_SCALE, smallest_radius, palette, union)
        d["mask"] = d["mask"] & ~union
        # a distractor that found no free place is left out rather than drawn over an object
        if d["fits"] and 0 < d["mask"].sum() < smallest_area:
            union |= d["mask"]
            objects.append(d)
    return objects


def render_image(params: dict, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    objects = sample_objects(params, rng)
    kind, size = params["background"], params["image_size"]
    if params["colors"] == "random":
        pixels, around = background_from(kind, size, rng, rng.integers(0, 256, 3))
        for obj in objects:
            obj["rgb"] = contrasting_colour(rng, around, params["min_contrast"])
    else:
        pixels = background(kind, size, rng, [o["rgb"] for o in objects], params["preset"] == "easy")
    pixels = pixels.copy()
    for obj in objects:
        pixels[obj["mask"]] = obj["rgb"]
    return pixels, objects


def mask_box(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of a mask's pixels (pixel edges, so a 1-pixel object has w = h = 1)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def coco_annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, obj: dict) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    # a random colour has no one-word name to ask the semantic check about: its RGB is recorded instead
    attributes = {"rgb": [int(c) for c in obj["rgb"]]} if obj["colour"] == "random" else {"colour": obj["colour"]}
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": mask_box(mask),
            "area": float(mask.sum()), "iscrowd": 0, "segmentation": rle, "attributes": attributes}


def write_split(root: Path, split: str, count: int, params: dict, categories: dict[str, int], progress: bool) -> None:
    folder = root / "images" / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index, rng in seeded_items(params["seed"], SPLITS.index(split), count, progress, f"synthetic_shapes {split}"):
        pixels, objects = render_image(params, rng)
        name = f"{split}_{index:05d}.png"
        Image.fromarray(pixels).save(folder / name)
        images.append({"id": index + 1, "file_name": name, "width": params["image_size"], "height": params["image_size"]})
        for obj in objects:
            annotations.append(coco_annotation(len(annotations) + 1, index + 1, categories[obj["shape"]], obj["mask"],
                                               obj))
    cats = [{"id": i, "name": name, "supercategory": "shape"} for name, i in categories.items()]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": cats}))


def generate_synthetic_shapes(out: str | Path, *, n_train: int = 300, n_val: int = 50, n_test: int = 100,
                              image_size: int = 224, objects_per_image: int = 1, shapes=SHAPES, colors=None,
                              size_range=(0.15, 0.5), background: str = "plain", preset: str | None = None,
                              distractors: int = 0, min_contrast: float = DEFAULT_MIN_CONTRAST,
                              seed: int = 0, progress: bool = False) -> Path:
    """Write the dataset to `out` (atomically) and return it; an identical existing one is reused.

    colors: palette names, "palette" (all of them) or "random" (any RGB, at least `min_contrast` from
    the background's colours). distractors: extra shapes per image, each smaller than every object.
    A preset (`PRESETS`) overrides colors, background and distractors.

    Concurrent writers of one `out` take turns through a lock file beside it (`.<name>.lock`, as
    `files.install_folder` does): the first writes, the others wait and then reuse its dataset.
    """
    out = Path(out)
    params = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "image_size": image_size,
              "objects_per_image": objects_per_image, "shapes": list(shapes), "colors": colour_choice(colors),
              "size_range": list(size_range), "background": background, "preset": preset, "seed": seed}
    # recorded only when they differ from the defaults, so datasets written before they existed still match
    params |= {k: v for k, v in {"distractors": distractors, "min_contrast": min_contrast}.items()
               if v != NEW_DEFAULTS[k]}
    validate(params)
    record = {"generator": "synthetic_shapes", "version": GENERATOR_VERSION, **params}
    return install_dataset(out, record, "synthetic_shapes", lambda tmp: write_splits(tmp, record, progress))


def write_splits(folder: Path, record: dict, progress: bool) -> None:
    """Every split of the dataset `record` describes, drawn into `folder`."""
    categories = {name: i + 1 for i, name in enumerate(record["shapes"])}
    drawing = {**NEW_DEFAULTS, **record, **PRESETS.get(record["preset"], {})}
    for split, count in zip(SPLITS, (record["n_train"], record["n_val"], record["n_test"])):
        write_split(folder, split, count, drawing, categories, progress)


def colour_choice(colors) -> str | list[str]:
    """"random", or the palette names to draw from (None or "palette": all of them; a string: comma-separated)."""
    if colors == "random":
        return "random"
    if colors in (None, "palette"):
        return list(PALETTE)
    return colors.split(",") if isinstance(colors, str) else list(colors)


def validate_appearance(params: dict) -> None:
    """The shapes, colours and background both generators draw with (still images and moving shapes)."""
    for shape in params["shapes"]:
        if shape not in SHAPES:
            raise SpatialProbeError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    for colour in params["colors"] if params["colors"] != "random" else []:
        if colour not in PALETTE:
            raise SpatialProbeError(f"unknown colour {colour!r}; choose from 'random', 'palette' or {', '.join(PALETTE)}")
    if params["background"] not in BACKGROUNDS:
        raise SpatialProbeError(f"unknown background {params['background']!r}; choose from {', '.join(BACKGROUNDS)}")


def validate(params: dict) -> None:
    validate_appearance(params)
    if params["preset"] not in (None, *PRESETS):
        raise SpatialProbeError(f"unknown preset {params['preset']!r}; choose from {', '.join(PRESETS)}")
    if not 0 <= params.get("distractors", 0):
        raise SpatialProbeError(f"distractors {params['distractors']} must be >= 0")
    if not 0 < params.get("min_contrast", DEFAULT_MIN_CONTRAST) <= MAX_MIN_CONTRAST:
        raise SpatialProbeError(f"min_contrast {params['min_contrast']} must satisfy 0 < min_contrast <= "
                                f"{MAX_MIN_CONTRAST:g} (RGB distance)")
    lo, hi = params["size_range"]
    if not 0 < lo <= hi <= 1:
        raise SpatialProbeError(f"size_range {params['size_range']} must satisfy 0 < min <= max <= 1")
