"""Run configs: valid ones load; bad ones end in one line naming the file and the field."""
import inspect
import re

import pytest

import spatialprobe.decision
from spatialprobe.models import FAMILIES, backbone_class
from spatialprobe.config import load_config, parse_config, quickstart_config, safe_run_dir_name
from spatialprobe.errors import SpatialProbeError

GOOD = """
name: mine
models:
  - {name: d, family: dinov2, path: facebook/dinov2-small}
probes: [dense]
"""


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_good_config_loads(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.models[0].family == "dinov2" and cfg.probes == ["dense"] and cfg.bootstrap == 1000


@pytest.mark.parametrize("text,expected", [
    (GOOD.replace("probes:", "probs:"), r"run.yaml: probs: unknown key"),
    (GOOD.replace("family: dinov2", "family: llama9"), r"run.yaml: models\[0\].family: .*unknown model family 'llama9'"),
    (GOOD.replace("name: d,", "name: d, famly: x,"), r"run.yaml: models\[0\].famly: unknown key"),
    (GOOD + "bootstrap: 3\n", r"run.yaml: bootstrap: .*greater than or equal to 50"),
    ("models: [\n", r"run.yaml: line \d+ is not valid YAML"),
    ("- just a list\n", r"run.yaml: expected a mapping"),
])
def test_bad_config_names_file_and_field(tmp_path, text, expected):
    with pytest.raises(SpatialProbeError, match=expected) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SpatialProbeError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(SpatialProbeError):
        load_config(write(tmp_path, "!!python/object/apply:os.system ['echo hi']\n"))


def test_quickstart_has_real_model_and_tiny_qwen():
    cfg = quickstart_config()
    assert [m.family for m in cfg.models] == ["dinov2", "qwen2_5_vl"]


# --- misspelled keys are named, with the key they stand for --------------------------------------

@pytest.mark.parametrize("text,expected", [
    (GOOD.replace("models:", "modles:"), "run.yaml: modles: unknown key (did you mean 'models'?)"),
    (GOOD.replace("probes:", "probs:"), "run.yaml: probs: unknown key (did you mean 'probes'?)"),
    (GOOD.replace("name: d,", "name: d, famly: dinov2,"), "run.yaml: models[0].famly: unknown key (did you mean 'family'?)"),
    (GOOD + "dataset: {shapes: {n_trian: 10}}\n", "run.yaml: dataset.shapes.n_trian: unknown key (did you mean 'n_train'?)"),
    (GOOD + "decision: {criteria: [{metric: bbox_iou, weight: 1, threshold: 0.5, directon: above}]}\n",
     "run.yaml: decision.criteria[0].directon: unknown key (did you mean 'direction'?)"),
])
def test_misspelled_key_is_named_with_a_suggestion(tmp_path, text, expected):
    with pytest.raises(SpatialProbeError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == f"{tmp_path}/{expected}"  # the key it stands for is not also "missing"


def test_unknown_key_without_a_close_match_lists_the_accepted_keys(tmp_path):
    with pytest.raises(SpatialProbeError, match=r"run.yaml: controls.zzz: unknown key; accepted: pixels, "):
        load_config(write(tmp_path, GOOD + "controls: {zzz: 1}\n"))


# --- adapter options, checked against the family's constructor -------------------------------------

def model_with(**fields) -> dict:
    return {"models": [{"name": "m", "family": "dinov2", "path": "p", **fields}]}


@pytest.mark.parametrize("fields,expected", [
    ({"options": {"resolutoin": 224}},
     "models[0].options.resolutoin: unknown option for family dinov2 (did you mean 'resolution'?); accepted: resolution"),
    ({"options": {"resolution": -224}}, "models[0].options.resolution: Input should be greater than 0"),
    ({"options": {"resolution": "224"}}, "models[0].options.resolution: Input should be a valid integer"),
    ({"family": "qwen2_5_vl", "options": {"max_pixels": 0}}, "models[0].options.max_pixels: Input should be greater than 0"),
    ({"family": "pixels", "options": {"patch_size": True}}, "models[0].options.patch_size: Input should be a valid integer"),
    ({"family": "internvl", "options": {"tile_grid": [2, 0]}},
     "models[0].options.tile_grid: [2, 0] does not fit int | tuple[int, int] | list[int] (every integer positive)"),
    ({"family": "cogvlm2", "options": {"tile_grid": 2}},
     "models[0].options.tile_grid: unknown option for family cogvlm2; accepted: resolution"),
    ({"options": {"revision": "main"}},
     "models[0].options.revision: not an adapter option: give `revision` beside `options`, not inside it"),
    ({"options": {"dtype": "float16"}},
     "models[0].options.dtype: not an adapter option: `dtype` is a setting of the whole run (top level)"),
])
def test_options_are_checked_against_the_family(fields, expected):
    with pytest.raises(SpatialProbeError) as info:
        parse_config(model_with(**fields), "run.yaml")
    assert str(info.value) == f"run.yaml: {expected}"


def hybrid(part_b: dict, **fields) -> dict:
    parts = [{"name": "a", "family": "owlvit", "stage": "vision.block.-1"},
             {"name": "b", "family": "qwen2_5_vl", "stage": "llm.layer.-1", **part_b}]
    return {"models": [{"name": "h", "family": "hybrid", "parts": parts, **fields}]}


@pytest.mark.parametrize("config,expected", [
    (hybrid({"options": {"max_pixel": 3}}), "models[0].parts[1].options.max_pixel: unknown option for family "
                                            "qwen2_5_vl (did you mean 'max_pixels'?); accepted: resolution, max_pixels, fps"),
    (hybrid({"options": {"resolution": 0}}), "models[0].parts[1].options.resolution: Input should be greater than 0"),
    (hybrid({}, options={"grid": -1}), "models[0].options.grid: Input should be greater than 0"),
    (hybrid({"name": "a"}), "models[0].parts[1].name: 'a' names two parts of this hybrid"),
])
def test_hybrid_options_and_part_names_are_checked(config, expected):
    with pytest.raises(SpatialProbeError) as info:
        parse_config(config, "run.yaml")
    assert str(info.value) == f"run.yaml: {expected}"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "hybrid"])
def test_every_family_takes_resolution(family):
    # the README promises `resolution` for every family; the options are read from each adapter
    if "image" not in backbone_class(family).modalities:  # a clip-only family is refused in runs (by name)
        assert "resolution" in inspect.signature(backbone_class(family)).parameters
        return
    assert parse_config(model_with(family=family, options={"resolution": 224})).models[0].options == {"resolution": 224}


def test_valid_options_are_kept_as_given():
    config = parse_config(model_with(family="internvl", options={"tile_grid": [2, 3], "resolution": 448}))
    assert config.models[0].options == {"tile_grid": [2, 3], "resolution": 448}
    assert parse_config(hybrid({}, options={"grid": 8})).models[0].options == {"grid": 8}


# --- names: unique (controls included) and printable on one line -----------------------------------

def two_models(first: str, second: str, **top) -> dict:
    return {"models": [{"name": first, "family": "dinov2"}, {"name": second, "family": "dinov2"}], **top}


@pytest.mark.parametrize("config,expected", [
    (two_models("d", "d"), "models[1].name: 'd' is both the name of models[0] and the name of models[1]"),
    (two_models("d", "d [random init]"), "models[1].name: 'd [random init]' is both the random-init control of "
                                         "models[0] and the name of models[1]"),
    (two_models("d [shuffled tokens]", "d"), "models[1].name: 'd [shuffled tokens]' is both the name of models[0] "
                                             "and the shuffled-tokens control of models[1]"),
    (model_with(name="pixels"), "models[0].name: 'pixels' is both the pixels control and the name of models[0]"),
])
def test_model_names_are_unique_among_models_and_controls(config, expected):
    with pytest.raises(SpatialProbeError) as info:
        parse_config(config, "run.yaml")
    assert str(info.value).startswith(f"run.yaml: {expected}")


def test_names_free_when_their_control_is_off():
    parse_config(model_with(name="pixels") | {"controls": {"pixels": False}})
    parse_config(two_models("d", "d [shuffled tokens]", controls={"shuffled_tokens": False}))
    config = two_models("d", "d [random init]")
    config["models"][0]["random_init_control"] = False
    parse_config(config)


@pytest.mark.parametrize("config,where", [
    (model_with(name="a\nb"), "models[0].name"), (model_with(name="a\x1b[31mb"), "models[0].name"),
    (model_with(name="  "), "models[0].name"), (model_with(label="x\ty"), "models[0].label"),
    (hybrid({"name": "b\r"}), "models[0].parts[1].name"), (model_with() | {"name": "run\n"}, "name"),
])
def test_names_are_printable_single_line_text(config, where):
    with pytest.raises(SpatialProbeError, match=rf"^run.yaml: {re.escape(where)}: ") as info:
        parse_config(config, "run.yaml")
    assert "\n" not in str(info.value)


def test_plot_and_markup_characters_are_fine_in_names():
    # names are rendered as plain text (no mathtext, escaped markup), so they need no restriction
    name = "$x_1$ <b>{y}</b> ü"
    assert parse_config(model_with(name=name)).models[0].name == name


@pytest.mark.parametrize("name", ["../../x", "..", ".", "/etc/passwd", "a/../../b", "x\\..\\..\\y", "", "-rf", "ü ñ"])
def test_run_dir_name_is_one_component_inside_runs(tmp_path, name):
    runs = tmp_path / "runs"
    folder = runs / safe_run_dir_name(name)
    assert folder.resolve().parent == runs.resolve() and not folder.name.startswith((".", "-"))


def test_run_dir_name_keeps_ordinary_names():
    assert safe_run_dir_name("pivot4-phase1_v2.0") == "pivot4-phase1_v2.0" and safe_run_dir_name("my run") == "my-run"


# --- other settings caught at parse time -----------------------------------------------------------

@pytest.mark.parametrize("config,expected", [
    (model_with() | {"device": "gpu"}, "device: unknown device 'gpu'; use cpu, cuda, cuda:N or mps"),
    (model_with() | {"device": "cuda:x"}, "device: unknown device 'cuda:x'"),
    (model_with(path="installed:dinov2-small-imgfocs"),
     "models[0].path: unknown installed weights 'dinov2-small-imgfocs' (did you mean 'dinov2-small-imgfocus'?)"),
    (hybrid({"path": "installed:nope"}), "models[0].parts[1].path: unknown installed weights 'nope'"),
    (model_with() | {"dataset": {"kind": "coco"}}, "dataset.path: a coco dataset needs `path`"),
    (model_with() | {"verify": "sometimes"}, "verify: Input should be 'off', 'warn' or 'stop'"),
    (model_with() | {"dataset": {"on_bad_annotation": "drop"}}, "dataset.on_bad_annotation: Input should be 'error' or 'skip'"),
])
def test_settings_checked_when_parsed(config, expected):
    with pytest.raises(SpatialProbeError) as info:
        parse_config(config, "run.yaml")
    assert str(info.value).startswith(f"run.yaml: {expected}")


def test_new_settings_default_to_the_safe_choice():
    config = parse_config(model_with() | {"device": "cuda:1"})
    assert config.verify == "stop" and config.dataset.on_bad_annotation == "error" and config.device == "cuda:1"


def test_decision_is_checked_against_the_run(monkeypatch):
    seen = []

    def check_decision(decision, tasks, probes, model_names):
        seen.append((decision.spatial_metric, tasks, probes, model_names))
        raise ValueError("decision.stage: 'vision.block.-99' names no stage")

    monkeypatch.setattr(spatialprobe.decision, "check_decision", check_decision, raising=False)
    with pytest.raises(SpatialProbeError) as info:
        parse_config(two_models("a", "b", probes=["dense"], tasks=["spatial_probe"]), "run.yaml")
    assert str(info.value) == "run.yaml: decision.stage: 'vision.block.-99' names no stage"
    assert seen == [("spatial_iou", ["spatial_probe"], ["dense"], ["a", "b"])]
