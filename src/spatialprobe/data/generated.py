"""What both generators share: a dataset written once into its folder, atomically, under a lock.

The folder counts as the dataset only once its `dataset.json` (the generator's record: name, version and every
parameter) is there: the splits are drawn into a temporary sibling, the record written last, and the sibling
renamed into place. Concurrent writers of one folder take turns through a lock file beside it; the first writes,
the others find its dataset and reuse it. A folder holding anything else is never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from filelock import FileLock

from ..errors import SpatialProbeError
from ..files import umask_mode


def install_dataset(out: Path, record: dict, kind: str, write_splits: Callable[[Path], None]) -> Path:
    """`out` holding the dataset `record` describes: reused when it is there, else written by `write_splits(tmp)`."""
    if holds_dataset(out, record, kind):  # checked before locking: a finished dataset may sit in a read-only folder
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if holds_dataset(out, record, kind):  # a concurrent writer finished it while we waited
            return out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SpatialProbeError(f"{out} exists and is not a {kind} dataset; choose an empty folder")
        remove_stale_temporaries(out)
        write_dataset(out, record, kind, write_splits)
    return out


def holds_dataset(out: Path, record: dict, kind: str) -> bool:
    """True if `out` holds the finished dataset `record` describes; an error if it holds another one."""
    marker = out / "dataset.json"
    if not marker.is_file():
        return False
    try:
        existing = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpatialProbeError(f"{marker}: unreadable ({err}); delete {out} to regenerate it") from None
    if existing != record:
        raise SpatialProbeError(f"{out} already holds a {kind} dataset with other parameters or generator "
                                "version; choose another --out or delete it")
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Temporary folders of killed writers (the caller holds the lock, so none is being written)."""
    for sibling in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(sibling, ignore_errors=True)


def write_dataset(out: Path, record: dict, kind: str, write_splits: Callable[[Path], None]) -> None:
    """Every split into a temporary folder, renamed to `out` once complete."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700 folders, which a group could not read
        write_splits(tmp)
        (tmp / "dataset.json").write_text(json.dumps(record, indent=2))  # written last: marks a complete dataset
        try:
            os.rename(tmp, out)  # atomically replaces an empty `out`
        except OSError:
            # a writer that did not take the lock got there first: its identical dataset will do
            if not holds_dataset(out, record, kind):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seeded_items(seed: int, split_number: int, count: int, progress: bool, description: str
                 ) -> Iterator[tuple[int, np.random.Generator]]:
    """Every item of a split with its own random stream, derived from (seed, split, index): changing the number of
    items in one split leaves the others, and the earlier items, alone."""
    indices = range(count)
    if progress:
        from rich.progress import track

        indices = track(indices, description=description)
    for index in indices:
        yield index, np.random.default_rng([seed, split_number, index])
