"""The semantic check: questions from annotations, the VLM's own generate, exact match, a floor."""
import pytest

import spatialprobe as sp
from spatialprobe.data import generate_synthetic_shapes, load_coco
from spatialprobe.testing import save_tiny
from spatialprobe.vqa import Question, constant_answer_floor, first_word, make_questions, vqa_records


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("v")
    one = generate_synthetic_shapes(root / "one", n_train=12, n_val=0, n_test=6, image_size=56)
    two = generate_synthetic_shapes(root / "two", n_train=12, n_val=0, n_test=6, image_size=56, objects_per_image=2)
    return load_coco(one, "test"), load_coco(two, "test"), load_coco(one, "train")


def test_questions_follow_the_annotations(shapes):
    one, two, _ = shapes
    questions = make_questions(one)
    first = [q for q in questions if q.image == 0]
    ann = one.records[0].annotations[0]
    assert {q.kind for q in first} == {"count", "shape", "colour"}
    assert next(q for q in first if q.kind == "shape").answer == one.categories[ann["category_id"]]
    assert next(q for q in first if q.kind == "colour").answer == ann["attributes"]["colour"]
    assert next(q for q in first if q.kind == "count").answer == "one"
    for q in (q for q in make_questions(two) if q.kind == "position"):
        a, b = two.records[q.image].annotations[:2]
        left = a["bbox"][0] + a["bbox"][2] / 2 < b["bbox"][0] + b["bbox"][2] / 2
        assert q.answer == ("yes" if left else "no")


def test_exact_match_and_floor_by_hand():
    assert first_word(" Circle.") == "circle" and first_word("") == ""
    train = [Question(0, "shape", "", a) for a in ("star", "star", "circle")] + [Question(0, "count", "", "one")]
    test = [Question(0, "shape", "", "star"), Question(0, "shape", "", "circle"), Question(0, "count", "", "one")]
    assert constant_answer_floor(train, test) == pytest.approx(2 / 3)  # "star" and "one" are right


def test_tiny_qwen_answers_with_its_own_generate(shapes, tmp_path):
    one, _, train = shapes
    qwen = sp.load_backbone("qwen2_5_vl", str(save_tiny("qwen2_5_vl", tmp_path / "q")), resolution=56)
    replies = qwen.answer([one.load_image(0)], ["What shape is in the image? Answer with one word."], max_new_tokens=3)
    assert len(replies) == 1 and isinstance(replies[0], str)
    (record,) = vqa_records(qwen, train, one, n_boot=50, limit=6)
    assert record["metric"] == "vqa_accuracy" and record["n"] == 6 and 0 <= record["value"] <= 1
    assert record["ci_low"] <= record["value"] <= record["ci_high"] and record["ceiling"] == 1.0


def test_relative_accuracy_against_the_baseline():
    from spatialprobe.vqa import relative_records

    rows = [{"model": m, "task": "vqa", "metric": "vqa_accuracy", "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1,
             "floor": 0.2} for m, v in (("base", 0.8), ("new", 0.76))]
    relative = {r["model"]: r for r in relative_records(rows, "base")}
    assert relative["new"]["value"] == pytest.approx(0.95) and relative["base"]["value"] == pytest.approx(1.0)
    assert relative_records(rows, "absent") == []
