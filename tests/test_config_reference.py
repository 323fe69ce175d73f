"""docs/config.md lists every key that RunConfig accepts, with its default, and every adapter option.

NEW CONFIG KEYS MUST BE DOCUMENTED. A field added to RunConfig or to any block inside it (dataset,
models[], models[].parts[], controls, decision, decision.criteria[], ...), or a parameter added to an
adapter's constructor (an option), fails these tests until docs/config.md has a row for it: the key
in backticks in the first column, its default in the second (`required` for a required key), and
what it does for a user of the tool. A key removed from the code must leave the page too.
"""
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from spatialprobe.models import FAMILIES
from spatialprobe.config import RunConfig, adapter_options, model_in

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "config.md"


def is_list(annotation) -> bool:
    return typing.get_origin(annotation) is list or any(map(is_list, typing.get_args(annotation)))


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> dict:
    """Every key a config can hold, dotted as on the page (`models[].parts[].stage`), with its field."""
    keys = {}
    for name, field in model.model_fields.items():
        keys[prefix + name] = field
        inner = model_in(field.annotation)
        if inner is not None:
            keys |= config_keys(inner, prefix + name + ("[]." if is_list(field.annotation) else "."))
    return keys


def page_rows() -> dict[str, list[str]]:
    """Table rows of the page by the key (or keys) in backticks in their first column."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            for key in re.findall(r"`([^`]+)`", cells[0]):
                assert key not in rows, f"{key} is listed twice in docs/config.md"
                rows[key] = cells
    return rows


def yaml_text(value) -> str:
    """A default as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(yaml_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value or '""'
    return str(value)


def is_block(value) -> bool:
    """A default that is a block of keys (documented row by row), not a value to print."""
    return isinstance(value, BaseModel) or (isinstance(value, list) and any(isinstance(v, BaseModel) for v in value))


def documented_config_keys() -> set[str]:
    return {k for k in page_rows() if not k.startswith("options.")}


def test_every_config_key_is_documented():
    missing = sorted(set(config_keys()) - documented_config_keys())
    assert not missing, f"document these keys in docs/config.md: {missing}"


def test_every_documented_key_exists():
    gone = sorted(documented_config_keys() - set(config_keys()))
    assert not gone, f"docs/config.md lists keys RunConfig no longer accepts: {gone}"


@pytest.mark.parametrize("key", sorted(config_keys()))
def test_documented_default_is_the_real_one(key):
    field, cells = config_keys()[key], page_rows().get(key)
    if cells is None:
        pytest.skip("not documented (test_every_config_key_is_documented fails)")
    if field.is_required():
        assert cells[1] == "required", f"{key} is required"
        return
    default = field.get_default(call_default_factory=True)
    if not is_block(default):
        assert cells[1] == f"`{yaml_text(default)}`", f"docs/config.md gives {key} the default {cells[1]}"
    assert len(cells[2]) > 20, f"say what {key} does"


def test_every_adapter_option_is_documented_with_its_families():
    takes: dict[str, set[str]] = {}
    for family in FAMILIES:
        for option in adapter_options(family).model_fields:
            takes.setdefault(f"options.{option}", set()).add(family)
    documented = {k: set(re.findall(r"`([^`]+)`", cells[1])) for k, cells in page_rows().items() if k.startswith("options.")}
    assert documented == takes


def test_readme_links_the_reference():
    assert "](docs/config.md)" in (ROOT / "README.md").read_text()
