"""Model specs: what a measured model is, as a frozen value, and the key its stored features are filed under.

A `ModelSpec` names a checkpoint and everything that changes the numbers read from it. `key()` is
computed without loading the model (a dry run and a worker that only reads the store both need it),
from the spec and the checkpoint's own files:

- a local folder: the content of its small files (config.json, the preprocessor / processor / tokenizer
  configs, a chat template, a checkpoint's own Python code), and for each weights file its size, its
  safetensors header (tensor names, shapes, dtypes) and a content sample: 4 KiB read at 8 fixed relative
  offsets. Headers alone are not enough: two random-init checkpoints of one architecture share them,
  but not their bytes. A file of the Hugging Face cache is a link to a blob named by its content hash;
  that name is used instead (exact and free).
- a hub id: the id, the revision and the commit it resolves to (the local cache's snapshot name, else
  the hub's answer): a commit names its files exactly, and a key computed before the download equals
  the one computed after it. Offline and not cached, only the id and revision are known.
- anything else (in a dry run, "tiny" and "installed:" paths that are not built yet): the string.

In the key, because they change the numbers: family, the checkpoint's files (not the folder's name:
a copy of a checkpoint shares its features), revision, adapter options, dtype, quantization,
variant (none | random_init | pixels | lora:<id>), the seed of a random_init copy, a lora variant's adapter
(the SHA-256 of its files, not its folder's path), and a hybrid's
parts (each by its own key) and their stages. Not in the key: the display label (renaming a model
must not re-extract it; presets such as Mod A and Mod B read the baseline's checkpoint and so share
its features), the device (placement, not identity), and device_map, trust_remote_code and
allow_pickle (they decide whether and where a checkpoint loads, not what it computes).

A sampled fingerprint can miss a change confined to bytes no sample reads (e.g. one edited tensor of
a safetensors file) of a local folder; a hub checkpoint's commit cannot.
Bump `KEY_VERSION` when an adapter changes what it computes for the same checkpoint and options.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

#: a random-init copy is seeded with the run's seed plus this, so it never coincides with a checkpoint made
#: by `save_tiny(seed=config.seed)`
RANDOM_INIT_SEED_OFFSET = 7919
#: part of every key: bump to re-extract everything after a change of the adapters' numbers
KEY_VERSION = 1
#: bytes read per sample and relative offsets of the samples in a weights file's data
SAMPLE_BYTES = 4096
SAMPLE_OFFSETS = tuple(i / 8 for i in range(8)) + (1.0,)
#: weights: fingerprinted by size, header and samples
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: small files that change what a model computes, read whole (up to SMALL_FILE_BYTES, else sampled)
CONFIG_SUFFIXES = (".json", ".py", ".jinja", ".model", ".tiktoken", ".txt")
SMALL_FILE_BYTES = 1 << 22
#: files that never change the numbers (our own build markers carry times and paths)
IGNORED_PREFIXES = ("spatialprobe", "README", "LICENSE", ".")
#: LoadConfig fields kept in `ModelSpec.load` (out of the key): they decide where and whether a model loads
LOAD_FIELDS = ("device_map", "allow_pickle", "trust_remote_code")


def freeze(value: Any) -> Any:
    """A hashable copy of a JSON-like value: dicts become sorted item tuples, lists tuples."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class ModelSpec:
    family: str
    path: str  # hub id or local folder, already resolved ("tiny"/"installed:" resolved by the runner)
    revision: str | None = None
    options: tuple[tuple[str, Any], ...] = ()  # adapter options (e.g. resolution), sorted items (hashable)
    load: tuple[tuple[str, Any], ...] = ()  # device_map, allow_pickle, trust_remote_code: not in the key
    quantization: str | None = None
    dtype: str = "float32"
    variant: str = "none"  # none | random_init | pixels | lora:<id>
    seed: int = 0  # random_init only
    parts: tuple["ModelSpec", ...] = ()  # hybrid; their names and stages are the option "parts"
    pool: int = 1  # raster stages stored averaged over pool x pool tokens (1: as the model gives them)
    #: lora:<id> only: the Mod C adapter folder (peft `save_pretrained`). Its path is not in the key, its content is
    adapter: str | None = None

    def __post_init__(self) -> None:
        from .errors import SpatialProbeError

        tuned = self.variant.startswith("lora:")
        if tuned and (not self.variant[5:] or not self.adapter):
            raise SpatialProbeError(f"model {self.path!r}: variant {self.variant!r} needs an id (lora:<id>) and "
                                    "its adapter folder")
        if self.adapter and not tuned:
            raise SpatialProbeError(f"model {self.path!r}: an adapter folder is read by a lora:<id> variant only, "
                                    f"not {self.variant!r}")

    def key(self) -> str:
        """A hash of what the numbers depend on (see the module docstring); loads nothing."""
        blob = json.dumps(self.key_parts(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def key_parts(self) -> dict:
        parts = {"version": KEY_VERSION, "family": self.family, "revision": self.revision,
                 "options": self.options, "quantization": self.quantization, "dtype": self.dtype,
                 "variant": self.variant}
        if self.variant == "random_init":
            parts["seed"] = self.seed
        if self.pool > 1:  # absent at 1, so the keys of unpooled models stay as they were
            parts["pool"] = self.pool
        if self.adapter:  # the adapter's bytes, so a retrained adapter gets its own features
            from .finetune.variant import adapter_fingerprint

            parts["adapter"] = adapter_fingerprint(self.adapter)
        if self.parts:
            parts["parts"] = [part.key() for part in self.parts]
        elif self.variant != "pixels":
            parts["checkpoint"] = checkpoint_facts(self.path, self.revision)
        return parts

    def part_layout(self) -> tuple[tuple[str, str], ...]:
        """A hybrid's (part name, stage) pairs, in the order of `parts`."""
        return dict(self.options).get("parts", ())

    def part_options(self) -> list[dict]:
        """A hybrid's parts as the hybrid adapter takes them: {name, family, path, stage, options, load...}."""
        return [{"name": name, "family": part.family, "path": part.path, "stage": stage,
                 "options": thaw(part.options), "revision": part.revision, "quantization": part.quantization,
                 **thaw(part.load)}
                for (name, stage), part in zip(self.part_layout(), self.parts)]

    @classmethod
    def from_config(cls, model, resolved_path: str, dtype: str, variant: str = "none", seed: int = 0,
                    part_paths: list[str] | None = None) -> "ModelSpec":
        """The spec of a configured model (`ModelConfig` or hybrid `HybridPart`). A hybrid's parts become
        specs of their own (paths from `part_paths`, resolved like `resolved_path`; default: as configured),
        each with the variant and, for random_init, the seed its part gets (`HybridBackbone.randomize_weights`)."""
        options = dict(model.options)
        parts: tuple[ModelSpec, ...] = ()
        if getattr(model, "parts", None):
            paths = part_paths or [p.path for p in model.parts]
            parts = tuple(cls.from_config(p, path, dtype, variant, seed + number)
                          for number, (p, path) in enumerate(zip(model.parts, paths)))
            options["parts"] = [(p.name, p.stage) for p in model.parts]
        return cls(family=model.family, path=resolved_path, revision=model.revision, options=freeze(options),
                   load=freeze({f: getattr(model, f) for f in LOAD_FIELDS}), quantization=model.quantization,
                   dtype=dtype, variant=variant, seed=seed if variant == "random_init" else 0, parts=parts,
                   pool=getattr(model, "pool", 1))

    @classmethod
    def pixels(cls, resolution: int, dtype: str) -> "ModelSpec":
        """The raw-pixels control: no checkpoint, only its patch resolution."""
        return cls(family="pixels", path="pixels", options=freeze({"resolution": resolution}), dtype=dtype,
                   variant="pixels")


def thaw(items) -> dict:
    """A frozen dict (sorted item tuples) back as a dict of lists and dicts, one level deep."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in items}


# --- the checkpoint's files --------------------------------------------------------------------------------

def checkpoint_facts(path: str, revision: str | None) -> dict:
    """What identifies the checkpoint's content: a local folder's file facts; for a hub id, the commit its
    revision points to (the local cache's snapshot, else the hub's answer), which names the files exactly.

    The commit, not the downloaded files, so that a key computed before the download (a dry run, the
    driver of a run whose workers download) equals the one computed after it. Offline and not cached,
    only the id and revision are known: such a key changes once the commit is known."""
    folder = Path(path)
    if path and folder.is_dir():
        return {"files": folder_facts(folder)}
    snapshot = local_snapshot(path, revision)
    return {"id": path, "commit": snapshot.name if snapshot else hub_commit(path, revision)}


@lru_cache(maxsize=None)  # one question to the hub per checkpoint and process
def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit the hub resolves `revision` (default branch when None) to; None offline or for a non-hub id."""
    if not repo_id or repo_id.startswith(("installed:", "/", ".")) or repo_id in ("tiny", "pixels"):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception:  # offline, unknown id, no access: the id and revision are all we know
        return None


def local_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The hub checkpoint's folder in the local Hugging Face cache, or None; never downloads.

    Not memoized: a download during the process must show in the next key."""
    if not repo_id or repo_id.startswith(("installed:", "/", ".")) or repo_id == "tiny":
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a hub id: nothing on disk to read
        return None


def folder_facts(folder: Path) -> dict[str, Any]:
    """Facts of every file that changes the numbers, by path inside the folder."""
    facts = {}
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if any(part.startswith(IGNORED_PREFIXES) for part in relative.parts) or not file.is_file():
            continue
        if file.name.endswith(WEIGHT_SUFFIXES) or file.name.endswith(CONFIG_SUFFIXES):
            stat = file.stat()
            facts[relative.as_posix()] = file_fact(str(file), stat.st_size, stat.st_mtime_ns)
    return facts


@lru_cache(maxsize=4096)  # keyed by size and mtime: a rewritten file is read again
def file_fact(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    blob = Path(os.path.realpath(path))
    if blob != Path(path) and blob.parent.name == "blobs":  # HF cache: the blob is named by its content hash
        return {"size": size, "blob": blob.name}
    if path.endswith(CONFIG_SUFFIXES) and size <= SMALL_FILE_BYTES:
        return {"size": size, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    with open(path, "rb") as handle:
        header = safetensors_header(handle, size) if path.endswith(".safetensors") else b""
        return {"size": size, "header": hashlib.sha256(header).hexdigest(),
                "sample": sampled_digest(handle, len(header), size)}


def safetensors_header(handle, size: int) -> bytes:
    """The 8-byte length and JSON header of a safetensors file (tensor names, shapes, dtypes, offsets)."""
    if size < 8:
        return b""
    (length,) = struct.unpack("<Q", handle.read(8))
    return struct.pack("<Q", length) + handle.read(min(length, size - 8))


def sampled_digest(handle, start: int, size: int) -> str:
    """SHA-256 of SAMPLE_BYTES read at each of SAMPLE_OFFSETS of the bytes after `start`."""
    digest = hashlib.sha256()
    span = max(size - start - SAMPLE_BYTES, 0)
    for fraction in SAMPLE_OFFSETS:
        handle.seek(start + int(span * fraction))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


# --- the runs of a config -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpecRun:
    """One measured model or control as a config names it: its result name, display label, the spec it
    reads, the requested stage patterns (None: every stage) and which control it is."""
    name: str
    label: str | None
    spec: ModelSpec
    stages: tuple[str, ...] | None
    control: str  # none | random_init | pixels | lora:<id> | reference
    base: str | None = None  # lora:<id> only: the run (configured model) it fine-tunes

    @property
    def family(self) -> str:
        return self.spec.family


def unresolved(path: str, family: str) -> str:
    """The dry-run resolver: builds nothing, so "tiny" and "installed:" paths are keyed by their string."""
    return path


def spec_runs(config, resolve: Callable[[str, str], str] = unresolved, trust_remote_code: bool = False) -> list[SpecRun]:
    """The runs of a config, as `runner.model_runs` orders them: the pixels control, then each model and
    its random-init copy. `resolve(path, family)` turns "tiny" / "installed:" paths into folders
    (the runner's `resolve_path`); the default leaves them as they are (a dry run builds nothing)."""
    runs = []
    if config.controls.pixels:
        runs.append(SpecRun("pixels", None, ModelSpec.pixels(config.controls.pixels_resolution, config.dtype),
                            None, "pixels"))
    for model in config.models:
        if trust_remote_code:  # the command line's permission, as the runner gives it
            model = model.model_copy(update={"trust_remote_code": True, "parts": [
                p.model_copy(update={"trust_remote_code": True}) for p in model.parts] if model.parts else None})
        # the runner loads a model without a path from its name (a hub id); a hybrid has none of its own
        path = model.path if model.parts else resolve(model.path or model.name, model.family)
        part_paths = [resolve(p.path, p.family) for p in model.parts] if model.parts else None
        stages = None if model.stages == "all" else tuple(model.stages)
        runs.append(SpecRun(model.name, model.label,
                            ModelSpec.from_config(model, path, config.dtype, part_paths=part_paths), stages, "none"))
        if model.random_init_control:
            spec = ModelSpec.from_config(model, path, config.dtype, "random_init",
                                         config.seed + RANDOM_INIT_SEED_OFFSET, part_paths)
            runs.append(SpecRun(f"{model.name} [random init]", None, spec, stages, "random_init"))
    return runs + tuned_runs(config, runs) + reference_runs(config, resolve)


def tuned_runs(config, runs: list[SpecRun]) -> list[SpecRun]:
    """Mod C: one run per model of `finetune.models`, after the configured ones (`runs`): the base's spec with
    variant lora:<id> and its adapter folder (`finetune.runs.adapter_home`), the base's stages, `base` naming it."""
    from dataclasses import replace

    from .finetune.runs import TUNED_SUFFIX, adapter_home, adapter_id, tuned_name

    if config.finetune is None:
        return []
    by_name = {r.name: r for r in runs if r.control == "none"}
    tuned = []
    for model in config.finetune.models:
        base = by_name.get(model)  # the config checked the name; a Phase 1 gate may have dropped the model
        if base is None:
            continue
        ident = adapter_id(config, base.spec)
        spec = replace(base.spec, variant=f"lora:{ident}", adapter=str(adapter_home(config, model, ident) / "adapter"))
        label = f"{base.label}{TUNED_SUFFIX}" if base.label else None  # unset: the runner's label of the base, marked
        tuned.append(SpecRun(tuned_name(model), label, spec, base.stages, spec.variant, base=model))
    return tuned


def reference_runs(config, resolve: Callable[[str, str], str] = unresolved) -> list[SpecRun]:
    """The alignment reference (the VAE whose latents Phase 2 compares stages with), when a task reads it:
    extracted like a model (variant "reference"), measured by no task itself."""
    from .tasks import needs_reference

    if not needs_reference(config.tasks):
        return []
    ref = config.alignment.reference.model()
    path = resolve(ref.path, ref.family)
    return [SpecRun(ref.name, ref.label, ModelSpec.from_config(ref, path, config.dtype), None, "reference")]


def extraction_requests(run: SpecRun) -> list[tuple[str, ModelSpec, tuple[str, ...] | None]]:
    """(who, spec, stage patterns) that a run reads from the GPU: its own spec, or for a hybrid each part
    (named "<run>.<part>") at its one stage; the hybrid's own stages are made from the parts' on the host."""
    if not run.spec.parts:
        return [(run.name, run.spec, run.stages)]
    return [(f"{run.name}.{name}", part, (stage,))
            for (name, stage), part in zip(run.spec.part_layout(), run.spec.parts)]
