"""Run configs: valid ones load; bad ones end in one line naming the file and the field."""
import pytest

from spatialprobe.config import load_config, quickstart_config
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
