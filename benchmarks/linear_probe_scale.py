"""The `linear` probe at LLaVA-NeXT-7B's vision shape, fitted from shards on disk: peak RSS, time, and the
ratio to scikit-learn's RidgeCV on the largest size both can hold.

Random float16 features (576 tokens x 4,096 channels by default with --full; 1,000 train / 500 test
images) are written as safetensors shards of 64 images, then the probe's dual ridge is fitted from the
shards (`probes.gram.centered_grams` + `box.gram_box_probe`: Gram matrices accumulated shard by shard,
the box head and the score head). Every measurement runs in a subprocess of its own, so peak RSS
(`resource.getrusage`) is that measurement's alone.

    .venv/bin/python benchmarks/linear_probe_scale.py              # quick check: 200 / 100 images, 576 x 256
    .venv/bin/python benchmarks/linear_probe_scale.py --full       # the README's numbers (needs ~7 GB in --dir)

scikit-learn is not a dependency of spatialprobe: `pip install scikit-learn` into the venv for the comparison.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARD = 64


class ShardFiles:
    """A TokenSource over safetensors shard files (`tokens` [b, N, C]), one shard in memory at a time."""

    def __init__(self, paths: list[Path], tokens: int | None = None) -> None:
        self.paths, self.tokens = paths, tokens
        from safetensors import safe_open

        self.sizes = [safe_open(str(p), "pt").get_slice("tokens").get_shape()[0] for p in paths]

    def __len__(self) -> int:
        return sum(self.sizes)

    def shards(self):
        from safetensors.torch import load_file

        from spatialprobe.features import TokenFeatures

        for path in self.paths:
            tokens = load_file(str(path))["tokens"]
            if self.tokens is not None:  # the first tokens only: a smaller d for the comparison
                tokens = tokens[:, :self.tokens].contiguous()
            yield TokenFeatures(tokens, torch.zeros(*tokens.shape[:2], 4))
            del tokens


def shard_paths(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("*.safetensors"))


def write(args) -> dict:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    start, written = time.perf_counter(), 0
    for split, n in (("train", args.train), ("test", args.test)):
        (Path(args.dir) / split).mkdir(parents=True, exist_ok=True)
        for first in range(0, n, SHARD):
            b = min(SHARD, n - first)
            tokens = torch.randn(b, args.tokens, args.channels, generator=generator).half()
            path = Path(args.dir) / split / f"{first:06d}.safetensors"
            save_file({"tokens": tokens}, str(path))
            written += path.stat().st_size
    return {"seconds": time.perf_counter() - start, "bytes": written}


def boxes_for(n: int) -> torch.Tensor:
    corners = torch.rand(n, 2, 2, generator=torch.Generator().manual_seed(1))
    return torch.cat([corners.min(1).values, corners.max(1).values], 1)


def fit(args) -> dict:
    """The linear probe from the shards on disk (box head, score head, test predictions)."""
    from spatialprobe.probes.box import gram_box_probe
    from spatialprobe.probes.gram import centered_grams

    train, test = ShardFiles(shard_paths(Path(args.dir), "train")), ShardFiles(shard_paths(Path(args.dir), "test"))
    start = time.perf_counter()
    gram, cross, d = centered_grams(train, test)
    grams = time.perf_counter() - start
    boxes, scores = gram_box_probe(gram, cross, d, boxes_for(len(train)))
    return {"seconds": time.perf_counter() - start, "gram_seconds": grams, "d": d, "n": len(train),
            "finite": bool(torch.isfinite(boxes).all() and torch.isfinite(scores).all())}


def compare(args) -> dict:
    """The box head's ridge (alpha by exact LOO, then test predictions) on the first `--compare-tokens`
    tokens: from shard Gram matrices here, and with RidgeCV on the same arrays in memory (same alpha grid,
    converted to its units) -- the same model, so the predictions are compared too."""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from spatialprobe.probes.gram import centered_grams
    from spatialprobe.probes.ridge import RidgeSolver

    root = Path(args.dir)
    train = ShardFiles(shard_paths(root, "train"), args.compare_tokens)
    test = ShardFiles(shard_paths(root, "test"), args.compare_tokens)
    y = boxes_for(len(train)).double()
    start = time.perf_counter()
    gram, cross, d = centered_grams(train, test)
    solver = RidgeSolver.from_gram(gram, d)
    head = solver.fit(y)
    ours_pred = head.predict_from_cross(cross).double().numpy()
    ours = time.perf_counter() - start
    x_train = torch.cat([s.tokens.flatten(1) for s in train.shards()]).numpy()
    x_test = torch.cat([s.tokens.flatten(1) for s in test.shards()]).numpy()
    start = time.perf_counter()  # RidgeCV reads arrays already in memory: its loading is not timed
    ridge = RidgeCV(alphas=(solver.alphas * solver.scale ** 2).numpy(), fit_intercept=True)
    theirs_pred = ridge.fit(x_train.astype(np.float64), y.numpy()).predict(x_test.astype(np.float64))
    theirs = time.perf_counter() - start
    return {"n": len(train), "d": d, "ours_seconds": ours, "sklearn_seconds": theirs,
            "same_alpha": bool(np.isclose(ridge.alpha_, head.alpha * solver.scale ** 2, rtol=1e-6)),
            "max_prediction_difference": float(np.abs(ours_pred - theirs_pred).max())}


def child(args) -> None:
    result = {"write": write, "fit": fit, "compare": compare}[args.child](args)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps(result))


def measure(step: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", step, *argv], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1,000 / 500 images of 576 x 4,096 (the README's run)")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--compare-tokens", type=int, default=64, help="tokens kept for the RidgeCV comparison")
    parser.add_argument("--dir", default=None, help="where the shards go (default: a temporary folder, removed)")
    parser.add_argument("--child", choices=["write", "fit", "compare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full:
        args.train, args.test, args.channels = 1000, 500, 4096
    if args.child:
        return child(args)
    root = Path(args.dir or tempfile.mkdtemp(prefix="linear_probe_scale_"))
    argv = ["--train", str(args.train), "--test", str(args.test), "--tokens", str(args.tokens),
            "--channels", str(args.channels), "--compare-tokens", str(args.compare_tokens), "--dir", str(root)]
    try:
        for step in ("write", "fit", "compare"):
            print(step, json.dumps(measure(step, argv)), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
