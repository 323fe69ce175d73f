"""A self-contained HTML report (no network: plots are inline PNG) rebuilt from a run directory."""
from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import SpatialProbeError  # noqa: E402

METRICS = ("spatial_iou", "bbox_iou", "map_50", "map_75")
PROBE_COLOURS = {"linear": "tab:blue", "pooled": "tab:orange", "dense": "tab:green"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}.verdict{border:2px solid #333;padding:0 1em;margin:1em 0}.uncertain{color:#a60}td.l,th.l{text-align:left}.note{color:#555;font-size:14px}img{max-width:100%}
"""


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    manifest_path, results_path = run_dir / "manifest.json", run_dir / "results.jsonl"
    for path in (manifest_path, results_path):
        if not path.is_file():
            raise SpatialProbeError(f"not a run directory: {path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        results = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise SpatialProbeError(f"{run_dir}: damaged run file ({err})") from None
    return manifest, results


def stage_order(manifest: dict, model_key: str) -> list[str]:
    return manifest["models"].get(model_key, {}).get("stages", [])


def base_model(name: str) -> str:
    return name.replace(" [shuffled tokens]", "")


def figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def metric_figure(metric: str, results: list[dict], manifest: dict) -> str | None:
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
        ax.set_title(model, fontsize=9)
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels([s.replace("vision.", "v.").replace("llm.layer.", "L") for s in stages], rotation=90, fontsize=6)
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=7)
    return figure_png(fig)


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
            cells.append(f'<td class="{"l" if c in columns[:5] else ""}">{html.escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


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


TIER_COLOURS = {"target": "#b7e4b7", "acceptable": "#e3f2c1", "marginal": "#fbe3a6", "fail": "#f5b7b1"}
STATUS_MARK = {"pass": "pass", "fail": "FAIL", "uncertain": "uncertain", "missing": "missing"}


def judged_models(manifest: dict) -> dict[str, list[str]]:
    """The models a decision is about: configured models, not controls."""
    return {name: info.get("stages", []) for name, info in manifest.get("models", {}).items()
            if info.get("control", "none") == "none"}


def run_verdict(manifest: dict, results: list[dict]):
    from .decision import DecisionConfig, decide

    config = DecisionConfig.model_validate(manifest.get("config", {}).get("decision", {}))
    return decide([r for r in results if r.get("control", "none") == "none"], judged_models(manifest), config)


def unavailable_notes(results: list[dict]) -> list[str]:
    return sorted({f"{r['metric']} unavailable: {r['unavailable']}" for r in results if r.get("unavailable")})


def verdict_section(manifest: dict, results: list[dict]) -> str:
    verdict = run_verdict(manifest, results)
    e = html.escape
    named = f" — {e(', '.join(verdict.models))}" if verdict.models else ""
    certainty = "" if verdict.certain else ' <span class="uncertain">(uncertain)</span>'
    reasons = "".join(f"<li>{e(r)}</li>" for r in verdict.reasons + unavailable_notes(results))
    rests = e(", ".join(verdict.rests_on) or "nothing measured")
    return (f'<div class="verdict"><h2>Verdict: {e(verdict.action)}{named}{certainty}</h2>'
            f'<p>Decision-matrix row: <b>{e(verdict.outcome)}</b>. It rests on: {rests}.</p>'
            f"<ul>{reasons}</ul></div>{criteria_table(verdict)}")


def criteria_table(verdict) -> str:
    e = html.escape
    rows = []
    for v in verdict.per_model:
        for j in v.judgements:
            c = j.criterion
            value = "—" if j.value is None else f"{j.value:.3f}"
            interval = f"[{j.ci[0]:.3f}, {j.ci[1]:.3f}]" if j.ci and j.ci[0] is not None else ""
            best = v.best_stage.get(c.metric)
            colour = TIER_COLOURS.get(j.tier or "", "#eee" if j.status == "missing" else "#fff")
            rows.append(
                f'<tr style="background:{colour}"><td class="l">{e(v.model)}</td><td class="l">{e(v.stage)}</td>'
                f'<td class="l">{e(c.metric)}</td><td>{c.weight:.0%}</td><td>{"&gt;" if c.direction == "above" else "&lt;"} '
                f'{c.threshold:g}</td><td>{value} {interval}</td><td class="l">{"unavailable" if j.unavailable else STATUS_MARK[j.status]}</td>'
                f'<td class="l">{e(j.tier or "")}</td>'
                f'<td class="l">{e(f"{best[0]}: {best[1]:.3f}") if best else ""}</td></tr>')
        rows.append(f'<tr><td class="l" colspan="9">{e(v.model)}: weighted score {v.weighted_score():.2f} of the measured '
                    f"criteria; Phase 2 gate (spatial IoU &gt; 0.50): {STATUS_MARK[v.phase_gate]}</td></tr>")
    head = "".join(f'<th class="l">{h}</th>' for h in
                   ("model", "judged at", "criterion", "weight", "threshold", "value [95% CI]", "status", "tier", "best stage"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render(manifest: dict, results: list[dict]) -> str:
    models = "".join(
        f'<li><b>{html.escape(name)}</b>: {html.escape(info.get("label", ""))} — control: {html.escape(info.get("control", ""))},'
        f' {len(info.get("stages", []))} stages, weights {html.escape(str(info.get("weights", "")))}</li>'
        for name, info in manifest.get("models", {}).items())
    figures = "".join(
        f'<h3>{m}</h3><img alt="{m} by stage" src="data:image/png;base64,{png}">'
        for m in METRICS if (png := metric_figure(m, results, manifest)))
    dataset = manifest.get("dataset", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>spatialprobe report</title>
<style>{STYLE}</style></head><body>
<h1>spatialprobe report: {html.escape(str(manifest.get("config", {}).get("name", "")))}</h1>
{verdict_section(manifest, results)}
<p class="note">Every number is read between its <b>floor</b> (the metric with no features: the best constant
prediction from the training labels) and its <b>ceiling</b> (the best the stage's token resolution allows: the
ground-truth token coverage painted through the token footprints). A value at the floor means the probe learned
nothing. Controls: <i>pixels</i> (raw patch pixels), <i>[random init]</i> (same architecture, random weights),
<i>[shuffled tokens]</i> (token order permuted per image: spatial probes should fall to the floor).</p>
<h2>Models</h2><ul>{models}</ul>
<h2>Best stage per model and probe</h2>{best_stages(results)}
<h2>Layer-by-layer trace</h2><p class="note">x: stages from input to output; shaded: bootstrap 95% interval;
dashed/dotted: ceiling/floor of the dense probe.</p>{figures}
<h2>Reconstruction probe</h2><p class="note">A small convolutional decoder trained on each model's judged
stage to reproduce the image (64x64 px). floor: the mean training image; ceiling: a perfect reconstruction.</p>
{results_table([r for r in results if r.get("task") == "reconstruction_probe"])}
<h2>Speed and memory</h2><p class="note">Each configured model read to its deepest stage on the same test images,
batch size and hardware (best of 3 repeats; interval: worst to best). speed_ratio = time per image relative to the
baseline model.</p>
{results_table([r for r in results if r.get("task") == "speed"])}
<h2>Semantic check</h2><p class="note">Generated questions about colour, shape, count and relative position,
answered with each VLM's own generate; exact match of the first word (proposal 7.3: &gt; 0.6 and at least 95% of the
baseline). floor: the best constant answer per question type.</p>
{results_table([r for r in results if r.get("task") == "vqa"])}
<h2>All numbers</h2>{results_table(results)}
<h2>Dataset and environment</h2><pre>{html.escape(json.dumps({"dataset": dataset, "environment": manifest.get("environment", {}),
                                                            "device": manifest.get("device"), "dtype": manifest.get("dtype")}, indent=2))}</pre>
<h2>Configuration</h2><pre>{html.escape(json.dumps(manifest.get("config", {}), indent=2))}</pre>
</body></html>"""


def markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(manifest: dict, results: list[dict]) -> str:
    """A short summary for pull requests: the verdict, its reasons and the criteria table."""
    verdict = run_verdict(manifest, results)
    named = f" — {', '.join(verdict.models)}" if verdict.models else ""
    lines = [f"## spatialprobe: {markdown_cell(manifest.get('config', {}).get('name', ''))}", "",
             f"**Verdict: {verdict.action}{named}**{'' if verdict.certain else ' (uncertain)'}", "",
             f"Decision-matrix row: *{verdict.outcome}*. Rests on: {', '.join(verdict.rests_on) or 'nothing measured'}.", ""]
    lines += [f"- {markdown_cell(r)}" for r in verdict.reasons + unavailable_notes(results)]
    lines += ["", "| model | judged at | criterion | threshold | value [95% CI] | status | tier | best stage |",
              "|---|---|---|---|---|---|---|---|"]
    for v in verdict.per_model:
        for j in v.judgements:
            c = j.criterion
            value = "—" if j.value is None else f"{j.value:.3f}" + (f" [{j.ci[0]:.3f}, {j.ci[1]:.3f}]" if j.ci and j.ci[0] is not None else "")
            best = v.best_stage.get(c.metric)
            status = "unavailable" if j.unavailable else j.status
            lines.append(f"| {markdown_cell(v.model)} | {v.stage} | {c.metric} | {'>' if c.direction == 'above' else '<'} "
                         f"{c.threshold:g} | {value} | {status} | {j.tier or ''} | {f'{best[0]}: {best[1]:.3f}' if best else ''} |")
    lines += ["", "Full report: `report.html` (layer-by-layer trace, controls, speed, environment)."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write report.html and its Markdown summary, summary.md, from the run's stored results."""
    from .runner import write_atomic

    manifest, results = read_run(run_dir)
    target = Path(run_dir) / "report.html"
    write_atomic(target, render(manifest, results))
    write_atomic(Path(run_dir) / "summary.md", render_markdown(manifest, results))
    return target
