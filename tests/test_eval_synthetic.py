"""iaa_vllm/eval/synthetic.py: the small datasets are deterministic and their answers are true.

Answers are "known because we drew them": checked here against the pixels.
Loading them through the official layouts is tests/test_eval_mme.py's and
tests/test_eval_refcoco.py's.
"""

from __future__ import annotations

import filecmp
import json
import os
import pickle

from PIL import Image

from iaa_vllm.eval import mme, synthetic

# JPEG moves colours a little; the four drawn colours and the canvas are > 100 apart.
NEAR = 40


def _near(pixel, colour) -> bool:
    return max(abs(a - b) for a, b in zip(pixel, colour)) <= NEAR


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_mme_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert synthetic.write_mme_official(a, broken=True) == synthetic.write_mme_official(b, broken=True) == 16
    assert _files(a) == _files(b)
    assert all(filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in _files(a))


def test_mme_answers_are_what_the_images_show(tmp_path):
    root = str(tmp_path / "MME")
    assert synthetic.write_mme_official(root, images_per_category=3) == 18
    questions = mme.load(root)
    assert len(questions) == 18
    sizes = set()
    for q in questions:
        colour = q.question.split("Is there a ")[1].split(" square")[0]
        with Image.open(q.image_path) as image:
            pixels = list(image.convert("RGB").getdata())
            sizes.add(image.size)
        drawn = sum(_near(p, synthetic.COLOURS[colour]) for p in pixels) > len(pixels) // 50  # box: 1/16
        assert q.answer == ("Yes" if drawn else "No"), (q.id, colour)
    assert sizes == set(synthetic.SIZES)  # wide, tall and square: the padding matters
    assert {q.answer for q in questions} == {"Yes", "No"}


def test_mme_broken_items_are_a_corrupt_and_a_missing_image(tmp_path):
    root = str(tmp_path / "MME")
    synthetic.write_mme_official(root, broken=True)
    broken = {q.image_name: q for q in mme.load(root) if "corrupt" in q.id or "missing" in q.id}
    assert len(broken) == 2
    for q in broken.values():
        assert sum(x.image_path == q.image_path for x in mme.load(root)) == 2  # two questions each
    corrupt = next(q for q in broken.values() if "corrupt" in q.id)
    missing = next(q for q in broken.values() if "missing" in q.id)
    assert os.path.getsize(corrupt.image_path) > 0 and not os.path.exists(missing.image_path)


def test_refer_boxes_are_the_drawn_rectangles(tmp_path):
    data_dir, image_dir = synthetic.write_refer(str(tmp_path), images=5)
    with open(os.path.join(data_dir, "refs(unc).p"), "rb") as f:
        refs = pickle.load(f)
    with open(os.path.join(data_dir, "instances.json")) as f:
        instances = json.load(f)
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    files = {i["id"]: i for i in instances["images"]}
    for ref in refs[:-1]:
        colour = ref["sentences"][0]["sent"].split()[1]
        info = files[ref["image_id"]]
        x, y, w, h = boxes[ref["ann_id"]]
        with Image.open(os.path.join(image_dir, info["file_name"])) as image:
            image = image.convert("RGB")
            assert image.size == (info["width"], info["height"])
            inside = image.getpixel((x + w // 2, y + h // 2))
            corners_out = [image.getpixel((x - 3, y - 3)), image.getpixel((x + w + 3, y + h + 3))]
        assert _near(inside, synthetic.COLOURS[colour]), (ref["ref_id"], inside)
        assert not any(_near(p, synthetic.COLOURS[colour]) for p in corners_out)
        assert all(colour in s["sent"] for s in ref["sentences"])
    splits = [r["split"] for r in refs]
    assert splits == ["val", "testA"] * 2 + ["val", "train"]
    assert refs[-1]["ann_id"] == refs[0]["ann_id"]  # the train ref: a split runs leave out


def test_refer_is_deterministic_and_breaks_two_images(tmp_path):
    a = synthetic.write_refer(str(tmp_path / "a"), images=2, broken=True)
    b = synthetic.write_refer(str(tmp_path / "b"), images=2, broken=True)
    for left, right in zip(a, b):
        assert _files(left) == _files(right)
        assert all(filecmp.cmp(os.path.join(left, f), os.path.join(right, f), shallow=False) for f in _files(left))
    _, image_dir = a
    # Four refs point at images; the third is corrupt and the fourth missing.
    assert _files(image_dir) == [f"COCO_train2014_{i:012d}.jpg" for i in (1, 2, 3)]
    with open(os.path.join(image_dir, "COCO_train2014_000000000003.jpg"), "rb") as f:
        assert not f.read().endswith(b"\xff\xd9")  # no JPEG end marker: it cannot decode


def test_jsonl_lists_every_official_question_with_its_answer(tmp_path):
    jsonl, image_root = synthetic.write_mme_jsonl(str(tmp_path))
    lines = [json.loads(line) for line in open(jsonl, encoding="utf-8")]
    assert len(lines) == 12 and all(os.path.isfile(os.path.join(image_root, r["image"])) for r in lines)
    assert all(r["text"].endswith("\nAnswer the question using a single word or phrase.") for r in lines)
    assert [r["answer"] for r in lines] == ["Yes", "No"] * 6
