"""A self-contained HTML report (no network: plots are inline PNG) rebuilt from a run directory."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ..errors import SpatialProbeError
from .parts import at_floor, results_table, stage_order  # noqa: F401 (the report's public helpers)
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


#: rows are coloured by status, so a colour never says more than the status (a tier is shown as text)
STATUS_COLOURS = {"pass": "#b7e4b7", "uncertain": "#fbe3a6", "fail": "#f5b7b1", "missing": "#eee", "baseline": "#fff"}
STATUS_MARK = {"pass": "pass", "fail": "FAIL", "uncertain": "uncertain", "missing": "missing", "baseline": "baseline"}
ARCHITECTURE_ALONE = "met by the architecture alone"


def judged_models(manifest: dict) -> dict[str, list[str]]:
    """The models a decision is about: configured models and their fine-tuned (`lora:<id>`) variants, not controls."""
    from ..decision import judged_variant

    return {name: info.get("stages", []) for name, info in manifest.get("models", {}).items()
            if judged_variant(info.get("control", "none"))}


def tuned_from(manifest: dict) -> dict[str, str]:
    """Fine-tuned variant -> the model it tunes, from the manifest entries' `base`."""
    from ..decision import is_tuned

    return {name: info["base"] for name, info in manifest.get("models", {}).items()
            if is_tuned(info.get("control", "none")) and info.get("base")}


def run_verdict(manifest: dict, results: list[dict]):
    from ..decision import DecisionConfig, decide

    config = DecisionConfig.model_validate(manifest.get("config", {}).get("decision", {}))
    # the controls' rows give the margins
    return decide(results, judged_models(manifest), config, tuned_from(manifest))


def unavailable_notes(results: list[dict]) -> list[str]:
    notes = {f"{r['metric']} unavailable: {r['unavailable']}" for r in results if r.get("unavailable")}
    return sorted(notes | {f"{r['metric']} not judged: {r['not_judged']}" for r in results if r.get("not_judged")})


def verdict_section(manifest: dict, results: list[dict]) -> str:
    verdict = run_verdict(manifest, results)
    e = html.escape
    named = f" — {e(', '.join(verdict.models))}" if verdict.models else ""
    certainty = "" if verdict.certain else ' <span class="uncertain">(uncertain)</span>'
    reasons = "".join(f"<li>{e(r)}</li>" for r in verdict.reasons + unavailable_notes(results))
    rests = e(", ".join(verdict.rests_on) or "nothing measured")
    whole = "".join(f"<li>{e(line)}</li>" for line in decision_lines(manifest, verdict))
    return (f'<div class="verdict"><h2>Verdict: {e(verdict.action)}{named}{certainty}</h2>'
            f'<p>Decision-matrix row: <b>{e(verdict.outcome)}</b>. It rests on: {rests}.</p>'
            f"<ul>{reasons}</ul>{f'<p>The rest of the decision (proposal 8.1, 8.3, 9.3):</p><ul>{whole}</ul>' if whole else ''}"
            f"</div>{criteria_table(verdict)}")


def decision_lines(manifest: dict, verdict) -> list[str]:
    """Phase 1 (8.1), overall success (8.3) and the decision points (9.3), as plain text (escaped by the caller)."""
    from ..decision import DecisionConfig

    if verdict.phase1 is None:  # no verdict: nothing of it rests on anything
        return []
    config = DecisionConfig.model_validate(manifest.get("config", {}).get("decision", {}))
    lines = [verdict.phase1.text(config.phase_gate)]
    success = verdict.success
    if success is not None:
        about = f" for {success.model}" if success.model else ""
        lines.append(f"Overall success (8.3){about}: {success.status} — {'; '.join(success.reasons)}")
    lines += [f"{when}, {question} {answer}" for when, question, answer in verdict.decision_points]
    return lines


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
    from ..decision import MARGIN_INTERVAL

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
            f'<p class="note">{e(MARGIN_NOTE + MARGIN_INTERVAL)}. A tier is the proposal section 8 tier of the interval\'s '
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


def task_sections(manifest: dict, results: list[dict]) -> str:
    """Each task's section, in the registry's order (a task without rows in this run adds nothing)."""
    from ..tasks import TASKS, get_task

    present = {r.get("task") for r in results}
    return "".join(get_task(name).section(manifest, results) for name in TASKS if name in present)


def render(manifest: dict, results: list[dict]) -> str:
    models = "".join(
        f'<li><b>{html.escape(name)}</b>: {html.escape(info.get("label", ""))} — control: {html.escape(info.get("control", ""))},'
        f' {len(info.get("stages", []))} stages, weights {html.escape(str(info.get("weights", "")))}'
        f'{html.escape(self_check_note(info))}</li>'
        for name, info in manifest.get("models", {}).items())
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
{task_sections(manifest, results)}
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
    from ..decision import MARGIN_INTERVAL

    md = markdown_text
    verdict = run_verdict(manifest, results)
    named = f" — {md(', '.join(verdict.models))}" if verdict.models else ""
    rests = md(", ".join(verdict.rests_on)) or "nothing measured"
    lines = [f"## spatialprobe: {md(manifest.get('config', {}).get('name', ''))}", "",
             *([f"**{md(incomplete_note(manifest))}**", ""] if incomplete_note(manifest) else []),
             f"**Verdict: {md(verdict.action)}{named}**{'' if verdict.certain else ' (uncertain)'}", "",
             f"Decision-matrix row: *{md(verdict.outcome)}*. Rests on: {rests}.", ""]
    lines += [f"- {md(r)}" for r in verdict.reasons + unavailable_notes(results) + decision_lines(manifest, verdict)]
    lines += ["", "| " + " | ".join(md(h) for h in CRITERIA_COLUMNS) + " |", "|" + "---|" * len(CRITERIA_COLUMNS)]
    for v in verdict.per_model:
        lines += ["| " + " | ".join(md(cell) for cell in cells) + " |" for cells in criteria_rows(v)]
    lines += ["", md(MARGIN_NOTE + MARGIN_INTERVAL) + ".", "",
              "Full report: `report.html` (layer-by-layer trace, controls, speed, environment)."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write report.html and its Markdown summary, summary.md, from the run's stored results."""
    from ..files import write_atomic

    manifest, results = read_run(run_dir)
    target = Path(run_dir) / "report.html"
    write_atomic(target, render(manifest, results))
    write_atomic(Path(run_dir) / "summary.md", render_markdown(manifest, results))
    return target
