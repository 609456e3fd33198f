"""MME data layouts, result files and the official score, against hand-computed numbers."""

from __future__ import annotations

import os

import pytest

from iaa_vllm.eval import mme, synthetic


@pytest.mark.parametrize("prediction, label", [
    ("Yes", "yes"), ("no", "no"), ("no.", "no"), ("YES, there is", "yes"), (" yes", "yes"),
    ("not sure", "no"),       # "no" inside the first four characters: the official rule
    ("nope", "no"), ("none", "no"),
    ("I think no", "other"),  # the answer word comes too late
    ("maybe yes", "other"), ("", "other"), ("y", "other"),
])
def test_parse_prediction_is_the_official_rule(prediction, label):
    assert mme.parse_prediction(prediction) == label


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines("\t".join(row) + "\n" for row in rows)


def test_score_against_hand_computed_numbers(tmp_path):
    _write(tmp_path / "existence.txt", [
        ("1.jpg", "q?", "Yes", "Yes"), ("1.jpg", "q?", "No", "no."),             # both right
        ("2.jpg", "q?", "Yes", "not sure"), ("2.jpg", "q?", "No", "No"),         # one right
        ("3.jpg", "q?", "Yes", "yES, there is"), ("3.jpg", "q?", "No", "I think no"),  # one right, one other
    ])
    _write(tmp_path / "count.txt", [
        ("a.png", "q?", "Yes", "Yes"), ("a.png", "q?", "No", "yes"),
        ("b.png", "q?", "No", "nope"), ("b.png", "q?", "Yes", " yes"),
    ])
    _write(tmp_path / "code_reasoning.txt", [
        ("c.png", "q?", "Yes", "The answer is yes"), ("c.png", "q?", "No", "No"),
    ])
    scores = mme.score(str(tmp_path))
    existence = scores["categories"]["existence"]
    # acc 4/6, acc+ 1/3 -> (2/3 + 1/3) * 100
    assert (existence["correct"], existence["questions"], existence["images_all_correct"]) == (4, 6, 1)
    assert existence["other"] == 1
    assert existence["score"] == pytest.approx(100.0)
    # acc 3/4, acc+ 1/2 -> 125
    assert scores["categories"]["count"]["score"] == pytest.approx(125.0)
    # acc 1/2, acc+ 0 -> 50
    assert scores["categories"]["code_reasoning"]["score"] == pytest.approx(50.0)
    assert scores["perception"]["score"] == pytest.approx(225.0)
    assert scores["cognition"]["score"] == pytest.approx(50.0)
    assert scores["perception"]["categories"] == ["existence", "count"]
    assert len(scores["perception"]["missing"]) == 8 and scores["cognition"]["missing"][0] == "commonsense_reasoning"
    assert "perception: 225.00" in mme.report(scores)


def test_score_rejects_a_bad_ground_truth(tmp_path):
    _write(tmp_path / "color.txt", [("1.jpg", "q?", "Maybe", "yes")])
    with pytest.raises(ValueError, match="yes or no"):
        mme.score(str(tmp_path))


def test_both_layouts_give_the_same_questions(tmp_path):
    synthetic.write_mme_official(str(tmp_path / "official"))
    official = mme.load(str(tmp_path / "official"))
    jsonl, images = synthetic.write_mme_jsonl(str(tmp_path / "llava"))
    listed = mme.load(jsonl, images)
    assert len(official) == len(listed) == 12
    key = lambda q: (q.category, q.question, q.answer)  # noqa: E731
    assert sorted(map(key, official)) == sorted(map(key, listed))
    assert len({q.id for q in listed}) == 12  # LLaVA's question ids repeat per image; ours do not
    nested = [q for q in official if q.category == "celebrity"]
    assert nested and all(os.sep + "images" + os.sep in q.image_path for q in nested)
    assert all(os.path.isfile(q.image_path) for q in official + listed)
    assert official[0].prompt.endswith("Please answer yes or no.\nAnswer the question using a single word or phrase.")


def test_jsonl_without_answers_takes_the_official_ground_truth(tmp_path):
    """LLaVA's llava_mme.jsonl has no answers: they come from the official folder."""
    root = str(tmp_path / "MME_Benchmark_release_version")
    synthetic.write_mme_official(root)
    expected = {(q.category, q.image_name, q.question): q.answer for q in mme.load(root)}
    with open(tmp_path / "llava_mme.jsonl", "w", encoding="utf-8") as f:
        for n, (category, image_name, question) in enumerate(expected):
            folder = f"{category}/images" if category == "celebrity" else category
            if n % 2:  # convert_answer_to_mme.py also matches texts without the yes/no request
                question = question.replace(" Please answer yes or no.", "")
            f.write(f'{{"question_id": "{folder}/{image_name}", "image": "{folder}/{image_name}", '
                    f'"category": "{category}", "text": "{question}\\nAnswer the question using a single word or phrase."}}\n')
    listed = mme.load(str(tmp_path / "llava_mme.jsonl"), root)
    assert {(q.category, q.image_name, q.question): q.answer for q in listed} == expected


def test_result_files_are_the_official_format(tmp_path):
    questions = mme.load_official(_official(tmp_path))
    answers = {q.id: {"id": q.id, "answer": "Yes\tindeed\nreally"} for q in questions[:-1]}
    paths = mme.write_results(str(tmp_path / "results"), questions, answers)
    assert sorted(os.path.basename(p) for p in paths) == ["celebrity.txt", "code_reasoning.txt", "existence.txt"]
    lines = open(tmp_path / "results" / "celebrity.txt", encoding="utf-8").read().splitlines()
    first = next(q for q in questions if q.category == "celebrity")
    assert lines[0] == f"{first.image_name}\t{first.question}\t{first.answer}\tYes indeed really"
    assert sum(len(open(p).readlines()) for p in paths) == len(questions) - 1  # unanswered: not written
    # Every prediction reads "yes": right on the 6 "Yes" questions, so acc 1/2, acc+ 0 everywhere.
    scores = mme.score(str(tmp_path / "results"))
    assert scores["categories"]["celebrity"]["score"] == pytest.approx(50.0)


def _official(tmp_path) -> str:
    root = str(tmp_path / "official")
    synthetic.write_mme_official(root)
    return root
