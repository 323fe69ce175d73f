"""The layer-by-layer trace as the proposal's section 2.1 diagram, measured: one figure per metric, every model on
one axis from vision through projector to LLM, controls in their model's colour, floors, ceilings and intervals
on every probe, and text readable at the page's width. Figures are inspected as matplotlib objects."""
import base64
import io

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from PIL import Image

from spatialprobe.report.parts import PNG_DPI, VISION_END, axis_ticks, figure_png, stage_positions
from spatialprobe.tasks.spatial_probe import METRICS, TASK, legend_texts, trace_figure

SMALL = ["vision.embed"] + [f"vision.block.{i}" for i in range(4)]
VLM = (["vision.embed"] + [f"vision.block.{i}" for i in range(12)] + ["projector.out"]
       + [f"llm.layer.{i}" for i in range(6)])
PROBES = ("linear", "pooled", "dense")
PAGE_WIDTH = 1120  # px: the report's max-width (1,200) less its 2em margins and a scrollbar
MIN_TEXT_PX = 9


def row(model, stage, probe, metric, value, control="none"):
    return {"model": model, "label": model, "task": "spatial_probe", "control": control, "variant": control,
            "stage": stage, "probe": probe, "metric": metric, "value": value, "ci_low": value - 0.03,
            "ci_high": value + 0.03, "floor": 0.12, "ceiling": 0.9, "n": 100, "seed": 0}


def run(small="dino $x^$", vlm="qwen <b>"):
    """A 4-block encoder with both controls, a 12-block VLM with shuffled tokens, and the pixels control."""
    manifest = {"models": {
        "pixels": {"control": "pixels", "stages": ["vision.embed"]},
        small: {"control": "none", "stages": SMALL}, f"{small} [random init]": {"control": "random_init", "stages": SMALL},
        vlm: {"control": "none", "stages": VLM}}}
    rows = []
    for metric in METRICS:
        for probe in PROBES:
            for i, stage in enumerate(SMALL):
                rows += [row(small, stage, probe, metric, 0.3 + 0.1 * i),
                         row(f"{small} [random init]", stage, probe, metric, 0.25, "random_init"),
                         row(f"{small} [shuffled tokens]", stage, probe, metric, 0.13, "shuffled")]
            rows += [row(vlm, stage, probe, metric, 0.2 + 0.01 * i) for i, stage in enumerate(VLM)]
            rows += [row(f"{vlm} [shuffled tokens]", stage, probe, metric, 0.12, "shuffled") for stage in VLM]
            rows.append(row("pixels", "vision.embed", probe, metric, 0.25, "pixels"))
    return manifest, rows


def curves(fig) -> dict[str, list]:
    """Every labelled line of the figure's panels, by label (one per panel)."""
    found: dict[str, list] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            found.setdefault(line.get_label(), []).append(line)
    return found


def test_one_figure_per_metric_with_every_model_and_control():
    manifest, rows = run()
    section = TASK.section(manifest, rows)
    assert section.count('src="data:image/png;base64,') == len(METRICS)
    for metric in METRICS:
        fig = trace_figure(metric, rows, manifest)
        assert len(fig.axes) == len(PROBES)  # one panel per probe, the models together in each
        assert {"dino $x^$", "qwen <b>", "random init", "shuffled tokens", "raw pixels"} <= set(legend_texts(fig))
        names = {"dino $x^$", "dino $x^$ [random init]", "dino $x^$ [shuffled tokens]", "qwen <b>",
                 "qwen <b> [shuffled tokens]", "pixels"}
        for ax in fig.axes:
            drawn = {line.get_label() for line in ax.get_lines()}
            assert names <= drawn


def test_controls_share_their_models_colour_dashed_or_dotted():
    manifest, rows = run()
    lines = curves(trace_figure("spatial_iou", rows, manifest))
    for model in ("dino $x^$", "qwen <b>"):
        colour = to_rgba(lines[model][0].get_color())
        assert lines[model][0].get_linestyle() == "-"
        assert to_rgba(lines[f"{model} [shuffled tokens]"][0].get_color()) == colour
        assert lines[f"{model} [shuffled tokens]"][0].get_linestyle() == ":"
    assert to_rgba(lines["dino $x^$ [random init]"][0].get_color()) == to_rgba(lines["dino $x^$"][0].get_color())
    assert lines["dino $x^$ [random init]"][0].get_linestyle() == "--"
    assert to_rgba(lines["dino $x^$"][0].get_color()) != to_rgba(lines["qwen <b>"][0].get_color())


def test_models_of_different_depths_share_one_axis():
    manifest, rows = run()
    lines = curves(trace_figure("bbox_iou", rows, manifest))
    small_x, vlm_x = list(lines["dino $x^$"][0].get_xdata()), list(lines["qwen <b>"][0].get_xdata())
    assert small_x[0] == vlm_x[0] == 0  # patch embedding
    assert small_x[4] == vlm_x[12] == VISION_END  # the last of 4 and of 12 vision blocks coincide
    assert vlm_x[13] == 1 and vlm_x[-1] == 2  # projector, last LLM layer
    assert all(0 < x < VISION_END for x in small_x[1:4] + vlm_x[1:12]) and all(1 < x < 2 for x in vlm_x[14:-1])
    assert list(lines["pixels"][0].get_xdata()) == [0]  # the pixels control: a marker at the patch embedding


def test_every_probe_shows_floor_ceiling_and_a_shaded_interval():
    manifest, rows = run()
    fig = trace_figure("map_50", rows, manifest)
    for ax in fig.axes:
        labels = {line.get_label() for line in ax.get_lines()}
        for model in ("dino $x^$", "qwen <b>", "pixels"):
            assert {f"floor: {model}", f"ceiling: {model}"} <= labels
        shaded = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(shaded) >= 5  # the two models' and their three controls' intervals
    floor = next(line for line in fig.axes[0].get_lines() if line.get_label() == "floor: qwen <b>")
    assert set(floor.get_ydata()) == {0.12} and len(floor.get_xdata()) == len(VLM)


DETECTOR = [f"vision.block.{i}" for i in range(4)] + ["detector.level.0", "detector.level.1"] + [
    f"detector.encoder.{i}" for i in range(6)]


def test_text_is_readable_at_the_page_width():
    manifest, rows = run(small="a model with a rather long name", vlm="another long model name, also a VLM")
    for number in range(6):  # a Phase-1-sized legend, and a detector that shares the hand-off and the deep part
        name = f"grounding detector number {number}"
        manifest["models"][name] = {"control": "none", "stages": DETECTOR}
        rows += [row(name, stage, probe, "spatial_iou", 0.4) for stage in DETECTOR for probe in PROBES]
    fig = trace_figure("spatial_iou", rows, manifest)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
             if t.get_visible() and t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) * PNG_DPI / 72 >= MIN_TEXT_PX
    ticks = [t for t in fig.axes[-1].get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in ticks][:2] == ["patch embed", "vision 25%"]
    assert "projector\ndetector in" in [t.get_text() for t in ticks]
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.x0)
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))  # no tick label overlaps the next
    width = Image.open(io.BytesIO(base64.b64decode(figure_png(fig)))).width
    assert width <= PAGE_WIDTH  # shown at its own size: the page never scales the text down


def test_names_stay_plain_text_in_the_figure():
    manifest, rows = run(small="cost $x^$")
    fig = trace_figure("spatial_iou", rows, manifest)
    legend = [t for leg in fig.legends for t in leg.get_texts() if "$" in t.get_text()]
    assert legend and not any(t.get_parse_math() for t in legend)
    figure_png(fig)  # mathtext would fail to parse `$x^$`


@pytest.mark.parametrize("stages, all_stages, expected", [
    # a run that measured one block of twelve: its depth comes from the model's whole stage list
    (["vision.block.5"], ["vision.embed"] + [f"vision.block.{i}" for i in range(12)], {"vision.block.5": VISION_END / 2}),
    # DETR-like: backbone maps, then the detector's encoder layers after the hand-off
    (["vision.block.3", "detector.encoder.0", "detector.encoder.5"], None,
     {"vision.block.3": VISION_END, "detector.encoder.0": 1 + 1 / 6, "detector.encoder.5": 2.0}),
    # projector stages and a hybrid's parts fill the hand-off, the last at 1
    (["projector.pixel_shuffle", "projector.out", "llm.layer.1"], None,
     {"projector.pixel_shuffle": 0.9, "projector.out": 1.0, "llm.layer.1": 2.0}),
    (["hybrid.dino", "hybrid.qwen", "hybrid.concat"], None, {"hybrid.dino": 0.9, "hybrid.qwen": 0.95, "hybrid.concat": 1.0}),
])
def test_stages_are_placed_by_kind_and_relative_depth(stages, all_stages, expected):
    assert stage_positions(stages, all_stages) == pytest.approx(expected)


def test_ticks_name_the_parts_the_figure_reaches():
    assert [label for _, label in axis_ticks(SMALL)] == ["patch embed", "vision 25%", "vision 50%", "vision 75%",
                                                         "vision 100%"]
    labels = [label for _, label in axis_ticks(VLM + ["detector.encoder.0"])]
    assert labels[5] == "projector" and labels[-1] == "LLM/detector 100%"
