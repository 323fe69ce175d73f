"""`moving_shapes`: seeded clips of one shape moving in a straight line in one of 8 directions.

Each clip: a still background (the backgrounds and `easy` preset of `synthetic_shapes`), one shape
(kind, colour, size, rotation drawn at random) whose centre moves in a straight line. `motion` sets how:
- "constant" (the default): at constant speed. A clip played backwards is then an equally likely clip of
  the opposite direction, so no model can tell a clip from its reverse: ordering accuracy is at chance
  by construction.
- "accelerating": from rest, the speed growing linearly to its maximum at the last frame (the centre at
  start + travel * (t / (frames - 1))**2 along the direction, frame t). Played backwards, the shape
  decelerates to a stop: an arrow of time a reader can see. Same draws, so the same shapes and paths.
The direction is the label, index k = 45*k degrees counter-clockwise from "right" with y up
(`video.DIRECTIONS`); the distance travelled (so the speed) and the start are drawn so that the
shape stays whole inside the frame in every frame (either motion keeps it between the path's two ends).
Each frame's mask is drawn from the shape's polygon (as in `synthetic_shapes`), and its box is the
mask's, so pixels, mask and box agree.
Each clip has its own random stream from (seed, split, index): changing n_test leaves train alone.

On-disk layout (`<out>` as given to `spatialprobe data moving-shapes --out`):

    <out>/dataset.json                       the generator's parameters; written last, marks a complete dataset
    <out>/<split>/annotations.json           one per split (train, val, test)
    <out>/<split>/clips/<id>/<frame:03d>.png  --format png: one PNG per frame (000.png, 001.png, ...)
    <out>/<split>/clips/<id>.webm            --format webm: one VP9 (or VP8) video per clip, lossy

annotations.json:

    {"generator": "moving_shapes", "split": "train", "format": "png", "frames": 16, "width": 224,
     "height": 224, "fps": 8, "labels": ["right", "up-right", ..., "down-right"],
     ("motion": "accelerating", only when not constant)
     "clips": [{"id": "train_00000", "file": "clips/train_00000" (png) or "clips/train_00000.webm",
                "label": 2, "direction": "up", "shape": "circle", "colour": "white" (or "rgb": [r, g, b]),
                "radius": 20.1, "speed": 5.3 (mean pixels per frame: travel / (frames - 1); accelerating,
                the step from frame t to t+1 is speed * (2t + 1) / (frames - 1)), "centres": [[x, y] per frame],
                "boxes": [[x0, y0, x1, y1] per frame, pixels, x1/y1 exclusive],
                "masks": [COCO RLE {"size": [h, w], "counts": str} per frame]}, ...]}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import SpatialProbeError
from .shapes import (DEFAULT_MIN_CONTRAST, EASY_PALETTE, MAX_MIN_CONTRAST, PALETTE, SHAPES, background,
                     background_from, colour_choice, contrasting_colour, draw_mask, mask_box, shape_polygon,
                     validate_appearance)
from .generated import install_dataset, seeded_items
from .video import DIRECTIONS, SPLITS

GENERATOR = "moving_shapes"
GENERATOR_VERSION = 1  # bump whenever the same parameters would produce different files
FORMATS = ("png", "webm")
FPS = 8
#: one shape per clip, so no distractors; `easy` draws bright palette shapes on a near-black background
PRESETS = {"easy": {"colors": "palette"}, "noise": {"colors": "random", "background": "noise"},
           "hard": {"colors": "random", "background": "texture"}}
#: the shape's radius as a fraction of half the frame: smaller than still shapes', so it has room to move
SIZE_RANGE = (0.15, 0.3)
#: the distance travelled over the clip, as a fraction of the longest the shape could go in its direction
TRAVEL_RANGE = (0.4, 1.0)
WEBM_CODECS = ("libvpx-vp9", "libvpx")  # VP9, else VP8: whichever this PyAV build can encode
MIN_SIZE = 32
MIN_RADIUS = 3.0  # px: every shape kind then covers whole pixels in every frame (a mask is never empty)
#: how the shape's speed changes over the clip; constant speed has no arrow of time (see the docstring)
MOTIONS = ("constant", "accelerating")
#: parameters added after version 1, recorded in dataset.json only when they differ from these defaults,
#: so datasets written before they existed keep their records (and are reused as they are)
NEW_DEFAULTS = {"motion": "constant"}


def direction_step(label: int) -> tuple[float, float]:
    """Unit displacement in image coordinates (y down) of direction `label` (45*label degrees, y up)."""
    angle = math.radians(45 * label)
    return math.cos(angle), -math.sin(angle)


def progress_along_path(frames: int, motion: str) -> np.ndarray:
    """[frames] the fraction of the path covered at each frame, 0 at the first and 1 at the last."""
    t = np.linspace(0.0, 1.0, frames)
    return t**2 if motion == "accelerating" else t  # t**2: the speed grows linearly from 0


def plan_motion(rng: np.random.Generator, size: int, frames: int, radius: float, label: int,
                travel_range: tuple[float, float], motion: str = "constant") -> tuple[np.ndarray, float]:
    """Centres [frames, 2] (x, y) along a straight line (at constant speed, or accelerating from rest),
    the shape whole in every frame (each centre at least `radius` from every edge), and the mean speed in
    pixels per frame (the speed itself when constant)."""
    dx, dy = direction_step(label)
    longest = (size - 2 * radius) / max(abs(dx), abs(dy))
    travel = rng.uniform(*travel_range) * longest
    # the start's allowed range: the end point, start + travel * (dx, dy), must be in range too
    x0 = rng.uniform(radius - min(0.0, travel * dx), size - radius - max(0.0, travel * dx))
    y0 = rng.uniform(radius - min(0.0, travel * dy), size - radius - max(0.0, travel * dy))
    # monotonic progress from 0 to 1: every centre lies between the two ends, so inside the frame
    t = progress_along_path(frames, motion)
    return np.stack([x0 + travel * dx * t, y0 + travel * dy * t], axis=1), travel / (frames - 1)


def shape_colour(params: dict, rng: np.random.Generator) -> tuple[str, np.ndarray | None]:
    if params["colors"] == "random":
        return "random", None  # chosen against the background once it is drawn
    palette = EASY_PALETTE if params["preset"] == "easy" else {k: PALETTE[k] for k in params["colors"]}
    name = list(palette)[rng.integers(len(palette))]
    return name, np.array(palette[name])


def render_clip(params: dict, rng: np.random.Generator) -> tuple[list[np.ndarray], dict]:
    """The clip's frames (uint8 [H, W, 3]) and its annotation (without id and file)."""
    size, frames = params["image_size"], params["frames"]
    label = int(rng.integers(len(DIRECTIONS)))
    kind = params["shapes"][rng.integers(len(params["shapes"]))]
    colour, rgb = shape_colour(params, rng)
    radius = max(rng.uniform(*params["size_range"]) * size / 2, MIN_RADIUS)
    angle = 0.0 if kind == "circle" else rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.45, 0.75)
    centres, speed = plan_motion(rng, size, frames, radius, label, tuple(params["travel_range"]), params["motion"])
    if rgb is None:
        still, around = background_from(params["background"], size, rng, rng.integers(0, 256, 3))
        rgb = contrasting_colour(rng, around, params["min_contrast"])
    else:
        still = background(params["background"], size, rng, [rgb], params["preset"] == "easy")
    pixels, boxes, masks = [], [], []
    for cx, cy in centres:
        mask = draw_mask(shape_polygon(kind, cx, cy, radius, angle, aspect), size)
        frame = still.copy()
        frame[mask] = rgb
        x, y, w, h = mask_box(mask)
        pixels.append(frame)
        boxes.append([x, y, x + w, y + h])
        masks.append(encode_mask(mask))
    colouring = {"rgb": [int(c) for c in rgb]} if colour == "random" else {"colour": colour}
    return pixels, {"label": label, "direction": DIRECTIONS[label], "shape": kind, **colouring,
                    "radius": float(radius), "speed": float(speed), "centres": centres.round(4).tolist(),
                    "boxes": boxes, "masks": masks}


def encode_mask(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")}


def webm_codec() -> str:
    import av

    for name in WEBM_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise SpatialProbeError(f"this PyAV build encodes none of {', '.join(WEBM_CODECS)}: use --format png")


def write_webm(path: Path, frames: list[np.ndarray], codec: str) -> None:
    """One video file; bitexact muxing and one encoder thread keep the bytes the same for the same frames."""
    import av

    with av.open(str(path), "w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": "10", "b": "0", "deadline": "good", "cpu-used": "4"}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def write_split(root: Path, split: str, count: int, params: dict, progress: bool) -> None:
    folder = root / split / "clips"
    folder.mkdir(parents=True)
    codec = webm_codec() if params["format"] == "webm" else None
    clips = []
    for index, rng in seeded_items(params["seed"], SPLITS.index(split), count, progress, f"moving_shapes {split}"):
        pixels, annotation = render_clip(params, rng)
        clip_id = f"{split}_{index:05d}"
        if codec:
            file = f"clips/{clip_id}.webm"
            write_webm(root / split / file, pixels, codec)
        else:
            file = f"clips/{clip_id}"
            (root / split / file).mkdir()
            for t, frame in enumerate(pixels):
                Image.fromarray(frame).save(root / split / file / f"{t:03d}.png")
        clips.append({"id": clip_id, "file": file, **annotation})
    size = params["image_size"]
    motion = {} if params["motion"] == NEW_DEFAULTS["motion"] else {"motion": params["motion"]}
    (root / split / "annotations.json").write_text(json.dumps(
        {"generator": GENERATOR, "split": split, "format": params["format"], "frames": params["frames"],
         "width": size, "height": size, "fps": FPS, "labels": DIRECTIONS, **motion, "clips": clips}))


def generate_moving_shapes(out: str | Path, *, n_train: int = 300, n_val: int = 50, n_test: int = 100,
                           frames: int = 16, image_size: int = 224, shapes=SHAPES, colors=None,
                           size_range=SIZE_RANGE, travel_range=TRAVEL_RANGE, background: str = "plain",
                           preset: str | None = "easy", min_contrast: float = DEFAULT_MIN_CONTRAST,
                           video_format: str = "png", motion: str = "constant", seed: int = 0,
                           progress: bool = False) -> Path:
    """Write the clips to `out` (atomically) and return it; an identical existing dataset is reused.

    A preset (`PRESETS`) overrides colors and background. video_format: "png" (a PNG per frame) or
    "webm" (a video per clip). motion: "constant" (no arrow of time) or "accelerating" (`MOTIONS`).
    Concurrent writers of one `out` take turns through a lock file beside it."""
    out = Path(out)
    record = {"generator": GENERATOR, "version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val,
              "n_test": n_test, "frames": frames, "image_size": image_size, "shapes": list(shapes),
              "colors": colour_choice(colors), "size_range": list(size_range), "travel_range": list(travel_range),
              "background": background, "preset": preset, "min_contrast": min_contrast, "format": video_format,
              "seed": seed}
    record.update({k: v for k, v in {"motion": motion}.items() if v != NEW_DEFAULTS[k]})
    validate({**NEW_DEFAULTS, **record})
    return install_dataset(out, record, "moving_shapes", lambda tmp: write_splits(tmp, record, progress))


def write_splits(folder: Path, record: dict, progress: bool) -> None:
    """Every split of the dataset `record` describes, drawn into `folder`."""
    drawing = {**NEW_DEFAULTS, **record, **PRESETS.get(record["preset"], {})}
    for split, count in zip(SPLITS, (record["n_train"], record["n_val"], record["n_test"])):
        write_split(folder, split, count, drawing, progress)


def validate(params: dict) -> None:
    validate_appearance(params)
    if params["preset"] not in (None, *PRESETS):
        raise SpatialProbeError(f"unknown preset {params['preset']!r}; choose from {', '.join(PRESETS)} or none")
    if params["motion"] not in MOTIONS:
        raise SpatialProbeError(f"unknown motion {params['motion']!r}; choose from {', '.join(MOTIONS)}")
    if params["format"] not in FORMATS:
        raise SpatialProbeError(f"unknown format {params['format']!r}; choose from {', '.join(FORMATS)}")
    if params["frames"] < 2:
        raise SpatialProbeError(f"frames {params['frames']} must be at least 2 (a shape needs two frames to move)")
    if params["image_size"] < MIN_SIZE:
        raise SpatialProbeError(f"image size {params['image_size']} must be at least {MIN_SIZE} px")
    if params["format"] == "webm" and params["image_size"] % 2:
        raise SpatialProbeError(f"image size {params['image_size']} must be even for --format webm (YUV 4:2:0)")
    if min(params["n_train"], params["n_val"], params["n_test"]) < 0:
        raise SpatialProbeError("n_train, n_val and n_test must be >= 0")
    if not 0 < params["min_contrast"] <= MAX_MIN_CONTRAST:
        raise SpatialProbeError(f"min_contrast {params['min_contrast']} must satisfy 0 < min_contrast <= "
                                f"{MAX_MIN_CONTRAST:g} (RGB distance)")
    for name in ("size_range", "travel_range"):
        lo, hi = params[name]
        if not 0 < lo <= hi <= 1:
            raise SpatialProbeError(f"{name} {params[name]} must satisfy 0 < min <= max <= 1")
