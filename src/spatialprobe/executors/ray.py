"""The `ray` executor: extraction on model-holding actors (one per GPU), task jobs as Ray tasks.

Install with `pip install 'spatialprobe[ray]'`. With an address it joins that cluster (`auto` finds the
one started by `ray start` on this machine); without, it reuses a Ray already initialized in this process
or starts a local one. Each actor holds one model at a time and is given whole groups (every job of one
model), so a model is loaded once per actor; jobs come back to the driver as results, and workers share
nothing with the driver but the files the jobs themselves write.

Fault tolerance is Ray's: actors restart (`max_restarts`) and their in-flight calls are retried
(`max_task_retries`), so a worker killed in the middle of a job has that job retried (the restarted actor
opens its model again); task jobs are retried `max_retries` times. An exception raised by a job's own code is
not retried: it reaches the driver as itself (a `SpatialProbeError` stays one).
"""
from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Callable, Hashable, Sequence

from ..errors import SpatialProbeError
from . import free_memory, groups_in_order

MISSING_RAY = "executor ray needs Ray: pip install 'spatialprobe[ray]'"
JOBS_IN_FLIGHT_PER_ACTOR = 2  # the next job is queued on the actor while one runs: no idle gap between jobs


@dataclass(frozen=True)
class RayOptions:
    num_cpus: int | None = None    # CPUs of a local Ray started here (None: all of this machine's)
    cpu_actors: int = 1            # model actors when the cluster has no GPU (with GPUs: one actor per GPU)
    actor_cpus: float = 1          # CPUs each model actor reserves
    task_cpus: float = 1           # CPUs each task job reserves
    task_gpus: float = 0           # GPUs each task job reserves
    max_restarts: int = 3          # restarts of a model actor whose process died
    max_task_retries: int = 3      # retries of an extraction job whose actor died during it
    max_retries: int = 3           # retries of a task job whose worker died during it
    max_in_flight: int | None = None  # task jobs submitted at once (None: twice what the cluster runs at once)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> "RayOptions":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise SpatialProbeError(f"executor ray: unknown option {unknown[0]!r}; known options: {', '.join(known)}")
        return cls(**options)


def import_ray():
    try:
        import ray
    except ImportError:
        raise SpatialProbeError(MISSING_RAY) from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line when `host:port` does not answer (Ray itself would retry for minutes)."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or a form only Ray knows: Ray says whether it can connect
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise SpatialProbeError(f"executor ray cannot reach the Ray cluster at {address}: {err}") from None


class ModelWorker:
    """A Ray actor's body: holds the model of the group its last job belonged to, and runs jobs on it."""

    def __init__(self, open_model: Callable, run_job: Callable):
        self.open_model, self.run_job = open_model, run_job
        self.key: Hashable | None = None
        self.model: Any = None

    def run(self, key: Hashable, job: Any) -> Any:
        if key != self.key:
            self.model, self.key = None, None  # drop the previous model before the next one loads
            free_memory()
            self.model, self.key = self.open_model(job), key
        return self.run_job(self.model, job)


def call(fn: Callable, job: Any) -> Any:
    """A task job's body."""
    return fn(job)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, **options):
        self.options = RayOptions.parse(options)
        self.ray = import_ray()
        if address is not None:
            check_reachable(address)
        self.started = False  # shut Ray down on close only when this executor started or joined it
        if not self.ray.is_initialized():
            self._init(address)

    def _init(self, address: str | None) -> None:
        try:
            if address is not None:
                self.ray.init(address=address)
            else:
                self.ray.init(num_cpus=self.options.num_cpus, include_dashboard=False)
        except ConnectionError as err:
            raise SpatialProbeError(f"executor ray cannot reach the Ray cluster at {address}: {err}") from None
        self.started = True

    def _new_actors(self, count: int, open_model: Callable, run_job: Callable) -> list:
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        actor = self.ray.remote(ModelWorker).options(
            num_cpus=self.options.actor_cpus, num_gpus=1 if gpus else 0,
            max_restarts=self.options.max_restarts, max_task_retries=self.options.max_task_retries)
        wanted = gpus or self.options.cpu_actors
        return [actor.remote(open_model, run_job) for _ in range(min(wanted, count))]

    def extract(self, jobs: Sequence, group: Callable, open_model: Callable, run_job: Callable,
                on_done: Callable) -> None:
        todo = deque((key, deque(members)) for key, members in groups_in_order(jobs, group))
        if not todo:
            return
        actors = self._new_actors(len(todo), open_model, run_job)
        current: list[tuple[Hashable, deque] | None] = [None] * len(actors)  # the group each actor works on
        busy = [0] * len(actors)
        in_flight: dict[Any, tuple[int, Any]] = {}

        def feed(i: int) -> None:
            while busy[i] < JOBS_IN_FLIGHT_PER_ACTOR:
                if current[i] is None or not current[i][1]:
                    if not todo:
                        return
                    current[i] = todo.popleft()  # a whole group: its model is loaded by this actor only
                key, members = current[i]
                job = members.popleft()
                in_flight[actors[i].run.remote(key, job)] = (i, job)
                busy[i] += 1

        try:
            for i in range(len(actors)):
                feed(i)
            while in_flight:
                [ref], _ = self.ray.wait(list(in_flight), num_returns=1)
                i, job = in_flight.pop(ref)
                busy[i] -= 1
                result = self.ray.get(ref)
                feed(i)
                on_done(job, result)
        finally:
            for actor in actors:  # free their models (and GPUs) for the task jobs that follow
                self.ray.kill(actor)

    def map(self, fn: Callable, jobs: Sequence, on_done: Callable) -> None:
        task = self.ray.remote(call).options(
            num_cpus=self.options.task_cpus, num_gpus=self.options.task_gpus, max_retries=self.options.max_retries)
        limit = self.options.max_in_flight or max(1, 2 * int(self.ray.cluster_resources().get("CPU", 1)))
        fn_ref = self.ray.put(fn)
        todo, in_flight = deque(jobs), {}
        while todo or in_flight:
            while todo and len(in_flight) < limit:
                job = todo.popleft()
                in_flight[task.remote(fn_ref, job)] = job
            [ref], _ = self.ray.wait(list(in_flight), num_returns=1)
            job = in_flight.pop(ref)
            on_done(job, self.ray.get(ref))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
