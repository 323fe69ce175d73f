"""The report's "Mod C" section: per tuned run, the original and tuned spatial curves on one plot, the semantic
guard (VQA before and after, the 95% rule as the decision computes it), the drift curve and the training curve."""
from __future__ import annotations

import html

from ..report.parts import axis_ticks, figure_png, results_table, stage_positions

#: the spatial curves compared: dense spatial IoU where measured, else the dense probe's box IoU
SPATIAL_METRICS = (("spatial_iou", "dense"), ("bbox_iou", "dense"), ("bbox_iou", "linear"))
CAPTION = ("Mod C (proposal 3.1.4): LoRA on the vision encoder, trained on the spatial objective on the training "
           "split, the adapter chosen on validation, every number here on test images. Left: the spatial curve of "
           "the original (dashed) and the tuned encoder (solid) by stage, shaded: 95% intervals. Middle: drift, the "
           "linear CKA of each encoder stage to the original's on the same test images (1: unchanged). Right: the "
           "training loss by step and the validation loss at each checkpoint (a ring: the step kept).")


def tuned_pairs(manifest: dict) -> list[tuple[str, str]]:
    """(tuned run, its original) for every lora:<id> run of the manifest."""
    return [(name, info["base"]) for name, info in manifest.get("models", {}).items()
            if str(info.get("control", "")).startswith("lora:") and info.get("base")]


def curve(rows: list[dict], model: str, metric: str, probe: str) -> list[dict]:
    return [r for r in rows if r.get("model") == model and r.get("metric") == metric and r.get("probe") == probe
            and r.get("stage") and r.get("value") is not None and r.get("task") in ("spatial_probe", "finetune")
            and not r.get("shuffled")]


def spatial_metric(results: list[dict], tuned: str) -> tuple[str, str] | None:
    return next(((m, p) for m, p in SPATIAL_METRICS if curve(results, tuned, m, p)), None)


def draw(ax, rows: list[dict], all_stages, style: str, colour: str, label: str) -> None:
    places = stage_positions([r["stage"] for r in rows], all_stages)
    rows = sorted(rows, key=lambda r: places[r["stage"]])
    x = [places[r["stage"]] for r in rows]
    ax.plot(x, [r["value"] for r in rows], style, color=colour, marker="o", ms=3, label=label)
    if all(r.get("ci_low") is not None for r in rows):
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=colour, alpha=0.15)


def pair_figure(manifest: dict, results: list[dict], tuned: str, base: str):
    import matplotlib.pyplot as plt

    fig, (spatial, drift, training) = plt.subplots(1, 3, figsize=(15, 4))
    all_stages = manifest.get("models", {}).get(tuned, {}).get("all_stages")
    chosen = spatial_metric(results, tuned)
    if chosen:
        draw(spatial, curve(results, base, *chosen), all_stages, "--", "C0", f"{base} (original)")
        draw(spatial, curve(results, tuned, *chosen), all_stages, "-", "C1", f"{tuned} (tuned)")
        spatial.set_title(f"{chosen[0]} ({chosen[1]} probe) by stage")
        spatial.legend(fontsize=7)
    cka = curve(results, tuned, "cka_to_original", "drift")
    if cka:
        draw(drift, cka, all_stages, "-", "C2", "CKA to the original")
        drift.set_ylim(0, 1.05)
    drift.set_title("drift: CKA to the original")
    for ax, shown in ((spatial, all_stages or []), (drift, [r["stage"] for r in cka])):
        ticks = axis_ticks(list(dict.fromkeys(shown)))
        if ticks:
            ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7, rotation=30)
    record = next((r for r in results if r.get("model") == tuned and r.get("metric") == "finetune_val_loss"), None)
    if record:
        losses = record.get("train_losses") or []
        training.plot(range(1, len(losses) + 1), losses, color="C3", lw=1, label="train loss")
        steps, vals = zip(*record.get("val_losses") or [(0, float("nan"))])
        training.plot(steps, vals, "o-", color="C4", ms=4, label="val loss")
        training.plot([record["chosen_step"]], [record["value"]], "o", mfc="none", mec="k", ms=10)
        training.set_xlabel("step")
        training.legend(fontsize=7)
    training.set_title("training curve")
    fig.tight_layout()
    return fig


def guard_lines(manifest: dict, results: list[dict], tuned: str, base: str) -> list[str]:
    """VQA before and after with intervals, and the Mod C outcome with the 95% rule's verdict (decision.py's)."""
    from ..decision import DecisionConfig, vqa_row
    from ..report import run_verdict
    from ..vqa import asking, question_sets

    lines = []
    sets = question_sets(results) or ["generated"]
    for questions in sets:
        for model, when in ((base, "before (original)"), (tuned, "after (tuned)")):
            row = vqa_row(asking(results, questions), model)
            lines.append(f"VQA accuracy {when}" + (f", {questions} questions" if len(sets) > 1 else "") + ": "
                         + (f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
                            if row and row.get("ci_low") is not None else f"{row['value']:.3f}" if row else "not measured"))
    config = DecisionConfig.model_validate(manifest.get("config", {}).get("decision", {}))
    outcome = next((m for m in run_verdict(manifest, results).mod_c if m.tuned == tuned), None)
    lines.append(outcome.text(config.semantic_ratio) if outcome else "Mod C outcome: not judged (no verdict)")
    return lines


def mod_c_section(manifest: dict, results: list[dict]) -> str:
    pairs = tuned_pairs(manifest)
    if not pairs:
        return ""
    e = html.escape
    body = ""
    for tuned, base in pairs:
        items = "".join(f"<li>{e(line)}</li>" for line in guard_lines(manifest, results, tuned, base))
        body += (f"<h3>{e(tuned)} (fine-tuned from {e(base)})</h3><p>Semantic guard:</p><ul>{items}</ul>"
                 f'<img alt="Mod C: spatial curves, drift and training of {e(tuned)}" '
                 f'src="data:image/png;base64,{figure_png(pair_figure(manifest, results, tuned, base))}">')
    rows = [r for r in results if r.get("task") == "finetune"]
    return f'<h2>Mod C</h2><p class="note">{e(CAPTION)}</p>{body}{results_table(rows)}'
