"""Peak RSS and time of StreamingCKA over N = 100,000 rows, against the full Gram-matrix CKA at a smaller N.

Rows are generated minibatch by minibatch (seeded per minibatch; never the whole array): x [b, P]
standard normal, y = 0.5 x[:, :Q] + noise [b, Q], so the CKA is well inside (0, 1). Each measurement
runs in a subprocess of its own, so its peak RSS (resource.getrusage) is that computation's alone;
`idle` is the same subprocess's RSS after importing torch and spatialprobe, before any work.

- stream:  StreamingCKA(kernel="linear", debiased=...) over N rows in minibatches of B.
- gram:    the textbook computation that `cka` runs for the rbf kernel (and for linear when n^2 is
           the smaller side): the whole x and y in memory, two n x n Gram matrices centered in place.
           The same rows are then streamed in the same process and the two values compared.
- oneshot: `cka(x, y)` with the whole arrays in memory (linear: it takes the feature-space sums here).

    .venv/bin/python benchmarks/cka_memory.py [--n 100000] [--p 4096] [--q 128] [--batch 2000]
                                              [--gram-n 10000] [--wide-n 0]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rows(start: int, stop: int, p: int, q: int, batch: int, seed: int = 0):
    """Minibatches of the benchmark's rows [start, stop): minibatch i is seeded by i, so rows are reproducible."""
    import torch

    for index in range(start // batch, -(-stop // batch)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        x = torch.randn(batch, p, generator=generator)
        y = 0.5 * x[:, :q] + torch.randn(batch, q, generator=generator)
        lo, hi = max(start - index * batch, 0), min(stop - index * batch, batch)
        yield x[lo:hi], y[lo:hi]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2 ** 20


def streamed(n: int, p: int, q: int, batch: int, debiased: bool) -> float:
    from spatialprobe.metrics import StreamingCKA

    streaming = StreamingCKA(kernel="linear", debiased=debiased)
    for x, y in rows(0, n, p, q, batch):
        streaming.update(x, y)
    return streaming.compute()


def whole(n: int, p: int, q: int, batch: int):
    import torch

    xs, ys = zip(*rows(0, n, p, q, batch))
    return torch.cat(xs).double(), torch.cat(ys).double()


def measure(mode: str, n: int, p: int, q: int, batch: int, debiased: bool) -> dict:
    import torch

    import spatialprobe.metrics as metrics
    from spatialprobe.metrics.cka import cka_from_grams, gram_linear

    torch.set_num_threads(2)
    out = {"mode": mode, "n": n, "p": p, "q": q, "batch": batch, "debiased": debiased,
           "threads": torch.get_num_threads(), "idle_mib": round(current_mib())}
    start = time.perf_counter()
    if mode == "stream":
        out["cka"] = streamed(n, p, q, batch, debiased)
    elif mode == "oneshot":
        x, y = whole(n, p, q, batch)
        out["cka"] = metrics.cka(x, y, debiased=debiased)
    else:
        x, y = whole(n, p, q, batch)
        out["cka"] = cka_from_grams(gram_linear(x), gram_linear(y), debiased)
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["peak_mib"] = round(peak_mib())
    if mode == "gram":  # after the peak is read: the stream's peak is far below the Grams'
        del x, y
        out["streamed_same_rows"] = streamed(n, p, q, batch, debiased)
        out["abs_difference"] = abs(out["streamed_same_rows"] - out["cka"])
    return out


def run(mode: str, n: int, p: int, q: int, batch: int, debiased: bool) -> dict:
    command = [sys.executable, __file__, "--one", mode, "--n", str(n), "--p", str(p), "--q", str(q),
               "--batch", str(batch)] + (["--debiased"] if debiased else [])
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--p", type=int, default=4096)
    parser.add_argument("--q", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--gram-n", type=int, default=10_000)
    parser.add_argument("--wide-n", type=int, default=0,
                        help="also stream this many rows with y as wide as x (0: skip)")
    parser.add_argument("--one", choices=["stream", "gram", "oneshot"], help=argparse.SUPPRESS)
    parser.add_argument("--debiased", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.n, args.p, args.q, args.batch, args.debiased)))
        return
    for debiased in (False, True):
        run("gram", args.gram_n, args.p, args.q, args.batch, debiased)
    run("oneshot", 2 * args.gram_n, args.p, args.q, args.batch, False)
    for debiased in (False, True):
        run("stream", args.n, args.p, args.q, args.batch, debiased)
    if args.wide_n:
        run("stream", args.wide_n, args.p, args.p, args.batch, True)


if __name__ == "__main__":
    main()
