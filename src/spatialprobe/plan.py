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

from .config import RunConfig
from .extract import plan_shards

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
    return planned
