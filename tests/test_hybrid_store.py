"""A hybrid in a run: its parts extracted as models of their own (a part that is also a standalone model is read
once), its stages composed on the host from the stored parts, equal to the hybrid adapter read live."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import spatialprobe as sp
from spatialprobe import extract, runner
from spatialprobe.config import parse_config
from spatialprobe.extract import extract_split_to_store, plan_shards, shard_keys
from spatialprobe.features import TokenFeatures, grid_footprints
from spatialprobe.jobs import ComposeJob, DataRef, open_spec
from spatialprobe.models.hybrid import compose
from spatialprobe.store.shards import FeatureCache
from spatialprobe.tasks import PlanContext
from spatialprobe.tasks.spatial_probe import spatial_probe_rows

TINY = {"n_train": 8, "n_val": 0, "n_test": 8, "image_size": 64, "preset": "easy"}
QWEN = {"family": "qwen2_5_vl", "path": "tiny", "options": {"resolution": 56}}
HYBRID = {"name": "h", "family": "hybrid", "random_init_control": False, "parts": [
    {"name": "spatial", "family": "owlvit", "path": "tiny", "stage": "vision.block.-1"},
    {"name": "semantic", "stage": "llm.layer.-1", **QWEN}]}


def config_of(cache: Path, models: list[dict], **overrides):
    return parse_config({
        "name": "hybrid-store", "dataset": {"kind": "synthetic_shapes", "shapes": TINY}, "models": models,
        "controls": {"pixels": False, "shuffled_tokens": False}, "tasks": ["spatial_probe"], "probes": ["pooled"],
        # the pooled probe alone (fast): the verdict judges its box IoU
        "decision": {"spatial_metric": "bbox_iou", "criteria": [
            {"metric": "bbox_iou", "weight": 1, "threshold": 0.5, "direction": "above", "probe": "pooled"}]},
        "bootstrap": 50, "shard_size": 4, "batch_size": 4, "cache_dir": str(cache), "verify": "off", **overrides})


def counting_shards(monkeypatch) -> list[str]:
    """The model key of every shard extracted (a shard read back from the store counts too: none may be)."""
    real, keys = extract.run_shard, []

    def counted(backbone, model_key, *args, **kwargs):
        keys.append(model_key)
        return real(backbone, model_key, *args, **kwargs)

    monkeypatch.setattr(extract, "run_shard", counted)
    return keys


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def numbers(rows: list[dict], model: str) -> dict:
    return {(r["stage"], r["probe"], r["metric"]): (r["value"], r["ci_low"], r["ci_high"], r["floor"], r["ceiling"])
            for r in rows if r["model"] == model}


def live_hybrid(spec, config):
    """Today's path: the hybrid adapter loads its parts and extracts their stages itself (a random-init spec:
    each part re-initialized with the spec's seed + its index)."""
    return open_spec(spec, config)


def run_context(out: Path, config, store_root: Path, results_root: Path) -> PlanContext:
    manifest = json.loads((out / "manifest.json").read_text())
    dataset = manifest["dataset"]
    data = DataRef(dataset["root"], "train", "test", config.dataset.on_bad_annotation, dataset["hash"])
    return PlanContext(config, data, str(store_root), str(results_root))


def live_store(backbone, ctx: PlanContext, model_key: str) -> None:
    """The live hybrid's features of both splits, shard by shard as a run extracts, in their own store."""
    for split in ("train", "test"):
        extract_split_to_store(backbone, ctx.data.split(split), ctx.data.hash, backbone.stages,
                               FeatureCache(ctx.store_root), shard_size=ctx.config.shard_size,
                               batch_size=ctx.config.batch_size, model_key=model_key)


def assert_same_features(ctx: PlanContext, store_root: str, model_key: str, stages: list[str]) -> None:
    ours, live = FeatureCache(store_root), FeatureCache(ctx.store_root)
    for split in ("train", "test"):
        for shard in plan_shards(split, len(ctx.data.split(split)), ctx.config.shard_size):
            for stage, key in shard_keys(model_key, ctx.data.hash, shard, stages).items():
                got, want = ours.load(key), live.load(key)
                assert torch.equal(got.tokens, want.tokens), (split, shard, stage)
                assert torch.equal(got.footprints, want.footprints) and got.grid_shape == want.grid_shape


def test_hybrid_reads_its_parts_from_the_store_and_shares_the_standalone_checkpoint(tmp_path, monkeypatch):
    models = [{**HYBRID, "random_init_control": True},
              {"name": "qwen", "stages": ["vision.block.-1"], "random_init_control": False, **QWEN}]
    config = config_of(tmp_path / "cache", models, verify="warn")
    keys = counting_shards(monkeypatch)
    out = runner.run(config, tmp_path / "out")

    runs = {r.name: r for r in runner.run_infos(config)}
    hybrid, control, qwen = runs["h"].spec, runs["h [random init]"].spec, runs["qwen"].spec
    shards = 8 // 4 * 2
    assert hybrid.parts[1].key() == qwen.key()
    # each checkpoint once: the qwen part and the standalone qwen share one extraction; a hybrid loads nothing;
    # the random-init parts (seeded seed + i) share nothing with the real ones
    part_keys = [hybrid.parts[0].key(), qwen.key()] + [part.key() for part in control.parts]
    assert len(set(part_keys)) == 4 and sorted(keys) == sorted(part_keys * shards)

    # the hybrids' stored stages and their numbers are those of the hybrid adapter read live
    ctx = run_context(out, config, tmp_path / "live", tmp_path / "live-results")
    stored = str(tmp_path / "cache" / "features")
    backbone, random_init = live_hybrid(hybrid, config), live_hybrid(control, config)
    for live, spec in ((backbone, hybrid), (random_init, control)):
        live_store(live, ctx, spec.key())
        assert_same_features(ctx, stored, spec.key(), live.stages)
    rows = read_rows(out)
    expected = [row for stage in backbone.stages for row in spatial_probe_rows(runs["h"], stage, ctx)]
    assert numbers(rows, "h") == numbers(expected, "h")
    assert {stage for stage, _, _ in numbers(rows, "h")} == set(backbone.stages)

    manifest = json.loads((out / "manifest.json").read_text())["models"]
    described = {k: v for k, v in backbone.describe().items() if k != "label"}
    assert {k: manifest["h"][k] for k in described} == described
    assert manifest["h"]["stages"] == ["hybrid.spatial", "hybrid.semantic", "hybrid.concat"]
    assert manifest["h [random init]"]["weights"] == random_init.weights_fingerprint() != manifest["h"]["weights"]
    # the self-check ran on the parts, at the stage each contributes
    spatial, semantic = (backbone.parts[name][1] for name in ("spatial", "semantic"))
    assert set(manifest["h"]["verify"]["stages"]) == {f"spatial: {spatial}", f"semantic: {semantic}"}
    assert list(manifest) == ["h", "h [random init]", "qwen"]  # the parts are not models of the run


def on_grid(side: int, channels: int, seed: int) -> TokenFeatures:
    tokens = torch.randn(2, side * side, channels, generator=torch.Generator().manual_seed(seed))
    return TokenFeatures(tokens, grid_footprints(side, side)[None].expand(2, -1, -1).contiguous(), (side, side))


def test_compose_job_stores_every_hybrid_stage_of_its_shard(tmp_path):
    store = FeatureCache(tmp_path)
    data = DataRef(str(tmp_path), "train", "test", "stop", "data-hash")
    shard = extract.ShardJob("train", 0, 2)
    parts = {"a": on_grid(4, 3, 0), "b": on_grid(2, 5, 1)}
    # under the keys a run stores a part's stage: (part key, data, split, shard, stage)
    stored = {name: store.save(shard_keys(f"{name}-key", "data-hash", shard, ["s"])["s"], feats)
              for name, feats in parts.items()}
    stages = ("hybrid.a", "hybrid.b", "hybrid.concat")
    job = ComposeJob("hybrid-key", (("a", "a-key", "s"), ("b", "b-key", "s")), 4, data, str(tmp_path), "train", 0, 2,
                     stages)
    assert pickle.loads(pickle.dumps(job)) == job  # a worker of any executor can run it
    assert job.run()["images"] == 2
    want = compose(stored, 4)
    for stage, key in shard_keys("hybrid-key", "data-hash", shard, list(stages)).items():
        assert torch.equal(store.load(key).tokens, want[stage].tokens.half()), stage
    on_four = {stage: store.load(key).grid() for stage, key in shard_keys("hybrid-key", "data-hash", shard,
                                                                           list(stages)).items()}
    assert torch.equal(on_four["hybrid.a"], stored["a"].grid())  # the finest part: on its own grid as stored
    assert torch.equal(on_four["hybrid.b"][:, 2:, :2], stored["b"].grid()[:, 1:, :1].expand(-1, 2, 2, -1))  # replicated
    assert store.shard_index("hybrid-key", "data-hash", "train", 0, 2)["stages"] == list(stages)
    assert store.load(shard_keys("hybrid-key", "data-hash", shard, ["hybrid.concat"])["hybrid.concat"]).tokens.shape \
        == (2, 16, 8)


def test_compose_job_names_a_missing_part_shard(tmp_path):
    data = DataRef(str(tmp_path), "train", "test", "stop", "data-hash")
    job = ComposeJob("hybrid-key", (("a", "a-key", "s"), ("b", "b-key", "s")), 4, data, str(tmp_path), "test", 4, 8,
                     ("hybrid.concat",))
    with pytest.raises(sp.SpatialProbeError, match=r"no s features of test images 4-8 for hybrid part 'a'"):
        job.run()
