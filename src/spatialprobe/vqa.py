"""The semantic check (proposal 7.3): questions generated from synthetic_shapes annotations about
colour, shape, count and relative position, answered by the VLM's own `generate`, scored by exact
match of the first word of the answer.

floor: the best constant answer per question type, learned from the training split's questions
(what a model that ignores the image gets); ceiling: 1.0.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class Question:
    image: int
    kind: str  # colour | shape | count | position
    text: str
    answer: str


def object_centre(annotation: dict) -> tuple[float, float]:
    x, y, w, h = annotation["bbox"]
    return x + w / 2, y + h / 2


def questions_for(index: int, annotations: list[dict], categories: dict[int, str]) -> list[Question]:
    out = [Question(index, "count", "How many shapes are in the image? Answer with one word.",
                    NUMBER_WORDS[len(annotations)] if len(annotations) < len(NUMBER_WORDS) else str(len(annotations)))]
    if len(annotations) == 1:
        (only,) = annotations
        out.append(Question(index, "shape", "What shape is in the image? Answer with one word.",
                            categories[only["category_id"]]))
        colour = only.get("attributes", {}).get("colour")
        if colour:
            out.append(Question(index, "colour", "What colour is the shape? Answer with one word.", colour))
    else:
        first, second = annotations[0], annotations[1]
        a, b = categories[first["category_id"]], categories[second["category_id"]]
        if a != b:
            left = object_centre(first)[0] < object_centre(second)[0]
            out.append(Question(index, "position", f"Is the {a} to the left of the {b}? Answer yes or no.",
                                "yes" if left else "no"))
    return out


def make_questions(data) -> list[Question]:
    """Every question the annotations of a COCO split support (see `questions_for`)."""
    return [q for i, record in enumerate(data.records) for q in questions_for(i, record.annotations, data.categories)]


def first_word(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def constant_answer_floor(train: list[Question], test: list[Question]) -> float:
    best = {kind: Counter(q.answer for q in train if q.kind == kind).most_common(1)[0][0]
            for kind in {q.kind for q in train}}
    return float(np.mean([best.get(q.kind) == q.answer for q in test])) if test else 0.0


def vqa_records(backbone, train_data, test_data, n_boot: int = 1000, seed: int = 0, limit: int = 64) -> list[dict]:
    """`vqa_accuracy` with a bootstrap interval, per question kind and overall."""
    from .metrics import mean_ci

    test_questions = make_questions(test_data)[:limit]
    floor = constant_answer_floor(make_questions(train_data), test_questions)
    images = {q.image: test_data.load_image(q.image) for q in test_questions}
    replies = backbone.answer([images[q.image] for q in test_questions], [q.text for q in test_questions])
    correct = np.array([first_word(reply) == q.answer for reply, q in zip(replies, test_questions)], dtype=float)
    low, high = mean_ci(correct, n_boot, seed)
    return [{"task": "vqa", "stage": None, "probe": "generate", "metric": "vqa_accuracy", "value": float(correct.mean()),
             "ci_low": low, "ci_high": high, "ci_covers": "test", "floor": floor, "ceiling": 1.0, "n": len(test_questions),
             "kinds": dict(Counter(q.kind for q in test_questions))}]


def relative_records(results: list[dict], baseline: str | None) -> list[dict]:
    """`vqa_relative`: each model's accuracy over the baseline's (proposal 7.3 asks for at least 0.95)."""
    accuracy = {r["model"]: r for r in results if r.get("task") == "vqa" and r["metric"] == "vqa_accuracy"}
    if baseline not in accuracy or not accuracy[baseline]["value"]:
        return []
    base = accuracy[baseline]["value"]
    return [{**r, "metric": "vqa_relative", "value": r["value"] / base, "ci_low": r["ci_low"] / base,
             "ci_high": r["ci_high"] / base, "floor": r["floor"] / base, "ceiling": 1.0 / base, "baseline": baseline}
            for r in accuracy.values()]
