"""Writing files and folders without leaving partial states or destroying what users put there.

- `write_atomic`: a file is replaced whole (temporary file + rename), with the user's umask.
- `install_folder`: a folder is built under a temporary name and renamed into place; it counts as
  complete only when its marker file exists (written last). A non-empty folder without the marker
  was not made by us and is kept unless the caller forces its replacement; even then it is moved
  aside before the new folder is renamed in, and removed only after.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import SpatialProbeError


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (changing it races with threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(base: int = 0o666) -> int:
    """The mode a plain `open` or `mkdir` would give: `base` (0o666 files, 0o777 folders) less the umask."""
    return base & ~current_umask()


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` whole: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600 files, which a group could not read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def install_folder(dest: str | Path, marker: str, build: Callable[[Path], dict[str, Any]], *,
                   force: bool = False) -> Path:
    """`dest`, built by `build(folder) -> marker record` unless it is already complete (its marker exists).

    Concurrent callers for one `dest` wait for each other through a lock file beside it, so the second
    uses the first's result. Leftovers of interrupted attempts (`.<name>.tmp-*`, `.<name>.old-*`) are
    removed. A non-empty `dest` without the marker raises unless `force`.
    """
    dest = Path(dest)
    if (dest / marker).is_file():  # before locking: a complete install may sit in a read-only folder
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(dest.parent / f".{dest.name}.lock")):
        if (dest / marker).is_file():  # a concurrent caller finished it while we waited
            return dest
        remove_leftovers(dest)
        if holds_something(dest) and not force:
            raise SpatialProbeError(f"{dest} is not empty and was not created by spatialprobe (no {marker}); "
                                    f"use --force (force=True) to replace it")
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
        try:
            os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700 folders
            record = build(tmp)
            (tmp / marker).write_text(json.dumps(record, indent=2))  # written last: marks a complete folder
            swap_in(tmp, dest)
        finally:
            remove(tmp)
    return dest


def holds_something(path: Path) -> bool:
    """True for a file, a link, or a non-empty folder at `path`; an empty folder may simply be replaced."""
    if not os.path.lexists(path):
        return False
    return path.is_symlink() or not path.is_dir() or any(path.iterdir())


def swap_in(new: Path, dest: Path) -> None:
    """Rename `new` to `dest`; whatever was at `dest` is moved aside first and removed only once `new` is in."""
    if not holds_something(dest):
        if dest.is_dir() and not dest.is_symlink():
            dest.rmdir()
        os.rename(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        os.rename(old, dest)
        raise
    remove(old)


def remove_leftovers(dest: Path) -> None:
    """Temporary siblings of `dest` left by a killed attempt (the caller holds the lock, so none is live)."""
    prefixes = (f".{dest.name}.tmp-", f".{dest.name}.old-")
    for sibling in dest.parent.iterdir():
        if sibling.name.startswith(prefixes):
            remove(sibling)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()
