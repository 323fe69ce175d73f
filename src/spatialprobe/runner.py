"""`spatialprobe run`: dataset -> extraction (cached) -> probes -> results.jsonl, manifest.json, report."""
from __future__ import annotations

import gc
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from rich.console import Console

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
from .files import write_atomic
from .probes import ProbeSplit, probes_for, run_spatial_probes, shuffle_tokens
from .progress import JobProgress
from .result_cache import ResultCache, result_key
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
    """Tokens and targets of a split. Each target box is the box of its target mask at `mask_size`,
    the resolution the metrics compare masks at, so boxes and masks describe one object (IoU 1.0)."""
    from .probes.footprints import mask_boxes

    masks = torch.stack([torch.from_numpy(resize_mask(data.target(i)[1], mask_size)) for i in range(len(data))])
    placeless = torch.cat(list(feats.extra.values()), dim=1).float().mean(1) if feats.extra else None
    return ProbeSplit(feats.tokens.float(), feats.footprints.float(), mask_boxes(masks), masks, placeless)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask at size x size (nearest neighbour); an object too small to hit a sampled pixel keeps
    every pixel it touches, so no target is lost (its box would be empty)."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(image.resize((size, size), Image.NEAREST)) > 127
    if not resized.any() and mask.any():
        resized = np.asarray(image.resize((size, size), Image.BOX)) > 0
    return resized


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
        from .testing import ensure_tiny

        return str(ensure_tiny(family, work_dir(config) / "tiny" / family))
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


def reconstruction_results(train_feats, test_feats, train_data, test_data, config: RunConfig) -> list[dict]:
    """The reconstruction probe's records on one stage (none for a stage of placeless queries only)."""
    if train_feats.tokens.shape[1] == 0:  # placeless queries only: nothing to lay out as an image
        return []
    extra = {}
    if train_feats.grid_shape is None:
        # tiles, levels or a mosaic: resampled onto one raster by footprint overlap (no finer than the output)
        side = min(train_feats.finest_side(), OUTPUT_SIZE)
        train_feats, test_feats, extra = train_feats.on_raster(side), test_feats.on_raster(side), {"resampled_to": side}
    return [{**extra, **record} for record in reconstruction_records(
        train_feats.grid().float(), image_batch(train_data), test_feats.grid().float(), image_batch(test_data),
        config.bootstrap, config.seed)]


def model_key(describe: dict) -> dict:
    """What identifies a model's numbers: its description without the display label (renaming reuses results)."""
    return {k: v for k, v in describe.items() if k != "label"}


def probe_key(describe: dict, stage: str, control: str, probe: str, data_key: dict, config: RunConfig) -> str:
    return result_key(model=model_key(describe), stage=stage, control=control, probe=probe, data=data_key,
                      bootstrap=config.bootstrap, seed=config.seed, mask_size=MASK_SIZE,
                      probe_resamples=config.probe_resamples)


def cached_probes(train: ProbeSplit, test: ProbeSplit, keys: dict[str, str], store: ResultCache,
                  config: RunConfig) -> list[dict]:
    """Records of every probe in `keys` (probe -> result key): stored ones read back, the rest fitted and stored."""
    stored = {probe: store.get(key) for probe, key in keys.items()}
    missing = tuple(p for p, rows in stored.items() if rows is None)
    if missing:
        fitted = run_spatial_probes(train, test, probes=missing, n_boot=config.bootstrap, seed=config.seed,
                                    resamples=config.probe_resamples)
        for probe in missing:
            stored[probe] = [r for r in fitted if r["probe"] == probe]
            store.put(keys[probe], stored[probe])
    return [r for probe in keys for r in stored[probe]]


def iter_results(run: ModelRun, label: str, describe: dict, judged: str, train_feats, test_feats, train_data,
                 test_data, data_key: dict, store: ResultCache, config: RunConfig) -> Iterator[tuple[str, list[dict]]]:
    """(job, records) for the reconstruction probe (on the judged stage) and then each stage's spatial probes."""
    base = {"model": run.name, "label": label, "family": run.family, "task": "spatial_probe", "seed": config.seed}
    if "reconstruction_probe" in config.tasks:
        key = result_key(task="reconstruction_probe", model=model_key(describe), stage=judged, data=data_key,
                         bootstrap=config.bootstrap, seed=config.seed)
        rows = store.get(key)
        if rows is None:
            rows = reconstruction_results(train_feats[judged], test_feats[judged], train_data, test_data, config)
            store.put(key, rows)
        yield "reconstruction", [{**base, "task": "reconstruction_probe", "control": run.control, "stage": judged, **r}
                                 for r in rows]
    for stage in train_feats:
        train = probe_split(train_data, train_feats[stage])
        test = probe_split(test_data, test_feats[stage])
        variants = [(run.control, train, test)]
        if config.controls.shuffled_tokens and run.control == "none" and train.has_spatial_tokens:
            variants.append(("shuffled", shuffle_tokens(train, config.seed), shuffle_tokens(test, config.seed + 1)))
        records = []
        for control, tr, te in variants:
            name = f"{run.name} [shuffled tokens]" if control == "shuffled" else run.name
            keys = {probe: probe_key(describe, stage, control, probe, data_key, config)
                    for probe in probes_for(tr, config.probes)}
            records += [{**base, "model": name, "control": control, "stage": stage, **record}
                        for record in cached_probes(tr, te, keys, store, config)]
        yield stage, records


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


RUN_FILES = ("manifest.json", "results.jsonl", "report.html", "summary.md")
OnExisting = Literal["refuse", "resume", "overwrite"]


def config_digest(config: RunConfig) -> str:
    return cache_key(config=json.loads(config.model_dump_json()))[:16]


def claim_run_dir(out: Path, digest: str, on_existing: OnExisting = "refuse") -> None:
    """Refuse, before any compute, a folder that holds another run or a user's files, unless told otherwise.

    The same run (same config hash) resumes: finished extractions and probe fits come from the caches."""
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text()).get("config_hash")
        except (json.JSONDecodeError, AttributeError):
            previous = None
        if previous != digest and on_existing == "refuse":
            raise SpatialProbeError(f"--out {out} holds a different run (config hash {previous}, this one {digest}): "
                                    "pass --resume to continue it with this config, --overwrite to replace it, "
                                    "or choose another folder")
    elif out.is_dir() and any(out.iterdir()) and on_existing != "overwrite":
        raise SpatialProbeError(f"--out {out} is not empty and holds no spatialprobe run: choose a new folder, or pass "
                                f"--overwrite to write the run's files ({', '.join(RUN_FILES)}) beside what is there")
    out.mkdir(parents=True, exist_ok=True)


def new_manifest(config: RunConfig, root: Path, data_hash: str, train_data, test_data) -> dict:
    dataset = {"root": str(root), "hash": data_hash, "train": len(train_data), "test": len(test_data)}
    for split, data in (("train", train_data), ("test", test_data)):
        if data.skipped:  # dataset.on_bad_annotation: skip
            dataset.setdefault("skipped", {})[split] = {"counts": dict(data.skipped), "first": data.problems[:20]}
    return {"status": "running", "config_hash": config_digest(config), "config": json.loads(config.model_dump_json()),
            "environment": environment(), "device": config.device, "dtype": config.dtype, "dataset": dataset,
            "models": {}}


def write_results(out: Path, results: list[dict]) -> None:
    write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))


def load_split(root: Path, split: str, config: RunConfig):
    return load_coco(root, split, on_bad_annotation=config.dataset.on_bad_annotation)


@dataclass
class RunContext:
    """What every model of a run shares: the config, the data, the stores and where progress goes."""
    config: RunConfig
    train_data: object
    test_data: object
    data_hash: str
    features: FeatureCache
    store: ResultCache
    progress: JobProgress
    manifest: dict

    @property
    def data_key(self) -> dict:
        spec = self.config.dataset
        return {"hash": self.data_hash, "train": spec.train_split, "test": spec.test_split,
                "on_bad_annotation": spec.on_bad_annotation}


def run(config: RunConfig, out: Path, console: Console | None = None, trust_remote_code: bool = False,
        on_existing: OnExisting = "refuse") -> Path:
    console = console or Console(stderr=True)
    quiet_transformers()
    out = Path(out)
    claim_run_dir(out, config_digest(config), on_existing)
    torch.manual_seed(config.seed)
    root = prepare_dataset(config, console)
    train_data, test_data = load_split(root, config.dataset.train_split, config), load_split(root, config.dataset.test_split, config)
    data_hash = dataset_hash(root, train_data, test_data)  # dropped images change what the positions name
    manifest = new_manifest(config, root, data_hash, train_data, test_data)
    # the run's own files are replaced at once, so a report never mixes an older run with this one
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    write_results(out, [])
    results: list[dict] = []
    speeds: dict[str, dict] = {}
    runs = model_runs(config, trust_remote_code)
    with JobProgress(console) as progress:
        ctx = RunContext(config, train_data, test_data, data_hash,
                         FeatureCache(work_dir(config) / "features" if config.cache_dir else None),
                         ResultCache(work_dir(config) / "results"), progress, manifest)
        for number, model_run in enumerate(runs, 1):
            progress.say(f"[{number}/{len(runs)}] {model_run.name}")
            results.extend(measure_model(model_run, ctx, speeds))
            write_results(out, results)
            write_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    results.extend(relative_records(results, speed_baseline(config)))
    if speeds:
        results.extend({**r, "label": manifest["models"][r["model"]]["label"], "control": "none", "seed": config.seed}
                       for r in speed_records(speeds, speed_baseline(config)))
    write_results(out, results)
    manifest["cache_entries_rebuilt"] = len(ctx.features.rebuilt)
    manifest["status"] = "complete"
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    from .report import write_report

    write_report(out)
    console.print(f"[green]done[/green]: {out / 'report.html'}")
    return out


def measure_model(model_run: ModelRun, ctx: RunContext, speeds: dict[str, dict]) -> list[dict]:
    """Every number of one model (or control): extraction, the self-check, speed, VQA and the probes."""
    config, progress = ctx.config, ctx.progress
    backbone = open_backbone(model_run, config)
    stages = backbone.resolve_stages(model_run.stages)
    # a decision.stage that matches nothing fails here, before any extraction
    judged = judged_stage(model_run.name.removesuffix(" [random init]"), stages, config.decision)
    info = {**backbone.describe(), "control": model_run.control, "stages": stages}
    ctx.manifest["models"][model_run.name] = info
    if model_run.control == "none":
        self_check(backbone, stages, model_run, ctx)
    feats = {}
    for split, data in (("train", ctx.train_data), ("test", ctx.test_data)):
        task = progress.add(f"{model_run.name}: extract {split}", len(data))
        feats[split] = extract_split(backbone, data, ctx.data_hash, stages, ctx.features, config.shard_size,
                                     config.batch_size, on_shard=lambda job, t=task: progress.done(t, job.stop))
    results = []
    if "speed" in config.tasks and model_run.control == "none":
        task = progress.add(f"{model_run.name}: speed", 1)
        timed = [ctx.test_data.load_image(i) for i in range(min(config.speed_images, len(ctx.test_data)))]
        speeds[model_run.name] = measure_speed(backbone, timed, config.batch_size)
        progress.done(task, 1, f"{speeds[model_run.name]['images_per_second']:.2f} images/s")
    if "vqa" in config.tasks and model_run.control == "none" and hasattr(backbone, "answer"):
        task = progress.add(f"{model_run.name}: vqa", 1)
        results.extend({**r, "model": model_run.name, "label": info["label"], "family": model_run.family,
                        "control": "none", "seed": config.seed}
                       for r in vqa_records(backbone, ctx.train_data, ctx.test_data, config.bootstrap, config.seed,
                                            config.vqa_questions))
        progress.done(task, 1, f"{results[-1]['n']} questions")
    del backbone
    jobs = len(stages) + ("reconstruction_probe" in config.tasks)
    task, finished = progress.add(f"{model_run.name}: probes", jobs), 0
    for job, records in iter_results(model_run, info["label"], info, judged, feats["train"], feats["test"],
                                     ctx.train_data, ctx.test_data, ctx.data_key, ctx.store, config):
        results.extend(records)
        finished += 1
        progress.done(task, finished, job)
    del feats
    gc.collect()
    return results


def self_check(backbone: Backbone, stages: list[str], model_run: ModelRun, ctx: RunContext) -> None:
    """The planted-patch check of the token mapping on this checkpoint (config `verify`), before any extraction:
    a transformers version can silently change a model's internal token order."""
    from .verify import failure_message, raise_if_failed, verify_report, verify_stages

    if ctx.config.verify == "off":
        ctx.manifest["models"][model_run.name]["verify"] = "off"
        return
    checks = verify_stages(backbone, stages)
    report = verify_report(backbone, checks)
    ctx.manifest["models"][model_run.name]["verify"] = report
    passed = sum(c.passed for c in checks)
    ctx.progress.say(f"{model_run.name}: token-mapping self-check {'passed' if report['passed'] else 'FAILED'} "
                     f"({passed}/{len(checks)} stages)")
    if ctx.config.verify == "warn":
        message = failure_message(backbone, checks, name=model_run.name)
        if message:
            ctx.progress.say(f"warning: {message} (verify: warn, so the run goes on)")
        return
    raise_if_failed(backbone, checks, name=model_run.name, override_hint="set `verify: warn` to run anyway")
