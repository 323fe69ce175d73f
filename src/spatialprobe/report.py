"""A self-contained HTML report (no network: plots are inline PNG) rebuilt from a run directory."""
from __future__ import annotations

import base64
import html
import io
import json
import re
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
        # names are user text, not mathtext: a `$` in a name must neither break the figure nor typeset
        ax.set_title(model, fontsize=9, parse_math=False)
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels([s.replace("vision.", "v.").replace("llm.layer.", "L") for s in stages], rotation=90, fontsize=6,
                           parse_math=False)
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
            if c == "value" and at_floor(r):
                text += " (at floor: see the note on the proposal's Q2 reading under the best stages)"
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


def at_floor(row: dict) -> bool:
    """A spatial-probe value indistinguishable from its no-feature floor: its interval includes the floor."""
    low, high, floor = row.get("ci_low"), row.get("ci_high"), row.get("floor")
    if row.get("task") != "spatial_probe" or floor is None or row.get("value") is None:
        return False
    if low is None or high is None or low != low or high != high:  # no interval (NaN or not reported)
        return row["value"] <= floor
    return low <= floor <= high or row["value"] <= floor


def floor_note(results: list[dict]) -> str:
    """One note under the tables when any spatial-probe value sits at its floor (not a mark per cell)."""
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


#: rows are coloured by status, so a colour never says more than the status (a tier is shown as text)
STATUS_COLOURS = {"pass": "#b7e4b7", "uncertain": "#fbe3a6", "fail": "#f5b7b1", "missing": "#eee", "baseline": "#fff"}
STATUS_MARK = {"pass": "pass", "fail": "FAIL", "uncertain": "uncertain", "missing": "missing", "baseline": "baseline"}
ARCHITECTURE_ALONE = "met by the architecture alone"


def judged_models(manifest: dict) -> dict[str, list[str]]:
    """The models a decision is about: configured models, not controls."""
    return {name: info.get("stages", []) for name, info in manifest.get("models", {}).items()
            if info.get("control", "none") == "none"}


def run_verdict(manifest: dict, results: list[dict]):
    from .decision import DecisionConfig, decide

    config = DecisionConfig.model_validate(manifest.get("config", {}).get("decision", {}))
    return decide(results, judged_models(manifest), config)  # the controls' rows give the margins


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


def value_text(j) -> str:
    if j.value is None:
        return "—"
    covers = f" ({j.ci_covers})" if j.ci_covers and j.ci else ""
    return f"{j.value:.3f}" + (f" [{j.ci[0]:.3f}, {j.ci[1]:.3f}]{covers}" if j.ci else "")


def status_text(v, j) -> str:
    """The status as shown: unavailable, baseline, and the architecture-alone flag spelled out."""
    if j.unavailable:
        return "unavailable"
    text = STATUS_MARK[j.status]
    if j.met_by_architecture:
        counted = ", counted as FAIL" if v.counted(j) != j.status else ""
        text += f" ({ARCHITECTURE_ALONE}{counted})"
    return text


def margin_text(m) -> str:
    if m is None:
        return ""
    interval = f" [{m.ci[0]:+.3f}, {m.ci[1]:+.3f}]" if m.ci else ""
    return f"{m.value:+.3f}{interval} ({m.control_value:.3f}: {STATUS_MARK[m.control_status]})"


CRITERIA_COLUMNS = ("model", "judged at", "criterion", "weight", "threshold", "value [interval]", "status", "tier",
                    "over random init", "over pixels", "best stage")


def criteria_rows(v) -> list[tuple[str, ...]]:
    """One row of plain-text cells per criterion of a model (escaped by the caller, for HTML or Markdown)."""
    rows = []
    for j in v.judgements:
        c = j.criterion
        best = v.best_stage.get(c.metric)
        rows.append((v.model, v.stage, c.metric, f"{c.weight:.0%}", f"{'>' if c.direction == 'above' else '<'} {c.threshold:g}",
                     value_text(j), status_text(v, j), j.tier or "", margin_text(j.random_init), margin_text(j.pixels),
                     f"{best[0]}: {best[1]:.3f}" if best else ""))
    return rows


MARGIN_NOTE = ("over random init / over pixels: the model's value minus the control's (positive: better than the "
               "control), with the control's own value and status; interval: ")


def criteria_table(verdict) -> str:
    from .decision import MARGIN_INTERVAL

    e = html.escape
    rows = []
    for v in verdict.per_model:
        for j, cells in zip(v.judgements, criteria_rows(v)):
            rows.append(f'<tr style="background:{STATUS_COLOURS[v.counted(j)]}">'
                        + "".join(f'<td class="l">{e(cell)}</td>' for cell in cells) + "</tr>")
        rows.append(f'<tr><td class="l" colspan="{len(CRITERIA_COLUMNS)}">{e(v.model)}: weighted score '
                    f"{v.weighted_score():.2f} of the judged criteria; Phase 2 gate (spatial IoU &gt; 0.50): "
                    f"{STATUS_MARK[v.phase_gate]}</td></tr>")
    head = "".join(f'<th class="l">{h}</th>' for h in CRITERIA_COLUMNS)
    return (f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            f'<p class="note">{e(MARGIN_NOTE + MARGIN_INTERVAL)}. A tier is the section 8 tier of the interval\'s '
            f"worse end for a pass, of its better end for a fail, and \"uncertain\" for an uncertain criterion.</p>")


def self_check_note(info: dict) -> str:
    """The token-mapping self-check of a configured model, as recorded in the manifest."""
    check = info.get("verify")
    if not isinstance(check, dict):
        return "; token-mapping self-check: off" if check == "off" else ""
    stages = check.get("stages", {})
    failed = [stage for stage, c in stages.items() if c.get("status") == "fail"]
    outcome = f"FAILED at {', '.join(failed)}" if failed else "passed"
    versions = check.get("versions", {})
    return (f"; token-mapping self-check {outcome} ({len(stages) - len(failed)}/{len(stages)} stages, "
            f"transformers {versions.get('transformers', '?')})")


def incomplete_note(manifest: dict) -> str:
    """Why the report may lack numbers: the run that wrote the folder has not finished (or was killed)."""
    status = manifest.get("status", "complete")  # runs from before the status field were only written when complete
    if status == "complete":
        return ""
    return (f"Incomplete run (status: {status}): it was stopped or is still going; the numbers and the verdict "
            "cover only the models it finished. Run the same command again to resume.")


def render(manifest: dict, results: list[dict]) -> str:
    models = "".join(
        f'<li><b>{html.escape(name)}</b>: {html.escape(info.get("label", ""))} — control: {html.escape(info.get("control", ""))},'
        f' {len(info.get("stages", []))} stages, weights {html.escape(str(info.get("weights", "")))}'
        f'{html.escape(self_check_note(info))}</li>'
        for name, info in manifest.get("models", {}).items())
    figures = "".join(
        f'<h3>{html.escape(m)}</h3><img alt="{html.escape(m)} by stage" src="data:image/png;base64,{png}">'
        for m in METRICS if (png := metric_figure(m, results, manifest)))
    dataset = manifest.get("dataset", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>spatialprobe report</title>
<style>{STYLE}</style></head><body>
<h1>spatialprobe report: {html.escape(str(manifest.get("config", {}).get("name", "")))}</h1>
{f'<p class="verdict uncertain"><b>{html.escape(incomplete)}</b></p>' if (incomplete := incomplete_note(manifest)) else ""}
{verdict_section(manifest, results)}
<p class="note">Every number is read between its <b>floor</b> (the metric with no features: the best constant
prediction from the training labels) and its <b>ceiling</b> (the best the stage's token resolution allows: for masks,
the ground-truth token coverage painted through the token footprints; for boxes, the best box whose edges lie on token
boundaries, ranked by its own IoU for mAP; a box regressor (linear, pooled) is not bound to token edges and can pass it). A value at the floor means the probe learned
nothing. Controls: <i>pixels</i> (raw patch pixels), <i>[random init]</i> (same architecture, random weights),
<i>[shuffled tokens]</i> (token order permuted per image: spatial probes should fall to the floor).</p>
<p class="note">Every interval is a 95% interval, and each row's <code>ci_covers</code> says which variability it
covers: <b>test</b>, the sample of test images (bootstrap over the test images, the probe fitted once);
<b>train+test</b>, also the sample of training images the probe was fitted on (<code>probe_resamples</code> refits on
bootstrap resamples of the training images); speed rows: the spread of timed repeats (IQR). A mAP with fewer than 10
hits (test images whose box reaches the IoU threshold) has an exact binomial interval on its hit count instead of a
bootstrap, wider and never [0, 0] around a non-zero value; its <code>ci_note</code> says so.</p>
<h2>Models</h2><ul>{models}</ul>
<h2>Best stage per model and probe</h2>{best_stages(results)}{floor_note(results)}
<h2>Layer-by-layer trace</h2><p class="note">x: stages from input to output; shaded: bootstrap 95% interval;
dashed/dotted: ceiling/floor of the dense probe.</p>{figures}
<h2>Reconstruction probe</h2><p class="note">A small convolutional decoder trained on each model's judged
stage to reproduce the image (64x64 px). floor: the mean training image; ceiling: a perfect reconstruction.</p>
{results_table([r for r in results if r.get("task") == "reconstruction_probe"])}
<h2>Speed and memory</h2><p class="note">Each configured model read to its deepest stage on the same test images,
batch size and hardware: the median of at least 5 timed repeats after a warm-up; interval: the interquartile range
(IQR) of the repeats, not a 95% interval. speed_ratio = median time per image over the baseline model's, interval: IQR
over all pairs of repeats; the baseline's own ratio is 1 by definition, with no interval.</p>
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


#: characters that Markdown (CommonMark and GitHub's: tables, strikethrough, math) reads as markup
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$#!])")


def markdown_text(text) -> str:
    """User text as Markdown that renders as that text: HTML escaped (so a name can inject no tag and no
    entity), Markdown punctuation backslash-escaped, and on one line (a table cell or list item)."""
    # `&` and `<` are all HTML needs escaped for text (`>` opens nothing mid-line, and stays readable)
    escaped = " ".join(str(text).splitlines()).replace("&", "&amp;").replace("<", "&lt;")
    return MARKDOWN_SPECIAL.sub(r"\\\1", escaped)


def render_markdown(manifest: dict, results: list[dict]) -> str:
    """A short summary for pull requests: the verdict, its reasons and the criteria table. Every string
    from the config or the results (names, labels, stages, reasons) goes through `markdown_text`."""
    from .decision import MARGIN_INTERVAL

    md = markdown_text
    verdict = run_verdict(manifest, results)
    named = f" — {md(', '.join(verdict.models))}" if verdict.models else ""
    rests = md(", ".join(verdict.rests_on)) or "nothing measured"
    lines = [f"## spatialprobe: {md(manifest.get('config', {}).get('name', ''))}", "",
             *([f"**{md(incomplete_note(manifest))}**", ""] if incomplete_note(manifest) else []),
             f"**Verdict: {md(verdict.action)}{named}**{'' if verdict.certain else ' (uncertain)'}", "",
             f"Decision-matrix row: *{md(verdict.outcome)}*. Rests on: {rests}.", ""]
    lines += [f"- {md(r)}" for r in verdict.reasons + unavailable_notes(results)]
    lines += ["", "| " + " | ".join(md(h) for h in CRITERIA_COLUMNS) + " |", "|" + "---|" * len(CRITERIA_COLUMNS)]
    for v in verdict.per_model:
        lines += ["| " + " | ".join(md(cell) for cell in cells) + " |" for cells in criteria_rows(v)]
    lines += ["", md(MARGIN_NOTE + MARGIN_INTERVAL) + ".", "",
              "Full report: `report.html` (layer-by-layer trace, controls, speed, environment)."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write report.html and its Markdown summary, summary.md, from the run's stored results."""
    from .files import write_atomic

    manifest, results = read_run(run_dir)
    target = Path(run_dir) / "report.html"
    write_atomic(target, render(manifest, results))
    write_atomic(Path(run_dir) / "summary.md", render_markdown(manifest, results))
    return target
