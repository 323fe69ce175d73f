"""The feature store's write and read costs, old format (v2) against new (v3), in one process.

    .venv/bin/python benchmarks/store_write.py [--repeats 3] [--split-shards 8]

1. One shard (random float16 tokens, float32 footprints) at two realistic shapes:
   - old `run_shard`: SHA-256 over every tensor, write, then read the file back (load_file) and hash it
     again (reproduced here from the v2 code as the baseline);
   - new: crc32, write, no read-back (`FeatureCache.save` returns the stored values).
   Also the first read in a later process (old: load_file + SHA-256; new: memory-mapped + crc32) and a
   second read in the same process (new: verified once, so no checksum).
2. Peak RSS of one stage of a split (`--split-shards` shards of 64 x 1024 x 1280) read through
   `StoreSource.shards()` (streamed, summed shard by shard) against `gather()` (joined), each in a fresh
   process.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spatialprobe.store import shards as store
from spatialprobe.store.shards import FeatureCache, stage_key
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.store.sources import StoreSource

SHAPES = {"Qwen2.5-VL-7B vision, 448 px": (64, 1024, 1280), "DINOv2-S, 224 px": (64, 256, 384)}
STAGE = "vision.block31"


def shard(images: int, tokens: int, channels: int, seed: int = 0) -> TokenFeatures:
    g = torch.Generator().manual_seed(seed)
    side = int(tokens ** 0.5)
    return TokenFeatures(torch.randn(images, tokens, channels, generator=g).half(),
                         grid_footprints(side, side).expand(images, -1, -1).contiguous(), (side, side))


# --- the v2 store, as it was: the baseline


def v2_checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def v2_save(path: Path, feats: TokenFeatures) -> None:
    tensors = {"tokens": feats.tokens.to(torch.float16).contiguous(), "footprints": feats.footprints.float().contiguous()}
    meta = {"format": "spatialprobe-features-v2", "key": path.stem, "grid_shape": json.dumps(list(feats.grid_shape))}
    meta["checksum"] = v2_checksum(tensors, meta)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp, metadata=meta)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def v2_load(path: Path) -> TokenFeatures:
    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(path)
    assert meta["checksum"] == v2_checksum(tensors, meta)
    return TokenFeatures(tensors["tokens"], tensors["footprints"], tuple(json.loads(meta["grid_shape"])))


# --- measurements


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        begun = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begun)
    return min(times)


def shard_costs(root: Path, shape: tuple[int, int, int], repeats: int) -> dict:
    feats, cache = shard(*shape), FeatureCache(root / "v3")
    old_path = root / "v2" / ("ab" * 32 + ".safetensors")
    old_path.parent.mkdir(parents=True, exist_ok=True)
    key = "cd" * 32

    def old_write():  # v2 run_shard: save, then read back (hashing again) to return the stored values
        v2_save(old_path, feats)
        v2_load(old_path)

    def new_write():
        cache.save(key, feats)

    def plain_write(sync: bool = False):  # the floor: safetensors alone, no checksum (both stores also fsync)
        save_file({"tokens": feats.tokens, "footprints": feats.footprints}, root / "plain.safetensors")
        if sync:
            with open(root / "plain.safetensors", "rb+") as handle:
                os.fsync(handle.fileno())

    # reads only (no consumer): the old read copies the file into memory, the new one maps it
    def new_first_read():
        store._VERIFIED.clear()  # as a fresh process would: verify
        cache.load(key)

    def new_second_read():
        cache.load(key)

    out = {}
    out["old_write"], out["new_write"] = best(old_write, repeats), best(new_write, repeats)
    out["plain_write"], out["plain_sync"] = best(plain_write, repeats), best(lambda: plain_write(True), repeats)
    out["MB"] = round(old_path.stat().st_size / 1e6, 1)
    out["old_read"] = best(lambda: v2_load(old_path), repeats)
    out["new_first_read"], out["new_second_read"] = best(new_first_read, repeats), best(new_second_read, repeats)
    return out


def anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def channel_sums(tokens: torch.Tensor) -> torch.Tensor:
    return sum(image.float().sum(0) for image in tokens)


def stream_child(mode: str, root: str, shards: int) -> None:
    """In a fresh process: one stage of the split read through StoreSource, streamed or gathered."""
    source = StoreSource(FeatureCache(root), "bench-model", "bench-data", "train", 64 * shards, 64, STAGE)
    before = peak_rss_mb()
    begun = time.perf_counter()
    # the consumer: per-channel sums, one image at a time (a float32 copy of a whole shard would dominate)
    # RssAnon (the process's own memory, not page cache) is sampled after each shard: mapped pages are not in it
    anon = [anon_mb()]
    if mode == "stream":
        total = 0
        for part in source.shards():
            total = total + channel_sums(part.tokens)
            anon.append(anon_mb())
    else:
        joined = source.gather()
        anon.append(anon_mb())
        total = channel_sums(joined.tokens)
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - begun,
                      "anon_before_mb": anon[0], "anon_max_mb": max(anon), "check": float(total.sum())}))


def split_rss(root: Path, shards: int) -> dict:
    cache = FeatureCache(root)
    for number in range(shards):
        start = 64 * number
        cache.save(stage_key("bench-model", "bench-data", "train", start, start + 64, STAGE),
                   shard(64, 1024, 1280, seed=number))
    out = {"GB on disk": round(sum(p.stat().st_size for p in root.rglob("*.safetensors")) / 1e9, 2)}
    for mode in ("stream", "gather"):
        got = subprocess.run([sys.executable, __file__, "--child", mode, str(root), str(shards)],
                             capture_output=True, text=True, check=True)
        out[mode] = json.loads(got.stdout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split-shards", type=int, default=8)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stream_child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        print("| shard (images x tokens x channels) | MB | old save + read-back (s) | new save (s) | old / new "
              "| new / plain save_file (+ fsync) | old first read (s) | new first read (s) | new second read (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, shape in SHAPES.items():
            r = shard_costs(Path(tmp) / name.split(",")[0].replace(" ", "_"), shape, args.repeats)
            print(f"| {name}: {' x '.join(map(str, shape))} | {r['MB']} | {r['old_write']:.3f} | {r['new_write']:.3f} "
                  f"| {r['old_write'] / r['new_write']:.1f} | {r['new_write'] / r['plain_write']:.1f} ({r['new_write'] / r['plain_sync']:.1f}) | {r['old_read']:.3f} | {r['new_first_read']:.3f} "
                  f"| {r['new_second_read']:.4f} |")
        rss = split_rss(Path(tmp) / "split", args.split_shards)
        print(f"\nsplit of {64 * args.split_shards} images, {rss['GB on disk']} GB on disk:")
        for mode in ("stream", "gather"):
            r = rss[mode]
            print(f"| {mode} | after imports {r['before_mb']:.0f} MB | peak RSS {r['peak_mb']:.0f} MB "
                  f"| RssAnon {r['anon_before_mb']:.0f} -> max {r['anon_max_mb']:.0f} MB | {r['seconds']:.2f} s |")


if __name__ == "__main__":
    main()
