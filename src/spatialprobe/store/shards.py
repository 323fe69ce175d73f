"""Content-addressed feature store: safetensors files, one per (model, data shard, stage), plus a small
JSON index per shard.

The key hashes everything the features depend on: the model (its spec key, or the description dict
of older callers), the stage, the dataset's content hash, the split and the shard's images. Writes are
atomic (temporary file + rename) and honour the user's umask.

Values: tokens and extras are stored as float16, footprints and times as float32. `save` returns the
features cast exactly so (`stored_form`), so a fresh run and a resumed one see the same bits without
reading the file back.

Integrity: each file carries a crc32 of its metadata and tensors (names, dtypes, shapes, bytes). A
file is verified the first time this process reads it (then remembered by path, mtime and size), so a
truncated, corrupted or edited entry is detected, deleted, reported in `rebuilt` and never used.

Reads are memory-mapped (safetensors' own `safe_open`): a loaded shard costs page cache, not a copy in
the process's own memory, so streaming a split through the store keeps about one shard resident.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..features import TokenFeatures
from ..files import umask_mode, write_atomic

# v3: crc32 instead of SHA-256, times stored. Keys did not change, so v3 files get their own name
# (FILE_SUFFIX): a check for a file's existence never mistakes a v2 file for a stored v3 shard. v2 files
# (`<key>.safetensors`) are left in place, unused; a file of another format under a v3 name is a miss.
FORMAT = "spatialprobe-features-v3"
FILE_SUFFIX = ".v3.safetensors"
# Part of every key cache_key makes (features, probe results, config digests, dataset folders): frozen
# so a new file format does not change what the keys mean.
KEY_SCHEME = "spatialprobe-features-v2"

# (path, mtime_ns, size) of files whose checksum this process has already verified
_VERIFIED: set[tuple[str, int, int]] = set()


def default_cache_dir() -> Path:
    home = os.environ.get("SPATIALPROBE_HOME")
    return Path(home) / "features" if home else Path.home() / ".cache" / "spatialprobe" / "features"


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-able key parts."""
    blob = json.dumps({"format": KEY_SCHEME, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


ModelKey = str | dict  # ModelSpec.key(), or a backbone's describe() (hashed as before: old keys keep their meaning)


def stage_key(model_key: ModelKey, data_hash: str, split: str, start: int, stop: int, stage: str) -> str:
    """The store key of one stage of one shard (images start..stop of a split)."""
    return cache_key(model=model_key, dataset=data_hash, split=split, images=[start, stop], stage=stage)


def index_key(model_key: ModelKey, data_hash: str, split: str, start: int, stop: int) -> str:
    return cache_key(kind="shard-index", model=model_key, dataset=data_hash, split=split, images=[start, stop])


def stored_form(feats: TokenFeatures) -> TokenFeatures:
    """Exactly the values the store keeps: on the host, tokens and extras float16 (extras in name order, as
    a read returns them), footprints and times float32."""
    def host(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return t.detach().to("cpu", dtype).contiguous()

    return TokenFeatures(host(feats.tokens, torch.float16), host(feats.footprints, torch.float32), feats.grid_shape,
                         {k: host(feats.extra[k], torch.float16) for k in sorted(feats.extra)},
                         None if feats.times is None else host(feats.times, torch.float32))


def feature_tensors(feats: TokenFeatures) -> dict[str, torch.Tensor]:
    """A stage's tensors by the names a stored file gives them (extras as `extra.<name>`)."""
    tensors = {"tokens": feats.tokens, "footprints": feats.footprints}
    tensors.update({f"extra.{k}": v for k, v in feats.extra.items()})
    if feats.times is not None:
        tensors["times"] = feats.times
    return tensors


def features_from(tensors: dict[str, torch.Tensor], grid_shape: tuple[int, int] | None) -> TokenFeatures:
    """`feature_tensors` back into features (extras in name order, as stored)."""
    extra = {k.removeprefix("extra."): tensors[k] for k in sorted(tensors) if k.startswith("extra.")}
    return TokenFeatures(tensors["tokens"], tensors["footprints"], grid_shape, extra, tensors.get("times"))


def _checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """crc32 of every metadata field but the checksum itself, then of each tensor's name, dtype, shape and bytes."""
    crc = zlib.crc32(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        crc = zlib.crc32(f"{name}|{tensor.dtype}|{list(tensor.shape)}".encode(), crc)
        crc = zlib.crc32(tensor.view(torch.uint8).reshape(-1).numpy(), crc)  # a view: no copy of the bytes
    return f"{crc:08x}"


class _OtherFormat(Exception):
    """A file written by another version of the store."""


class FeatureCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.rebuilt: list[str] = []  # keys found corrupt and dropped in this session

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{FILE_SUFFIX}"

    def save(self, key: str, feats: TokenFeatures) -> TokenFeatures:
        """Store `feats` under `key`; returns them as stored (`stored_form`), so nothing needs reading back."""
        stored = stored_form(feats)
        tensors = feature_tensors(stored)
        meta = {"format": FORMAT, "key": key, "grid_shape": json.dumps(list(feats.grid_shape) if feats.grid_shape else None)}
        meta["checksum"] = _checksum(tensors, meta)
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, umask_mode())  # mkstemp makes 0600 files: a shared cache must stay readable
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return stored

    def load(self, key: str) -> TokenFeatures | None:
        """The stored features (memory-mapped), or None when absent; a damaged entry is deleted and reported
        as absent."""
        target = self.path(key)
        if not target.exists():
            return None
        try:
            return self._read(target, key)
        except _OtherFormat:
            return None  # an older store's file: a miss, overwritten by the next save
        except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError):
            target.unlink(missing_ok=True)
            self.rebuilt.append(key)
            return None

    @staticmethod
    def _read(target: Path, key: str) -> TokenFeatures:
        stat = target.stat()
        seen = (str(target), stat.st_mtime_ns, stat.st_size)
        with safe_open(target, framework="pt") as handle:  # tensors map the file: pages load as they are read
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                raise _OtherFormat(target)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        if meta.get("key") != key:
            raise ValueError(f"cache entry {target} is stored under another key")
        if seen not in _VERIFIED:
            if meta.get("checksum") != _checksum(tensors, meta):
                raise ValueError(f"cache entry {target} does not match its checksum")
            _VERIFIED.add(seen)
        grid = json.loads(meta["grid_shape"])
        return features_from(tensors, tuple(grid) if grid else None)

    # --- the per-shard index: which stages of a shard are stored, and what extracting it cost

    def index_path(self, model_key: ModelKey, data_hash: str, split: str, start: int, stop: int) -> Path:
        key = index_key(model_key, data_hash, split, start, stop)
        return self.root / key[:2] / f"{key}.index.json"

    def shard_index(self, model_key: ModelKey, data_hash: str, split: str, start: int, stop: int) -> dict | None:
        """{"stages", "all_stages", "seconds", "images"} of a stored shard, or None when there is none
        (or it is unreadable: the index is advice, the stage files are the truth)."""
        try:
            index = json.loads(self.index_path(model_key, data_hash, split, start, stop).read_text())
        except (OSError, ValueError):
            return None
        return index if isinstance(index, dict) and {"stages", "all_stages", "seconds", "images"} <= index.keys() else None

    def write_shard_index(self, model_key: ModelKey, data_hash: str, split: str, start: int, stop: int, *,
                          stages: list[str], all_stages: list[str], seconds: float | None, images: int) -> None:
        """Record (atomically) that `stages` of the shard are stored, merged with the stages an earlier run
        stored; `seconds` is what extracting its `images` took."""
        before = self.shard_index(model_key, data_hash, split, start, stop) or {"stages": []}
        stored = set(before["stages"]) | set(stages)
        order = list(all_stages) + sorted(stored - set(all_stages))
        index = {"stages": [s for s in order if s in stored], "all_stages": list(all_stages),
                 "seconds": seconds, "images": images}
        write_atomic(self.index_path(model_key, data_hash, split, start, stop), json.dumps(index, indent=1))
