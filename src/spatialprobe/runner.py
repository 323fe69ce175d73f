"""`spatialprobe run`: dataset -> extraction (cached) -> probes -> results.jsonl, manifest.json, report."""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console

from . import __version__
from .models.hybrid import common_side, describe_hybrid, hybrid_stages
from .store.shards import FeatureCache, cache_key, default_cache_dir
from .config import RunConfig
from .data import clips_hash, dataset_hash, generate_synthetic_shapes, load_coco
from .data.shapes import GENERATOR_VERSION
from .decision import configured_model, judged_stage
from .vqa import load_benchmark
from .errors import SpatialProbeError
from .extract import plan_shards, shard_keys
from .files import write_atomic
from .jobs import (ClipDataRef, ComposeJob, DataRef, ExtractJob, InfoJob, RunInfo, VerifyJob, info_key, open_job_model,
                   run_model_job, run_task_job, spec_group)
from .progress import JobProgress
from .stages import resolve_stages
from .store.results import ResultCache
from .spec import ModelSpec
from .tasks import PlanContext
from .tasks.spatial_probe import MASK_SIZE, probe_key, probe_split, resize_mask  # noqa: F401 (public names)



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


def prepare_clips(config: RunConfig, console: Console) -> ClipDataRef:
    """The temporal_probe task's clips, both splits loaded and checked before any model runs: moving shapes
    generated into the work dir (or into `temporal.data.path`, as synthetic_shapes is), a moving-shapes folder
    read as it is (a `path` holding one, no generator options), or the SSv2 / video folder at `path`."""
    from .data.moving_shapes import GENERATOR_VERSION as CLIPS_VERSION, generate_moving_shapes

    spec = config.temporal.data
    root = spec.path
    written = root is not None and (Path(root) / "dataset.json").is_file()
    if spec.kind == "moving_shapes" and not (written and not spec.moving_shapes):
        params = {"frames": spec.frames, **spec.moving_shapes}
        folder = f"moving_shapes-{cache_key(**params, version=CLIPS_VERSION)[:12]}"
        root = generate_moving_shapes(Path(root or work_dir(config) / "datasets" / folder), **params)
    elif not Path(root).is_dir():
        raise SpatialProbeError(f"temporal.data.path: clip folder not found: {root}")
    console.print(f"clips: {spec.kind} at {root}")
    clips = ClipDataRef(str(root), spec.kind, spec.frames, spec.on_bad_video, dict(spec.options), seed=config.seed)
    try:
        train, test = clips.split("train"), clips.split("test")
    except SpatialProbeError as err:
        raise SpatialProbeError(f"temporal.data: {err}") from None
    if "linear" in config.temporal.probes:
        check_linear_classes(train)
    return replace(clips, hash=clips_hash(root, train, test))


def check_linear_classes(train) -> None:
    """The linear temporal probe picks its C by stratified cross-validation on train: every class it sees
    needs at least 2 training clips (said before any model runs, not after the extraction)."""
    from collections import Counter

    counts = Counter(train.label(i) for i in range(len(train)))
    thin = [train.labels[label] for label, count in sorted(counts.items()) if count < 2]
    if thin:
        raise SpatialProbeError(f"temporal.data: class {thin[0]!r} has 1 training clip; the linear probe needs at "
                                "least 2 per class (more training clips, or probes: [attentive])")


def clips_manifest(clips: ClipDataRef) -> dict:
    """What the manifest says about the clips: where, which classes (the dataset's own names) and how many."""
    train, test = clips.split("train"), clips.split("test")
    return {"root": clips.root, "kind": clips.kind, "hash": clips.hash, "frames": clips.frames,
            "train": len(train), "test": len(test), "labels": train.labels,
            "classes_used": {"train": train.classes_used, "test": test.classes_used},
            "skipped": {"train": train.skipped, "test": test.skipped}}


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


def quiet_transformers() -> None:
    """transformers' own per-checkpoint progress bars would bury ours."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def environment() -> dict:
    import transformers

    return {"spatialprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}


RUN_FILES = ("manifest.json", "results.jsonl", "report.html", "summary.md")
OnExisting = Literal["refuse", "resume", "overwrite"]


#: config keys that say where jobs run, not what they compute: a run moved to Ray is the same run
PLACEMENT_KEYS = {"executor", "executor_address"}


def config_digest(config: RunConfig) -> str:
    return cache_key(config=json.loads(config.model_dump_json(exclude=PLACEMENT_KEYS)))[:16]


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
    """Every row goes through the typed row (`rows.ResultRow`), so each line has the schema's fields."""
    from .rows import rows_to_json

    write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows_to_json(results)))




def load_split(root: Path, split: str, config: RunConfig):
    return load_coco(root, split, on_bad_annotation=config.dataset.on_bad_annotation)


def run_infos(config: RunConfig, trust_remote_code: bool = False) -> list[RunInfo]:
    """The runs of a config (pixels control, each model and its random-init copy) with their specs, paths
    resolved (a "tiny" checkpoint is built, an "installed:" one installed) and display labels."""
    from .spec import spec_runs

    labels = {r.name: model_label(r) for r in model_runs(config, trust_remote_code)}
    infos = []
    for r in spec_runs(config, lambda path, family: resolve_path(path, family, config), trust_remote_code):
        if r.control == "reference":
            label = r.label or f"{r.family} ({r.spec.path})"
            if config.alignment.reference.path == "tiny":
                label += " (tiny: random encoder, decoder fitted on shapes; a check of the pipeline, not of LTX-Video)"
            infos.append(RunInfo(r.name, label, r.family, r.control, r.spec, r.stages))
            continue
        if r.base is not None:  # Mod C: the base run's label, marked
            base = next(info for info in infos if info.name == r.base)
            infos.append(RunInfo(r.name, r.label or f"{base.label} [Mod C]", r.family, r.control, r.spec, r.stages,
                                 base=base))
            continue
        label = labels[r.name] + (" [random init]" if r.control == "random_init" else "")
        infos.append(RunInfo(r.name, label, r.family, r.control, r.spec, r.stages))
    return infos


def extraction_members(runs: list[RunInfo]) -> list[RunInfo]:
    """Who reads each spec from the GPU: a run itself, or each part of a hybrid run at its one stage (named
    "<hybrid>.<part>"); a hybrid's own stages are composed from its parts' on the host (`compose_jobs`)."""
    members = []
    for run in runs:
        if not run.spec.parts:
            members.append(run)
            continue
        members += [RunInfo(f"{run.name}.{name}", f"{run.label}: part {name}", part.family, run.variant, part,
                            (stage,), part_of=run.name)
                    for (name, stage), part in zip(run.spec.part_layout(), run.spec.parts)]
    return members


def by_spec_key(runs: list[RunInfo]) -> dict[str, list[RunInfo]]:
    groups: dict[str, list[RunInfo]] = {}
    for info in runs:
        groups.setdefault(info.spec.key(), []).append(info)
    return groups


def stage_union(members: list[RunInfo]) -> tuple[str, ...] | None:
    """The stages one extraction reads for every run that shares the model: None (all) absorbs the rest."""
    if any(m.stages is None for m in members):
        return None
    return tuple(dict.fromkeys(s for m in members for s in m.stages))


@dataclass
class Run:
    """The state of one run in the driver: what every job reports back to."""
    config: RunConfig
    ctx: PlanContext
    out: Path
    manifest: dict
    progress: JobProgress
    results: list[dict] = field(default_factory=list)  # every row so far, in plan order
    pending: list[dict] = field(default_factory=list)  # rows that a task's finalize turns into results
    #: rows of finished jobs by their place in the plan: executors finish jobs in any order, the file keeps one
    by_job: dict[tuple[int, int], list[dict]] = field(default_factory=dict)
    infos: dict[str, dict] = field(default_factory=dict)  # spec key -> describe and stage list
    stages: dict[str, list[str]] = field(default_factory=dict)  # run name -> resolved stages
    judged: dict[str, str] = field(default_factory=dict)  # run name -> judged stage
    counters: dict[str, int] = field(default_factory=dict)  # progress job -> its progress task
    places: dict[int, int] = field(default_factory=dict)  # id of a model job -> its index in the plan
    images_done: dict[str, int] = field(default_factory=dict)  # "<model>: extract <split>" -> images stored

    def add_rows(self, place: tuple[int, int], rows: list[dict]) -> None:
        """A finished job's rows, at its place (phase, index) in the plan; results.jsonl rewritten atomically."""
        self.pending += [r for r in rows if r.get("metric") == "timing"]
        self.by_job[place] = [r for r in rows if r.get("metric") != "timing"]
        self.results = [r for key in sorted(self.by_job) for r in self.by_job[key]]
        write_results(self.out, self.results)

    def tick(self, job: str, total: int, completed: int, note: str = "") -> None:
        """Progress of a named job (a bar in a terminal, a line per step in a log)."""
        if job not in self.counters:
            self.counters[job] = self.progress.add(job, total)
        self.progress.done(self.counters[job], completed, note)

    def save_manifest(self) -> None:
        write_atomic(self.out / "manifest.json", json.dumps(self.manifest, indent=2))


def model_info_known(state: Run, members: list[RunInfo], info: dict) -> None:
    """A model's description and stage list arrived: each run that reads it gets its stages and judged stage
    (a decision.stage that matches nothing fails here, before any of its extraction). A hybrid's part gets
    its stage resolved only: its hybrid run is what the results and the manifest name."""
    for member in members:
        stages = resolve_stages(member.stages, info["stages"], member.label)
        state.stages[member.name] = stages
        if member.variant == "reference":  # measured by no task: the manifest says what it is
            state.manifest["reference"] = {**info["describe"], "name": member.name, "label": member.label,
                                           "stages": stages}
        if member.part_of or member.variant == "reference":
            continue
        state.judged[member.name] = judged_stage(configured_model(member), stages, state.config.decision)
        # all_stages: the model's whole stage list, so the report places a subset at its true depth
        state.manifest["models"][member.name] = {**info["describe"], "label": member.label,
                                                 "control": member.variant, "stages": stages,
                                                 "all_stages": info["stages"],
                                                 **({"base": member.base.name} if member.base else {})}
    state.save_manifest()


def shard_stored(store: FeatureCache, spec: ModelSpec, data: DataRef, shard, stages: list[str]) -> bool:
    keys = shard_keys(spec.key(), data.hash, shard, stages)
    return all(store.path(key).exists() for key in keys.values())


def model_jobs(state: Run, runs: list[RunInfo], tasks: list) -> list:
    """Every job that needs a loaded model, grouped by model spec: its description, the self-check, the
    shards not yet stored, and the tasks' model jobs. A model whose jobs are all done is not loaded."""
    ctx, config = state.ctx, state.config
    store, results = FeatureCache(ctx.store_root), ResultCache(Path(ctx.results_root))
    jobs = []
    for members in by_spec_key([r for r in runs if r.spec.parts]).values():
        # a hybrid's stages follow from its parts' names: known (and judged) before any extraction
        model_info_known(state, members, {"describe": {"family": members[0].family},
                                          "stages": hybrid_stages(name for name, _ in members[0].spec.part_layout())})
    for key, members in by_spec_key(extraction_members(runs)).items():
        spec = members[0].spec
        known = results.get(info_key(spec))
        stages = stage_union(members)
        shards = [shard for split in ("train", "test")
                  for shard in plan_shards(split, len(ctx.data.split(split)), config.shard_size)]
        if known is not None:
            state.infos[key] = known[0]
            model_info_known(state, members, known[0])
            needed = resolve_stages(stages, known[0]["stages"], members[0].label)
            stored = [s for s in shards if shard_stored(store, spec, ctx.data, s, needed)]
            shards = [s for s in shards if s not in stored]
            for split in ("train", "test"):
                images = sum(s.stop - s.start for s in stored if s.split == split)
                if images:
                    extracted(state, members[0].name, split, images, "already stored")
        extra = [job for member in members if not member.part_of and member.variant != "reference"
                 for task in tasks for job in task.model_jobs(member, ctx)]
        if known is not None and not shards and not extra:
            continue
        verify = config.verify != "off" and any(checked(m) for m in members)
        jobs += [InfoJob(spec, config), *([VerifyJob(spec, config, stages)] if verify else [])]
        jobs += [ExtractJob(spec, config, ctx.data, ctx.store_root, s.split, s.start, s.stop, stages) for s in shards]
        jobs += extra
    # a hybrid is loaded whole only for the tasks that time or ask the model itself (speed, vqa)
    return jobs + [job for run in runs if run.spec.parts for task in tasks for job in task.model_jobs(run, ctx)]


def checked(member: RunInfo) -> bool:
    """Whether a run's checkpoint gets the planted-patch self-check: configured models and their Mod C
    variants (a fine-tune could break the token mapping as a library version can), not controls."""
    return member.variant == "none" or member.base is not None


def extracted(state: Run, name: str, split: str, images: int, note: str = "") -> None:
    """Progress of a model's extraction of a split, in images (shards finish in any order)."""
    job = f"{name}: extract {split}"
    state.images_done[job] = state.images_done.get(job, 0) + images
    state.tick(job, len(state.ctx.data.split(split)), state.images_done[job], note)


def model_job_done(state: Run, runs: list[RunInfo], job, output) -> None:
    members = [r for r in extraction_members(runs) if r.spec.key() == job.spec.key()]
    if isinstance(job, InfoJob):
        state.infos[job.spec.key()] = output
        ResultCache(Path(state.ctx.results_root)).put(info_key(job.spec), [output])
        model_info_known(state, members, output)
    elif isinstance(job, VerifyJob):
        self_check_done(state, [m for m in members if checked(m)], output)
    elif isinstance(job, ExtractJob):
        extracted(state, members[0].name, job.split, job.stop - job.start)
    elif hasattr(job, "view"):  # temporal_probe's clips: counted in clips per view and split, as extraction is
        label = f"{job.model.name}: clips {job.view} {job.split}"
        state.images_done[label] = state.images_done.get(label, 0) + job.stop - job.start
        state.tick(label, len(state.ctx.clips.split(job.split)), state.images_done[label])
    else:
        state.add_rows((0, state.places[id(job)]), output)
        kind = type(job).__name__.removesuffix("Job").lower()
        note = f"{len(output)} rows" if output else ""
        state.tick(f"{job.model.name}: {kind}", 1, 1, note)


def self_check_done(state: Run, members: list[RunInfo], output: dict) -> None:
    """The planted-patch check of the token mapping on this checkpoint (config `verify`), before any extraction:
    a transformers version can silently change a model's internal token order."""
    from .verify import VerifyFailed

    report = output["report"]
    for member in members:
        if member.part_of:
            part_check_done(state, member, report)
        else:
            state.manifest["models"][member.name]["verify"] = report
    state.save_manifest()
    names = ", ".join(m.name for m in members)
    state.progress.say(f"{names}: token-mapping self-check {'passed' if report['passed'] else 'FAILED'} "
                       f"({output['passed']}/{output['total']} stages)")
    if output["message"] and state.config.verify == "warn":
        state.progress.say(f"warning: {output['message']} (verify: warn, so the run goes on)")
    elif output["message"]:
        raise VerifyFailed(f"{output['message']}; set `verify: warn` to run anyway")


def part_check_done(state: Run, part: RunInfo, report: dict) -> None:
    """A hybrid's self-check is its parts' (the parts are what is loaded): each part's check at its stage, in
    the hybrid's manifest entry as "<part>: <stage>"."""
    check = state.manifest["models"][part.part_of].setdefault("verify", {
        "check": report["check"], "family": "hybrid", "path": "", "passed": True, "stages": {},
        "versions": report["versions"]})
    name = part.name.removeprefix(f"{part.part_of}.")
    for stage in state.stages[part.name]:
        check["stages"][f"{name}: {stage}"] = report["stages"][stage]
    check["passed"] = all(c["status"] != "fail" for c in check["stages"].values())


def hybrid_parts(state: Run, hybrid: RunInfo) -> tuple[tuple[str, str, str], ...]:
    """(part name, part spec key, the part's resolved stage) of a hybrid run, in part order."""
    return tuple((name, part.key(), state.stages[f"{hybrid.name}.{name}"][0])
                 for (name, _), part in zip(hybrid.spec.part_layout(), hybrid.spec.parts))


def hybrid_side(state: Run, spec: ModelSpec, parts: tuple[tuple[str, str, str], ...]) -> int:
    """The hybrid's common grid: configured, else the finest raster among its parts' stored stages (their
    first training shard's footprints: every shard of a part has the same layout)."""
    ctx = state.ctx
    if dict(spec.options).get("grid"):
        return int(dict(spec.options)["grid"])
    store, first = FeatureCache(ctx.store_root), plan_shards("train", len(ctx.data.split("train")), state.config.shard_size)[0]
    feats = []
    for name, key, stage in parts:
        feats.append(store.load(shard_keys(key, ctx.data.hash, first, [stage])[stage]))
        if feats[-1] is None:
            raise SpatialProbeError(f"feature store {ctx.store_root}: no {stage} features of hybrid part {name!r} "
                                    f"(model key {key[:12]}): its extraction did not finish")
    return common_side(feats)


def compose_jobs(state: Run, runs: list[RunInfo]) -> list[ComposeJob]:
    """After the parts' extraction: each hybrid's description from its parts' (the manifest's), and a job per
    shard whose hybrid stages are not stored yet, composing them from the parts' stored stages."""
    ctx, store, jobs = state.ctx, FeatureCache(state.ctx.store_root), []
    for key, members in by_spec_key([r for r in runs if r.spec.parts]).items():
        spec = members[0].spec
        parts = hybrid_parts(state, members[0])
        side = hybrid_side(state, spec, parts)
        describe = describe_hybrid(spec.path, spec.dtype, {"revision": spec.revision, "quantization": spec.quantization},
                                   side, {name: (state.infos[part_key]["describe"], stage)
                                          for name, part_key, stage in parts})
        for member in members:
            state.manifest["models"][member.name].update(describe)
        wanted = {stage for member in members for stage in state.stages[member.name]}
        stages = tuple(s for s in hybrid_stages(name for name, _, _ in parts) if s in wanted)
        for split in ("train", "test"):
            for shard in plan_shards(split, len(ctx.data.split(split)), state.config.shard_size):
                if not shard_stored(store, spec, ctx.data, shard, list(stages)):
                    jobs.append(ComposeJob(key, parts, side, ctx.data, ctx.store_root, split, shard.start, shard.stop,
                                           stages))
    state.save_manifest()
    return jobs


def composed(state: Run, runs: list[RunInfo], jobs: list[ComposeJob], job: ComposeJob) -> None:
    """Progress of a hybrid's composition, in shards."""
    name = next(r.name for r in runs if r.spec.parts and r.spec.key() == job.model_key)
    state.images_done[f"{name}: compose"] = state.images_done.get(f"{name}: compose", 0) + 1
    state.tick(f"{name}: compose", sum(j.model_key == job.model_key for j in jobs), state.images_done[f"{name}: compose"])


def feature_jobs(state: Run, runs: list[RunInfo], tasks: list) -> list:
    return [job for info in runs if info.variant != "reference" for task in tasks
            for job in task.feature_jobs(info, state.stages[info.name], state.judged[info.name], state.ctx)]


def train_adapters(state: Run, runs: list[RunInfo], runner) -> None:
    """Mod C's pre-phase: each tuned run's adapter trained before any other job is planned (its spec key is
    the adapter's content), one fresh backbone per fine-tune; finished adapters are kept, killed ones resume."""
    from .finetune.runs import finetune_group, finetune_jobs, finetune_splits, val_split_name

    if state.config.finetune is None:
        return
    data = state.ctx.data
    val_split = val_split_name(data.root, state.config)
    finetune_splits(data.root, data.split("train"), state.config, val_split)  # a missing val split fails here
    jobs = finetune_jobs(state.config, runs, data, val_split)
    state.manifest["finetune"] = {"val_split": val_split or f"held out of {data.train_split}",
                                  "trained": [job.name for job in jobs]}
    state.save_manifest()

    def done(job, output):
        state.tick(f"{job.name}: fine-tune", 1, 1, f"{output['steps']} steps, kept step {output['chosen_step']}")

    runner.extract(jobs, finetune_group, open_job_model, run_model_job, done)


def run(config: RunConfig, out: Path, console: Console | None = None, trust_remote_code: bool = False,
        on_existing: OnExisting = "refuse", executor: str | None = None, address: str | None = None) -> Path:
    from .executors import make_executor
    from .rows import RESULTS_SCHEMA
    from .tasks import TASKS, get_task

    from .gate import gated

    console = console or Console(stderr=True)
    config = gated(config, console.print)  # Phase 2 after a Phase 1 run: only the models past its gate
    quiet_transformers()
    out = Path(out)
    claim_run_dir(out, config_digest(config), on_existing)
    torch.manual_seed(config.seed)
    root = prepare_dataset(config, console)
    train_data, test_data = load_split(root, config.dataset.train_split, config), load_split(root, config.dataset.test_split, config)
    data_hash = dataset_hash(root, train_data, test_data)  # dropped images change what the positions name
    manifest = new_manifest(config, root, data_hash, train_data, test_data)
    clips = prepare_clips(config, console) if "temporal_probe" in config.tasks else None
    if clips is not None:
        manifest["clips"] = clips_manifest(clips)
    if config.vqa_benchmark is not None and "vqa" in config.tasks:  # checked whole before any model runs
        manifest["vqa_benchmark"] = {"path": str(config.vqa_benchmark),
                                     "questions": len(load_benchmark(config.vqa_benchmark))}
    manifest["results_schema"] = RESULTS_SCHEMA
    runs = run_infos(config, trust_remote_code)
    manifest["models"] = {info.name: {"label": info.label, "control": info.variant,
                                      **({"base": info.base.name} if info.base else {})}
                          for info in runs if info.variant != "reference"}
    # the run's own files are replaced at once, so a report never mixes an older run with this one
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    write_results(out, [])
    spec = config.dataset
    data = DataRef(str(root), spec.train_split, spec.test_split, spec.on_bad_annotation, data_hash)
    store_root = work_dir(config) / "features" if config.cache_dir else default_cache_dir()
    reference = next((info for info in runs if info.variant == "reference"), None)
    ctx = PlanContext(config, data, str(store_root), str(work_dir(config) / "results"), reference, clips)
    # the `finetune` section alone turns its task on (the drift and training rows, the report's Mod C section)
    tasks = [get_task(name) for name in TASKS if name in config.tasks or (name == "finetune" and config.finetune)]
    with JobProgress(console) as progress:
        state = Run(config, ctx, out, manifest, progress)
        name = executor or config.executor
        runner = make_executor(name, address or config.executor_address) if name == "ray" else make_executor(name)
        try:
            train_adapters(state, runs, runner)
            jobs = model_jobs(state, runs, tasks)
            state.places = {id(job): number for number, job in enumerate(jobs)}
            progress.say(f"{len(jobs)} model jobs ({sum(isinstance(j, ExtractJob) for j in jobs)} extraction shards)")
            runner.extract(jobs, spec_group, open_job_model, run_model_job,
                           lambda job, output: model_job_done(state, runs, job, output))
            composing = compose_jobs(state, runs)
            runner.map(run_task_job, composing, lambda job, output: composed(state, runs, composing, job))
            jobs = feature_jobs(state, runs, tasks)
            per_run = {info.name: sum(j.model.name == info.name for j in jobs) for info in runs}
            finished = {info.name: 0 for info in runs}
            places = {id(job): number for number, job in enumerate(jobs)}

            def task_done(job, rows):
                state.add_rows((1, places[id(job)]), rows)
                finished[job.model.name] += 1
                state.tick(f"{job.model.name}: probes", per_run[job.model.name], finished[job.model.name],
                           getattr(job, "stage", ""))

            runner.map(run_task_job, jobs, task_done)
        finally:
            runner.close()
    for task in tasks:
        state.results += task.finalize(state.results + state.pending, ctx)
    write_results(out, state.results)
    manifest["status"] = "complete"
    state.save_manifest()
    from .report import write_report

    write_report(out)
    console.print(f"[green]done[/green]: {out / 'report.html'}")
    return out
