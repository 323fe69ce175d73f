"""The latent-alignment part of the report: CKA per stage beside its permutation null, per form."""
from __future__ import annotations

import html

from ..report.parts import axis_ticks, figure_png, results_table, stage_positions

FORM_TITLES = {"pooled": "pooled (one mean vector per image)",
               "spatial": "spatial (tokens resampled onto the latent grid, per image)",
               "per_position": "per position (image x latent cell pairs)"}
CAPTION = (
    "Linear CKA between each stage and the reference VAE's latents of the same images (train and test). x: every "
    "model's stages on one axis, as in the layer-by-layer trace. Solid: the model, dashed: its random-init copy, a "
    "black square: raw pixels; shaded: the 95% bootstrap interval over images (per position: over blocks of "
    "images). Grey band, per model: the permutation null (images paired at random), from its mean to its 95th "
    "percentile: CKA at this width and n that means nothing. The proposal's target (> 0.5) is read against it; the "
    "ceiling is 1.")
STYLES = {"none": "-", "random_init": "--"}


def form_figure(form: str, rows: list[dict], manifest: dict):
    """One panel: each model's CKA curve of this form over its stages, with its null band. None without rows."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("probe") == form and r.get("value") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(13.5, 4.2))
    colours = {}
    all_stages = [r["stage"] for r in rows]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = model.removesuffix(" [random init]")
        info = manifest.get("models", {}).get(model, {})
        places = stage_positions([r["stage"] for r in mine], info.get("all_stages"))
        mine.sort(key=lambda r: places[r["stage"]])
        x = [places[r["stage"]] for r in mine]
        if mine[0].get("variant", mine[0].get("control")) == "pixels":
            ax.errorbar(x, [r["value"] for r in mine], yerr=[[r["value"] - r["ci_low"] for r in mine],
                        [r["ci_high"] - r["value"] for r in mine]], fmt="ks", label="pixels")
            continue
        colour = colours.setdefault(base, f"C{len(colours)}")
        style = STYLES.get(mine[0].get("variant", "none"), "-")
        ax.plot(x, [r["value"] for r in mine], style, color=colour, marker="o", ms=3, label=model)
        ax.fill_between(x, [r["ci_low"] for r in mine], [r["ci_high"] for r in mine], color=colour, alpha=0.15)
        if style == "-":
            ax.fill_between(x, [r["null_mean"] for r in mine], [r["null_p95"] for r in mine], color="0.6", alpha=0.3)
    ax.axhline(0.5, color="0.3", lw=0.8, ls=":")
    ticks = axis_ticks(list(dict.fromkeys(all_stages)))
    if ticks:
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear CKA")
    ax.set_title(f"CKA with the VAE latents: {FORM_TITLES.get(form, form)}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def alignment_section(manifest: dict, rows: list[dict]) -> str:
    if not rows:
        return ""
    reference = manifest.get("reference", {})
    about = html.escape(reference.get("label", rows[0].get("ref_model", "")))
    figures = ""
    for form in FORM_TITLES:
        fig = form_figure(form, rows, manifest)
        if fig is not None:
            figures += (f'<img alt="CKA by stage, {html.escape(form)} form" '
                        f'src="data:image/png;base64,{figure_png(fig)}">')
    return (f"<h2>Phase 2: latent alignment with {about}</h2><p class=\"note\">{CAPTION}</p>{figures}"
            f"{results_table(rows)}")
