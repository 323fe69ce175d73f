"""One line of `results.jsonl`: one measured number, typed.

The fields are DESIGN.md's (model, stage, task, probe, metric, value, interval, floor, ceiling, n,
seed) plus `variant` (which control or modification produced the number: none, pixels, random_init,
shuffled, later lora:<id>), `ref_model`/`ref_stage` for metrics between two models, and
`unavailable` (the reason, with `value` None) where a value cannot be computed here. Anything a
task adds (ci_note, score, resampled_to, ...) travels in `extra` and is written beside the fields.

Schema history (the manifest's `results_schema`): 1 = rows with `control` only; 2 = rows also carry
`variant` (the same value; `control` is kept so older readers still work). `from_json` reads both.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

RESULTS_SCHEMA = 2


@dataclass
class ResultRow:
    model: str
    task: str
    metric: str
    value: float | None
    stage: str | None = None
    probe: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_covers: str | None = None
    floor: float | None = None
    ceiling: float | None = None
    n: int | None = None
    seed: int | None = None
    label: str | None = None
    family: str | None = None
    variant: str = "none"
    ref_model: str | None = None
    ref_stage: str | None = None
    unavailable: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The row as written: `control` mirrors `variant` for readers of schema 1; unset optional fields
        that schema 1 never wrote (ref_*, unavailable) are left out."""
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        for optional in ("ref_model", "ref_stage", "unavailable", "label", "family", "ci_covers"):
            if out[optional] is None:
                del out[optional]
        out["control"] = self.variant
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "ResultRow":
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in row.items() if k in known}
        values.setdefault("variant", row.get("control", "none"))
        extra = {k: v for k, v in row.items() if k not in known and k != "control"}
        return cls(**values, extra=extra)


def rows_to_json(rows: list[ResultRow | dict]) -> list[dict[str, Any]]:
    """Rows as JSON dicts; dicts (from a result cache written by an older version) are upgraded through the type."""
    return [(r if isinstance(r, ResultRow) else ResultRow.from_json(r)).to_json() for r in rows]
