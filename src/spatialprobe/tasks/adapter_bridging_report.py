"""The adapter-bridging part of the report: each model's decoded adapter between its floor and ceiling, per
metric, the picture strips (input, VAE reconstruction, adapter decode) and the training curves."""
from __future__ import annotations

import html

from ..report.parts import figure_png, results_table

METRIC_TITLES = {"psnr_adapter": ("PSNR (dB)", "higher is better"), "ssim_adapter": ("SSIM", "higher is better"),
                 "lpips_adapter": ("LPIPS (AlexNet)", "lower is better; the proposal's target is < 0.35")}
CAPTION = (
    "A small head per model maps its judged stage's tokens into the reference VAE's normalized latent space "
    "(trained on the training images with a fixed, seeded budget); the VAE decodes its predictions for the test "
    "images, which are scored against the input images at the VAE's resolution. Each chart: the model's mean over "
    "test images (dot) with its 95% bootstrap interval, on a grey bar from its floor (|: the mean training latent, "
    "decoded) to its ceiling (\u25c6: the VAE's own reconstruction, encoded then decoded, the best any adapter "
    "can do). A number is read by where it sits between the two. The strips show, per model, test images (top), "
    "the VAE's reconstruction (middle) and the adapter's decode (bottom): look at them before the numbers.")


def metric_figure(metric: str, rows: list[dict]):
    """One small panel: a line per model, its value and interval over a bar from floor to ceiling. None without
    a measured row."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("metric") == metric and r.get("value") is not None]
    if not rows:
        return None
    title, direction = METRIC_TITLES[metric]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.1))
    for y, r in enumerate(rows):
        floor, ceiling = r.get("floor"), r.get("ceiling")
        if floor is not None and ceiling is not None:
            ax.plot([floor, ceiling], [y, y], color="0.8", lw=7, solid_capstyle="butt", zorder=1)
            ax.plot([floor], [y], "|", color="0.3", ms=14, zorder=2)
            ax.plot([ceiling], [y], "D", color="0.3", ms=5, zorder=2)
        low, high = r.get("ci_low", r["value"]), r.get("ci_high", r["value"])
        ax.errorbar([r["value"]], [y], xerr=[[r["value"] - low], [high - r["value"]]], fmt="o", color=f"C{y % 10}",
                    capsize=3, zorder=3)
    ax.set_yticks(range(len(rows)), [f"{r['model']} ({r.get('probe', '')})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{title}: {direction}", fontsize=9)
    ax.set_title(f"adapter decode, {title}", fontsize=10)
    return fig


def curves_figure(rows: list[dict]):
    """The training loss by step of every model's adapter (one row per model carries its curve). None without."""
    import matplotlib.pyplot as plt

    curves = {}
    for r in rows:
        if r.get("loss_curve") and r["model"] not in curves:
            curves[r["model"]] = r["loss_curve"]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    for number, (model, points) in enumerate(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], color=f"C{number % 10}", label=model)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE + cosine)")
    ax.set_yscale("log")
    ax.set_title("adapter training", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def strips(rows: list[dict]) -> str:
    """Each model's picture strip with its name, as inline PNGs."""
    parts = []
    for r in rows:
        if r.get("strip"):
            name = html.escape(f"{r['model']} ({r.get('probe', '')} head, stage {r.get('stage', '')})")
            parts.append(f'<figure><img alt="input, VAE reconstruction and adapter decode of test images: {name}" '
                         f'src="data:image/jpeg;base64,{html.escape(r["strip"])}"><figcaption>{name}'
                         "</figcaption></figure>")
    return "".join(parts)


def unavailable_notes(rows: list[dict]) -> str:
    reasons = dict.fromkeys(r["unavailable"] for r in rows if r.get("unavailable"))
    return "".join(f'<p class="note">Not computed: {html.escape(reason)}</p>' for reason in reasons)


def adapter_section(manifest: dict, rows: list[dict]) -> str:
    if not rows:
        return ""
    reference = html.escape(manifest.get("reference", {}).get("label", rows[0].get("ref_model", "")))
    figures = ""
    for metric, (title, _) in METRIC_TITLES.items():
        fig = metric_figure(metric, rows)
        if fig is not None:
            figures += (f'<img alt="adapter {html.escape(title)} per model between floor and ceiling" '
                        f'src="data:image/png;base64,{figure_png(fig)}">')
    training = curves_figure(rows)
    if training is not None:
        figures += f'<img alt="adapter training loss by step per model" src="data:image/png;base64,{figure_png(training)}">'
    return (f"<h2>Phase 2: adapter bridging into {reference}</h2><p class=\"note\">{html.escape(CAPTION)}</p>"
            f"{unavailable_notes(rows)}{figures}{strips(rows)}{results_table(rows)}")
