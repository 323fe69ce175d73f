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


def stage_order(manifest: dict, model_key: str) -> list[str]:
    return manifest["models"].get(model_key, {}).get("stages", [])


def figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
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
