"""Every family joins a run by naming it in a config (`path: tiny`), beside the controls."""
import json

import pytest

from spatialprobe.models import FAMILIES
from spatialprobe.config import parse_config
from spatialprobe.runner import run

#: families whose tiny checkpoints want options (defaults sized for real checkpoints)
OPTIONS = {"detr": {"resolution": 128}, "grounding_dino": {"resolution": 128}, "ltx_video_vae": {"resolution": 128}}
#: no tiny checkpoint can be built offline (remote code), or no checkpoint of its own
NOT_TINY = {"pixels", "cogvlm2", "cogvlm2_video", "hybrid"}
TINY_FAMILIES = [f for f in FAMILIES if f not in NOT_TINY]


@pytest.fixture(scope="module")
def every_family_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("every")
    models = [{"name": family, "family": family, "path": "tiny", "options": OPTIONS.get(family, {}),
               # InternVL keeps references to its modules: the control must randomize them in place
               "random_init_control": family == "internvl"} for family in TINY_FAMILIES]
    config = parse_config({
        "name": "every", "models": models, "cache_dir": str(base / "cache"), "bootstrap": 50,
        "dataset": {"shapes": {"n_train": 12, "n_val": 0, "n_test": 8, "image_size": 112, "preset": "easy"}},
        "controls": {"pixels_resolution": 112}, "tasks": ["spatial_probe", "reconstruction_probe"]})
    out = run(config, base / "out")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return json.loads((out / "manifest.json").read_text()), rows


def test_every_stage_of_every_family_has_bounded_results(every_family_run):
    manifest, rows = every_family_run
    assert set(TINY_FAMILIES) | {"pixels", "internvl [random init]"} == set(manifest["models"])
    for model, info in manifest["models"].items():
        for stage in info["stages"]:
            got = [r for r in rows if r["model"] == model and r["stage"] == stage and r["task"] == "spatial_probe"]
            probes = {r["probe"] for r in got}
            if model == "kosmos2" and not stage.startswith("vision."):
                assert probes == {"pooled"}, stage  # 64 placeless queries: pooling is all that can read them
            else:
                assert probes == {"linear", "pooled", "dense"}, (model, stage)
            assert all(r["floor"] is not None and r["ceiling"] is not None for r in got)


def test_controls_run_beside_every_family(every_family_run):
    manifest, rows = every_family_run
    shuffled = {r["model"].removesuffix(" [shuffled tokens]") for r in rows if r["control"] == "shuffled"}
    assert set(TINY_FAMILIES) <= shuffled
    assert manifest["models"]["internvl [random init]"]["weights"] != manifest["models"]["internvl"]["weights"]


def test_reconstruction_wherever_tokens_have_a_place(every_family_run):
    _, rows = every_family_run
    recon = {r["model"]: r for r in rows if r["task"] == "reconstruction_probe" and r["metric"] == "psnr"}
    assert set(TINY_FAMILIES) - {"kosmos2"} <= set(recon)  # Kosmos-2's judged stage holds only queries
    assert recon["llava_next"]["resampled_to"] and recon["internvl"]["resampled_to"]
