"""`spatialprobe run`: dataset -> extraction (cached) -> probes -> results.jsonl, manifest.json, report."""
from __future__ import annotations

import gc
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .backbones import load_backbone
from .backbones.base import Backbone
from .cache import FeatureCache, cache_key, default_cache_dir
from .config import ModelConfig, RunConfig
from .data import dataset_hash, generate_synthetic_shapes, load_coco
from .data.shapes import GENERATOR_VERSION
from .errors import SpatialProbeError
from .extract import extract_split
from .decision import judged_stage
from .probes import ProbeSplit, run_spatial_probes, shuffle_tokens
from .probes.reconstruction import OUTPUT_SIZE, reconstruction_records
from .speed import measure_speed, speed_records
from .vqa import relative_records, vqa_records

RANDOM_INIT_SEED_OFFSET = 7919
MASK_SIZE = 112  # target masks are compared at this resolution (enough for 224-px images, cheap)


@dataclass
class ModelRun:
    """One backbone to measure: a configured model, its random-init copy, or the pixels control."""
    name: str
    family: str
    path: str
    label: str | None
    stages: list[str] | None
    options: dict
    control: str  # "none" | "random_init" | "pixels"
    load: dict = field(default_factory=dict)  # LoadConfig fields: revision, device_map, quantization, ...
    parts: list[dict] | None = None  # hybrid pathways


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def work_dir(config: RunConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir().parent


def prepare_dataset(config: RunConfig, console: Console) -> Path:
    spec = config.dataset
    if spec.kind == "coco":
        if spec.path is None or not Path(spec.path).is_dir():
            raise SpatialProbeError(f"dataset.path: dataset folder not found: {spec.path}")
        return Path(spec.path)
    params = spec.shapes.model_dump()
    folder = f"synthetic_shapes-{cache_key(**params, version=GENERATOR_VERSION)[:12]}"
    root = spec.path or work_dir(config) / "datasets" / folder
    console.print(f"dataset: synthetic_shapes at {root}")
    return generate_synthetic_shapes(Path(root), **params)


def probe_split(data, feats, mask_size: int = MASK_SIZE) -> ProbeSplit:
    targets = [data.target(i) for i in range(len(data))]
    boxes = torch.tensor(np.stack([t[0] for t in targets]), dtype=torch.float32)
    masks = torch.stack([torch.from_numpy(resize_mask(t[1], mask_size)) for t in targets])
    placeless = torch.cat(list(feats.extra.values()), dim=1).float().mean(1) if feats.extra else None
    return ProbeSplit(feats.tokens.float(), feats.footprints.float(), boxes, masks, placeless)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127


def model_runs(config: RunConfig, trust_remote_code: bool = False) -> list[ModelRun]:
    runs = []
    if config.controls.pixels:
        runs.append(ModelRun("pixels", "pixels", "pixels", None, None, {"resolution": config.controls.pixels_resolution}, "pixels"))
    allowed = {"trust_remote_code": True} if trust_remote_code else {}  # the command line's permission
    for m in config.models:
        stages = None if m.stages == "all" else list(m.stages)
        load = m.load_options() | allowed
        parts = [p.model_dump() | allowed for p in m.parts or []] or None
        runs.append(ModelRun(m.name, m.family, m.path, m.label, stages, dict(m.options), "none", load, parts))
        if m.random_init_control:
            runs.append(ModelRun(f"{m.name} [random init]", m.family, m.path, None, stages, dict(m.options),
                                 "random_init", load, parts))
    return runs


def resolve_path(path: str, family: str, config: RunConfig) -> str:
    if path.startswith("installed:"):
        from .weights import install_weights

        return str(install_weights(path.removeprefix("installed:")))
    if path == "tiny":
        from .testing import save_tiny

        folder = work_dir(config) / "tiny" / family
        if not (folder / "config.json").exists():
            save_tiny(family, folder)
        return str(folder)
    return path


def open_backbone(run: ModelRun, config: RunConfig) -> Backbone:
    options = {**run.load, **run.options}
    if run.parts:
        options["parts"] = [{**part, "path": resolve_path(part["path"], part["family"], config)} for part in run.parts]
    path = run.path if run.parts else resolve_path(run.path, run.family, config)
    backbone = load_backbone(run.family, path or run.name, device=config.device, dtype=config.dtype, **options)
    if run.control == "random_init":
        # offset so the control never coincides with a checkpoint made by `save_tiny(seed=config.seed)`
        backbone.randomize_weights(seed=config.seed + RANDOM_INIT_SEED_OFFSET)
    backbone.label = model_label(run)
    if run.control == "random_init":
        backbone.label = f"{backbone.label} [random init]"
    return backbone


def model_label(run: ModelRun) -> str:
    """The name reports show: the configured label, else where the weights came from (as configured)."""
    if run.label:
        return run.label
    if run.path.startswith("installed:"):
        from .weights import IMGFOCUS_LABEL

        return IMGFOCUS_LABEL
    if run.path == "tiny":
        return f"{run.family} (tiny, random init: architecture check only)"
    if run.parts:
        return "hybrid: " + " + ".join(f"{p['name']} ({p['family']} {p['stage']})" for p in run.parts)
    return "raw pixels (control)" if run.control == "pixels" else f"{run.family}:{run.path}"


def image_batch(data, size: int = OUTPUT_SIZE) -> torch.Tensor:
    """All images of a split, whole and resized, as [n, 3, size, size] in [0, 1]."""
    from PIL import Image

    arrays = [np.asarray(data.load_image(i).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
              for i in range(len(data))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def reconstruction_results(run: ModelRun, base: dict, stage: str, train_feats, test_feats, train_data, test_data,
                           config: RunConfig) -> Iterator[dict]:
    if train_feats.tokens.shape[1] == 0:  # placeless queries only: nothing to lay out as an image
        return
    extra = {}
    if train_feats.grid_shape is None:
        # tiles, levels or a mosaic: resampled onto one raster by footprint overlap (no finer than the output)
        side = min(train_feats.finest_side(), OUTPUT_SIZE)
        train_feats, test_feats, extra = train_feats.on_raster(side), test_feats.on_raster(side), {"resampled_to": side}
    control = "none" if run.control == "none" else run.control
    for record in reconstruction_records(train_feats.grid().float(), image_batch(train_data), test_feats.grid().float(),
                                         image_batch(test_data), config.bootstrap, config.seed):
        yield {**base, "task": "reconstruction_probe", "control": control, "stage": stage, **extra, **record}


def iter_results(run: ModelRun, label: str, train_feats, test_feats, train_data, test_data,
                 config: RunConfig) -> Iterator[dict]:
    base = {"model": run.name, "label": label, "family": run.family, "task": "spatial_probe", "seed": config.seed}
    judged = judged_stage(run.name.removesuffix(" [random init]"), list(train_feats), config.decision)
    if "reconstruction_probe" in config.tasks:
        yield from reconstruction_results(run, base, judged, train_feats[judged], test_feats[judged],
                                          train_data, test_data, config)
    for stage in train_feats:
        train = probe_split(train_data, train_feats[stage])
        test = probe_split(test_data, test_feats[stage])
        variants = [("none" if run.control != "random_init" else "random_init", train, test)]
        if config.controls.shuffled_tokens and run.control == "none" and train.has_spatial_tokens:
            variants.append(("shuffled", shuffle_tokens(train, config.seed), shuffle_tokens(test, config.seed + 1)))
        for control, tr, te in variants:
            name = run.name if control in ("none", "random_init", "pixels") else f"{run.name} [shuffled tokens]"
            for record in run_spatial_probes(tr, te, probes=tuple(config.probes), n_boot=config.bootstrap, seed=config.seed):
                yield {**base, "model": name, "control": control if run.control != "pixels" else "pixels",
                       "stage": stage, **record}


def quiet_transformers() -> None:
    """transformers' own per-checkpoint progress bars would bury ours."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def speed_baseline(config: RunConfig) -> str | None:
    """The model speed ratios and relative VQA are taken against: configured, else the first Qwen2.5-VL."""
    if config.decision.baseline:
        return config.decision.baseline
    return next((m.name for m in config.models if m.family == "qwen2_5_vl"), None)


def environment() -> dict:
    import transformers

    return {"spatialprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}


def run(config: RunConfig, out: Path, console: Console | None = None, trust_remote_code: bool = False) -> Path:
    console = console or Console(stderr=True)
    quiet_transformers()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    root = prepare_dataset(config, console)
    train_data = load_coco(root, config.dataset.train_split)
    test_data = load_coco(root, config.dataset.test_split)
    data_hash = dataset_hash(root)
    cache = FeatureCache(work_dir(config) / "features" if config.cache_dir else None)
    manifest = {"config": json.loads(config.model_dump_json()), "environment": environment(), "device": config.device,
                "dtype": config.dtype, "dataset": {"root": str(root), "hash": data_hash, "train": len(train_data),
                                                   "test": len(test_data)}, "models": {}}
    results: list[dict] = []
    speeds: dict[str, dict] = {}
    runs = model_runs(config, trust_remote_code)
    with progress_bar(console) as bar:
        overall = bar.add_task("models", total=len(runs))
        for number, model_run in enumerate(runs, 1):
            bar.console.print(escape(f"[{number}/{len(runs)}] {model_run.name}"), highlight=False)
            backbone = open_backbone(model_run, config)
            stages = backbone.resolve_stages(model_run.stages)
            manifest["models"][model_run.name] = {**backbone.describe(), "control": model_run.control, "stages": stages}
            feats = {}
            for split, data in (("train", train_data), ("test", test_data)):
                task = bar.add_task(escape(f"{model_run.name}: extract {split}"), total=len(data))
                feats[split] = extract_split(
                    backbone, data, data_hash, stages, cache, config.shard_size, config.batch_size,
                    on_shard=lambda job, t=task: bar.update(t, completed=job.stop))
            if "speed" in config.tasks and model_run.control == "none":
                timed = [test_data.load_image(i) for i in range(min(config.speed_images, len(test_data)))]
                speeds[model_run.name] = measure_speed(backbone, timed, config.batch_size)
            if "vqa" in config.tasks and model_run.control == "none" and hasattr(backbone, "answer"):
                label = manifest["models"][model_run.name]["label"]
                results.extend({**r, "model": model_run.name, "label": label, "family": model_run.family,
                                "control": "none", "seed": config.seed}
                               for r in vqa_records(backbone, train_data, test_data, config.bootstrap, config.seed,
                                                    config.vqa_questions))
            del backbone
            probe_task = bar.add_task(escape(f"{model_run.name}: probes"), total=len(stages))
            for record in iter_results(model_run, manifest["models"][model_run.name]["label"],
                                       feats["train"], feats["test"], train_data, test_data, config):
                results.append(record)
                if record["task"] == "spatial_probe":
                    bar.update(probe_task, completed=stages.index(record["stage"]) + 1)
            write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
            del feats
            gc.collect()
            bar.update(overall, advance=1)
    results.extend(relative_records(results, speed_baseline(config)))
    if speeds:
        baseline = speed_baseline(config)
        results.extend({**r, "label": manifest["models"][r["model"]]["label"], "control": "none", "seed": config.seed}
                       for r in speed_records(speeds, baseline))
        write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    manifest["cache_entries_rebuilt"] = len(cache.rebuilt)
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    from .report import write_report

    write_report(out)
    console.print(f"[green]done[/green]: {out / 'report.html'}")
    return out


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=not console.is_terminal and os.environ.get("CI") == "true")
