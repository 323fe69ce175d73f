"""Executors: `local` and `ray` run the same jobs to the same outputs, and Ray survives a killed worker.

The jobs do small real work: each opens a `pixels` backbone (no checkpoint needed) at the resolution its
group names, extracts the features of one generated image and writes them to a file named after the job.
Every opening of a model leaves a marker file named after its group and process, so the tests can count
openings per group per live process.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

import spatialprobe as sp
from spatialprobe.errors import SpatialProbeError
from spatialprobe.executors import make_executor
from spatialprobe.executors.local import LocalExecutor


@dataclass(frozen=True)
class PixelJob:
    resolution: int              # the "model" of this job: a pixels backbone at this resolution
    image: int                   # seed of the generated image
    out: str                     # folder the job writes its features to
    opened: str                  # folder where each opening of a model leaves a marker file
    kill_marker: str | None = None  # when set, the job's first attempt kills its own worker process


def job_group(job: PixelJob) -> str:
    return f"pixels-{job.resolution}"


def open_pixels(job: PixelJob):
    Path(job.opened, f"{job_group(job)}.{os.getpid()}.{uuid.uuid4().hex}").touch()
    return sp.load_backbone("pixels", "pixels", resolution=job.resolution)


def generated_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (37, 45, 3), dtype=np.uint8))


def kill_on_first_attempt(marker: str | None) -> None:
    if marker and not Path(marker).exists():
        Path(marker).touch()  # the retry sees it and runs normally
        os.kill(os.getpid(), signal.SIGKILL)


def extract_pixels(backbone, job: PixelJob) -> tuple[str, float]:
    kill_on_first_attempt(job.kill_marker)
    feats = backbone.extract([generated_image(job.image)])["vision.embed"]
    name = f"{job_group(job)}-{job.image}.safetensors"
    save_file({"tokens": feats.tokens, "footprints": feats.footprints}, Path(job.out, name))
    return name, float(feats.tokens.sum())


def pixel_jobs(root: Path, kill_image: int | None = None) -> list[PixelJob]:
    """Two groups, interleaved in the list so that grouping is the executor's work."""
    for sub in ("out", "opened"):
        (root / sub).mkdir(parents=True)
    return [PixelJob(resolution, image, str(root / "out"), str(root / "opened"),
                     str(root / "killed") if image == kill_image else None)
            for image in range(3) for resolution in (28, 42)]


def run_extract(executor, jobs: list[PixelJob]) -> dict[PixelJob, tuple[str, float]]:
    done: dict[PixelJob, tuple[str, float]] = {}
    executor.extract(jobs, job_group, open_pixels, extract_pixels, lambda job, result: done.__setitem__(job, result))
    return done


def outputs(folder: Path) -> dict[str, dict]:
    return {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}


def assert_same_outputs(a: Path, b: Path) -> None:
    got_a, got_b = outputs(a), outputs(b)
    assert sorted(got_a) == sorted(got_b) and len(got_a) == 6
    for name, tensors in got_a.items():
        for key, value in tensors.items():
            assert value.equal(got_b[name][key]), (name, key)


def openings(opened: Path) -> dict[str, list[str]]:
    """Group -> the process ids that opened its model, one entry per opening."""
    by_group: dict[str, list[str]] = {}
    for marker in opened.iterdir():
        group, pid, _ = marker.name.split(".")
        by_group.setdefault(group, []).append(pid)
    return by_group


def without_results(done: dict[PixelJob, tuple]) -> dict[tuple, tuple]:
    """Results keyed by what the job computes (not by its folders, which differ between runs)."""
    return {(job.resolution, job.image): result for job, result in done.items()}


# ---- local executor and the registry (no Ray needed)

class Model:
    pass


def test_local_extract_runs_groups_in_order_one_model_alive_at_a_time():
    jobs = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2)]
    opened, alive, done = [], [], []

    def open_model(job):
        # the previous group's model must be gone (dropped and collected) before the next opens
        assert all(ref() is None for ref in alive), "two models alive at once"
        model = Model()
        alive.append(weakref.ref(model))
        opened.append(job[0])
        return model

    LocalExecutor().extract(jobs, lambda job: job[0], open_model, lambda model, job: job[1] * 10,
                            lambda job, result: done.append((job, result)))
    assert opened == ["a", "b", "c"]
    assert done == [(("a", 1), 10), (("a", 2), 20), (("b", 1), 10), (("b", 2), 20), (("c", 1), 10)]


def test_local_map_calls_on_done_in_job_order():
    done = []
    make_executor("local").map(abs, [-3, 2, -1], lambda job, result: done.append((job, result)))
    assert done == [(-3, 3), (2, 2), (-1, 1)]


def test_unknown_executor_and_local_with_address_are_one_line_errors():
    with pytest.raises(SpatialProbeError, match="unknown executor 'dask'; choose one of local, ray"):
        make_executor("dask")
    with pytest.raises(SpatialProbeError, match="executor local"):
        make_executor("local", address="10.0.0.1:6379")


def test_ray_missing_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(SpatialProbeError) as err:
        make_executor("ray")
    assert str(err.value) == "executor ray needs Ray: pip install 'spatialprobe[ray]'"


def test_ray_unreachable_address_is_a_one_line_error():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'spatialprobe[ray]'")
    with socket.socket() as free:  # a port nobody listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(SpatialProbeError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        make_executor("ray", address=f"127.0.0.1:{port}")
    assert time.monotonic() - start < 10  # fails at once, not after Ray's minutes of retries


def test_ray_unknown_option_is_a_one_line_error():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'spatialprobe[ray]'")
    with pytest.raises(SpatialProbeError, match="executor ray: unknown option 'gpus_per_actor'"):
        make_executor("ray", gpus_per_actor=2)


# ---- Ray: one local Ray for the whole session

@pytest.fixture(scope="module", autouse=True)
def jobs_by_value():
    """Ray workers cannot import this test module: its functions and job classes travel by value."""
    try:
        import ray
    except ImportError:  # the Ray tests skip themselves through `ray_session`
        return
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory) -> tuple[Path, dict]:
    """The local executor's outputs and results: what every Ray run must reproduce."""
    root = tmp_path_factory.mktemp("local")
    done = run_extract(LocalExecutor(), pixel_jobs(root))
    return root / "out", without_results(done)


def test_ray_extract_matches_local_and_opens_each_model_once(ray_session, local_reference, tmp_path):
    local_out, local_done = local_reference
    with make_executor("ray", cpu_actors=2) as executor:
        done = run_extract(executor, pixel_jobs(tmp_path))
    assert_same_outputs(tmp_path / "out", local_out)
    assert without_results(done) == local_done
    assert {group: len(pids) for group, pids in openings(tmp_path / "opened").items()} == \
        {"pixels-28": 1, "pixels-42": 1}


def test_ray_extract_survives_a_worker_killed_during_a_job(ray_session, local_reference, tmp_path):
    local_out, local_done = local_reference
    with make_executor("ray", cpu_actors=2) as executor:
        done = run_extract(executor, pixel_jobs(tmp_path, kill_image=1))
    assert (tmp_path / "killed").exists()  # the kill did happen
    assert_same_outputs(tmp_path / "out", local_out)
    assert without_results(done) == local_done
    by_group = openings(tmp_path / "opened")
    for group, pids in by_group.items():
        assert len(pids) == len(set(pids)), f"{group} opened twice in one process"
    # the killed job's group (one of the two, depending on scheduling) reopens in the restarted actor
    assert sorted(len(pids) for pids in by_group.values()) == [1, 2]


@dataclass(frozen=True)
class SquareJob:
    value: int
    kill_marker: str | None = None


def square_rows(job: SquareJob) -> list[dict]:
    kill_on_first_attempt(job.kill_marker)
    if job.value < 0:
        raise SpatialProbeError(f"value {job.value} is negative")
    return [{"value": job.value, "square": job.value ** 2, "pid": os.getpid()}]


def run_map(executor, jobs: list[SquareJob]) -> dict[int, list[dict]]:
    done = {}
    executor.map(square_rows, jobs, lambda job, rows: done.__setitem__(job.value, rows))
    return {value: [{k: v for k, v in row.items() if k != "pid"} for row in rows] for value, rows in done.items()}


def test_ray_map_matches_local_and_survives_a_killed_worker(ray_session, tmp_path):
    jobs = [SquareJob(v, str(tmp_path / "killed") if v == 2 else None) for v in range(5)]
    with make_executor("ray") as executor:
        got = run_map(executor, jobs)
    assert (tmp_path / "killed").exists()
    assert got == run_map(LocalExecutor(), jobs)  # the marker exists now: the local run is not killed


def test_ray_job_error_reaches_the_driver_as_itself(ray_session):
    with make_executor("ray") as executor, pytest.raises(SpatialProbeError, match="value -1 is negative"):
        run_map(executor, [SquareJob(3), SquareJob(-1)])
