"""The `local` executor: every job in this process, one model loaded at a time."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import SpatialProbeError
from . import free_memory, groups_in_order


class LocalExecutor:
    name = "local"

    def __init__(self, address: str | None = None, **options):
        if address is not None:
            raise SpatialProbeError(f"executor local runs in this process: address {address!r} is for executor ray")
        if options:
            raise SpatialProbeError(f"executor local takes no options (got {', '.join(sorted(options))})")

    def extract(self, jobs: Sequence, group: Callable, open_model: Callable, run_job: Callable,
                on_done: Callable) -> None:
        for _key, members in groups_in_order(jobs, group):
            model: Any = open_model(members[0])
            try:
                for job in members:
                    on_done(job, run_job(model, job))
            finally:
                # only one model alive at a time: this one must be gone before the next group's opens
                del model
                free_memory()

    def map(self, fn: Callable, jobs: Sequence, on_done: Callable) -> None:
        for job in jobs:
            on_done(job, fn(job))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
