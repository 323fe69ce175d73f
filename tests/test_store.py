"""The feature store at scale: clip times, crc32 verified once, no read-back after save, memory-mapped reads,
shard sources and the per-shard index."""
import hashlib
import json
import sys

import pytest
import torch

from spatialprobe.store import shards as cache_module
from spatialprobe import extract
from spatialprobe.store.shards import FeatureCache, stage_key
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.store.sources import InMemorySource, MissingShard, StoreSource

STAGES = ["vision.embed", "llm.layer0"]


def clip_feats(batch=3, frames=2, seed=0):
    """A clip's features: `frames` time steps of a 2x2 grid, each token tagged with its frame's interval."""
    g = torch.Generator().manual_seed(seed)
    n = 4 * frames
    footprints = grid_footprints(2, 2).repeat(frames, 1).expand(batch, -1, -1).contiguous()
    t0 = torch.arange(frames).repeat_interleave(4).float() / frames
    times = torch.stack([t0, t0 + 1 / frames], -1).expand(batch, -1, -1).contiguous()
    return TokenFeatures(torch.randn(batch, n, 5, generator=g), footprints, None,
                         {"cls": torch.randn(batch, 1, 5, generator=g)}, times)


def still_feats(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenFeatures(torch.randn(batch, 4, 5, generator=g), grid_footprints(2, 2).expand(batch, -1, -1).contiguous(),
                         (2, 2), {"z": torch.randn(batch, 1, 5, generator=g), "cls": torch.randn(batch, 2, 5, generator=g)})


# --- times in TokenFeatures


def test_times_must_be_b_n_2():
    f = clip_feats()
    with pytest.raises(ValueError, match="times"):
        TokenFeatures(f.tokens, f.footprints, None, {}, f.times[:, :, :1])


def test_times_follow_select_concat_and_with_tokens():
    f = clip_feats()
    assert torch.equal(f.select([2, 0]).times, f.times[[2, 0]])
    assert torch.equal(TokenFeatures.concat([f.select(slice(0, 1)), f.select(slice(1, 3))]).times, f.times)
    assert f.with_tokens(f.tokens * 2).times is f.times
    with pytest.raises(ValueError, match="clips with still images"):
        TokenFeatures.concat([f, TokenFeatures(f.tokens, f.footprints)])


def test_clips_are_not_put_on_one_raster():
    with pytest.raises(ValueError, match="time step"):
        clip_feats().on_raster(2)


def test_to_host_casts_tokens_only_and_copies():
    f = clip_feats()
    host = f.to_host(torch.float16)
    assert host.tokens.dtype == host.extra["cls"].dtype == torch.float16
    assert host.footprints.dtype == host.times.dtype == torch.float32
    kept = f.to_host()
    assert kept.tokens.dtype == torch.float32 and torch.equal(kept.tokens, f.tokens)
    assert kept.tokens.data_ptr() != f.tokens.data_ptr()  # a copy: the caller may free or reuse its batch


# --- the store file


def test_times_round_trip_through_the_store(tmp_path):
    cache, f = FeatureCache(tmp_path), clip_feats()
    cache.save("aa" * 32, f)
    loaded = cache.load("aa" * 32)
    assert torch.equal(loaded.times, f.times) and loaded.times.dtype == torch.float32
    assert torch.equal(loaded.tokens, f.tokens.half()) and loaded.grid_shape is None
    cache.save("bb" * 32, still_feats())
    assert cache.load("bb" * 32).times is None


def test_save_returns_exactly_what_a_read_gives(tmp_path):
    cache = FeatureCache(tmp_path)
    for key, f in (("ab" * 32, clip_feats()), ("ba" * 32, still_feats())):
        stored, loaded = cache.save(key, f), cache.load(key)
        for a, b in ((stored.tokens, loaded.tokens), (stored.footprints, loaded.footprints)):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert list(stored.extra) == list(loaded.extra)  # same order: means over extras add up alike
        assert all(torch.equal(stored.extra[k], loaded.extra[k]) for k in stored.extra)


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_crc_catches_a_flipped_byte_in_tensor_data(tmp_path):
    cache, key = FeatureCache(tmp_path), "cd" * 32
    cache.save(key, still_feats())
    flip_byte(cache.path(key), len(cache.path(key).read_bytes()) // 2 + 40)  # inside the payload
    assert cache.load(key) is None and cache.rebuilt == [key] and not cache.path(key).exists()


def test_crc_catches_a_flipped_byte_in_metadata(tmp_path):
    cache, key = FeatureCache(tmp_path), "ce" * 32
    cache.save(key, still_feats())
    path = cache.path(key)
    at = path.read_bytes().index(b'"grid_shape":"[2, 2]"') + len('"grid_shape":"[')
    flip_byte(path, at)  # "[3, 2]": the header still parses, only the checksum can tell
    assert cache.load(key) is None and cache.rebuilt == [key]


def test_no_sha256_over_tensors(tmp_path, monkeypatch):
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(cache_module.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    cache = FeatureCache(tmp_path)
    cache.save("de" * 32, still_feats())
    assert cache.load("de" * 32) is not None
    assert calls == []


def test_a_file_is_verified_once_per_process(tmp_path, monkeypatch):
    cache, key = FeatureCache(tmp_path), "ef" * 32
    cache.save(key, still_feats())
    calls, real = [], cache_module._checksum
    monkeypatch.setattr(cache_module, "_checksum", lambda *a: calls.append(1) or real(*a))
    cache.load(key)
    FeatureCache(tmp_path).load(key)  # another handle on the same store, same process
    assert len(calls) == 1
    cache.save(key, still_feats(seed=1))  # a new file (new mtime or size... or both): verified again
    cache_module._VERIFIED.clear()  # mtime may not tick between two writes on a coarse clock
    cache.load(key)
    assert len(calls) == 3  # the save's own checksum, then the read's


def test_reads_are_memory_mapped(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    cache, key = FeatureCache(tmp_path), "f0" * 32
    cache.save(key, still_feats())
    loaded = cache.load(key)
    assert str(cache.path(key)) in open("/proc/self/maps").read()
    del loaded


def test_a_file_of_an_older_store_is_a_miss_not_damage(tmp_path, monkeypatch):
    cache, key = FeatureCache(tmp_path), "f1" * 32
    monkeypatch.setattr(cache_module, "FORMAT", "spatialprobe-features-v2")
    cache.save(key, still_feats())
    monkeypatch.undo()
    assert cache.load(key) is None and cache.rebuilt == []
    cache.save(key, still_feats())
    assert cache.load(key) is not None


def test_dict_model_keys_keep_their_meaning_and_str_keys_differ():
    desc = {"family": "vit", "weights": "abc"}
    before = hashlib.sha256(json.dumps({"format": "spatialprobe-features-v2", "model": desc, "dataset": "h",
                                        "split": "train", "images": [0, 4], "stage": "s"}, sort_keys=True).encode())
    assert stage_key(desc, "h", "train", 0, 4, "s") == before.hexdigest()
    assert stage_key("vit-abc", "h", "train", 0, 4, "s") != stage_key(desc, "h", "train", 0, 4, "s")


# --- extraction into the store, and reading it back shard by shard


class FakeBackbone:
    """Emits features that depend only on the image (an int) and the stage; counts forward passes."""

    stages = STAGES + ["unused"]

    def __init__(self):
        self.extracted = []

    def describe(self):
        return {"family": "fake", "name_or_path": "fake"}

    def extract(self, images, stages=None, batch_size=8, host_dtype=None):
        batches = list(self.extract_batches(images, stages, batch_size, host_dtype=host_dtype))
        return {stage: TokenFeatures.concat([b[stage] for b in batches]) for stage in stages}

    def extract_batches(self, images, stages=None, batch_size=8, host_dtype=None):
        self.extracted.append(list(images))
        for start in range(0, len(images), batch_size):
            yield {stage: TokenFeatures.concat([clip_feats(batch=1, seed=100 * number + image)
                                                for image in images[start:start + batch_size]]).to_host(host_dtype)
                   for number, stage in enumerate(stages)}


class FakeData:
    split = "train"

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def load_image(self, i):
        return i


def test_run_shard_never_reads_back_what_it_saved(tmp_path, monkeypatch):
    cache, backbone, job = FeatureCache(tmp_path), FakeBackbone(), extract.ShardJob("train", 0, 3)
    loads = []
    real_load = FeatureCache.load
    monkeypatch.setattr(FeatureCache, "load", lambda self, key: loads.append(key) or real_load(self, key))
    extract.run_shard(backbone, "model-key", FakeData(5), "hash", job, STAGES, cache, 2)
    assert loads == [] and len(backbone.extracted) == 1
    extract.run_shard(backbone, "model-key", FakeData(5), "hash", job, STAGES, cache, 2)
    assert len(backbone.extracted) == 1  # every stage came from the store
    emitted = FakeBackbone().extract([0, 1, 2], STAGES, host_dtype=torch.float16)
    stored = extract.stored_shard(cache, extract.shard_keys("model-key", "hash", job, STAGES))
    for stage in STAGES:
        assert stored[stage].tokens.dtype == torch.float16
        for name in ("tokens", "footprints", "times"):
            a, b = getattr(emitted[stage], name), getattr(stored[stage], name)
            assert a.dtype == b.dtype and torch.equal(a, b)  # bit for bit: the store keeps what the model gave


def test_a_shard_spilled_batch_by_batch_stores_the_same_bits(tmp_path, monkeypatch):
    from spatialprobe.store import spool as spool_module

    job = extract.ShardJob("train", 0, 5)
    held = []
    real_add = spool_module.StageSpool.add
    monkeypatch.setattr(spool_module.StageSpool, "add",
                        lambda self, batch: real_add(self, batch) or held.append(self.bytes_held))
    kept, spilled = FeatureCache(tmp_path / "kept"), FeatureCache(tmp_path / "spilled")
    extract.run_shard(FakeBackbone(), "k", FakeData(5), "hash", job, STAGES, kept, 2)
    assert held[-1] > 0  # small shards stay in memory
    held.clear()
    extract.run_shard(FakeBackbone(), "k", FakeData(5), "hash", job, STAGES, spilled, 2, spill_bytes=0)
    assert held == [0, 0, 0]  # every batch went to disk as it came
    assert list((tmp_path / "spilled" / ".spool").iterdir()) == []  # and the spool is gone
    for key in extract.shard_keys("k", "hash", job, STAGES).values():
        a, b = kept.load(key), spilled.load(key)
        for name in ("tokens", "footprints", "times"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)


def test_a_partly_stored_shard_is_extracted_again(tmp_path):
    cache, backbone, job = FeatureCache(tmp_path), FakeBackbone(), extract.ShardJob("train", 0, 2)
    extract.run_shard(backbone, "k", FakeData(2), "hash", job, STAGES, cache, 2)
    cache.path(extract.shard_keys("k", "hash", job, STAGES)[STAGES[1]]).unlink()
    extract.run_shard(backbone, "k", FakeData(2), "hash", job, STAGES, cache, 2)
    assert len(backbone.extracted) == 2


def test_shard_index_is_written_and_read(tmp_path):
    cache, backbone = FeatureCache(tmp_path), FakeBackbone()
    assert cache.shard_index("k", "hash", "train", 0, 3) is None
    extract.run_shard(backbone, "k", FakeData(3), "hash", extract.ShardJob("train", 0, 3), STAGES[:1], cache, 2)
    index = cache.shard_index("k", "hash", "train", 0, 3)
    assert index["stages"] == STAGES[:1] and index["all_stages"] == FakeBackbone.stages and index["images"] == 3
    assert index["seconds"] >= 0
    extract.run_shard(backbone, "k", FakeData(3), "hash", extract.ShardJob("train", 0, 3), STAGES[1:], cache, 2)
    assert cache.shard_index("k", "hash", "train", 0, 3)["stages"] == STAGES  # merged, in the model's order
    assert cache.shard_index("k", "hash", "train", 0, 2) is None


def test_store_source_yields_what_extraction_gave(tmp_path):
    cache, data = FeatureCache(tmp_path), FakeData(7)
    joined = extract.extract_split(FakeBackbone(), data, "hash", STAGES, cache, shard_size=3, batch_size=2,
                                   model_key="k")
    source = StoreSource(cache, "k", "hash", "train", 7, 3, STAGES[1])
    shards = list(source.shards())
    assert len(source) == 7 and [len(s.tokens) for s in shards] == [3, 3, 1]
    gathered = source.gather()
    for name in ("tokens", "footprints", "times"):
        assert torch.equal(getattr(gathered, name), getattr(joined[STAGES[1]], name))
        assert torch.equal(torch.cat([getattr(s, name) for s in shards]), getattr(gathered, name))
    assert torch.equal(source.footprints(), gathered.footprints)
    assert torch.equal(source.extras_mean(), gathered.extra["cls"].float().mean(1))


def test_extract_split_to_store_keeps_nothing_and_stores_every_shard(tmp_path):
    cache, backbone = FeatureCache(tmp_path), FakeBackbone()
    done = []
    assert extract.extract_split_to_store(backbone, FakeData(5), "hash", STAGES, cache, shard_size=2,
                                          on_shard=done.append, model_key="k") is None
    assert [(j.start, j.stop) for j in done] == [(0, 2), (2, 4), (4, 5)]
    assert len(StoreSource(cache, "k", "hash", "train", 5, 2, STAGES[0]).gather().tokens) == 5


def test_store_source_names_a_missing_shard(tmp_path):
    cache = FeatureCache(tmp_path)
    extract.extract_split_to_store(FakeBackbone(), FakeData(4), "hash", STAGES, cache, shard_size=2, model_key="k")
    cache.path(stage_key("k", "hash", "train", 2, 4, STAGES[0])).unlink()
    with pytest.raises(MissingShard, match="images 2-4"):
        list(StoreSource(cache, "k", "hash", "train", 4, 2, STAGES[0]).shards())


def test_in_memory_source_serves_shards_in_order():
    f = clip_feats(batch=5)
    source = InMemorySource(f, shard_size=2)
    shards = list(source.shards())
    assert len(source) == 5 and [len(s.tokens) for s in shards] == [2, 2, 1]
    assert torch.equal(TokenFeatures.concat(shards).tokens, f.tokens)


def test_a_v2_file_under_the_same_key_is_not_taken_for_a_stored_shard(tmp_path):
    cache, key = FeatureCache(tmp_path), "f2" * 32
    v2_file = tmp_path / key[:2] / f"{key}.safetensors"  # where the v2 store kept this key
    v2_file.parent.mkdir(parents=True)
    v2_file.write_bytes(b"old")
    assert not cache.path(key).exists() and cache.load(key) is None and cache.rebuilt == []
