"""MME: the two accepted data layouts, the official result files, the official score.

Layouts (docs/design.md §1 prompt: the question, then "\\nAnswer the question using a
single word or phrase."):

- Official `MME_Benchmark_release_version/`: one folder per category, holding either
  the images and one `<image stem>.txt` per image side by side (`existence/`, ...),
  or `images/` and `questions_answers_YN/` (`celebrity/`, ...). Each `.txt` line is
  `question<TAB>Yes|No`; two lines per image.
- LLaVA-style `.jsonl` (`llava_mme.jsonl`): `question_id`, `image` (relative to the
  image folder), `text`, `category`, and `answer` if the file carries it; without
  `answer` the image folder must be the official one and the ground truth is looked
  up there, as LLaVA's `convert_answer_to_mme.py` does.

Scoring is the official eval_tool's `calculation.py`: the prediction is lowercased;
exactly "yes"/"no" stand, else its first 4 characters decide ("yes" in them → yes,
else "no" in them → no, else other). Per category acc = right/questions, acc+ =
images with every question right / images, score = (acc + acc+) x 100; perception
and cognition are the sums over their categories. The official tool pairs lines two
by two; we group by image name, which is the same on well-formed files and does not
mis-pair when an image's questions are not exactly two.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUFFIX = "\nAnswer the question using a single word or phrase."
_YES_NO = " Please answer yes or no."
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Question:
    id: str          # unique: "<category>/<image name>#<n>", n counts that image's questions
    category: str
    image_name: str  # as the result files write it
    image_path: str
    question: str    # as the official question files write it (no SUFFIX)
    answer: str      # ground truth, "Yes" or "No"

    @property
    def prompt(self) -> str:
        return self.question + SUFFIX


def load(data: str, image_folder: str | None = None) -> list[Question]:
    """Questions from an official MME folder, or from a LLaVA-style `.jsonl` + image folder."""
    if os.path.isdir(data):
        return load_official(data)
    if data.endswith(".jsonl") and os.path.isfile(data):
        if image_folder is None:
            raise ValueError(f"{data!r} is a question list: pass the image folder too (--images DIR)")
        return load_jsonl(data, image_folder)
    raise ValueError(f"MME data {data!r} is neither the official folder (one folder per category) "
                     "nor a LLaVA-style .jsonl question list")


def _category_dirs(category_dir: str) -> tuple[str, str]:
    """(image dir, question dir) of one official category folder."""
    if os.path.isdir(os.path.join(category_dir, "images")):
        return os.path.join(category_dir, "images"), os.path.join(category_dir, "questions_answers_YN")
    return category_dir, category_dir


def _question_lines(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected 'question<TAB>answer', got {line!r}")
            pairs.append((fields[0], fields[1].strip()))
    return pairs


def load_official(root: str) -> list[Question]:
    questions = []
    for category in sorted(os.listdir(root)):
        category_dir = os.path.join(root, category)
        if not os.path.isdir(category_dir):
            continue
        image_dir, qa_dir = _category_dirs(category_dir)
        if not os.path.isdir(qa_dir):
            raise ValueError(f"MME category {category!r}: no question folder {qa_dir!r}")
        images = {os.path.splitext(f)[0]: f for f in os.listdir(image_dir)
                  if f.lower().endswith(IMAGE_EXTENSIONS)}
        for txt in sorted(f for f in os.listdir(qa_dir) if f.endswith(".txt")):
            stem = txt[: -len(".txt")]
            image_name = images.get(stem, stem + ".jpg")  # a missing image is reported at run time
            for n, (question, answer) in enumerate(_question_lines(os.path.join(qa_dir, txt))):
                questions.append(Question(f"{category}/{image_name}#{n}", category, image_name,
                                          os.path.join(image_dir, image_name), question, answer))
    if not questions:
        raise ValueError(f"no MME questions under {root!r}: expected one folder per category")
    return questions


def _official_answers(root: str) -> dict[tuple[str, str, str], str]:
    """(category, image stem, question) -> answer, from the official folder."""
    answers = {}
    for category in os.listdir(root):
        category_dir = os.path.join(root, category)
        if not os.path.isdir(category_dir):
            continue
        _, qa_dir = _category_dirs(category_dir)
        if not os.path.isdir(qa_dir):
            continue
        for txt in (f for f in os.listdir(qa_dir) if f.endswith(".txt")):
            for question, answer in _question_lines(os.path.join(qa_dir, txt)):
                answers[(category, txt[: -len(".txt")], question)] = answer
    return answers


def load_jsonl(path: str, image_folder: str) -> list[Question]:
    records = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    official = None if all("answer" in r for r in records) else _official_answers(image_folder)
    questions, seen = [], {}
    for r in records:
        category, image = r["category"], r["image"]
        question = r["text"].replace(SUFFIX.strip(), "").strip()
        answer = r.get("answer")
        if answer is None:
            stem = os.path.splitext(os.path.basename(image))[0]
            # LLaVA's convert_answer_to_mme.py: the official files end questions this way.
            for candidate in (question, question + _YES_NO, question + " " + _YES_NO):
                answer = official.get((category, stem, candidate))
                if answer is not None:
                    question = candidate
                    break
            else:
                raise ValueError(f"{path}: no ground truth for {r['question_id']!r} ({question!r}) "
                                 f"in {image_folder!r}; add an 'answer' field or pass the official folder")
        image_name = os.path.basename(image)
        n = seen[f"{category}/{image_name}"] = seen.get(f"{category}/{image_name}", -1) + 1
        questions.append(Question(f"{category}/{image_name}#{n}", category, image_name,
                                  os.path.join(image_folder, image), question, answer))
    return questions


def _clean(text: str) -> str:
    # A tab or newline inside a prediction would break the tab-separated line.
    return " ".join(text.split())


def write_results(results_dir: str, questions: list[Question], answers: dict[str, dict]) -> list[str]:
    """The official result files: `<category>.txt`, lines `image<TAB>question<TAB>gt<TAB>prediction`.

    Dataset order, answered questions only. Returns the files written; earlier
    `.txt` files in `results_dir` are removed, so the folder scores this run alone.
    """
    os.makedirs(results_dir, exist_ok=True)
    for stale in (f for f in os.listdir(results_dir) if f.endswith(".txt")):
        os.remove(os.path.join(results_dir, stale))
    lines: dict[str, list[str]] = {}
    for q in questions:
        if q.id in answers:
            lines.setdefault(q.category, []).append(
                "\t".join((q.image_name, q.question, q.answer, _clean(answers[q.id]["answer"]))) + "\n")
    paths = []
    for category, category_lines in lines.items():
        paths.append(os.path.join(results_dir, f"{category}.txt"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.writelines(category_lines)
    return paths


def parse_prediction(prediction: str) -> str:
    """The official yes/no/other reading of a prediction."""
    pred = prediction.lower()
    if pred in ("yes", "no"):
        return pred
    if "yes" in pred[:4]:
        return "yes"
    if "no" in pred[:4]:
        return "no"
    return "other"


def score_category(path: str) -> dict:
    """acc, acc+ and score of one official result file."""
    images: dict[str, list[bool]] = {}
    other = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4:
                raise ValueError(f"{path}:{number}: expected 4 tab-separated fields, got {len(fields)}")
            image, _, gt, pred = fields
            gt = gt.lower()
            if gt not in ("yes", "no"):
                raise ValueError(f"{path}:{number}: ground truth must be yes or no, got {fields[2]!r}")
            label = parse_prediction(pred)
            other += label == "other"
            images.setdefault(image, []).append(label == gt)
    results = [r for rs in images.values() for r in rs]
    if not results:
        raise ValueError(f"{path}: no results")
    acc = sum(results) / len(results)
    acc_plus = sum(all(rs) for rs in images.values()) / len(images)
    return {"questions": len(results), "images": len(images), "correct": sum(results),
            "images_all_correct": sum(all(rs) for rs in images.values()), "other": other,
            "acc": acc, "acc_plus": acc_plus, "score": (acc + acc_plus) * 100}


def score(results_dir: str) -> dict:
    """Scores of every `<category>.txt` in `results_dir`, and the perception/cognition totals."""
    categories = sorted(f[: -len(".txt")] for f in os.listdir(results_dir) if f.endswith(".txt"))
    scores = {c: score_category(os.path.join(results_dir, c + ".txt")) for c in categories}
    totals = {}
    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        totals[name] = {"score": sum(scores[c]["score"] for c in group if c in scores),
                        "categories": [c for c in group if c in scores],
                        "missing": [c for c in group if c not in scores]}
    return {"categories": scores, **totals}


def report(scores: dict) -> str:
    lines = []
    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        total = scores[name]
        lines.append(f"{name}: {total['score']:.2f}" +
                     (f"  ({len(total['missing'])} of {len(group)} categories missing)" if total["missing"] else ""))
        for c in total["categories"]:
            s = scores["categories"][c]
            lines.append(f"  {c:<24} {s['score']:7.2f}  acc {s['acc'] * 100:6.2f}  acc+ {s['acc_plus'] * 100:6.2f}"
                         f"  ({s['questions']} questions, {s['other']} other)")
    extra = [c for c in scores["categories"] if c not in PERCEPTION + COGNITION]
    for c in extra:
        s = scores["categories"][c]
        lines.append(f"  {c:<24} {s['score']:7.2f}  (not an MME category; in no total)")
    return "\n".join(lines)
