"""Executors: run a plan's jobs in this process (`local`, the default) or on a Ray cluster (`ray`).

An executor knows nothing about features or probes: it is generic over job values. The runner hands it
picklable jobs (frozen dataclasses) and module-level functions, so a worker on another process or machine
can rebuild everything a job needs from the job itself:

- `extract(jobs, group, open_model, run_job, on_done)`: jobs that share `group(job)` (a model spec's key)
  need the same loaded model. A worker opens it once with `open_model(first job of the group)` and runs
  every job of the group with `run_job(model, job)`.
- `map(fn, jobs, on_done)`: independent jobs (probe fits, metrics), `fn(job)` each.

`on_done(job, result)` is called in the driver as each job finishes, in completion order (the local
executor's order is the jobs' order, grouped), so it is the place to record progress and append results.
"""
from __future__ import annotations

import gc
import importlib
import sys
from typing import Any, Callable, Hashable, Protocol, Sequence, TypeVar

from ..errors import SpatialProbeError

J = TypeVar("J")
T = TypeVar("T")
R = TypeVar("R")

# name -> "module:class", imported on demand so that `local` never imports Ray
EXECUTORS = {
    "local": "spatialprobe.executors.local:LocalExecutor",
    "ray": "spatialprobe.executors.ray:RayExecutor",
}


class Executor(Protocol):
    def extract(self, jobs: Sequence[J], group: Callable[[J], str], open_model: Callable[[J], Any],
                run_job: Callable[[Any, J], R], on_done: Callable[[J, R], None]) -> None: ...

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], on_done: Callable[[T, R], None]) -> None: ...

    def close(self) -> None: ...


def make_executor(name: str, address: str | None = None, **options) -> Executor:
    """The executor called `name` (`local` or `ray`); `address` is a Ray cluster's (ray only)."""
    if name not in EXECUTORS:
        raise SpatialProbeError(f"executor: unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(address=address, **options)


def groups_in_order(jobs: Sequence[J], group: Callable[[J], Hashable]) -> list[tuple[Hashable, list[J]]]:
    """Jobs grouped by `group(job)`: groups in order of first appearance, jobs in their order within a group."""
    groups: dict[Hashable, list[J]] = {}
    for job in jobs:
        groups.setdefault(group(job), []).append(job)
    return list(groups.items())


def free_memory() -> None:
    """Collect a dropped model now, and give its GPU memory back when torch is in use (never imports torch)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["EXECUTORS", "Executor", "make_executor", "groups_in_order", "free_memory"]
