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
    return [{"task": "vqa", "stage": None, "probe": "generate", "metric": "vqa_accuracy", "questions": "generated",
             "value": float(correct.mean()),
             "ci_low": low, "ci_high": high, "ci_covers": "test", "floor": floor, "ceiling": 1.0, "n": len(test_questions),
             "kinds": dict(Counter(q.kind for q in test_questions))}]


def relative_records(results: list[dict], baseline: str | None) -> list[dict]:
    """`vqa_relative`: each model's accuracy over the baseline's (proposal 7.3 asks for at least 0.95)."""
    out = []
    for questions in question_sets(results):
        accuracy = {r["model"]: r for r in asking(results, questions) if r.get("task") == "vqa"
                    and r["metric"] == "vqa_accuracy"}
        if baseline not in accuracy or not accuracy[baseline]["value"]:
            continue
        base = accuracy[baseline]["value"]
        out += [{**r, "metric": "vqa_relative", "value": r["value"] / base, "ci_low": r["ci_low"] / base,
                 "ci_high": r["ci_high"] / base, "floor": r["floor"] / base, "ceiling": 1.0 / base, "baseline": baseline}
                for r in accuracy.values()]
    return out


def question_set(row: dict) -> str:
    """Which questions a vqa row answers: "generated" (rows before there were two sets say nothing) or "benchmark"."""
    return row.get("questions", "generated")


def question_sets(results: list[dict]) -> list[str]:
    """The question sets the results' `vqa_accuracy` rows answer, the generated questions first."""
    return sorted({question_set(r) for r in results if r.get("metric") == "vqa_accuracy"}, reverse=True)


def asking(results: list[dict], questions: str) -> list[dict]:
    """The results without the `vqa_accuracy` rows of the other question sets (what one set's checks read)."""
    return [r for r in results if r.get("metric") != "vqa_accuracy" or question_set(r) == questions]


# --- a VQA benchmark folder of the user's (asked as well as the generated questions) ---------------------------
#
# Layout (docs/vqa-benchmark.md): <folder>/questions.jsonl, one JSON object per line,
#   {"image": "images/0001.jpg", "question": "What is the man holding?", "answers": ["umbrella", "umbrella", ...]}
# the image path relative to the folder. Scored as VQAv2 scores: with 3 or more human answers, the mean over
# leaving each one out of min(1, matching others / 3); with fewer, a match of any. Answers and replies are
# normalized alike (`normalize_answer`).
BENCHMARK_FILE = "questions.jsonl"
ARTICLES = {"a", "an", "the"}
DIGITS = {word: str(n) for n, word in enumerate(NUMBER_WORDS)}


@dataclass(frozen=True)
class BenchmarkQuestion:
    image: str  # absolute path
    text: str
    answers: tuple[str, ...]


def load_benchmark(folder) -> list[BenchmarkQuestion]:
    """Every question of a benchmark folder, checked: one line naming the file, line and field on bad input."""
    import json
    from pathlib import Path

    from .errors import SpatialProbeError

    root = Path(folder)
    path = root / BENCHMARK_FILE
    if not path.is_file():
        raise SpatialProbeError(f"vqa_benchmark: {path} not found: a benchmark folder holds {BENCHMARK_FILE} "
                                "(layout: docs/vqa-benchmark.md)")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SpatialProbeError(f"{where}: not JSON ({err.msg})") from None
        questions.append(benchmark_question(item, root, where))
    if not questions:
        raise SpatialProbeError(f"{path}: no questions")
    return questions


def benchmark_question(item, root, where: str) -> BenchmarkQuestion:
    from .errors import SpatialProbeError

    if not isinstance(item, dict):
        raise SpatialProbeError(f"{where}: expected an object with image, question and answers")
    image, text, answers = item.get("image"), item.get("question"), item.get("answers")
    if not isinstance(image, str) or not image:
        raise SpatialProbeError(f"{where}: field 'image' must be a path relative to the folder")
    file = (root / image).resolve()
    if root.resolve() not in file.parents or not file.is_file():
        raise SpatialProbeError(f"{where}: field 'image': {image!r} is not a file inside {root}")
    if not isinstance(text, str) or not text.strip():
        raise SpatialProbeError(f"{where}: field 'question' must be non-empty text")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise SpatialProbeError(f"{where}: field 'answers' must be a non-empty list of non-empty strings")
    return BenchmarkQuestion(str(file), text, tuple(answers))


def normalize_answer(text: str) -> str:
    """Lower case, the first line and sentence only, punctuation dropped, number words as digits, no articles."""
    first = re.split(r"[\n.!?]", text.strip().lower(), maxsplit=1)[0]
    words = re.findall(r"[a-z0-9]+", first)
    return " ".join(DIGITS.get(w, w) for w in words if w not in ARTICLES)


def vqa_score(reply: str, answers) -> float:
    """VQAv2's accuracy of one reply against its human answers (see the layout note above)."""
    given = normalize_answer(reply)
    matches = [normalize_answer(a) == given for a in answers]
    if len(matches) < 3:
        return float(any(matches))
    total = sum(matches)
    return float(np.mean([min(1.0, (total - m) / 3) for m in matches]))


def best_constant_score(questions: list[BenchmarkQuestion]) -> float:
    """The floor: the best mean score of one answer given to every question (what ignoring the image gets)."""
    candidates = {normalize_answer(a) for q in questions for a in q.answers}
    return max(float(np.mean([vqa_score(c, q.answers) for q in questions])) for c in candidates)


def benchmark_records(backbone, questions: list[BenchmarkQuestion], name: str, n_boot: int = 1000, seed: int = 0,
                      limit: int = 64) -> list[dict]:
    """`vqa_accuracy` on a benchmark folder's first `limit` questions, with a bootstrap interval."""
    from PIL import Image

    from .metrics import mean_ci

    asked = questions[:limit]
    images = [Image.open(q.image).convert("RGB") for q in asked]
    replies = backbone.answer(images, [q.text for q in asked])
    scores = np.array([vqa_score(reply, q.answers) for reply, q in zip(replies, asked)])
    low, high = mean_ci(scores, n_boot, seed)
    return [{"task": "vqa", "stage": None, "probe": "generate", "metric": "vqa_accuracy", "questions": "benchmark",
             "benchmark": name, "value": float(scores.mean()), "ci_low": low, "ci_high": high, "ci_covers": "test",
             "floor": best_constant_score(asked), "ceiling": 1.0, "n": len(asked)}]
