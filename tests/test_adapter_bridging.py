"""The adapter_bridging task: end to end on tiny models (a tiny LTX VAE as the reference), a killed and resumed
training giving the same rows, and a known answer on a VAE whose decode is exact.

The tiny LTX VAE's decoder is fitted on synthetic shapes (models/tiny/ltx_video_vae.py), so its reconstruction is
about 4 dB above the decoded mean latent on these images: every adapter must land strictly between that floor
and that ceiling, which a wrong token layout, latent normalization or decode would not. The known answer also
scores through `LinearVae`, an exact linear autoencoder with the VAE's interface (8x8-pixel colour means, packed
4x4 per latent cell, spread over 128 channels): there an adapter fed the latents themselves must reach the
ceiling."""
import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import spatialprobe.bridging as bridging
from spatialprobe.config import parse_config
from spatialprobe.features import TokenFeatures
from spatialprobe.jobs import DataRef
from spatialprobe.metrics.perceptual import lpips_unavailable_reason
from spatialprobe.rows import rows_to_json
from spatialprobe.runner import run, run_infos, work_dir
from spatialprobe.store.sources import InMemorySource
from spatialprobe.tasks import PlanContext
from spatialprobe.tasks.adapter_bridging import AdapterJob, decoded_scores, metric_records, split_inputs

# palette colours on plain backgrounds: the reconstruction beats the mean latent by ~4 dB (on `easy`, ~1 dB)
SHAPES = {"n_train": 48, "n_val": 0, "n_test": 12, "image_size": 128}
STEPS, STRIP, EVERY = 150, 3, 25
RUNS = {"pixels", "dino-tiny", "dino-tiny [random init]"}


def bridging_config(cache: Path) -> dict:
    return {
        "name": "bridge",
        "dataset": {"kind": "synthetic_shapes", "shapes": SHAPES},
        "models": [{"name": "dino-tiny", "family": "dinov2", "path": "tiny", "options": {"resolution": 112}}],
        "controls": {"pixels_resolution": 112, "shuffled_tokens": False},
        "probes": ["dense"],
        "tasks": ["adapter_bridging"],
        "alignment": {"reference": {"path": "tiny", "options": {"resolution": 128}},
                      "adapter": {"steps": STEPS, "batch_size": 8, "lr": 3e-3, "target_params": 20_000, "checkpoint_every": EVERY,
                                  "strip_images": STRIP}},
        "bootstrap": 60, "shard_size": 16, "cache_dir": str(cache), "verify": "off",
    }


@pytest.fixture(scope="module")
def bridged(tmp_path_factory):
    base = tmp_path_factory.mktemp("bridge")
    config = parse_config(bridging_config(base / "cache"))
    return run(config, base / "out"), config


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def adapter_rows(run_dir: Path) -> list[dict]:
    return [r for r in rows_of(run_dir) if r["task"] == "adapter_bridging"]


def run_context(run_dir: Path, config, results_root: Path) -> tuple[PlanContext, dict]:
    """The run's context as the runner built it, but with its own results store (adapters, result cache)."""
    dataset = json.loads((run_dir / "manifest.json").read_text())["dataset"]
    spec = config.dataset
    data = DataRef(dataset["root"], spec.train_split, spec.test_split, spec.on_bad_annotation, dataset["hash"])
    infos = {info.name: info for info in run_infos(config)}
    ctx = PlanContext(config, data, str(work_dir(config) / "features"), str(results_root), infos["reference"])
    return ctx, infos


# --- end to end -------------------------------------------------------------------------------------------
def test_every_run_has_psnr_and_ssim_rows_with_interval_floor_and_ceiling(bridged):
    run_dir, _ = bridged
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = adapter_rows(run_dir)
    assert {r["model"] for r in rows} == RUNS and not [r for r in rows_of(run_dir) if r["model"] == "reference"]
    for model in RUNS:
        mine = {r["metric"]: r for r in rows if r["model"] == model}
        assert set(mine) == {"psnr_adapter", "ssim_adapter", "lpips_adapter"}, model
        assert len({r["stage"] for r in mine.values()}) == 1
        assert next(iter(mine.values()))["stage"] == manifest["models"][model]["stages"][-1]  # the judged stage
        assert mine["psnr_adapter"]["ceiling"] - mine["psnr_adapter"]["floor"] > 2  # an informative VAE
        for metric in ("psnr_adapter", "ssim_adapter"):
            r = mine[metric]
            assert r["probe"] == "conv" and r["ref_model"] == "reference" and r["ref_stage"] == "vae.latent"
            assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n"] == SHAPES["n_test"]
            # 48 training images, 150 steps: every head beats the mean latent and stays under the VAE's own decode
            assert r["floor"] < r["value"] < r["ceiling"], (model, metric, r["floor"], r["value"], r["ceiling"])
            assert 1000 <= r["params"] <= 200_000 and r["steps"] == STEPS  # the narrowest head: 32 wide
            assert len(r["loss_curve"]) <= 50 and r["loss_curve"][-1] == [STEPS, r["final_loss"]]


def test_lpips_is_unavailable_with_its_reason_never_another_number(bridged):
    reason = lpips_unavailable_reason()
    if reason is None:
        pytest.skip("the AlexNet weights are installed here: LPIPS is computed")
    for r in adapter_rows(bridged[0]):
        if r["metric"] == "lpips_adapter":
            assert r["value"] is None and r["unavailable"] == f"LPIPS: {reason}"
            assert r.get("floor") is None and r.get("ceiling") is None


def test_the_psnr_row_carries_a_picture_strip_of_three_rows(bridged):
    rows = adapter_rows(bridged[0])
    assert all(("strip" in r) == (r["metric"] == "psnr_adapter") for r in rows)
    for r in rows:
        if r["metric"] == "psnr_adapter":
            strip = Image.open(io.BytesIO(base64.b64decode(r["strip"])))
            assert strip.format == "JPEG" and strip.size == (96 * STRIP, 96 * 3)
    report = (bridged[0] / "report.html").read_text()
    assert "Phase 2: adapter bridging" in report
    assert 'alt="input, VAE reconstruction and adapter decode of test images: dino-tiny [random init]' in report


def test_a_killed_training_resumes_from_its_checkpoint_and_gives_the_same_rows(bridged, tmp_path, monkeypatch):
    run_dir, config = bridged
    ctx, infos = run_context(run_dir, config, tmp_path / "results")
    expected = [r for r in adapter_rows(run_dir) if r["model"] == "dino-tiny"]
    job = AdapterJob(infos["dino-tiny"], expected[0]["stage"], ctx)
    real = bridging.train_adapter

    def killed(*args, **kwargs):
        real(*args, **kwargs, stop_after=EVERY + 5)
        raise KeyboardInterrupt  # what a kill 5 steps after a checkpoint leaves: that checkpoint

    monkeypatch.setattr(bridging, "train_adapter", killed)
    with pytest.raises(KeyboardInterrupt):
        job.run()
    folders = list((tmp_path / "results" / "adapters").iterdir())
    assert [p.name for f in folders for p in f.iterdir()] == [f"step-{EVERY:09d}.pt"]
    monkeypatch.setattr(bridging, "train_adapter", real)
    resumed = job.run()

    def measured(rows):  # the wall time differs; every number and picture must not
        return [{k: v for k, v in r.items() if k not in ("seconds", "label")} for r in rows]

    assert measured(rows_to_json(resumed)) == measured(expected)
    assert [p.name for p in folders[0].iterdir()] == [f"step-{STEPS:09d}.pt"]

    def never(*args, **kwargs):
        raise AssertionError("a finished job trained again")

    monkeypatch.setattr(bridging, "train_adapter", never)
    assert job.run() == resumed  # from the result cache


# --- units and the known answer ---------------------------------------------------------------------------
def test_a_stage_without_placed_tokens_has_no_inputs_and_the_attention_head_gets_tokens():
    cells = bridging.latent_cells(2, 2)
    empty = TokenFeatures(torch.zeros(3, 0, 8), torch.zeros(3, 0, 4))
    assert split_inputs(InMemorySource(empty), "conv", cells, (2, 2)) is None
    grid = TokenFeatures(torch.randn(3, 16, 8), bridging.latent_cells(4, 4).expand(3, -1, -1), (4, 4))
    on_cells = split_inputs(InMemorySource(grid, 2), "conv", cells, (2, 2))
    # cell (0, 1) is the mean of tokens (0, 2), (0, 3), (1, 2), (1, 3) of the 4x4 grid
    assert on_cells.shape == (3, 8, 2, 2)
    assert torch.allclose(on_cells[:, :, 0, 1], grid.tokens[:, [2, 3, 6, 7]].mean(1), atol=1e-6)
    tokens, footprints, times = split_inputs(InMemorySource(grid, 2), "attention", cells, (2, 2))
    assert torch.equal(tokens, grid.tokens) and torch.equal(footprints, grid.footprints) and times is None


class LinearVae:
    """An exact linear autoencoder with the LTX VAE's interface at 128 px and a 4x4 latent grid: each latent
    cell holds the 4x4 colour means of its 8x8-pixel blocks (48 numbers), spread over 128 channels by a fixed
    orthonormal map. Its reconstruction is the image at 1/8 resolution: far better than the mean latent."""

    resolution, side, scale = 128, 4, 16.0

    def __init__(self) -> None:
        self.spread = torch.linalg.qr(torch.randn(128, 48, generator=torch.Generator().manual_seed(0)))[0]

    def pixels(self, samples) -> torch.Tensor:
        import numpy as np

        arrays = [np.asarray(s.convert("RGB").resize((128, 128), Image.BICUBIC)) for s in samples]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)[:, :, None].float() / 127.5 - 1

    def encode_latents(self, samples) -> torch.Tensor:
        means = torch.nn.functional.avg_pool2d((self.pixels(samples)[:, :, 0] + 1) / 2, 8)  # [B, 3, 16, 16]
        packed = torch.nn.functional.pixel_unshuffle(means, 4)  # [B, 48, 4, 4]
        # centred and scaled to about unit variance, as the LTX pipeline normalizes its latents
        return torch.einsum("kc,bchw->bkhw", self.spread, (packed - 0.5) * self.scale)[:, :, None]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        packed = torch.einsum("kc,bkhw->bchw", self.spread, latents[:, :, 0].float()) / self.scale + 0.5
        means = torch.nn.functional.pixel_shuffle(packed, 4)
        return torch.nn.functional.interpolate(means, scale_factor=8, mode="nearest").clamp(0, 1)[:, :, None]

    def reconstruct(self, samples) -> torch.Tensor:
        return self.decode_latents(self.encode_latents(samples))


class Images:
    """A split-like list of PIL images (`len`, `load_image(i)`)."""

    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, i: int):
        return self.images[i]


def test_an_adapter_fed_the_latents_themselves_reaches_the_ceiling(bridged):
    run_dir, config = bridged
    ctx, _ = run_context(run_dir, config, run_dir / "unused")
    train, test = (Images([ctx.data.split(s).load_image(i) for i in range(len(ctx.data.split(s)))])
                   for s in ("train", "test"))
    vae = LinearVae()
    latents = [vae.encode_latents(split.images)[:, :, 0] for split in (train, test)]
    torch.manual_seed(0)
    # 128 wide: a narrower head cannot carry the 48 numbers a cell holds through to its output
    head = bridging.build_head("conv", **bridging.sized_for(128, 1_000_000, "conv", grid=(4, 4)))
    budget = bridging.AdapterBudget(steps=200, batch_size=8, lr=3e-3, seed=0)
    bridging.train_adapter(head, latents[0], latents[0], budget)
    predicted = bridging.predict(head, latents[1])
    scores, strip = decoded_scores(vae, test, predicted, latents[0].mean(0), strip_images=2)
    rows = {r["metric"]: r for r in metric_records(scores, "conv", 60, 0, "no network here")}
    for metric in ("psnr_adapter", "ssim_adapter"):
        assert rows[metric]["floor"] < rows[metric]["ceiling"]  # the reconstruction beats the mean latent
    psnr = rows["psnr_adapter"]
    assert psnr["ceiling"] - psnr["floor"] > 3  # an informative VAE: the known answer can fail
    # most of the way from floor to ceiling on unseen images (24 training images, 200 steps: about 19 of 22 dB;
    # the rest is generalization, not a layout or decoding error, which would leave it at the floor)
    assert psnr["value"] > psnr["floor"] + 0.4 * (psnr["ceiling"] - psnr["floor"]), psnr
    assert rows["lpips_adapter"]["unavailable"] == "LPIPS: no network here"
    assert len(strip) == 2 and all(len(triple) == 3 for triple in strip)
