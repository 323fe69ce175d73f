"""Tiny random-initialized checkpoints of supported families, built offline in code.

`save_tiny(family, path)` writes a model (and its processor / tokenizer) that
`load_backbone(family, path)` loads through the same `from_pretrained` path as a hub id.
Each adapter class implements it as the classmethod `save_tiny(path, seed)`.
"""
from __future__ import annotations

from pathlib import Path

from .backbones import backbone_class


def save_tiny(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-initialized checkpoint of `family` to `path` and return the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone_class(family).save_tiny(path, seed=seed)
    return path
