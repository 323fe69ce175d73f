"""Two processes writing one synthetic_shapes dataset at once: both succeed, the dataset is whole."""
import os
import shutil
import subprocess
import sys
import time

from spatialprobe.data import dataset_hash, generate_synthetic_shapes, load_coco

SMALL = dict(n_train=12, n_val=0, n_test=4, image_size=64)  # 16 images of 64 px

# each writer says it is ready, then waits for the go file, so both generate at the same moment
WRITER = """
import pathlib, sys, time
from spatialprobe.data import generate_synthetic_shapes
out, ready, go = map(pathlib.Path, sys.argv[1:4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
generate_synthetic_shapes(out, **{small!r})
""".format(small=SMALL)


def test_concurrent_writers_of_one_dataset_both_succeed(tmp_path):
    out, go = tmp_path / "shapes", tmp_path / "go"
    readies = [tmp_path / f"ready-{i}" for i in range(2)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(ready), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ready in readies]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [(w.wait(timeout=120), w.stderr.read()) for w in writers]
    assert [code for code, _ in results] == [0, 0], [err.strip().splitlines()[-1:] for _, err in results]
    reference = generate_synthetic_shapes(tmp_path / "alone", **SMALL)
    assert dataset_hash(out) == dataset_hash(reference)
    assert len(load_coco(out, "train")) == 12 and len(load_coco(out, "test")) == 4
    assert not list(tmp_path.glob(".shapes.tmp-*"))  # no temporary folder left behind


def test_dataset_folder_follows_the_umask(tmp_path):
    # the temporary folder it is renamed from is made 0700; a group must still be able to read the dataset
    previous = os.umask(0o022)
    try:
        out = generate_synthetic_shapes(tmp_path / "shared", **SMALL)
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o755


def test_a_killed_writers_temporary_folder_is_cleared(tmp_path):
    stale = tmp_path / ".shapes.tmp-killed"
    (stale / "images").mkdir(parents=True)
    generate_synthetic_shapes(tmp_path / "shapes", **SMALL)
    assert not stale.exists()


def test_the_loser_of_a_rename_race_accepts_the_identical_winner(tmp_path, monkeypatch):
    # a writer that did not take the lock (say, an older version) finishes first, just before our rename
    from spatialprobe.data import generated

    winner = generate_synthetic_shapes(tmp_path / "winner", **SMALL)
    out = tmp_path / "shapes"
    real_rename = os.rename

    def rename_after_the_winner(src, dst):
        if os.fspath(dst) == os.fspath(out):
            shutil.copytree(winner, out)
        real_rename(src, dst)

    monkeypatch.setattr(generated.os, "rename", rename_after_the_winner)
    assert generate_synthetic_shapes(out, **SMALL) == out
    assert dataset_hash(out) == dataset_hash(winner) and not list(tmp_path.glob(".shapes.tmp-*"))
