"""The `stages:` syntax, shared by model configs and `decision.stage`: exact stage names, negative
indices within a stage family (`vision.block.-1` = the last vision block) and shell patterns
(`vision.*`). Pure functions over a model's list of stage names, so a config can be checked and a
verdict resolved without loading the model."""
from __future__ import annotations

import fnmatch

PATTERN_CHARS = "*?["


def is_pattern(stage: str) -> bool:
    return any(c in stage for c in PATTERN_CHARS)


def resolve_negative(stage: str, known: list[str]) -> str:
    """`prefix.-k` -> the k-th last stage named `prefix.<something>`; anything else unchanged (also an
    index beyond the family, which then matches nothing)."""
    prefix, _, index = stage.rpartition(".")
    if not index.startswith("-") or not index[1:].isdigit():
        return stage
    family = [s for s in known if s.rpartition(".")[0] == prefix]
    if int(index) < -len(family):
        return stage
    return family[int(index)]


def match_stages(stage: str, known: list[str]) -> list[str]:
    """The stages one `stages:` entry names, in model order; empty when it names none."""
    if is_pattern(stage):
        return fnmatch.filter(known, stage)
    name = resolve_negative(stage, known)
    return [name] if name in known else []


def stage_syntax_error(stage: str) -> str | None:
    """Why `stage` cannot be a `stages:` entry of any model, or None (it may still match nothing)."""
    if not stage.strip():
        return "empty stage name"
    if stage != stage.strip() or any(c.isspace() for c in stage):
        return f"stage {stage!r} contains spaces"
    if "" in stage.split("."):
        return f"stage {stage!r} has an empty part between dots"
    if stage.count("[") != stage.count("]"):
        return f"stage {stage!r} has an unclosed [ in its pattern"
    if stage.lstrip("-").isdigit():
        return f"stage {stage!r} is an index without a stage family (write e.g. vision.block.{stage})"
    return None


def resolve_stages(patterns, known: list[str], name: str) -> list[str]:
    """Requested stage names in model order: `None` means all; negative block indices count from the end;
    patterns (`vision.*`) select every matching stage. A pattern that matches nothing is one line naming
    the model (`name`) and its stage range."""
    from .errors import SpatialProbeError

    if patterns is None:
        return list(known)
    resolved = []
    for pattern in patterns:
        names = match_stages(pattern, known)
        if not names:
            raise SpatialProbeError(f"model {name!r} has no stage {pattern!r}; it has {known[0]} ... {known[-1]} "
                                    "(see `spatialprobe models`)")
        resolved.extend(names)
    return sorted(set(resolved), key=known.index)
