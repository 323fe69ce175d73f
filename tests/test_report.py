"""report.html and summary.md from hand-made runs: controls and flags shown, every user string escaped
in both (Markdown rendered by markdown-it, as a forge would), and user names drawn as plain text."""
import json
import re

from markdown_it import MarkdownIt

from spatialprobe.report import STATUS_COLOURS, write_report

STAGES = ["vision.embed", "vision.block.0", "vision.block.1"]
EVIL = "<img src=x onerror=alert(1)>"


def record(model, metric, value, half_width=0.02, stage="vision.block.1", probe="dense", control="none", **extra):
    return {"model": model, "label": model, "family": "dinov2", "task": "spatial_probe", "control": control,
            "stage": stage, "probe": probe, "metric": metric, "value": value, "ci_low": value - half_width,
            "ci_high": value + half_width, "floor": 0.1, "ceiling": 0.9, "n": 100, "seed": 0, **extra}


def speed_row(model, value, low, high, baseline):
    return {"model": model, "task": "speed", "control": "none", "stage": None, "probe": None, "metric": "speed_ratio",
            "value": value, "ci_low": low, "ci_high": high, "floor": None, "ceiling": None, "n": 8, "baseline": baseline}


def model_runs(name, **configs):
    """A manifest and results: `name` and its random-init copy at the quickstart's spatial IoU, pixels lower."""
    models = {"pixels": {"label": "raw pixels", "control": "pixels", "stages": ["vision.embed"]},
              name: {"label": f"label of {name}", "control": "none", "stages": STAGES},
              f"{name} [random init]": {"label": "copy", "control": "random_init", "stages": STAGES}}
    results = []
    for stage, spatial, copy in (("vision.block.0", 0.55, 0.5), ("vision.block.1", 0.748, 0.684)):
        results += [record(name, "spatial_iou", spatial, stage=stage), record(name, "bbox_iou", 0.62, stage=stage),
                    record(f"{name} [random init]", "spatial_iou", copy, stage=stage, control="random_init"),
                    record(f"{name} [random init]", "bbox_iou", 0.2, stage=stage, control="random_init")]
    results += [record("pixels", "spatial_iou", 0.4, stage="vision.embed", control="pixels"),
                record("pixels", "bbox_iou", 0.3, stage="vision.embed", control="pixels")]
    return {"config": {"name": "run", "decision": configs}, "models": models}, results


def shown(markdown: str) -> str:
    """summary.md as a forge shows it (CommonMark with tables; raw HTML would pass through)."""
    return MarkdownIt("commonmark").enable("table").render(markdown)


def write_run(folder, manifest, results):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    write_report(folder)
    return (folder / "report.html").read_text(), (folder / "summary.md").read_text()


def test_every_user_string_is_escaped_in_markdown_and_html(tmp_path):
    manifest, results = model_runs(EVIL)
    manifest["config"]["name"] = "<script>alert(2)</script> **run** | `x`"
    manifest["models"][EVIL]["label"] = "label <b>bold</b> & [link](javascript:alert(3))"
    page, summary = write_run(tmp_path / "run", manifest, results)
    rendered = shown(summary)
    for text in (rendered, page):
        assert "<img src=x" not in text and "<script>" not in text and "<b>bold" not in text
    # the names appear as text, with the table's columns intact
    assert rendered.count("&lt;img src=x onerror=alert(1)&gt;") >= 3  # verdict, reasons, criteria table
    assert "&lt;script&gt;alert(2)&lt;/script&gt; **run** | `x`" in rendered
    rows = re.findall(r"<tr>(.*?)</tr>", rendered, flags=re.S)
    assert rows and {row.count("<td") for row in rows[1:]} == {11}
    assert 'href="javascript' not in rendered and 'href="javascript' not in page
    assert "label &lt;b&gt;bold&lt;/b&gt; &amp; [link](javascript:alert(3))" in page
    assert page.count("<img ") == page.count('src="data:image/png;base64,')  # only the figures are images


def test_a_dollar_in_a_name_is_drawn_as_text(tmp_path):
    # mathtext cannot parse `$x^$`: before, no report was ever written for this model
    for number, name in enumerate(["cost $x^$", "cost$5 $x^2$", r"a $\frac{$ b"]):
        page, summary = write_run(tmp_path / f"run{number}", *model_runs(name))
        assert page.count('src="data:image/png;base64,') == 2  # spatial_iou and bbox_iou by stage
        assert "\\$" in summary and name.replace("$", "") in page.replace("$", "")


def test_report_shows_the_control_margins_and_the_architecture_alone_flag(tmp_path):
    page, summary = write_run(tmp_path / "run", *model_runs("dino"))
    for text in (page, shown(summary)):
        assert "met by the architecture alone" in text
        assert "+0.064 [+0.024, +0.104] (0.684: pass)" in text  # over random init, with the copy's own status
        assert "+0.348 [+0.308, +0.388] (0.400: FAIL)" in text  # over pixels
        assert "difference of the two 95% intervals" in text
    failing, _ = write_run(tmp_path / "fail", *model_runs("dino", architecture_alone="fail"))
    assert "met by the architecture alone, counted as FAIL" in failing
    assert "Verdict: Investigate hybrid approach" in failing


def test_rows_are_coloured_by_status_and_the_baseline_is_not_judged(tmp_path):
    manifest, results = model_runs("dino")
    manifest["models"]["qwen"] = {"label": "q", "control": "none", "stages": ["llm.layer.0"]}
    results += [speed_row("dino", 1.9, 1.7, 2.2, "qwen"), speed_row("qwen", 1.0, None, None, "qwen"),
                record("qwen", "spatial_iou", 0.2, stage="llm.layer.0")]
    page, summary = write_run(tmp_path / "run", manifest, results)
    cells = lambda model, metric: re.search(  # noqa: E731
        rf'<tr style="background:(#\w+)"><td class="l">{model}</td><td class="l">[^<]*</td><td class="l">{metric}</td>'
        r"((?:<td[^>]*>[^<]*</td>)*)</tr>", page).groups()
    colour, rest = cells("dino", "speed_ratio")
    # uncertain: no pass colour, and its tier says "uncertain" (it was painted green "acceptable"/"target")
    assert colour == STATUS_COLOURS["uncertain"] != STATUS_COLOURS["pass"] and ">uncertain</td><td class=\"l\">uncertain<" in rest
    colour, rest = cells("qwen", "speed_ratio")
    assert colour == STATUS_COLOURS["baseline"] and "1.000</td>" in rest and ">baseline<" in rest
    assert "speed_ratio turns on timing noise" in page and "speed_ratio turns on timing noise" in shown(summary)


def test_a_run_without_models_has_no_verdict(tmp_path):
    manifest, results = model_runs("dino")
    manifest["models"] = {"pixels": manifest["models"]["pixels"]}
    page, summary = write_run(tmp_path / "run", manifest, [r for r in results if r["model"] == "pixels"])
    assert "No verdict" in page and "No verdict" in summary and "Pivot" not in page + summary



def test_a_run_that_has_not_finished_says_so(tmp_path):
    manifest, results = model_runs("a")
    page, summary = write_run(tmp_path / "done", manifest, results)
    assert "Incomplete run" not in page and "Incomplete run" not in summary
    manifest["status"] = "running"
    page, summary = write_run(tmp_path / "partial", manifest, results)
    assert "Incomplete run (status: running)" in page and "Incomplete run" in summary


def test_the_self_check_is_shown_per_model(tmp_path):
    manifest, results = model_runs("a")
    manifest["models"]["a"]["verify"] = {"passed": False, "versions": {"transformers": "9.9"}, "stages": {
        "vision.embed": {"status": "pass"}, "vision.block.0": {"status": "fail"}, "vision.block.1": {"status": "pass"}}}
    page, _ = write_run(tmp_path / "run", manifest, results)
    assert "token-mapping self-check FAILED at vision.block.0 (2/3 stages, transformers 9.9)" in page


def test_references_into_the_proposal_say_so(tmp_path):
    manifest, results = model_runs("dino")
    failing = [{**r, "value": 0.2, "ci_low": 0.18, "ci_high": 0.22} if r["metric"] == "spatial_iou" else r
               for r in results]
    page, summary = write_run(tmp_path / "run", manifest, failing)
    assert "Pivot to different architecture (see proposal section 7)" in page + summary
    for text in (page, summary):
        before = re.findall(r"(\S+)\s+(?:sections?|§)\s*\d", text, flags=re.I)
        assert before and set(before) == {"proposal"}, before  # "Section 7" alone reads as a section of the report
