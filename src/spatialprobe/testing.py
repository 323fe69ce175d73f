"""Tiny random-initialized checkpoints of supported families, built offline in code.

`save_tiny(family, path)` writes a model (and its processor / tokenizer) that
`load_backbone(family, path)` loads through the same `from_pretrained` path as a hub id.
Each adapter class implements it as the classmethod `save_tiny(path, seed)`.
`ensure_tiny(family, folder)` is the crash- and concurrency-safe form that runs use: the folder counts
as complete only once its marker file is written, so an interrupted build is rebuilt, never loaded.
"""
from __future__ import annotations

from pathlib import Path

from .models import backbone_class
from .files import install_folder

TINY_MARKER = "spatialprobe-tiny.json"


def save_tiny(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-initialized checkpoint of `family` to `path` and return the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone_class(family).save_tiny(path, seed=seed)
    return path


def ensure_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    """`folder` holding a complete tiny checkpoint of `family`, built now unless its marker says it is done.

    The folder belongs to spatialprobe (e.g. `<work dir>/tiny/<family>`): anything in it without the
    marker is a partial build of ours and is replaced.
    """
    def build(tmp: Path) -> dict:
        save_tiny(family, tmp, seed=seed)
        return {"family": family, "seed": seed}

    return install_folder(folder, TINY_MARKER, build, force=True)
