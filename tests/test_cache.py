"""The feature cache: round trip, atomicity, corrupt and truncated entries detected and rebuilt."""
import torch

from spatialprobe.cache import FeatureCache, cache_key
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
