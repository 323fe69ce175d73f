"""Content-addressed feature cache: float16 safetensors, one file per (model, data shard, stage).

The key hashes everything the features depend on: the model (family, path, weights fingerprint,
dtype, preprocessing), the stage, the dataset's content hash, the split and the shard's images.
Writes are atomic (temporary file + rename) and honour the user's umask. Each file carries a checksum
of its tensors and of the metadata it is read back with (grid shape and any later field), so a
truncated, corrupted or edited entry is detected on read, deleted and rebuilt — never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .features import TokenFeatures
from .files import umask_mode

# v2: the checksum covers the metadata; v1 entries have other keys and fail the format check: misses
FORMAT = "spatialprobe-features-v2"


def default_cache_dir() -> Path:
    home = os.environ.get("SPATIALPROBE_HOME")
    return Path(home) / "features" if home else Path.home() / ".cache" / "spatialprobe" / "features"


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-able key parts."""
    blob = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """Hash of the tensors and of every metadata field but the checksum itself."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.rebuilt: list[str] = []  # keys found corrupt and dropped in this session

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def save(self, key: str, feats: TokenFeatures) -> None:
        tensors = {"tokens": feats.tokens.to(torch.float16).contiguous(), "footprints": feats.footprints.float().contiguous()}
        tensors.update({f"extra.{k}": v.to(torch.float16).contiguous() for k, v in feats.extra.items()})
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

    def load(self, key: str) -> TokenFeatures | None:
        """The cached features, or None when absent; a damaged entry is deleted and reported as absent."""
        target = self.path(key)
        if not target.exists():
            return None
        try:
            return self._read(target, key)
        except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError):
            target.unlink(missing_ok=True)
            self.rebuilt.append(key)
            return None

    @staticmethod
    def _read(target: Path, key: str) -> TokenFeatures:
        from safetensors import safe_open

        with safe_open(target, framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(target)
        if meta.get("format") != FORMAT or meta.get("key") != key or meta.get("checksum") != _checksum(tensors, meta):
            raise ValueError(f"cache entry {target} does not match its checksum")
        grid = json.loads(meta["grid_shape"])
        extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
        return TokenFeatures(tensors["tokens"], tensors["footprints"], tuple(grid) if grid else None, extra)
