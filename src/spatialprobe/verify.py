"""The planted-patch self-check on the user's own checkpoint.

Token order is proven on tiny models in the tests, but a real checkpoint under another transformers
version can reorder tokens silently (a changed window order, a transposed merger, a new tiling).
This check needs two forward passes: a plain batch, whose footprints size the planted square, and a
planted batch of two images with a distinct bright noise square in opposite off-diagonal corners
(top-right, bottom-left, so a flip, a reversal or a transpose each move the answer to another corner).
At every stage, the token whose features change most must overlap its image's square and lie on the
square's side of the image. Sizes come from the footprints the backbone returns, never from known
token counts, so tiles, base tiles, thumbnails and several grids in one stage all work the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import SpatialProbeError
from .features import TokenFeatures

BACKGROUND = 60  # a dark grey plain image; the square's noise is bright, so the change is large
NOISE_RANGE = (150, 256)
#: the side of the planted images when the backbone names no resolution (they are resized whole anyway)
DEFAULT_SIZE = 448
#: the planted square's side in coarsest footprints: the extra half cell lets a token whose receptive field is
#: centred off its footprint (a ResNet token sees around its cell's top-left corner) still peak inside the square
SQUARE_CELLS = 1.5
#: the square never reaches past the middle, so each image's square lies in one quadrant
MAX_SQUARE = 0.5
EPS = 1e-6


class VerifyFailed(SpatialProbeError):
    """A stage of a loaded checkpoint fails the planted-patch check: its token order may be wrong."""


@dataclass(frozen=True)
class StageCheck:
    stage: str
    passed: bool
    detail: str
    skipped: bool = False  # nothing to check at this stage (no spatial tokens, or tokens too coarse)


@dataclass(frozen=True)
class Square:
    """A planted square as a normalized box x0, y0, x1, y1 of the image, and where it sits."""

    box: tuple[float, float, float, float]
    corner: str

    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def verify_stages(backbone, stages: list[str] | None = None) -> list[StageCheck]:
    """The planted-patch check at every requested stage (all when None), in model order."""
    wanted = backbone.resolve_stages(stages)
    size = planting_size(backbone)
    plain = backbone.extract([plain_image(size)] * 2, stages=wanted)
    coarseness = {stage: coarsest_side(plain[stage]) for stage in wanted}
    checkable = [side for side in coarseness.values() if side is not None and side <= MAX_SQUARE + EPS]
    if not checkable:
        return [skip_reason(stage, coarseness[stage]) for stage in wanted]
    squares = corner_squares(min(MAX_SQUARE, SQUARE_CELLS * max(checkable)), size)
    marked = backbone.extract([planted_image(size, square, seed) for seed, square in enumerate(squares)], stages=wanted)
    return [check_stage(stage, marked[stage], plain[stage], squares) if checkable_side(coarseness[stage])
            else skip_reason(stage, coarseness[stage]) for stage in wanted]


def planting_size(backbone) -> int:
    """The pixel side of the planted images: the backbone's own input resolution when it names one."""
    resolution = backbone.preprocessing().get("resolution")
    return int(resolution) if isinstance(resolution, (int, float)) and resolution > 0 else DEFAULT_SIZE


def coarsest_side(features: TokenFeatures) -> float | None:
    """The widest footprint side (normalized) among a stage's tokens; None when it has no spatial tokens."""
    if features.tokens.shape[1] == 0:
        return None
    footprints = features.footprints[0].double()
    sides = torch.stack([footprints[:, 2] - footprints[:, 0], footprints[:, 3] - footprints[:, 1]], dim=-1)
    return float(sides.max())


def checkable_side(side: float | None) -> bool:
    return side is not None and side <= MAX_SQUARE + EPS


def skip_reason(stage: str, side: float | None) -> StageCheck:
    if side is None:
        return StageCheck(stage, True, "skipped: no spatial tokens", skipped=True)
    return StageCheck(stage, True, f"skipped: a token covers {side:.0%} of the image side, too coarse to tell "
                                   "one half from the other", skipped=True)


def corner_squares(side: float, size: int) -> list[Square]:
    """Two squares of at least `side` (pixel-aligned), top-right in image 0 and bottom-left in image 1: off the
    diagonal, so a transposed grid moves them too."""
    s = math.ceil(side * size - EPS) / size
    return [Square((1 - s, 0.0, 1.0, s), "top-right"), Square((0.0, 1 - s, s, 1.0), "bottom-left")]


def plain_image(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (BACKGROUND,) * 3)


def planted_image(size: int, square: Square, seed: int) -> Image.Image:
    """A plain image with a bright noise square (a different noise per image) at `square`."""
    array = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    x0, y0, x1, y1 = (round(v * size) for v in square.box)
    noise = np.random.default_rng(seed).integers(*NOISE_RANGE, (y1 - y0, x1 - x0, 3))
    array[y0:y1, x0:x1] = noise
    return Image.fromarray(array)


def check_stage(stage: str, marked: TokenFeatures, plain: TokenFeatures, squares: list[Square]) -> StageCheck:
    change = (marked.tokens.float() - plain.tokens.float()).norm(dim=-1)  # [B, N]
    peaks = []
    for image, square in enumerate(squares):
        if not bool(change[image].max() > 0):
            return StageCheck(stage, False, f"image {image}: the planted square changes no token")
        found = int(change[image].argmax())
        footprint = [float(v) for v in marked.footprints[image, found]]
        where = f"image {image} ({square.corner} square): peak token {found} at {format_box(footprint)}"
        if not overlaps(footprint, square.box):
            return StageCheck(stage, False, f"{where} does not overlap the square {format_box(square.box)}")
        if not same_side(footprint, square):
            return StageCheck(stage, False, f"{where} lies outside the {square.corner} quarter of the image")
        peaks.append(where)
    return StageCheck(stage, True, "; ".join(peaks))


def overlaps(footprint, box) -> bool:
    """The footprint, grown by half a cell on every side, overlaps the box: a convolutional token's receptive
    field is centred on its footprint's top-left corner (ResNet), so it can peak on the square's edge."""
    half_w, half_h = (footprint[2] - footprint[0]) / 2, (footprint[3] - footprint[1]) / 2
    footprint = [footprint[0] - half_w, footprint[1] - half_h, footprint[2] + half_w, footprint[3] + half_h]
    width = min(footprint[2], box[2]) - max(footprint[0], box[0])
    height = min(footprint[3], box[3]) - max(footprint[1], box[1])
    return width > EPS and height > EPS


def same_side(footprint, square: Square) -> bool:
    """The footprint's centre lies in the square's quadrant (left/right and top/bottom half)."""
    fx, fy = (footprint[0] + footprint[2]) / 2, (footprint[1] + footprint[3]) / 2
    sx, sy = square.centre()
    return (fx - 0.5) * (sx - 0.5) > 0 and (fy - 0.5) * (sy - 0.5) > 0


def format_box(box) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in box) + "]"


# --- reporting --------------------------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"transformers": transformers.__version__, "torch": torch.__version__, "spatialprobe": __version__}


def verify_report(backbone, checks: list[StageCheck]) -> dict[str, Any]:
    """What goes into the manifest: pass/fail per stage, the model and the library versions."""
    return {
        "check": "planted_patch",
        "family": backbone.family,
        "path": backbone.name_or_path,
        "passed": all(c.passed for c in checks),
        "stages": {c.stage: {"status": status(c), "detail": c.detail} for c in checks},
        "versions": library_versions(),
    }


def status(check: StageCheck) -> str:
    if check.skipped:
        return "skipped"
    return "pass" if check.passed else "fail"


def failure_message(backbone, checks: list[StageCheck], name: str | None = None, override_hint: str = "") -> str | None:
    """One line naming the model, the failing stage(s) and the transformers version; None when all pass."""
    failed = [c.stage for c in checks if not c.passed]
    if not failed:
        return None
    more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
    model = name or backbone.name_or_path
    hint = f"; {override_hint}" if override_hint else ""
    return (f"verify: {backbone.family} model {model!r} fails the planted-patch check at {failed[0]}{more} under "
            f"transformers {library_versions()['transformers']}: its token order may have changed, so its features "
            f"would be probed at the wrong places; compare with another transformers version, and report it{hint}")


def raise_if_failed(backbone, checks: list[StageCheck], name: str | None = None, override_hint: str = "") -> None:
    """Raise `VerifyFailed` (one line) when any stage fails the check."""
    message = failure_message(backbone, checks, name, override_hint)
    if message:
        raise VerifyFailed(message)


# --- the `spatialprobe verify` command ----------------------------------------------------------------
def parse_options(items: list[str]) -> dict[str, Any]:
    """`key=value` strings from the command line, each value read as YAML (448 -> int, [3, 1] -> list)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpatialProbeError(f"--option {item!r}: expected key=value, e.g. resolution=448")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SpatialProbeError(f"--option {item!r}: cannot read the value {value!r}") from None
    return options


def check_command_options(family: str, options: dict[str, Any]) -> None:
    """The same checks as a config's `options` and loading keys, before anything loads."""
    from pydantic import ValidationError

    from .config import LoadConfig, check_options

    loading = {k: v for k, v in options.items() if k in LoadConfig.model_fields}
    try:
        LoadConfig.model_validate(loading)
        check_options(family, {k: v for k, v in options.items() if k not in loading})
    except ValidationError as err:
        error = err.errors()[0]
        name = next((str(part) for part in error["loc"] if part != "options"), "?")
        raise SpatialProbeError(f"--option {name}: {error['msg']}") from None


def verify_checkpoint(family: str, path: str, stages: list[str] | None = None, options: dict[str, Any] | None = None,
                      device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False):
    """Load `path` (`tiny`: a tiny random checkpoint of `family`, built in a temporary folder) and check it.
    Returns the backbone and its checks."""
    import tempfile

    from .models import load_backbone
    from .preflight import check_device
    from .testing import save_tiny

    options = dict(options or {})
    check_command_options(family, options)
    check_device(device)
    if trust_remote_code:
        options["trust_remote_code"] = True
    with tempfile.TemporaryDirectory(prefix="spatialprobe-verify-") as scratch:
        if path == "tiny" and family != "pixels":  # pixels has no checkpoint: the path is only its name
            path = str(save_tiny(family, scratch))
        backbone = load_backbone(family, path, device=device, dtype=dtype, **options)
        return backbone, verify_stages(backbone, stages)


def check_lines(checks: list[StageCheck]) -> list[str]:
    """One line per stage for the terminal: status, stage, what was found."""
    width = max(len(c.stage) for c in checks)
    return [f"{status(c):7} {c.stage:{width}}  {c.detail}" for c in checks]
