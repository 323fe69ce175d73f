"""The layout's promises: no import cycle between spatialprobe's modules, and a report without torch."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import spatialprobe

PACKAGE = Path(spatialprobe.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every spatialprobe module a file imports, at module level or inside a function (lazy imports count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) for f in files}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules), or None. A package importing its own submodules (its
    registry, its public names) is not a cycle unless a submodule leads back to another module."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in graph[node]:
            if node.startswith(target + "."):  # a submodule importing its own package's names
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if state.get(target) is None and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_back_through_others():
    assert cycle_in(import_graph()) is None, " -> ".join(cycle_in(import_graph()))


def test_the_cycle_check_finds_a_cycle():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_report_command_runs_without_torch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"status": "complete", "config": {"name": "no-torch", "decision": {}},
                "models": {"m": {"label": "M", "control": "none", "stages": ["vision.embed"]}}}
    rows = [{"model": "m", "stage": "vision.embed", "task": "spatial_probe", "probe": probe, "metric": metric,
             "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "ci_covers": "test", "floor": 0.1, "ceiling": 0.9, "n": 10,
             "seed": 0, "control": "none", "variant": "none"}
            for probe in ("linear", "dense") for metric in ("bbox_iou", "spatial_iou")]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = ("import sys; from typer.testing import CliRunner; from spatialprobe.cli import app; "
              f"result = CliRunner().invoke(app, ['report', {str(run)!r}]); "
              "print(result.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"], out
    assert "spatial_iou" in (run / "report.html").read_text()
