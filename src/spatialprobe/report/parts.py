"""Pieces every report section uses: the run's stage order, inline PNG figures and result tables.

Kept apart from the report package's `__init__` so that task modules can build their sections without importing the
report (which imports the tasks), and without torch.
"""
from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
#: the resolution of every inline figure: a point of text is PNG_DPI / 72 pixels
PNG_DPI = 80


def stage_order(manifest: dict, model_key: str) -> list[str]:
    return manifest["models"].get(model_key, {}).get("stages", [])


def figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def at_floor(row: dict) -> bool:
    """A spatial-probe value indistinguishable from its no-feature floor: its interval includes the floor."""
    low, high, floor = row.get("ci_low"), row.get("ci_high"), row.get("floor")
    if row.get("task") != "spatial_probe" or floor is None or row.get("value") is None:
        return False
    if low is None or high is None or low != low or high != high:  # no interval (NaN or not reported)
        return row["value"] <= floor
    return low <= floor <= high or row["value"] <= floor


def results_table(results: list[dict]) -> str:
    columns = ["model", "stage", "task", "probe", "metric", "value", "ci_low", "ci_high", "floor", "ceiling", "n"]
    head = "".join(f'<th class="{"l" if c in columns[:5] else ""}">{c}</th>' for c in columns)
    rows = []
    for r in results:
        cells = []
        for c in columns:
            value = r.get(c)
            if value is None and c == "value" and r.get("unavailable"):
                text = f"unavailable: {r['unavailable']}"
            else:
                text = f"{value:.3f}" if isinstance(value, float) else ("—" if value is None else str(value))
            if c == "value" and at_floor(r):
                text += " (at floor: see the note on the proposal's Q2 reading under the best stages)"
            cells.append(f'<td class="{"l" if c in columns[:5] else ""}">{html.escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


# --- one x axis for every model: vision -> projector -> LLM (the proposal's section 2.1 diagram) ---------------------
#: The last vision block of every model sits here, whatever the model's depth, so depths compare across models.
VISION_END = 0.8
#: Stages that hand the vision tokens on (projector, a detector's input projections or image embeddings, a hybrid's
#: resampled parts) fill [HANDOFF_START, 1], in model order, the last one at 1.
HANDOFF_START = 0.9
#: Layers after the hand-off (LLM layers, a detector's encoder layers) fill (1, DEEP_END] by relative depth.
DEEP_END = 2.0
DEEP_PREFIXES = {"llm.layer": "LLM", "detector.encoder": "detector"}
HANDOFF_PREFIXES = ("projector.", "detector.", "hybrid.")
DEPTH_TICKS = (0.25, 0.5, 0.75, 1.0)


def layer_index(stage: str, prefix: str) -> int | None:
    """N of `<prefix>.N`, or None when `stage` is not a numbered layer of that family."""
    head, _, index = stage.rpartition(".")
    return int(index) if head == prefix and index.isdigit() else None


def stage_positions(stages: list[str], all_stages: list[str] | None = None) -> dict[str, float]:
    """Each stage's x on the shared axis: vision.embed at 0, vision block i of n at VISION_END * (i+1)/n, hand-off
    stages over [HANDOFF_START, 1], LLM (or detector encoder) layer i of m at 1 + (i+1)/m. The depths n and m are
    read from `all_stages` (the model's whole stage list, when known), else from the measured `stages`: the highest
    index present, so a run that measures the last block places it right."""
    every = list(all_stages or stages)
    for stage in stages:
        if stage not in every:
            every.append(stage)
    depth = {prefix: 1 + max((i for s in every if (i := layer_index(s, prefix)) is not None), default=0)
             for prefix in ("vision.block", *DEEP_PREFIXES)}
    handoff = [s for s in every if s.startswith(HANDOFF_PREFIXES) and not deep_prefix(s)]
    step = (1 - HANDOFF_START) / max(len(handoff) - 1, 1)
    positions = {}
    for stage in stages:
        if stage == "vision.embed":
            positions[stage] = 0.0
        elif (i := layer_index(stage, "vision.block")) is not None:
            # the ratio first, so that every model's last block lands exactly on VISION_END
            positions[stage] = VISION_END * ((i + 1) / depth["vision.block"])
        elif prefix := deep_prefix(stage):
            positions[stage] = 1 + (DEEP_END - 1) * ((layer_index(stage, prefix) + 1) / depth[prefix])
        elif stage in handoff:
            positions[stage] = 1 - step * (len(handoff) - 1 - handoff.index(stage))
        else:  # a vision stage of no known kind (e.g. a pooled output) ends the vision part; anything else, the axis
            positions[stage] = VISION_END if stage.startswith("vision.") else DEEP_END
    return positions


def deep_prefix(stage: str) -> str | None:
    return next((p for p in DEEP_PREFIXES if layer_index(stage, p) is not None), None)


def axis_ticks(stages: list[str]) -> list[tuple[float, str]]:
    """(x, label) ticks for the parts of the axis that the stages (of every model in a figure) reach."""
    ticks = [(0.0, "patch embed")] + [(VISION_END * d, f"vision {d:.0%}") for d in DEPTH_TICKS]
    deep = sorted({DEEP_PREFIXES[p] for s in stages if (p := deep_prefix(s))})
    handoff = [name for prefix, name in (("projector.", "projector"), ("detector.", "detector in"), ("hybrid.", "hybrid"))
               if any(s.startswith(prefix) and not deep_prefix(s) for s in stages)]
    if deep or handoff:
        ticks.append((1.0, "\n".join(handoff or ["projector"])))  # one kind a line: narrow beside "vision 100%"
    if deep:
        ticks += [(1 + (DEEP_END - 1) * d, f"{'/'.join(deep)} {d:.0%}") for d in DEPTH_TICKS]
    return ticks
