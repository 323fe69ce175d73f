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

from ..report.parts import axis_ticks, figure_png, stage_order, stage_positions
from . import NoJobs, PlanContext, stage_source

MASK_SIZE = 112  # target masks are compared at this resolution (enough for 224-px images, cheap)
SHUFFLED_SUFFIX = " [shuffled tokens]"
METRICS = ("spatial_iou", "bbox_iou", "map_50", "map_75")


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
    from ..probes import ProbeSplit
    from ..probes.footprints import mask_boxes

    source = stage_source(ctx, run, split, stage)
    masks = target_masks(ctx.data.split(split))
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
            f'<h3>{html.escape(m)}</h3><img alt="{html.escape(m)} by stage, every model" src="data:image/png;base64,{png}">'
            for m in METRICS if (png := metric_figure(m, rows, manifest)))
        return (f"<h2>Best stage per model and probe</h2>{best_stages(rows)}{floor_note(rows)}"
                f'<h2>Layer-by-layer trace</h2><p class="note">{TRACE_CAPTION}</p>{figures}')


TASK = SpatialProbeTask()


RANDOM_INIT_SUFFIX = " [random init]"
#: line style of each variant: a control is drawn in its model's colour, told apart by the dash
VARIANT_STYLES = {"none": "-", "random_init": "--", "shuffled": ":"}
VARIANT_NAMES = {"random_init": "random init", "shuffled": "shuffled tokens"}
PROBE_TITLES = {"linear": "linear probe (flattened token grid)", "pooled": "pooled probe (mean token)",
                "dense": "dense probe (per-token coverage)"}
BOUND_COLOUR = "0.6"  # floors and ceilings: thin grey, behind the curves
FONT_SIZE = 10  # points; 11 px at the PNG's 80 dpi, and the PNG is narrower than the page (no down-scaling)
FIGURE_WIDTH = 13.5  # inches: ~1,090 px at 80 dpi, within the page (1,200 px less its margins and a scrollbar)
TRACE_CAPTION = (
    "One figure per metric, one panel per probe. x: every model's stages on one axis from the image to the LLM, "
    "as in the diagram of proposal section 2.1: patch embedding at 0, vision blocks by relative depth (every model's "
    "last vision block at &ldquo;vision 100%&rdquo;), the projector (or a detector's input, a hybrid's parts) at 1, "
    "then LLM (or detector encoder) layers by relative depth. Each model has one colour: solid, the model; dashed, "
    "its random-init copy; dotted, its shuffled-tokens control; a black square at the patch embedding, the raw-pixels "
    "control. Shaded: the 95% interval. Thin grey lines, per model and stage: its floor (solid, the metric with no "
    "features: the best constant prediction from the training labels) and its ceiling (dash-dot, the best the stage's "
    "token resolution allows).")


def variant_of(row: dict) -> str:
    return row.get("variant") or row.get("control") or "none"


def base_model(name: str) -> str:
    return name.removesuffix(SHUFFLED_SUFFIX).removesuffix(RANDOM_INIT_SUFFIX)


def model_colours(manifest: dict, rows: list[dict]) -> dict[str, str]:
    """One colour per configured model (its controls share it), in the manifest's order."""
    from matplotlib import colormaps

    names = [n for n, info in manifest.get("models", {}).items() if info.get("control", "none") == "none"]
    names += [b for r in rows if variant_of(r) != "pixels" and (b := base_model(r["model"])) not in names]
    # no greys: grey is the floors' and ceilings' colour
    palette = [c for c in (*colormaps["tab10"].colors, *colormaps["Dark2"].colors) if max(c) - min(c) > 0.1]
    return {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(names))}


def model_positions(manifest: dict, model: str, rows: list[dict]) -> dict[str, float]:
    """x of a model's stages: from its manifest entry (the whole stage list when recorded), else from its rows."""
    info = manifest.get("models", {}).get(model, {})
    stages = list(dict.fromkeys(stage_order(manifest, model) + [r["stage"] for r in rows]))
    return stage_positions(stages, info.get("all_stages"))


def series(rows: list[dict], manifest: dict) -> dict[str, tuple[str, str, list[tuple[float, dict]]]]:
    """Result name -> (its configured model, variant, [(x, row)] in x order), for one probe and metric."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_name[r["model"]].append(r)
    out = {}
    for name, own in by_name.items():
        base = base_model(name)
        positions = model_positions(manifest, base, [r for r in rows if base_model(r["model"]) == base])
        out[name] = (base, variant_of(own[0]), sorted(((positions[r["stage"]], r) for r in own), key=lambda p: p[0]))
    return out


def trace_figure(metric: str, results: list[dict], manifest: dict):
    """The trace of one metric as a matplotlib Figure (the report encodes it; tests inspect its artists): a panel
    per probe, every model's curve on the shared axis. Each curve's label is its result name (the model, or
    `<model> [random init]` / `[shuffled tokens]`); floor and ceiling lines are labelled `floor: <model>` and
    `ceiling: <model>`. None when no row has the metric."""
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["metric"] == metric and r.get("stage") and r.get("value") is not None]
    probes = [p for p in dict.fromkeys([*PROBE_TITLES, *(r["probe"] for r in rows)]) if any(r["probe"] == p for r in rows)]
    if not probes:
        return None
    colours = model_colours(manifest, rows)
    with plt.rc_context({"font.size": FONT_SIZE, "text.parse_math": False}):  # names are user text, not mathtext
        fig, axes = plt.subplots(len(probes), 1, sharex=True, squeeze=False, layout="constrained",
                                 figsize=(FIGURE_WIDTH, 1.2 + 2.6 * len(probes)))
        for ax, probe in zip(axes[:, 0], probes):
            draw_probe(ax, series([r for r in rows if r["probe"] == probe], manifest), colours)
            ax.set_title(PROBE_TITLES.get(probe, probe), loc="left")
            ax.set_ylabel(metric)
            ax.set_ylim(0, 1.02)
        ticks = axis_ticks([r["stage"] for r in rows])
        bottom = axes[-1, 0]
        bottom.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
        bottom.set_xlim(-0.08, max(x for x, _ in ticks) + 0.08)
        add_legend(fig, colours, rows)
    return fig


def draw_probe(ax, curves: dict, colours: dict) -> None:
    for x in (0.0, 1.0):  # where the vision part starts and hands its tokens on
        ax.axvline(x, color="0.85", lw=0.8, zorder=0)
    for name, (base, variant, points) in curves.items():
        xs, values = [x for x, _ in points], [r["value"] for _, r in points]
        low, high = ([r[end] if r.get(end) is not None else r["value"] for _, r in points] for end in ("ci_low", "ci_high"))
        if variant == "pixels":  # one stage: a marker with its interval at the patch embedding
            ax.vlines(xs, low, high, color="black", lw=1.5, zorder=4)
            ax.plot(xs, values, "s", color="black", ms=6, label=name, zorder=4)
        else:
            colour = colours[base]
            ax.plot(xs, values, VARIANT_STYLES.get(variant, "-."), marker="o", ms=3, lw=1.6, color=colour,
                    label=name, zorder=3)
            ax.fill_between(xs, low, high, color=colour, alpha=0.18 if variant == "none" else 0.08, lw=0)
        if variant in ("none", "pixels"):  # the controls read the same images and grid: same bounds
            draw_bounds(ax, name, points)


def draw_bounds(ax, name: str, points: list) -> None:
    for bound, style in (("floor", "-"), ("ceiling", "-.")):
        known = [(x, r[bound]) for x, r in points if r.get(bound) is not None]
        if known:
            marker = "_" if len(known) == 1 else None  # a single stage: a short line at it
            ax.plot([x for x, _ in known], [v for _, v in known], style, color=BOUND_COLOUR, lw=0.9, marker=marker,
                    ms=16, label=f"{bound}: {name}", zorder=2)


def add_legend(fig, colours: dict, rows: list[dict]) -> None:
    """The models by colour, then what each line style means (the curves' own labels stay for inspection)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = {base_model(r["model"]) for r in rows}
    handles = [Line2D([], [], color=colour, lw=2.5, label=name) for name, colour in colours.items() if name in shown]
    variants = {variant_of(r) for r in rows}
    handles += [Line2D([], [], color="0.3", ls=VARIANT_STYLES[v], lw=1.6, label=VARIANT_NAMES[v])
                for v in ("random_init", "shuffled") if v in variants]
    if "pixels" in variants:
        handles.append(Line2D([], [], color="black", marker="s", ls="", label="raw pixels"))
    handles += [Patch(color="0.3", alpha=0.25, label="95% interval"),
                Line2D([], [], color=BOUND_COLOUR, ls="-", lw=0.9, label="floor"),
                Line2D([], [], color=BOUND_COLOUR, ls="-.", lw=0.9, label="ceiling")]
    columns = legend_columns([h.get_label() for h in handles])
    legend = fig.legend(handles=handles, loc="outside upper center", ncols=columns, frameon=False)
    for text in legend.get_texts():
        text.set_parse_math(False)


def legend_columns(labels: list[str]) -> int:
    """As many legend columns as fit the figure's width (a wider legend would widen the PNG, and the page would
    then shrink its text): a column is its handle and spacing (~5 em) and the longest label (~0.6 em a character)."""
    column_points = FONT_SIZE * (5 + 0.6 * max(len(label) for label in labels))
    return max(1, min(len(labels), 5, int(FIGURE_WIDTH * 72 // column_points)))


def legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def metric_figure(metric: str, results: list[dict], manifest: dict) -> str | None:
    """The trace of one metric as an inline PNG (base64), or None when no row has the metric."""
    fig = trace_figure(metric, results, manifest)
    return figure_png(fig) if fig is not None else None


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
