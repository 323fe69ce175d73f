"""The feature cache: round trip, atomicity, corrupt and truncated entries detected and rebuilt."""
import os

import pytest
import torch

from spatialprobe.store.shards import FeatureCache, cache_key
from spatialprobe.features import TokenFeatures, grid_footprints


def feats(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(3, 4, 5, generator=g)
    return TokenFeatures(tokens, grid_footprints(2, 2).expand(3, -1, -1).contiguous(), (2, 2),
                         {"cls": torch.randn(3, 1, 5, generator=g)})


def test_round_trip_is_float16_exact(tmp_path):
    cache, key = FeatureCache(tmp_path), cache_key(stage="vision.embed", model={"a": 1})
    original = feats()
    cache.save(key, original)
    loaded = cache.load(key)
    assert torch.equal(loaded.tokens, original.tokens.half())
    assert torch.equal(loaded.footprints, original.footprints)
    assert loaded.grid_shape == (2, 2) and torch.equal(loaded.extra["cls"], original.extra["cls"].half())
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_changes_with_any_part():
    assert cache_key(stage="a", model={"w": "x"}) != cache_key(stage="a", model={"w": "y"})
    assert cache_key(stage="a", model={"w": "x"}) == cache_key(model={"w": "x"}, stage="a")


def test_truncated_entry_is_dropped_not_used(tmp_path):
    cache, key = FeatureCache(tmp_path), "ab" * 32
    cache.save(key, feats())
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:-7])
    assert cache.load(key) is None
    assert not path.exists() and cache.rebuilt == [key]


def test_flipped_byte_is_detected(tmp_path):
    cache, key = FeatureCache(tmp_path), "cd" * 32
    cache.save(key, feats())
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor payload: the header still parses
    path.write_bytes(bytes(data))
    assert cache.load(key) is None


def test_entry_under_wrong_key_is_rejected(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.save("ef" * 32, feats())
    cache.path("ef" * 32).rename(cache.path("ef" + "00" * 31))
    assert cache.load("ef" + "00" * 31) is None


def rewrite_metadata(path, **changes):
    """Edit a cache file's metadata in place, leaving its tensors (and stored checksum) as they are."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata()
    save_file(load_file(path), path, metadata={**meta, **changes})


def test_edited_grid_shape_is_detected_and_dropped(tmp_path):
    cache, key = FeatureCache(tmp_path), "12" * 32
    cache.save(key, feats())
    rewrite_metadata(cache.path(key), grid_shape="[1, 4]")  # still N == H * W: only the checksum can tell
    assert cache.load(key) is None
    assert not cache.path(key).exists() and cache.rebuilt == [key]


def test_metadata_rewritten_unchanged_still_loads(tmp_path):
    cache, key = FeatureCache(tmp_path), "34" * 32
    cache.save(key, feats())
    rewrite_metadata(cache.path(key))
    assert cache.load(key).grid_shape == (2, 2)


def test_entry_of_another_format_is_a_miss(tmp_path, monkeypatch):
    from spatialprobe.store import shards as cache_module

    cache, key = FeatureCache(tmp_path), "56" * 32
    monkeypatch.setattr(cache_module, "FORMAT", "spatialprobe-features-v0")
    cache.save(key, feats())
    monkeypatch.undo()
    assert cache.load(key) is None


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_cache_files_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        cache, key = FeatureCache(tmp_path / "features"), "78" * 32
        cache.save(key, feats())
    finally:
        os.umask(previous)
    assert cache.path(key).stat().st_mode & 0o777 == 0o666 & ~umask  # mkstemp alone gives 0600
    assert cache.path(key).parent.stat().st_mode & 0o777 == 0o777 & ~umask
