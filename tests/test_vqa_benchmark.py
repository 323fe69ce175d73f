"""A VQA benchmark folder (docs/vqa-benchmark.md): its loader's one-line errors, and VQAv2's scoring against
the official evaluation's rule written out here by hand (the mean over leaving each human answer out of
min(1, matching others / 3)), with the answers normalized alike."""
import json

import numpy as np
import pytest
from PIL import Image

from spatialprobe.errors import SpatialProbeError
from spatialprobe.vqa import best_constant_score, load_benchmark, normalize_answer, vqa_score


def official(reply: str, answers: list[str]) -> float:
    """VQAv2's evaluation (vqaEval.py) for one question, already-normalized strings."""
    accuracies = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        accuracies.append(min(1.0, sum(a == reply for a in others) / 3))
    return float(np.mean(accuracies))


@pytest.mark.parametrize("humans_agreeing, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqav2_scores_by_how_many_of_ten_humans_agree(humans_agreeing, expected):
    answers = ["2"] * humans_agreeing + ["3"] * (10 - humans_agreeing)
    assert vqa_score("Two.", answers) == pytest.approx(expected)
    assert vqa_score("two", answers) == pytest.approx(official("2", answers))


def test_random_answer_sets_match_the_official_rule():
    rng = np.random.default_rng(0)
    words = ["red", "blue", "2", "yes"]
    for _ in range(200):
        answers = list(rng.choice(words, size=int(rng.integers(3, 11))))
        reply = str(rng.choice(words))
        assert vqa_score(reply, answers) == pytest.approx(official(reply, answers))


def test_normalization_and_short_answer_lists():
    assert normalize_answer("The Umbrella.\nIt is red") == "umbrella"
    assert normalize_answer("An apple, I think") == "apple i think"
    assert vqa_score("an umbrella", ["umbrella"]) == 1.0 and vqa_score("a parasol", ["umbrella", "sunshade"]) == 0.0
    assert vqa_score("Three", ["3", "three"]) == 1.0


def test_the_floor_is_the_best_single_answer_to_every_question(tmp_path):
    folder = benchmark(tmp_path, [("yes", ["yes"] * 10), ("yes", ["yes"] * 10), ("no", ["no"] * 10)])
    questions = load_benchmark(folder)
    assert best_constant_score(questions) == pytest.approx(2 / 3)


def benchmark(tmp_path, items, lines=None):
    folder = tmp_path / "bench"
    (folder / "images").mkdir(parents=True)
    records = []
    for i, (_, answers) in enumerate(items):
        Image.new("RGB", (16, 16)).save(folder / "images" / f"{i}.png")
        records.append(json.dumps({"image": f"images/{i}.png", "question": "Is it?", "answers": answers}))
    (folder / "questions.jsonl").write_text("\n".join(lines if lines is not None else records) + "\n")
    return folder


@pytest.mark.parametrize("line, message", [
    ("{not json", r"questions\.jsonl:2: not JSON"),
    ('{"image": "images/9.png", "question": "Q?", "answers": ["a"]}', r"questions\.jsonl:2: field 'image': 'images/9.png' is not a file"),
    ('{"image": "../outside.png", "question": "Q?", "answers": ["a"]}', r":2: field 'image'"),
    ('{"image": "images/0.png", "question": "", "answers": ["a"]}', r":2: field 'question' must be non-empty"),
    ('{"image": "images/0.png", "question": "Q?", "answers": []}', r":2: field 'answers' must be a non-empty list"),
    ('["images/0.png"]', r":2: expected an object"),
])
def test_a_bad_line_is_one_line_naming_the_file_line_and_field(tmp_path, line, message):
    good = json.dumps({"image": "images/0.png", "question": "Q?", "answers": ["a"]})
    (tmp_path / "outside.png").write_bytes(b"")
    folder = benchmark(tmp_path, [("a", ["a"])], lines=[good, line])
    with pytest.raises(SpatialProbeError, match=message) as info:
        load_benchmark(folder)
    assert "\n" not in str(info.value)


def test_a_folder_without_questions_says_what_it_needs(tmp_path):
    with pytest.raises(SpatialProbeError, match=r"questions\.jsonl not found.*docs/vqa-benchmark\.md"):
        load_benchmark(tmp_path)
