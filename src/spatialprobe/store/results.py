"""Finished probe results, stored per (model key, stage, variant, probe, data), so a resumed run refits nothing.

A probe fit is the expensive part after extraction; a run killed while probing would otherwise fit
every stage again. The key hashes everything a result depends on (the model's description, which
holds its weights fingerprint, the stage, the control variant, the probe, the dataset's content
hash and splits, the bootstrap size and seed, and a version that changes with the probe code), and
never the display name, so renaming a model reuses its results.
"""
from __future__ import annotations

import json
from pathlib import Path

from .shards import cache_key
from ..files import write_atomic

#: bump when probe, metric or target code changes the numbers
RESULTS_VERSION = 3


def result_key(**parts) -> str:
    return cache_key(kind="probe-result", version=RESULTS_VERSION, **parts)


class ResultCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[dict] | None:
        try:
            rows = json.loads(self.path(key).read_text())
        except (OSError, json.JSONDecodeError):  # absent, or damaged: fit again
            return None
        if not isinstance(rows, list):
            return None
        self.hits += 1
        return rows

    def put(self, key: str, rows: list[dict]) -> None:
        write_atomic(self.path(key), json.dumps(rows))
