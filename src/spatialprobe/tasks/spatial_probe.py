"""The `spatial_probe` task: linear, pooled and dense probes on every stage, with floors and ceilings.

One job per (run, stage): it reads the stage's stored features of both splits, fits every
configured probe (and, for a configured model, the same probes on shuffled tokens, a control), and
returns one row per (probe, metric). Finished fits are stored per (model key, stage, variant, probe,
data), so a resumed or renamed run refits nothing.
"""
from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..report.parts import figure_png, results_table, stage_order
from . import NoJobs, PlanContext

MASK_SIZE = 112  # target masks are compared at this resolution (enough for 224-px images, cheap)
SHUFFLED_SUFFIX = " [shuffled tokens]"
METRICS = ("spatial_iou", "bbox_iou", "map_50", "map_75")
PROBE_COLOURS = {"linear": "tab:blue", "pooled": "tab:orange", "dense": "tab:green"}


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask at size x size (nearest neighbour); an object too small to hit a sampled pixel keeps
    every pixel it touches, so no target is lost (its box would be empty)."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(image.resize((size, size), Image.NEAREST)) > 127
    if not resized.any() and mask.any():
        resized = np.asarray(image.resize((size, size), Image.BOX)) > 0
    return resized


def target_masks(data, mask_size: int = MASK_SIZE):
    """Every image's target mask at mask_size x mask_size [n, S, S] (bool)."""
    import torch

    return torch.stack([torch.from_numpy(resize_mask(data.target(i)[1], mask_size)) for i in range(len(data))])


def probe_split(data, feats, mask_size: int = MASK_SIZE):
    """Tokens (in memory) and targets of a split. Each target box is the box of its target mask at `mask_size`,
    the resolution the metrics compare masks at, so boxes and masks describe one object (IoU 1.0)."""
    import torch

    from ..probes import ProbeSplit
    from ..probes.footprints import mask_boxes

    masks = target_masks(data, mask_size)
    placeless = torch.cat(list(feats.extra.values()), dim=1).float().mean(1) if feats.extra else None
    return ProbeSplit(feats.tokens.float(), feats.footprints.float(), mask_boxes(masks), masks, placeless)


def stored_split(ctx: PlanContext, run, split: str, stage: str):
    """A split's targets in memory and its tokens streamed from the store, shard by shard: the probes hold
    one shard and their accumulators, never the whole stage."""
    from ..store.shards import FeatureCache
    from ..probes import ProbeSplit
    from ..probes.footprints import mask_boxes
    from ..store.sources import StoreSource

    data = ctx.data.split(split)
    source = StoreSource(FeatureCache(ctx.store_root), run.spec.key(), ctx.data.hash, split, len(data),
                         ctx.config.shard_size, stage)
    masks = target_masks(data)
    # placeless_mean None: the pooled probe reads the extras from the shards only for a stage without places
    return ProbeSplit(source, source.footprints(), mask_boxes(masks), masks, None)


def probe_key(model_key, stage: str, control: str, probe: str, data_key: dict, config) -> str:
    from ..store.results import result_key

    return result_key(model=model_key, stage=stage, control=control, probe=probe, data=data_key,
                      bootstrap=config.bootstrap, seed=config.seed, mask_size=MASK_SIZE,
                      probe_resamples=config.probe_resamples)


def cached_probes(train, test, keys: dict[str, str], store, config) -> list[dict]:
    """Records of every probe in `keys` (probe -> result key): stored ones read back, the rest fitted and stored."""
    from .. import probes

    stored = {probe: store.get(key) for probe, key in keys.items()}
    missing = tuple(p for p, rows in stored.items() if rows is None)
    if missing:
        fitted = probes.run_spatial_probes(train, test, probes=missing, n_boot=config.bootstrap, seed=config.seed,
                                           resamples=config.probe_resamples)
        for probe in missing:
            stored[probe] = [r for r in fitted if r["probe"] == probe]
            store.put(keys[probe], stored[probe])
    return [r for probe in keys for r in stored[probe]]


@dataclass(frozen=True)
class SpatialProbeJob:
    model: object  # jobs.RunInfo
    stage: str
    ctx: PlanContext

    def run(self) -> list[dict]:
        return spatial_probe_rows(self.model, self.stage, self.ctx)


def spatial_probe_rows(run, stage: str, ctx: PlanContext) -> list[dict]:
    from ..probes import probes_for, shuffle_tokens
    from ..store.results import ResultCache

    config = ctx.config
    train, test = stored_split(ctx, run, "train", stage), stored_split(ctx, run, "test", stage)
    variants = [(run.variant, train, test)]
    if config.controls.shuffled_tokens and run.variant == "none" and train.has_spatial_tokens:
        variants.append(("shuffled", shuffle_tokens(train, config.seed), shuffle_tokens(test, config.seed + 1)))
    base = {"model": run.name, "label": run.label, "family": run.family, "task": "spatial_probe", "seed": config.seed}
    store, rows = ResultCache(ctx.results_root), []
    for control, tr, te in variants:
        name = run.name + SHUFFLED_SUFFIX if control == "shuffled" else run.name
        keys = {probe: probe_key(run.spec.key(), stage, control, probe, ctx.data.key(), config)
                for probe in probes_for(tr, config.probes)}
        rows += [{**base, "model": name, "control": control, "variant": control, "stage": stage, **record}
                 for record in cached_probes(tr, te, keys, store, config)]
    return rows


class SpatialProbeTask(NoJobs):
    name = "spatial_probe"

    def feature_jobs(self, run, stages: list[str], judged: str, ctx: PlanContext) -> list:
        return [SpatialProbeJob(run, stage, ctx) for stage in stages]

    def section(self, manifest: dict, results: list[dict]) -> str:
        rows = [r for r in results if r.get("task") == "spatial_probe"]
        figures = "".join(
            f'<h3>{html.escape(m)}</h3><img alt="{html.escape(m)} by stage" src="data:image/png;base64,{png}">'
            for m in METRICS if (png := metric_figure(m, rows, manifest)))
        return (f"<h2>Best stage per model and probe</h2>{best_stages(rows)}{floor_note(rows)}"
                '<h2>Layer-by-layer trace</h2><p class="note">x: stages from input to output; shaded: bootstrap 95% '
                f"interval; dashed/dotted: ceiling/floor of the dense probe.</p>{figures}")


TASK = SpatialProbeTask()


def base_model(name: str) -> str:
    return name.replace(SHUFFLED_SUFFIX, "")


def metric_figure(metric: str, results: list[dict], manifest: dict) -> str | None:
    import matplotlib.pyplot as plt

    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["metric"] == metric:
            by_model[r["model"]].append(r)
    if not by_model:
        return None
    fig, axes = plt.subplots(1, len(by_model), figsize=(3.6 * len(by_model), 3.2), squeeze=False, sharey=True)
    for ax, (model, rows) in zip(axes[0], by_model.items()):
        stages = stage_order(manifest, base_model(model))
        for probe in PROBE_COLOURS:
            points = sorted((stages.index(r["stage"]), r) for r in rows if r["probe"] == probe and r["stage"] in stages)
            if not points:
                continue
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1]["value"] for p in points], "o-", ms=3, color=PROBE_COLOURS[probe], label=probe)
            ax.fill_between(xs, [p[1]["ci_low"] for p in points], [p[1]["ci_high"] for p in points],
                            color=PROBE_COLOURS[probe], alpha=0.2)
            if probe == "dense":
                ax.plot(xs, [p[1]["ceiling"] for p in points], "k--", marker="_", ms=14, lw=1, label="ceiling")
                ax.plot(xs, [p[1]["floor"] for p in points], "k:", marker="_", ms=14, lw=1, label="floor")
        # names are user text, not mathtext: a `$` in a name must neither break the figure nor typeset
        ax.set_title(model, fontsize=9, parse_math=False)
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels([s.replace("vision.", "v.").replace("llm.layer.", "L") for s in stages], rotation=90, fontsize=6,
                           parse_math=False)
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=7)
    return figure_png(fig)


def best_stages(results: list[dict]) -> str:
    best: dict[tuple, dict] = {}
    for r in results:
        if r["metric"] in ("spatial_iou", "bbox_iou"):
            key = (r["model"], r["probe"], r["metric"])
            if key not in best or r["value"] > best[key]["value"]:
                best[key] = r
    rows = "".join(
        f'<tr><td class="l">{html.escape(m)}</td><td class="l">{html.escape(p)}</td><td class="l">{html.escape(k)}</td>'
        f'<td class="l">{html.escape(r["stage"])}</td><td>{r["value"]:.3f} [{r["ci_low"]:.3f}, {r["ci_high"]:.3f}]</td>'
        f'<td>{r["floor"]:.3f}</td><td>{r["ceiling"]:.3f}</td></tr>'
        for (m, p, k), r in sorted(best.items()))
    return ('<table><tr><th class="l">model</th><th class="l">probe</th><th class="l">metric</th><th class="l">best stage</th>'
            f"<th>value [95% CI]</th><th>floor</th><th>ceiling</th></tr>{rows}</table>")


def floor_note(results: list[dict]) -> str:
    """One note under the tables when any spatial-probe value sits at its floor (not a mark per cell)."""
    from ..report.parts import at_floor

    rows = [r for r in results if at_floor(r)]
    if not rows:
        return ""
    example = max(rows, key=lambda r: r["value"])
    return (f'<p class="note">{len(rows)} spatial-probe value(s) sit at their floor (the interval includes it), e.g. '
            f'{html.escape(example["model"])} {html.escape(example["stage"])} {html.escape(example["probe"])} '
            f'{html.escape(example["metric"])} {example["value"]:.3f} against a floor of {example["floor"]:.3f}. Such a '
            "value says the probe found no spatial information there. The proposal's Q2 reading, &ldquo;IoU ~0.10 at "
            "the patch embedding&rdquo;, is this no-feature floor of the flattened linear probe (the best constant box "
            "from the training labels), not evidence of spatial information.</p>")
