"""`spatialprobe models` lists the families the proposal names that cannot be loaded here, with why and what
would make them possible (Cambrian-1: no transformers class, no remote code in its checkpoints)."""
import re

from typer.testing import CliRunner

from spatialprobe.cli import app
from spatialprobe.models import FAMILIES, UNSUPPORTED


def test_cambrian1_is_listed_as_unsupported_with_the_reason_and_the_remedy():
    assert "cambrian1" in UNSUPPORTED and "cambrian1" not in FAMILIES  # a config cannot name it
    result = CliRunner().invoke(app, ["models"])
    output = " ".join(re.sub(r"[│┃]", " ", result.output).split())  # cells without borders, on one line each
    assert result.exit_code == 0 and "not supported" in output and "cambrian1" in output
    assert "transformers has no class" in output and "what would make it possible" in output
