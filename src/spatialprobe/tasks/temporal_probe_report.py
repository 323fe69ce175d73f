"""The temporal part of the report: per-stage direction, ordering and pairwise-order curves between their floor and
ceiling, the control views at the judged stage, and a contact sheet of sample test clips with the probes' answers."""
from __future__ import annotations

import html

from ..report.parts import axis_ticks, figure_png, results_table, stage_positions

METRIC_TITLES = {"direction_accuracy": "direction accuracy (motion direction of the clip)",
                 "ordering_accuracy": "ordering accuracy (forward vs reversed clip)",
                 "pairwise_order_accuracy": "pairwise frame-order accuracy (which of two time steps comes first)"}
PROBE_STYLES = {"linear": "-", "attentive": "--"}
VIEW_MARKERS = {"shuffled": "v", "repeated": "s"}
VIEW_NAMES = {"shuffled": "frames shuffled", "repeated": "one frame repeated"}
CAPTION = (
    "Probes on each stage's tokens of the clips, never pooled over time: linear = a ridge classifier on the tokens "
    "pooled per time step and concatenated in time order; attentive = a small cross-attention pooler over all "
    "tokens with their place and time codes (fixed, seeded budget). x: every model's stages on one axis; solid: "
    "linear, dashed: attentive; shaded: the 95% bootstrap interval over test clips. Grey dashed: the floor (the "
    "majority class, or chance); grey dotted: the ceiling, what the stage's time resolution allows (a stage whose "
    "tokens all span one interval of the clip cannot order anything: its ordering ceiling is chance). Markers at "
    "the judged stage: the control views (\u25bc frames shuffled within each clip, \u25a0 one frame repeated), on "
    "which ordering should fall to chance; the verdict never reads them. Pairwise order is read from the time "
    "steps' features, so at a stage that writes each token's position into it (time codes, an LLM's positions and "
    "causal attention) it can come from the position rather than the motion: where the frames-shuffled marker "
    "stays high, that is what it measures.")


def forward_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("view", "forward") == "forward"]


def metric_figure(metric: str, rows: list[dict], manifest: dict):
    """One panel: each (model, probe) curve over its stages with its interval, floor and ceiling lines, and the
    control views as markers. None without a measured row."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("metric") == metric and r.get("value") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(13.5, 4.2))
    colours: dict[str, str] = {}
    places_of = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        info = manifest.get("models", {}).get(model, {})
        places_of[model] = stage_positions(list(dict.fromkeys(r["stage"] for r in rows if r["model"] == model)),
                                           info.get("all_stages"))
    bounds_labelled = False
    for (model, probe) in dict.fromkeys((r["model"], r.get("probe")) for r in forward_rows(rows)):
        mine = sorted([r for r in forward_rows(rows) if r["model"] == model and r.get("probe") == probe],
                      key=lambda r: places_of[model][r["stage"]])
        x = [places_of[model][r["stage"]] for r in mine]
        colour = colours.setdefault(model, f"C{len(colours) % 10}")
        ax.plot(x, [r["value"] for r in mine], PROBE_STYLES.get(probe, "-"), color=colour, marker="o", ms=3,
                label=f"{model} ({probe})")
        if len(mine) > 1:
            ax.fill_between(x, [r["ci_low"] for r in mine], [r["ci_high"] for r in mine], color=colour, alpha=0.12)
        else:  # one stage (the pixels control): a band of one point would not show
            ax.errorbar(x, [mine[0]["value"]], yerr=[[mine[0]["value"] - mine[0]["ci_low"]],
                        [mine[0]["ci_high"] - mine[0]["value"]]], fmt="none", color=colour, capsize=3)
        ax.plot(x, [r["floor"] for r in mine], "--", color="0.55", lw=0.8, label=None if bounds_labelled else "floor")
        ax.plot(x, [r["ceiling"] for r in mine], ":", color="0.35", lw=1.0,
                label=None if bounds_labelled else "ceiling")
        bounds_labelled = True
    for r in rows:
        view = r.get("view", "forward")
        if view == "forward":
            continue
        x = places_of[r["model"]][r["stage"]]
        ax.errorbar([x], [r["value"]], yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                    fmt=VIEW_MARKERS.get(view, "x"), color=colours.get(r["model"], "k"), ms=6, capsize=2)
    ticks = axis_ticks(list(dict.fromkeys(r["stage"] for r in rows)))
    if ticks:
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(METRIC_TITLES.get(metric, metric))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def chance_ceilings(rows: list[dict]) -> str:
    """The report says where the time layout, not the model, bounds ordering: stages whose ceiling is chance."""
    bound = dict.fromkeys(f"{r['model']}: {r['stage']}" for r in forward_rows(rows)
                          if r.get("metric") == "ordering_accuracy" and r.get("ceiling") == 0.5)
    if not bound:
        return ""
    return ('<p class="note">Ordering ceiling at chance (one time step: every token spans the same interval of the '
            f"clip, so no order can be read from the tokens' places in time): {html.escape(', '.join(bound))}.</p>")


def contact_sheet(rows: list[dict]) -> str:
    """The sample test clips (one row each, frames left to right in time) beside each judged probe's answers."""
    sampled = [r for r in forward_rows(rows) if r.get("samples") and r.get("metric") == "direction_accuracy"]
    if not sampled:
        return ""
    clips, sheet = sampled[0]["samples"], next((r["sheet"] for r in sampled if r.get("sheet")), "")
    heads = ["clip", "label", *(f"{r['model']} ({r.get('probe')}, {r.get('stage')})" for r in sampled)]
    body = ""
    for number, clip in enumerate(clips):
        answers = [r["samples"][number]["answer"] if number < len(r["samples"]) else "" for r in sampled]
        cells = [clip["clip"], clip["label"], *(f"{a} {'✓' if a == clip['label'] else '✗'}" for a in answers)]
        body += "<tr>" + "".join(f'<td class="l">{html.escape(str(c))}</td>' for c in cells) + "</tr>"
    head = "".join(f'<th class="l">{html.escape(h)}</th>' for h in heads)
    return (f'<figure><img alt="sample test clips, one per row, frames in time order" '
            f'src="data:image/jpeg;base64,{html.escape(sheet)}"><figcaption>Sample test clips (one per '
            "row, top to bottom as in the table; frames left to right in time) and each probe's answer for the "
            "clip's direction at the model's judged stage.</figcaption></figure>"
            f"<table><tr>{head}</tr>{body}</table>")


def table_rows(rows: list[dict]) -> list[dict]:
    """The results table's rows, a control view's named in its probe column."""
    return [{**r, "probe": f"{r.get('probe')} [{VIEW_NAMES.get(r['view'], r['view'])}]"}
            if r.get("view", "forward") != "forward" else r for r in rows]


def unavailable_notes(rows: list[dict]) -> str:
    reasons = dict.fromkeys(f"{r['model']}: {r['unavailable']}" for r in rows if r.get("unavailable"))
    return "".join(f'<p class="note">Not computed: {html.escape(reason)}</p>' for reason in reasons)


def temporal_section(manifest: dict, rows: list[dict]) -> str:
    if not rows:
        return ""
    clips = manifest.get("clips", {})
    about = html.escape(f"{clips.get('kind', '?')} clips, {clips.get('frames', '?')} frames, "
                        f"{clips.get('train', '?')} train / {clips.get('test', '?')} test, classes: "
                        f"{', '.join(map(str, clips.get('labels', [])))}")
    figures = ""
    for metric, title in METRIC_TITLES.items():
        fig = metric_figure(metric, rows, manifest)
        if fig is not None:
            figures += (f'<img alt="{html.escape(title)} by stage between floor and ceiling" '
                        f'src="data:image/png;base64,{figure_png(fig)}">')
    return (f"<h2>Phase 2: temporal probes</h2><p class=\"note\">{about}. {html.escape(CAPTION)}</p>"
            f"{unavailable_notes(rows)}{chance_ceilings(rows)}{figures}{contact_sheet(rows)}"
            f"{results_table(table_rows(rows))}")
