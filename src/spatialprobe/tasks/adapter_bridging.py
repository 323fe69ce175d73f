"""The `adapter_bridging` task (Phase 2): can a stage's tokens drive the reference VAE's decoder?

One job per run (models and controls, never the reference) at its judged stage. A small head
(`alignment.adapter.head`: "conv" on the tokens resampled onto the latent cells by footprint overlap, or
"attention" over the tokens, their footprints and times) is trained to predict the reference's normalized
`vae.latent` of the same training images (a still image is one latent frame, cells in raster order), with
the config's fixed, seeded budget. Its checkpoints live in the results store
(`<results>/adapters/<training key>`), so a killed run resumes where it stopped.

Scoring is on the test images: the predicted latents are decoded by the VAE (frame 0) and compared with the
input image resized whole to the VAE's resolution, in [0, 1], as the VAE sees it: per-image PSNR, SSIM and
LPIPS (AlexNet; where its weights are absent the `lpips_adapter` row is unavailable with the reason, never
a number from another network). Every row carries:
- its bootstrap 95% interval over test images;
- floor: the mean training latent, decoded, scored against each test image (what knowing nothing gives);
- ceiling: the VAE's own reconstruction (encode, decode) of each test image: the best any adapter can do;
- the head's parameter count, steps, final loss, training curve (<= ~50 points) and training seconds.
The PSNR row also carries `strip`: a JPEG (base64) of a few test images, their VAE reconstruction and the
adapter's decode, one row each.

A stage with no placed tokens (placeless queries only) has nothing to lay onto the latent grid: no rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import NoJobs, PlanContext, cached_records, reference_fields, row_base, stage_source
from .latent_alignment import REFERENCE_STAGE, reference_latents

#: metric -> the per-image score it is the mean of
METRICS = {"psnr_adapter": "psnr", "ssim_adapter": "ssim", "lpips_adapter": "lpips"}
#: training-curve points kept in a row (evenly spaced over the steps)
CURVE_POINTS = 50
#: side in pixels of one picture of the strip
STRIP_SIDE = 96
#: test images decoded at once (the VAE decoder's activations at full resolution dominate memory)
SCORE_BATCH = 8


# --- inputs and targets -----------------------------------------------------------------------------------
def latent_grid(cells):
    """(rows, cols) of the latent raster whose cells [M, 4] (raster order) these are."""
    rows, cols = len(cells[:, 1].unique()), len(cells[:, 0].unique())
    if rows * cols != len(cells):
        raise ValueError(f"{len(cells)} latent cells are not a raster ({rows} rows x {cols} columns)")
    return rows, cols


def latent_volumes(latents, grid):
    """Reference tokens [n, M, 128] (raster order) as latent maps [n, 128, h, w]."""
    return latents.transpose(1, 2).reshape(len(latents), -1, *grid).contiguous()


def split_inputs(source, kind: str, cells, grid):
    """One split of a stage as the head's input: conv, the tokens resampled onto the latent cells
    [n, C, h, w]; attention, (tokens [n, N, C], footprints [n, N, 4], times [n, N, 2] or None).
    None for a stage without placed tokens."""
    import torch

    from ..bridging import resample_onto

    first = next(iter(source.shards()))
    placed = first.tokens.shape[1]
    del first
    if placed == 0:
        return None
    if kind == "attention":
        from ..features import TokenFeatures

        feats = TokenFeatures.concat(list(source.shards()))
        times = None if feats.times is None else feats.times.float()
        return feats.tokens.float(), feats.footprints.float(), times
    # a centre-cropping model leaves border cells uncovered: they read zeros, and the score shows the cost
    parts = [resample_onto(f.tokens, f.footprints, cells, allow_uncovered=True) for f in source.shards()]
    on_cells = torch.cat(parts)  # [n, M, C]
    return latent_volumes(on_cells, grid)


def input_channels(inputs) -> int:
    return inputs.shape[1] if not isinstance(inputs, tuple) else inputs[0].shape[-1]


# --- scoring ----------------------------------------------------------------------------------------------
def decode_frames(vae, latents):
    """Latent maps [b, 128, h, w] -> frame 0 of their decode [b, 3, H, W] in [0, 1], on the CPU."""
    return vae.decode_latents(latents[:, :, None])[:, :, 0].float().cpu()


def as_seen(vae, samples):
    """The images resized whole to the VAE's resolution, in [0, 1]: what its encoder reads."""
    from ..models.base import as_rgb

    return (vae.pixels([as_rgb(s) for s in samples])[:, :, 0] + 1) / 2


def image_scores(frames, seen, lpips) -> dict:
    """Per-image PSNR, SSIM (and LPIPS with a network) of frames against the images [b, 3, H, W]."""
    from ..metrics.perceptual import psnr, ssim

    scores = {"psnr": psnr(frames, seen), "ssim": ssim(frames, seen)}
    if lpips is not None:
        scores["lpips"] = lpips(frames, seen).float().cpu()
    return scores


def decoded_scores(vae, images, predicted, mean_latent, lpips=None, strip_images: int = 0):
    """Per-image scores of the adapter's decodes (`predicted` [m, 128, h, w]), the floor (the mean latent
    decoded) and the ceiling (the VAE's reconstruction) against the test images (a split: `load_image(i)`),
    loaded and decoded a batch at a time: ({"adapter" | "floor" | "ceiling": {score: tensor [m]}}, the first
    `strip_images` (input, reconstruction, decode) triples)."""
    import torch

    if len(predicted) != len(images):
        raise ValueError(f"{len(predicted)} predicted latents for {len(images)} test images")
    floor_frame = decode_frames(vae, mean_latent[None])
    parts = {"adapter": [], "floor": [], "ceiling": []}
    strip = []
    for start in range(0, len(images), SCORE_BATCH):
        batch = [images.load_image(i) for i in range(start, min(start + SCORE_BATCH, len(images)))]
        seen = as_seen(vae, batch)
        ceiling = vae.reconstruct(batch)[:, :, 0].float().cpu()
        adapted = decode_frames(vae, predicted[start:start + len(batch)])
        parts["adapter"].append(image_scores(adapted, seen, lpips))
        parts["floor"].append(image_scores(floor_frame.expand_as(seen), seen, lpips))
        parts["ceiling"].append(image_scores(ceiling, seen, lpips))
        strip += list(zip(seen, ceiling, adapted))[:max(0, strip_images - len(strip))]
    joined = {which: {score: torch.cat([p[score] for p in batches]) for score in batches[0]}
              for which, batches in parts.items()}
    return joined, strip


def strip_png(triples, side: int = STRIP_SIDE) -> str:
    """Base64 JPEG of images in three rows (input, VAE reconstruction, adapter decode), one column per image
    (JPEG: decoded pictures are noisy, and a PNG of them would put ~200 KB into every run's results.jsonl)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    sheet = Image.new("RGB", (side * len(triples), side * 3), "white")
    for column, triple in enumerate(triples):
        for row, frame in enumerate(triple):
            pixels = (frame.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            sheet.paste(Image.fromarray(pixels).resize((side, side), Image.BICUBIC), (column * side, row * side))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def metric_records(scores: dict, kind: str, bootstrap: int, seed: int, lpips_reason: str | None) -> list[dict]:
    """One record per metric: the adapter's mean over test images with its interval, floor and ceiling."""
    from ..metrics import mean_ci

    records = []
    for metric, score in METRICS.items():
        n = len(scores["adapter"]["psnr"])
        if score not in scores["adapter"]:
            records.append({"metric": metric, "probe": kind, "value": None, "n": n,
                            "unavailable": f"LPIPS: {lpips_reason}"})
            continue
        values = scores["adapter"][score].double().numpy()
        low, high = mean_ci(values, bootstrap, seed)
        records.append({"metric": metric, "probe": kind, "value": float(values.mean()), "ci_low": low,
                        "ci_high": high, "floor": float(scores["floor"][score].double().mean()),
                        "ceiling": float(scores["ceiling"][score].double().mean()), "n": n})
    return records


def curve(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """[[step, loss], ...] at most `points` evenly spaced steps of the training (the last always among them)."""
    import numpy as np

    if not losses:
        return []
    steps = np.unique(np.linspace(0, len(losses) - 1, min(points, len(losses))).round().astype(int))
    return [[int(s) + 1, float(losses[s])] for s in steps]


# --- the job ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterJob:
    model: object  # jobs.RunInfo (the reference's own RunInfo gives the known answer: latents in, latents out)
    stage: str
    ctx: PlanContext

    def key_fields(self, lpips_ok: bool) -> tuple[dict, dict]:
        """(the result key's fields, the training key's fields): training does not depend on the bootstrap, the
        strip or LPIPS, so re-scoring with those changed reuses the trained head from its checkpoint."""
        ctx, config = self.ctx, self.ctx.config
        adapter = config.alignment.adapter.model_dump()
        training = {k: v for k, v in adapter.items() if k != "strip_images"}
        common = dict(model=self.model.spec.key(), stage=self.stage, data=ctx.data.key(),
                      reference=ctx.reference.spec.key(), seed=config.seed)
        return (dict(task="adapter_bridging", adapter=adapter, bootstrap=config.bootstrap, lpips=lpips_ok, **common),
                dict(task="adapter_bridging.training", adapter=training, **common))

    def checkpoint_dir(self, training_key: str) -> Path:
        return Path(self.ctx.results_root) / "adapters" / training_key

    def run(self) -> list[dict]:
        from ..metrics.perceptual import lpips_unavailable_reason
        from ..store.results import result_key

        ctx = self.ctx
        reason = lpips_unavailable_reason()
        fields, training = self.key_fields(reason is None)
        rows = cached_records(ctx, lambda: self.measure(self.checkpoint_dir(result_key(**training)), reason), **fields)
        base = {**row_base(self.model, "adapter_bridging", self.stage, ctx), "ref_model": ctx.reference.name,
                "ref_stage": REFERENCE_STAGE, **reference_fields(ctx)}
        return [{**base, **r} for r in rows]

    def measure(self, checkpoint_dir: Path, lpips_reason: str | None) -> list[dict]:
        """Train (or resume) the head, decode its test predictions and score them: the rows' measured part."""
        import torch

        from ..bridging import AdapterBudget, build_head, parameter_count, predict, sized_for, train_adapter
        from ..jobs import open_spec
        from ..metrics.perceptual import LPIPS

        ctx, config = self.ctx, self.ctx.config
        settings = config.alignment.adapter
        latents, cells = reference_latents(ctx)
        grid = latent_grid(cells)
        inputs = [split_inputs(stage_source(ctx, self.model, split, self.stage), settings.head, cells, grid)
                  for split in ("train", "test")]
        if inputs[0] is None:
            return []
        targets = latent_volumes(latents, grid)
        n_train = len(ctx.data.split("train"))
        shape = sized_for(input_channels(inputs[0]), settings.target_params, settings.head,
                          out_channels=targets.shape[1], grid=grid)
        torch.manual_seed(config.seed)  # the head's initial weights
        head = build_head(settings.head, **shape)
        budget = AdapterBudget(settings.steps, settings.batch_size, settings.lr, settings.weight_decay,
                               settings.cosine_weight, config.seed, settings.checkpoint_every)
        trained = train_adapter(head, inputs[0], targets[:n_train], budget, checkpoint_dir, config.device)
        predicted = predict(head, inputs[1], settings.batch_size)
        vae = open_spec(ctx.reference.spec, config)
        scores, strip = decoded_scores(vae, ctx.data.split("test"), predicted, targets[:n_train].mean(0),
                                       None if lpips_reason else LPIPS(), settings.strip_images)
        records = metric_records(scores, settings.head, config.bootstrap, config.seed, lpips_reason)
        training = {"params": parameter_count(head), "steps": trained.steps_done, "final_loss": trained.losses[-1],
                    "loss_curve": curve(trained.losses), "seconds": trained.seconds}
        records = [{**r, **training} for r in records]
        if strip:
            records[0]["strip"] = strip_png(strip)  # the PSNR row (first): one strip per run
        return records


class AdapterBridgingTask(NoJobs):
    name = "adapter_bridging"

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        return [AdapterJob(run, judged, ctx)]

    def section(self, manifest: dict, results: list[dict]) -> str:
        from .adapter_bridging_report import adapter_section

        return adapter_section(manifest, [r for r in results if r.get("task") == self.name])


TASK = AdapterBridgingTask()
__all__ = ["TASK", "AdapterJob", "decoded_scores", "metric_records", "strip_png"]
