"""`spatialprobe run --dry-run`: the jobs a config would run, their stages and memory, without loading.

Nothing is downloaded: stage lists come from a checkpoint's config.json when it is on disk (a local
folder or the Hugging Face cache), and the memory estimate from its safetensors headers when they
are on disk, else from the parameter count in the model's name (e.g. "7B"), and says which.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .errors import SpatialProbeError
from .extract import plan_shards
from .store.spool import SPILL_BYTES

BYTES_PER_WEIGHT = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "4bit": 0.5, "8bit": 1.0}
#: weights are most of inference memory for one image batch; activations and buffers add a margin
OVERHEAD = 1.2
#: the counts of the repeated blocks, by the config key that holds them, per part of a model
DEPTH_KEYS = {"vision": ("depth", "num_hidden_layers", "num_layers"), "llm": ("num_hidden_layers", "num_layers")}


@dataclass
class PlannedModel:
    name: str
    family: str
    control: str
    stages: str  # a readable summary
    params: float | None  # in billions
    params_source: str
    memory_gb: float | None
    shards: int


def local_config(path: str) -> dict | None:
    """config.json of a local folder or an already cached hub checkpoint; None if not on disk."""
    folder = Path(path)
    if not folder.is_dir():
        folder = cached_snapshot(path)
    if folder is None or not (folder / "config.json").is_file():
        return None
    return json.loads((folder / "config.json").read_text())


@lru_cache(maxsize=None)  # asked for config.json and for weight headers, per model and control: look once
def cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or not a hub id): nothing on disk to read
        return None


def safetensors_params(path: str) -> float | None:
    """Parameter count (billions) from the safetensors headers on disk, without reading the weights."""
    folder = Path(path) if Path(path).is_dir() else cached_snapshot(path)
    files = sorted(folder.glob("*.safetensors")) if folder else []
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total / 1e9


def params_from_name(name: str) -> float | None:
    """"Qwen2.5-VL-7B-Instruct" -> 7.0; "llava-v1.6-34b-hf" -> 34.0; None when the name has no size."""
    sizes = re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
    return float(sizes[-1]) if sizes else None


def stage_summary(config_json: dict | None, requested) -> str:
    if requested != "all" and requested is not None:
        return ", ".join(requested)
    if config_json is None:
        return "all (counted when loaded: config not on disk)"
    counts = []
    for part, key in (("vision", "vision_config"), ("llm", "text_config")):
        sub = config_json.get(key) or (config_json if part == "vision" else {})
        depth = next((sub[k] for k in DEPTH_KEYS[part] if isinstance(sub.get(k), int)), None)
        if depth:
            counts.append(f"{part}: {depth} blocks")
    return "all (" + "; ".join(counts) + ")" if counts else "all"


def split_sizes(config: RunConfig) -> dict[str, int]:
    """Images per split: the generator's counts, or those of a COCO folder's annotation files."""
    spec = config.dataset
    if spec.kind == "synthetic_shapes":
        return {"train": spec.shapes.n_train, "test": spec.shapes.n_test}
    from .data import load_coco

    return {split: len(load_coco(spec.path, split, on_bad_annotation=spec.on_bad_annotation))
            for split in (spec.train_split, spec.test_split)}


def plan(config: RunConfig, trust_remote_code: bool = False) -> list[PlannedModel]:
    from .runner import model_runs

    shards = sum(len(plan_shards(split, n, config.shard_size)) for split, n in split_sizes(config).items())
    planned = []
    for run in model_runs(config, trust_remote_code):
        paths = [p["path"] for p in run.parts] if run.parts else [run.path]
        params, source = None, "none (no weights)" if run.family == "pixels" else "unknown"
        if run.family != "pixels" and all(paths):
            on_disk = [safetensors_params(p) for p in paths]
            by_name = [params_from_name(p) for p in paths]
            if all(v is not None for v in on_disk):
                params, source = sum(on_disk), "safetensors headers on disk"
            elif all(v is not None for v in by_name):
                params, source = sum(by_name), "estimated from the name"
        width = run.load.get("quantization") or config.dtype
        memory = params * BYTES_PER_WEIGHT[width] * OVERHEAD if params is not None else None
        if run.family == "pixels":
            stages, memory = "vision.embed (raw patch pixels)", 0.0
        elif run.parts:
            stages = ", ".join(f"hybrid.{p['name']} ({p['family']} {p['stage']})" for p in run.parts) + ", hybrid.concat"
        else:
            stages = stage_summary(local_config(run.path) if run.path else None, run.stages)
        planned.append(PlannedModel(run.name, run.family, run.control, stages, params, source, memory, shards))
    return planned + tuned_rows(config, planned)


def tuned_rows(config: RunConfig, planned: list[PlannedModel]) -> list[PlannedModel]:
    """Mod C's tuned runs: their base's row (same weights, stages and extraction jobs; the adapter adds well
    under 1% of the parameters), named and controlled as the run will be."""
    from dataclasses import replace

    from .spec import spec_runs

    if config.finetune is None:
        return []
    by_name = {p.name: p for p in planned}
    return [replace(by_name[run.base], name=run.name, control=run.control) for run in spec_runs(config)
            if run.base in by_name]


# --- the plan as jobs: shared extractions, task jobs and the cost estimate (`run --dry-run --json`) ----------
#
# Every extraction is planned per model spec key, so runs that read one checkpoint (a baseline, its presets,
# a hybrid's part) extract it once, with the union of the stages they ask for. Costs come from the store's
# shard indexes (measured seconds per image) where a run has stored them, else from these stated assumptions
# (docs/design-notes.md, "GPU-hour estimate"):

#: sustained forward throughput of one A100 in bfloat16: ~32% of its 312 TFLOP/s peak (hooks, batches of 8,
#: no fused kernels); float32 runs at its 19.5 TFLOP/s peak times the same share
SUSTAINED_FLOPS = {"bfloat16": 100e12, "float16": 100e12, "float32": 6.2e12}
#: bitsandbytes matmuls dequantize on the fly: slower than bfloat16 by these factors
QUANTIZED_SLOWDOWN = {"4bit": 3.0, "8bit": 4.0}
#: probe algebra (Gram, X^T X) in float32 on the same GPU: TF32 tensor cores at ~50% of 156 TFLOP/s
PROBE_FLOPS = 78e12
#: text tokens of the prompt around the image tokens (the LLM stages read image tokens only)
PROMPT_TOKENS = 64
#: forward passes per image by the speed task (warm-up and timed) and per question by vqa (prefill + short answer)
SPEED_PASSES, VQA_PASSES = 3, 2
STORED_BYTES = 2  # float16 features
#: features written per second (device to host in float16, checksum, local NVMe): extraction of many stages
#: is bound by this as much as by the forward pass
STORE_BYTES_PER_SECOND = 1e9
ACCUMULATOR_BYTES = 8  # float64 Gram and X^T X


@dataclass(frozen=True)
class Tower:
    depth: int
    width: int

    @property
    def params(self) -> float:
        """Parameters of a transformer of this shape: 12 width^2 per block (attention 4, MLP 8)."""
        return 12 * self.depth * self.width ** 2


@dataclass(frozen=True)
class FamilyShape:
    """Stated shapes of a family at its default checkpoint size, used when config.json is not on disk."""
    vision: Tower
    vision_tokens: Callable[[int], int]  # image tokens of the vision tower at the configured resolution
    llm_tokens: Callable[[int], int] | None  # image tokens the LLM (and projector) sees; None: no LLM
    resolution: int


FAMILY_SHAPES = {
    # 14-px patches, 2x2 merger (proposal 3.1.4): 1,024 vision and 256 LLM tokens at 448 px
    "qwen2_5_vl": FamilyShape(Tower(32, 1280), lambda r: (r // 14) ** 2, lambda r: (r // 28) ** 2, 448),
    # CLIP ViT-L/336, anyres: the base image and a 2x2 grid of 336-px tiles, 577 tokens each; the LLM sees
    # 5 x 576 plus one newline token per row of the packed grid
    "llava_next": FamilyShape(Tower(24, 1024), lambda r: 5 * 577, lambda r: 5 * 576 + 48, 336),
    "llava_next_video": FamilyShape(Tower(24, 1024), lambda r: 5 * 577, lambda r: 5 * 576 + 48, 336),
    # SigLIP-so400m/14 at 384 px (729 tokens a tile, no CLS), anyres: the base image and a 2x2 grid of tiles,
    # one newline token per row of the packed grid
    "llava_onevision": FamilyShape(Tower(26, 1152), lambda r: 5 * 729, lambda r: 5 * 729 + 54, 384),
    # InternViT-300M on 448-px tiles (a square image: one tile), pixel shuffle 4:1
    "internvl": FamilyShape(Tower(24, 1024), lambda r: 1025, lambda r: 256, 448),
    # EVA2-CLIP-E at its fixed 1,344 px, 2x2 conv downsampling
    "cogvlm2": FamilyShape(Tower(63, 1792), lambda r: 96 * 96, lambda r: 48 * 48 + 2, 1344),
    # the same tower on 224-px frames (clips only): per frame, 16x16 patches, 8x8 after the conv + boi/eoi
    "cogvlm2_video": FamilyShape(Tower(63, 1792), lambda r: 16 * 16, lambda r: 8 * 8 + 2, 224),
    "glm4v": FamilyShape(Tower(24, 1536), lambda r: (r // 14) ** 2, lambda r: (r // 28) ** 2, 336),
    "owlvit": FamilyShape(Tower(12, 768), lambda r: 577, None, 768),
    "owlv2": FamilyShape(Tower(12, 768), lambda r: 3601, None, 960),
    "pixels": FamilyShape(Tower(0, 588), lambda r: (r // 14) ** 2, None, 224),
}
DEFAULT_SHAPE = FamilyShape(Tower(12, 768), lambda r: (r // 14) ** 2 + 1, None, 224)
#: LLM (layers, width) by size class in billions of parameters (Llama-2 / Yi / InternLM shapes)
LLM_SHAPES = {7: Tower(32, 4096), 13: Tower(40, 5120), 20: Tower(48, 6144), 34: Tower(60, 7168), 70: Tower(80, 8192)}
#: the vision tower of the larger InternVL2 checkpoints (InternViT-6B)
INTERNVIT_6B = Tower(45, 3200)


@dataclass(frozen=True)
class StageShape:
    name: str
    tokens: int
    channels: int


@dataclass(frozen=True)
class ModelCost:
    """What one spec costs per image: forward FLOPs, its stages (estimated names and shapes), and the source."""
    flops: float
    stages: tuple[StageShape, ...]
    source: str  # where the shapes come from


def tower_from(config_json: dict | None, key: str, default: Tower) -> Tower:
    sub = (config_json or {}).get(key) or {}
    depth = next((sub[k] for k in ("depth", "num_hidden_layers", "num_layers") if isinstance(sub.get(k), int)), None)
    width = next((sub[k] for k in ("hidden_size", "embed_dim", "width") if isinstance(sub.get(k), int)), None)
    return Tower(depth or default.depth, width or default.width)


def llm_tower(params_b: float | None, vision: Tower) -> Tower:
    """The LLM's shape by the nearest size class (log scale) of what the parameters leave after the vision tower."""
    billions = max((params_b or 7.0) - vision.params / 1e9, 0.5)
    nearest = min(LLM_SHAPES, key=lambda size: abs(math.log(size / billions)))
    return LLM_SHAPES[nearest]


def model_cost(spec) -> ModelCost:
    """Forward FLOPs per image and the stages (names and shapes) of a spec, from config.json when it is on
    disk, else the family's stated shapes; a hybrid's parts are priced as their own specs."""
    if spec.family == "ltx_video_vae":
        return vae_cost(spec)
    shape = FAMILY_SHAPES.get(spec.family, DEFAULT_SHAPE)
    resolution = dict(spec.options).get("resolution") or shape.resolution
    config_json = local_config(spec.path) if spec.path and spec.variant != "pixels" else None
    params = safetensors_params(spec.path) if config_json else None
    params = params or params_from_name(spec.path or "")
    default_vision = INTERNVIT_6B if spec.family == "internvl" and (params or 0) >= 20 else shape.vision
    vision = tower_from(config_json, "vision_config", default_vision)
    n_vision = shape.vision_tokens(resolution)
    stages = [StageShape("vision.embed", n_vision, vision.width)]
    stages += [StageShape(f"vision.block.{i}", n_vision, vision.width) for i in range(vision.depth)]
    flops = 2 * vision.params * n_vision + 4 * vision.depth * n_vision ** 2 * vision.width
    if shape.llm_tokens is not None and spec.variant != "pixels":
        llm = tower_from(config_json, "text_config", llm_tower(params, vision))
        n_llm = shape.llm_tokens(resolution)
        stages.append(StageShape("projector.out", n_llm, llm.width))
        stages += [StageShape(f"llm.layer.{i}", n_llm, llm.width) for i in range(llm.depth)]
        tokens = n_llm + PROMPT_TOKENS
        flops += 2 * llm.params * tokens + 4 * llm.depth * tokens ** 2 * llm.width
    source = "config.json on disk" if config_json else f"stated {spec.family} shapes"
    if spec.path == "tiny":  # keyed by its string until built: priced as the family's full-size checkpoint
        source += " (tiny checkpoint not built yet: an overestimate)"
    return ModelCost(flops, tuple(stages), source)


#: the LTX-Video VAE's encoder, stated: about 3 TFLOP for one 512 x 512 frame (a convolutional encoder of
#: ~0.4B parameters at full resolution); it scales with the pixels
VAE_FLOPS_AT_512 = 3e12


def vae_cost(spec) -> ModelCost:
    """The LTX-Video VAE: one stage, `vae.latent`, a (resolution / 32)^2 grid of 128 channels."""
    resolution = int(dict(spec.options).get("resolution") or 512)
    stage = StageShape("vae.latent", (resolution // 32) ** 2, 128)
    return ModelCost(VAE_FLOPS_AT_512 * (resolution / 512) ** 2, (stage,), "stated ltx_video_vae shapes")


def requested_shapes(cost: ModelCost, patterns) -> list[StageShape]:
    """The estimated stages a list of patterns names ("all": every one)."""
    from .stages import match_stages

    if patterns == "all":
        return list(cost.stages)
    names = [s.name for s in cost.stages]
    wanted = {name for pattern in patterns for name in match_stages(pattern, names)}
    return [s for s in cost.stages if s.name in wanted]


def stage_bytes(shapes: list[StageShape], pool: int = 1) -> int:
    """Bytes stored per image; `pool` > 1 (a model's `pool`) stores about tokens / pool^2 of each raster."""
    return sum(math.ceil(s.tokens / pool ** 2) * s.channels * STORED_BYTES for s in shapes)


def seconds_per_image(spec, dtype: str, stored_bytes: int = 0) -> float:
    """Stated seconds per image on one A100: the forward pass (SUSTAINED_FLOPS) and writing `stored_bytes`."""
    slowdown = QUANTIZED_SLOWDOWN.get(spec.quantization, 1.0)
    forward = sum(model_cost(s).flops for s in (spec.parts or (spec,))) / SUSTAINED_FLOPS[dtype] * slowdown
    return forward + stored_bytes / STORE_BYTES_PER_SECOND


def union_stages(requests) -> str | list[str]:
    """The union of stage pattern lists; "all" (None) absorbs everything."""
    if any(stages is None for stages in requests):
        return "all"
    union: list[str] = []
    for stages in requests:
        union += [s for s in stages if s not in union]
    return union


def find_data_hash(config: RunConfig) -> str | None:
    """The dataset's content hash when its folder exists (complete), else None; builds nothing."""
    from .store.shards import cache_key
    from .data import dataset_hash
    from .data.shapes import GENERATOR_VERSION
    from .errors import SpatialProbeError
    from .runner import load_split, work_dir

    spec = config.dataset
    if spec.kind == "coco":
        root = spec.path
    else:
        folder = f"synthetic_shapes-{cache_key(**spec.shapes.model_dump(), version=GENERATOR_VERSION)[:12]}"
        root = spec.path or work_dir(config) / "datasets" / folder
        if not (Path(root) / "dataset.json").is_file():
            return None
    if root is None or not Path(root).is_dir():
        return None
    try:
        return dataset_hash(root, load_split(Path(root), spec.train_split, config),
                            load_split(Path(root), spec.test_split, config))
    except (SpatialProbeError, OSError, ValueError):
        return None


def feature_store(config: RunConfig):
    from .store.shards import FeatureCache
    from .runner import work_dir

    return FeatureCache(work_dir(config) / "features" if config.cache_dir else None)


def shard_state(store, key: str, data_hash: str | None, shard, patterns) -> tuple[bool, dict | None]:
    """(every requested stage stored, the shard's index) from the store's shard index, if it keeps one."""
    from .stages import match_stages

    lookup = getattr(store, "shard_index", None)
    index = lookup(key, data_hash, shard.split, shard.start, shard.stop) if lookup and data_hash else None
    if not index:
        return False, None
    stored, known = set(index["stages"]), list(index["all_stages"])
    wanted = known if patterns == "all" else [s for p in patterns for s in match_stages(p, known)]
    return bool(wanted) and set(wanted) <= stored, index


def shared_extractions(runs) -> dict[str, dict]:
    """Spec key -> {spec, who, stages}: every run (or hybrid part) that reads one checkpoint, grouped."""
    from .spec import extraction_requests

    groups: dict[str, dict] = {}
    for run in runs:
        for who, spec, stages in extraction_requests(run):
            group = groups.setdefault(spec.key(), {"spec": spec, "who": [], "requests": []})
            group["who"].append(who)
            group["requests"].append(stages)
    for group in groups.values():
        group["stages"] = union_stages(group["requests"])
    return groups


def plan_extractions(config: RunConfig, groups: dict, data_hash: str | None) -> tuple[list[dict], list[dict]]:
    """One entry per (spec key, split, shard), and one summary per spec key with its cost."""
    store = feature_store(config)
    entries, models = [], []
    for key, group in groups.items():
        spec, patterns = group["spec"], group["stages"]
        measured, todo, cached_images = [], 0, 0
        for split, n in split_sizes(config).items():
            for number, shard in enumerate(plan_shards(split, n, config.shard_size)):
                cached, index = shard_state(store, key, data_hash, shard, patterns)
                if index and index.get("seconds") and index.get("images"):
                    measured.append(index["seconds"] / index["images"])
                todo += 0 if cached else shard.stop - shard.start
                cached_images += shard.stop - shard.start if cached else 0
                entries.append({"model_key": key, "family": spec.family, "path": spec.path, "variant": spec.variant,
                                "split": split, "shard": number,
                                "start": shard.start, "stop": shard.stop, "stages": patterns,
                                "runs": list(group["who"]), "cached": cached})
        models.append(model_summary(key, group, config, measured, todo, cached_images))
    return entries, models


def model_summary(key: str, group: dict, config: RunConfig, measured: list[float], todo: int, cached: int) -> dict:
    spec = group["spec"]
    costs = [model_cost(s) for s in (spec.parts or (spec,))]
    shapes = [s for cost in costs for s in requested_shapes(cost, group["stages"])]
    stored = stage_bytes(shapes, spec.pool)
    per_image = sum(measured) / len(measured) if measured else seconds_per_image(spec, config.dtype, stored)
    return {"model_key": key, "family": spec.family, "path": spec.path, "variant": spec.variant,
            "runs": list(group["who"]), "stages": group["stages"], "stage_count": len(shapes),
            "images_to_extract": todo, "images_cached": cached,
            "seconds_per_image": per_image, "seconds_source": "measured (shard index)" if measured else
            f"assumed ({costs[0].source}, A100 {config.dtype} at {SUSTAINED_FLOPS[config.dtype] / 1e12:.0f} TFLOP/s)",
            "gpu_hours": todo * per_image / 3600, "bytes_per_image": stored,
            "shard_bytes": stored * config.shard_size, "disk_bytes": stored * todo,
            "extraction_ram_bytes": extraction_ram(stored, largest_stage_bytes(shapes, spec.pool), config)}


def largest_stage_bytes(shapes: list[StageShape], pool: int) -> int:
    return stage_bytes([max(shapes, key=lambda s: s.tokens * s.channels)], pool) if shapes else 0


def extraction_ram(per_image: int, largest_stage_per_image: int, config: RunConfig) -> int:
    """Host bytes of one extraction job (`store.spool`): the batches held until the spill budget, plus the
    batch that crosses it, plus one stage of the shard joined for the store; all of it while the shard is small."""
    shard = per_image * config.shard_size
    held = min(shard, SPILL_BYTES + per_image * config.batch_size)
    return min(shard, held + largest_stage_per_image * config.shard_size)


def run_stages(run) -> list[StageShape]:
    """The (estimated) stages a run's tasks read: its requested stages, or a hybrid's parts on one grid."""
    if run.spec.parts:
        parts = [requested_shapes(model_cost(part), [stage])
                 for (name, stage), part in zip(run.spec.part_layout(), run.spec.parts)]
        side = max((s.tokens for found in parts for s in found), default=0)
        named = [StageShape(f"hybrid.{name}", side, found[0].channels if found else 0)
                 for (name, _), found in zip(run.spec.part_layout(), parts)]
        return named + [StageShape("hybrid.concat", side, sum(s.channels for s in named))]
    return requested_shapes(model_cost(run.spec), "all" if run.stages is None else list(run.stages))


def probe_flops(shape: StageShape, n_train: int, fits: int, probes: list[str]) -> float:
    """Fit cost of one stage: the flattened linear probe's Gram (2 n^2 N C) and the dense probe's X^T X
    (2 C^2 n N); the pooled probe's C^2 n is small beside them."""
    flops = 0.0
    if "linear" in probes:
        flops += 2 * n_train ** 2 * shape.tokens * shape.channels
    if "dense" in probes:
        flops += 2 * shape.channels ** 2 * n_train * shape.tokens
    if "pooled" in probes:
        flops += 2 * shape.channels ** 2 * n_train
    return flops * fits


def plan_tasks(config: RunConfig, runs) -> tuple[list[dict], float]:
    """One entry per (task, run, stage | "judged" | "model") job, and the probe fits' FLOPs."""
    from .models import backbone_class
    from .tasks import TASKS

    n_train = next(iter(split_sizes(config).values()))  # the training split comes first
    entries, flops = [], 0.0
    for run in runs:
        if run.control == "reference":
            entries += [{"task": t, "run": r.name, "stage": "all", "ref_model": run.name}
                        for t in config.tasks if TASKS[t].reference for r in runs if r.control != "reference"]
            continue
        stages = run_stages(run)
        variants = 2 if config.controls.shuffled_tokens and run.control == "none" else 1
        fits = variants * (1 + config.probe_resamples)
        for stage in stages:
            entries.append({"task": "spatial_probe", "run": run.name, "stage": stage.name, "probes": config.probes})
            flops += probe_flops(stage, n_train, fits, config.probes)
        if "reconstruction_probe" in config.tasks:
            entries.append({"task": "reconstruction_probe", "run": run.name, "stage": "judged"})
        for task in ("speed", "vqa"):
            answers = task == "speed" or hasattr(backbone_class(run.family), "answer")
            if task in config.tasks and run.control == "none" and answers:
                entries.append({"task": task, "run": run.name, "stage": "model", "model_key": run.spec.key()})
    return entries, flops


def model_job_hours(config: RunConfig, runs) -> float:
    """GPU-hours of the speed and vqa tasks: forward passes at each model's stated seconds per image (a shard
    index's measured seconds include writing features, which these tasks do not)."""
    hours = 0.0
    for run in runs:
        if run.control != "none":
            continue
        seconds = seconds_per_image(run.spec, config.dtype)
        passes = SPEED_PASSES * config.speed_images * ("speed" in config.tasks)
        passes += VQA_PASSES * config.vqa_questions * ("vqa" in config.tasks)
        hours += passes * seconds / 3600
    return hours


#: the LTX-Video decoder, stated as about twice its encoder's FLOPs per frame (it up-samples to full resolution)
VAE_DECODE_FACTOR = 2.0
#: forward + backward of a training step, in forward passes
TRAIN_PASSES = 3
#: decodes per test image: the adapter's latents, the floor (the mean latent) and the ceiling (encode + decode)
DECODES_PER_IMAGE = 3


def reference_cost(runs) -> ModelCost | None:
    """The reference VAE's cost, when the run has one (Phase 2 tasks)."""
    reference = next((r for r in runs if r.control == "reference"), None)
    return model_cost(reference.spec) if reference else None


def alignment_flops(shape: StageShape, n: int, cells: int, channels: int = 128, permutations: int = 200) -> float:
    """CKA of one stage with the latents, three forms: the n x n Gram matrices of the pooled and spatial forms
    (2 n^2 C and 2 n^2 cells C), the per-position sums over n x cells examples (2 n cells (C^2 + C q + q^2)),
    and the null and bootstraps, which re-index the Gram matrices (n^2 each)."""
    grams = 2 * n * n * shape.channels * (1 + cells)
    positions = 2 * n * cells * (shape.channels ** 2 + shape.channels * channels + channels ** 2)
    return grams + positions + 2 * permutations * n * n


def adapter_flops(shape: StageShape, cells: int, adapter, n_test: int, vae: ModelCost) -> float:
    """One adapter: training steps x batch x (forward + backward) of a head whose every parameter acts once per
    latent cell (the attention head also attends from every cell to every token), then the VAE's decodes and
    encode of the test images for the scores, floor and ceiling."""
    per_image = 2 * adapter.target_params * cells
    if adapter.head == "attention":
        per_image += 4 * cells * shape.tokens * min(shape.channels, 1024)
    training = TRAIN_PASSES * per_image * adapter.steps * adapter.batch_size
    decoding = n_test * (DECODES_PER_IMAGE * VAE_DECODE_FACTOR + 1) * vae.flops
    return training + decoding


#: clips priced when the dataset's size is not known before it is read (SSv2 or a folder): the proposal's
#: direction subset is a few thousand clips
DEFAULT_CLIPS = 2000


def clip_counts(config: RunConfig) -> tuple[int, int]:
    """(train, test) clips of the temporal task: the generator's counts for moving shapes, else stated."""
    data = config.temporal.data
    if data.kind == "moving_shapes":
        from .config import moving_shapes_options

        options = moving_shapes_options().model_validate(data.moving_shapes)  # the generator's own defaults
        return options.n_train, options.n_test
    return int(DEFAULT_CLIPS * 0.8), int(DEFAULT_CLIPS * 0.2)


def video_runs(runs) -> list:
    """The runs the temporal task reads clips through: models and controls whose family reads video (not the
    reference, not a hybrid)."""
    from .tasks.temporal_probe import reads_video

    return [r for r in runs if r.control != "reference" and not r.spec.parts and reads_video(r.family)]


def clip_stage_shapes(config: RunConfig, run) -> list[StageShape]:
    """The (estimated) stages a run's clips are stored and probed at (`temporal_probe.clip_stages`); the judged
    stage from the estimated names, or the last one where decision.stage names none of them."""
    from .decision import configured_model, judged_stage
    from .tasks.temporal_probe import clip_stages

    shapes = run_stages(run)
    names = [s.name for s in shapes]
    if not names:
        return []
    try:
        judged = judged_stage(configured_model(run), names, config.decision)
    except SpatialProbeError:
        judged = names[-1]
    kept = set(clip_stages(run, names, config, judged))
    return [s for s in shapes if s.name in kept]


def clip_frames(config: RunConfig) -> int:
    """Frames one model reads for the temporal task: every view of both splits."""
    from .tasks.temporal_probe import extraction_views

    train, test = clip_counts(config)
    return len(extraction_views(config)) * (train + test) * config.temporal.data.frames


def temporal_flops(config: RunConfig, runs) -> float:
    """The temporal task: every clip view through every video-reading model once (runs of one checkpoint share
    it, as extraction does; each frame priced as one image: an upper bound for models that merge frames), and each
    run's attentive probe training over its stages' tokens."""
    runs, budget, frames = video_runs(runs), config.temporal.attentive, config.temporal.data.frames
    models = {run.spec.key(): run.spec for run in runs}
    flops = clip_frames(config) * sum(model_cost(spec).flops for spec in models.values())
    if "attentive" in config.temporal.probes:
        for run in runs:
            shapes = clip_stage_shapes(config, run)
            tokens = max((s.tokens for s in shapes), default=0) * frames
            flops += len(shapes) * TRAIN_PASSES * budget.steps * budget.batch * 4 * tokens * budget.width
    return flops


def clip_disk_bytes(config: RunConfig, runs) -> int:
    """What the temporal task stores: every clip view of both splits, each frame priced as one image of the
    stages read (an upper bound for models that merge frames); runs of one checkpoint share it, as extraction does."""
    if "temporal_probe" not in config.tasks:
        return 0
    stored: dict[str, int] = {}
    for run in video_runs(runs):
        key = run.spec.key()
        stored[key] = max(stored.get(key, 0), stage_bytes(clip_stage_shapes(config, run), run.spec.pool))
    return clip_frames(config) * sum(stored.values())


#: one view of a split's clips held by the attentive probe's job, in copies: the four views it reads (train and
#: test, forward and reversed), their joined copies, and the float32 copy of the joined training tokens (2 x 2)
ATTENTIVE_VIEW_COPIES = 4 + 4 + 8


def attentive_ram(config: RunConfig, runs) -> tuple[int, str | None]:
    """Host RAM of the largest temporal probe job with the attentive probe (it holds every token of a stage's
    clips; `probes: [linear]` streams instead), and the run it belongs to."""
    if "temporal_probe" not in config.tasks or "attentive" not in config.temporal.probes:
        return 0, None
    train, test = clip_counts(config)
    largest, name = 0, None
    for run in video_runs(runs):
        widest = max((s.tokens * s.channels for s in clip_stage_shapes(config, run)), default=0)
        size = widest * STORED_BYTES * config.temporal.data.frames * (train + test) // 2 * ATTENTIVE_VIEW_COPIES
        if size > largest:
            largest, name = size, run.name
    return largest, name


def phase2_flops(config: RunConfig, runs) -> dict[str, float]:
    """FLOPs of the Phase 2 tasks: CKA of every stage of every run, and one adapter per run at its widest stage
    (the judged stage is not known before the models are read; the widest is the dearest)."""
    temporal = temporal_flops(config, runs) if "temporal_probe" in config.tasks else 0.0
    vae = reference_cost(runs)
    if vae is None:
        return {"latent_alignment": 0.0, "adapter_bridging": 0.0, "temporal_probe": temporal}
    sizes = list(split_sizes(config).values())
    n, n_test = sum(sizes), sizes[-1]
    cells, alignment = vae.stages[0].tokens, config.alignment
    flops = {"latent_alignment": 0.0, "adapter_bridging": 0.0, "temporal_probe": temporal}
    for run in runs:
        stages = run_stages(run) if run.control != "reference" else []
        if "latent_alignment" in config.tasks:
            flops["latent_alignment"] += sum(alignment_flops(s, n, cells, permutations=alignment.permutations)
                                             for s in stages)
        if "adapter_bridging" in config.tasks and stages:
            widest = max(stages, key=lambda s: s.channels)
            flops["adapter_bridging"] += adapter_flops(widest, cells, alignment.adapter, n_test, vae)
    return flops


def built_folders(config: RunConfig) -> Callable[[str, str], str]:
    """A resolver that builds nothing: "tiny" and "installed:" paths become the folders the runner would use
    when those are already complete (so a dry run sees the run's keys and its stored shards), else stay strings."""
    from .runner import work_dir
    from .testing import TINY_MARKER
    from .weights import MARKER, weights_home

    def resolve(path: str, family: str) -> str:
        if path == "tiny":
            folder, marker = work_dir(config) / "tiny" / family, TINY_MARKER
        elif path.startswith("installed:"):
            folder, marker = weights_home() / path.removeprefix("installed:"), MARKER
        else:
            return path
        return str(folder) if (folder / marker).is_file() else path

    return resolve


def plan_jobs(config: RunConfig, trust_remote_code: bool = False,
              resolve: Callable[[str, str], str] | None = None) -> dict:
    """The whole plan as JSON-able data: shared extractions (with `cached` from the store's shard indexes),
    task jobs, and the estimate of GPU-hours, host RAM and disk. Loads and builds nothing: "tiny" and
    "installed:" paths not built yet are keyed by their string (`resolve(path, family)` replaces that)."""
    from .gate import gated
    from .spec import spec_runs

    gate_notes: list[str] = []
    config = gated(config, gate_notes.append, dry_run=True)
    runs = spec_runs(config, resolve or built_folders(config), trust_remote_code)
    data_hash = find_data_hash(config)
    extractions, models = plan_extractions(config, shared_extractions(runs), data_hash)
    tasks, fit_flops = plan_tasks(config, runs)
    return {"config": config.name, "data_hash": data_hash, "shard_size": config.shard_size,
            "runs": [{"name": r.name, "label": r.label, "control": r.control, "model_key": r.spec.key(),
                      "stages": "all" if r.stages is None else list(r.stages)} for r in runs],
            "models": models, "extraction": extractions, "tasks": tasks, "gate": gate_notes,
            "estimate": estimate(config, runs, models, fit_flops)}


def finetune_flops(config: RunConfig, runs) -> float:
    """Mod C: per tuned run, steps x batch x (forward + backward) of the vision tower (a distillation term adds
    the frozen original's forward), plus the val loss on the val images at step 0 and at every checkpoint.
    The whole tower is priced (the tuned stage may be earlier: an overestimate); val images: synthetic shapes'
    `n_val`, else `dataset.val_fraction` of the training split."""
    if config.finetune is None:
        return 0.0
    budget, n_train = config.finetune, next(iter(split_sizes(config).values()))
    shapes = config.dataset.shapes
    n_val = shapes.n_val if config.dataset.kind == "synthetic_shapes" and shapes.n_val else \
        max(1, round(n_train * config.dataset.val_fraction))
    passes = TRAIN_PASSES + (budget.distill_weight > 0)
    evaluations = budget.steps // budget.checkpoint_every + 1
    flops = 0.0
    for run in runs:
        if not str(run.control).startswith("lora:"):
            continue
        shape = FAMILY_SHAPES.get(run.spec.family, DEFAULT_SHAPE)
        tokens = shape.vision_tokens(dict(run.spec.options).get("resolution") or shape.resolution)
        config_json = local_config(run.spec.path) if run.spec.path else None
        vision = tower_from(config_json, "vision_config", shape.vision)
        forward = 2 * vision.params * tokens + 4 * vision.depth * tokens ** 2 * vision.width
        flops += forward * (budget.steps * budget.batch_size * passes + evaluations * n_val * (passes - 2))
    return flops


def estimate(config: RunConfig, runs, models: list[dict], fit_flops: float) -> dict:
    extraction = sum(m["gpu_hours"] for m in models)
    model_jobs = model_job_hours(config, runs)
    probes = fit_flops / PROBE_FLOPS / 3600
    phase2 = phase2_flops(config, runs)
    # CKA is float64 algebra like the probe fits; an adapter trains and decodes at the run's dtype
    phase2 = {"latent_alignment": phase2["latent_alignment"] / PROBE_FLOPS / 3600,
              "adapter_bridging": phase2["adapter_bridging"] / SUSTAINED_FLOPS[config.dtype] / 3600,
              "temporal_probe": phase2["temporal_probe"] / SUSTAINED_FLOPS[config.dtype] / 3600}
    phase2["finetune"] = finetune_flops(config, runs) / SUSTAINED_FLOPS[config.dtype] / 3600  # Mod C (in the total)
    n_train = next(iter(split_sizes(config).values()))  # the training split comes first
    widest = max((s for r in runs for s in run_stages(r)), key=lambda s: s.channels, default=None)
    accumulators = (n_train ** 2 + (widest.channels ** 2 if widest else 0)) * ACCUMULATOR_BYTES
    largest = max(models, key=lambda m: m["extraction_ram_bytes"], default=None)
    extraction_ram = (largest["extraction_ram_bytes"] if largest else 0) + accumulators
    temporal_ram, temporal_run = attentive_ram(config, runs)
    return {"gpu_hours": extraction + model_jobs + probes + sum(phase2.values()), "extraction_gpu_hours": extraction,
            "speed_vqa_gpu_hours": model_jobs, "probe_fit_gpu_hours": probes,
            "alignment_gpu_hours": phase2["latent_alignment"], "adapter_gpu_hours": phase2["adapter_bridging"],
            "temporal_gpu_hours": phase2["temporal_probe"], "finetune_gpu_hours": phase2["finetune"],
            "probe_fit_pflop": fit_flops / 1e15,
            "host_ram_gb": max(extraction_ram, temporal_ram) / 1e9,
            "host_ram_model": largest and largest["runs"][0],
            # what sets it: an extraction job with the accumulators, or the attentive temporal probe's job
            "host_ram_for": (f"{temporal_run}: the attentive temporal probe holds a stage's clips"
                             if temporal_ram > extraction_ram else
                             f"{largest and largest['runs'][0]}: one extraction job + accumulators"),
            "attentive_ram_gb": temporal_ram / 1e9,
            "disk_gb": (sum(m["disk_bytes"] for m in models) + clip_disk_bytes(config, runs)) / 1e9,
            "clip_disk_gb": clip_disk_bytes(config, runs) / 1e9,
            "assumptions": ASSUMPTIONS}


ASSUMPTIONS = (f"forward FLOPs per image = 2 x parameters x tokens + 4 x layers x tokens^2 x width, per tower; "
               f"sustained A100 throughput {SUSTAINED_FLOPS['bfloat16'] / 1e12:.0f} TFLOP/s bf16 "
               f"({SUSTAINED_FLOPS['float32'] / 1e12:.1f} float32) plus {STORE_BYTES_PER_SECOND / 1e9:.0f} GB/s of feature "
               f"writes, bitsandbytes 4bit x{QUANTIZED_SLOWDOWN['4bit']:.0f} "
               f"and 8bit x{QUANTIZED_SLOWDOWN['8bit']:.0f} slower; probe fits 2 n^2 N C (linear Gram) + "
               f"2 C^2 n N (dense) at {PROBE_FLOPS / 1e12:.0f} TFLOP/s; disk = tokens x channels x 2 bytes per stored "
               f"stage and image (and clip frame, every view); Phase 2: CKA Gram matrices and per-position sums at the probe-fit rate, "
               f"adapters 3 x 2 x parameters x latent cells per training image, decoding {VAE_DECODE_FACTOR:.0f}x the VAE "
               f"encoder's FLOPs per image, {DECODES_PER_IMAGE} decodes per test image, clips as frames x one image's forward per "
               f"view (moving shapes: the generator's counts, else {DEFAULT_CLIPS} clips); host RAM = the largest extraction job (batches up to the {SPILL_BYTES / 2**30:.0f} GiB spill "
               f"budget, one batch of every stage, one stage of a shard) + the float64 accumulators (n x n Gram, C x C), or the "
               f"attentive temporal probe's job if larger ({ATTENTIVE_VIEW_COPIES // 2} copies of a stage's clips, both splits, in float16); measured seconds per image replace the assumption where a "
               f"shard index has them")
