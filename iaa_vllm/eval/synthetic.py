"""Small datasets in the official layouts with known answers, for tests and smoke runs.

Images are drawn shapes on plain canvases of several sizes (wide, tall, square,
so the square padding matters); the answers are known because we drew them.
`broken` adds one item whose image is missing and one whose file is not an image.
"""

from __future__ import annotations

import json
import os
import pickle

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 80, 220), "green": (40, 170, 60), "yellow": (240, 200, 0)}
SIZES = [(320, 240), (200, 300), (256, 256)]
# category -> whether it uses the images/ + questions_answers_YN/ sub-folders
MME_CATEGORIES = {"existence": False, "celebrity": True, "code_reasoning": False}


def _square_image(path: str, size: tuple[int, int], colour: str, box: tuple[int, int, int, int]) -> None:
    image = Image.new("RGB", size, (245, 245, 235))
    ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
    image.save(path)


def _mme_image(index: int) -> tuple[tuple[int, int], str, str, tuple[int, int, int, int]]:
    """Size, the colour drawn, a colour not drawn, the box, for image `index`."""
    names = list(COLOURS)
    width, height = SIZES[index % len(SIZES)]
    return (width, height), names[index % 4], names[(index + 1) % 4], (width // 4, height // 4, width // 2, height // 2)


def _mme_questions(colour: str, absent: str) -> list[tuple[str, str]]:
    return [(f"Is there a {colour} square in this image? Please answer yes or no.", "Yes"),
            (f"Is there a {absent} square in this image? Please answer yes or no.", "No")]


def write_mme_official(root: str, images_per_category: int = 2, broken: bool = False) -> int:
    """An official-layout MME folder; returns its number of questions (broken ones included)."""
    count = 0
    for c, (category, nested) in enumerate(MME_CATEGORIES.items()):
        image_dir = os.path.join(root, category, "images") if nested else os.path.join(root, category)
        qa_dir = os.path.join(root, category, "questions_answers_YN") if nested else image_dir
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(qa_dir, exist_ok=True)
        for i in range(images_per_category):
            size, colour, absent, box = _mme_image(c * images_per_category + i)
            stem = f"{category[:3]}{i:04d}"
            _square_image(os.path.join(image_dir, stem + (".png" if i % 2 else ".jpg")), size, colour, box)
            with open(os.path.join(qa_dir, stem + ".txt"), "w", encoding="utf-8") as f:
                f.writelines(f"{q}\t{a}\n" for q, a in _mme_questions(colour, absent))
            count += 2
    if broken:
        category_dir = os.path.join(root, "existence")
        with open(os.path.join(category_dir, "corrupt.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{q}\t{a}\n" for q, a in _mme_questions("red", "blue"))
        with open(os.path.join(category_dir, "corrupt.jpg"), "wb") as f:
            f.write(b"not a jpeg at all")
        with open(os.path.join(category_dir, "missing.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{q}\t{a}\n" for q, a in _mme_questions("green", "red"))
        count += 4
    return count


def write_mme_jsonl(root: str, images_per_category: int = 2) -> tuple[str, str]:
    """A LLaVA-style question list (with answers) + image folder; returns (jsonl, image folder)."""
    image_root = os.path.join(root, "images")
    lines = []
    for c, category in enumerate(MME_CATEGORIES):
        os.makedirs(os.path.join(image_root, category), exist_ok=True)
        for i in range(images_per_category):
            size, colour, absent, box = _mme_image(c * images_per_category + i)
            image = f"{category}/{category[:3]}{i:04d}.png"
            _square_image(os.path.join(image_root, image), size, colour, box)
            for q, a in _mme_questions(colour, absent):
                lines.append({"question_id": image, "image": image, "category": category,
                              "text": q + "\nAnswer the question using a single word or phrase.", "answer": a})
    path = os.path.join(root, "llava_mme.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return path, image_root


def write_refer(root: str, images: int = 4, broken: bool = False) -> tuple[str, str]:
    """A refer-format RefCOCO folder (`refs(unc).p`, `instances.json`) + COCO-style images.

    Splits alternate val/testA; each image has one ref with two sentences. Returns
    (refer folder, image folder).
    """
    data_dir, image_dir = os.path.join(root, "refcoco"), os.path.join(root, "train2014")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    refs, coco_images, annotations = [], [], []
    names = list(COLOURS)
    for i in range(images + (2 if broken else 0)):
        width, height = SIZES[i % len(SIZES)]
        colour = names[i % 4]
        x, y, w, h = width // 5 + 7 * i, height // 3, width // 3, height // 4
        file_name = f"COCO_train2014_{i + 1:012d}.jpg"
        if i < images:
            _square_image(os.path.join(image_dir, file_name), (width, height), colour, (x, y, x + w, y + h))
        elif i == images:  # corrupt; the one after it is missing
            with open(os.path.join(image_dir, file_name), "wb") as f:
                f.write(b"\xff\xd8\xff broken")
        coco_images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        annotations.append({"id": 100 + i, "image_id": i + 1, "bbox": [x, y, w, h], "category_id": 1})
        refs.append({"ref_id": i, "ann_id": 100 + i, "image_id": i + 1, "category_id": 1,
                     "split": "val" if i % 2 == 0 else "testA", "sent_ids": [2 * i, 2 * i + 1],
                     "file_name": f"COCO_train2014_{i + 1:012d}_{100 + i}.jpg",
                     "sentences": [{"sent_id": 2 * i, "sent": f"the {colour} rectangle"},
                                   {"sent_id": 2 * i + 1, "sent": f"{colour} box on the left"}]})
    refs.append({**refs[0], "ref_id": 999, "split": "train", "sent_ids": [999],
                 "sentences": [{"sent_id": 999, "sent": "a training sentence"}]})
    with open(os.path.join(data_dir, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    with open(os.path.join(data_dir, "instances.json"), "w", encoding="utf-8") as f:
        json.dump({"images": coco_images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "shape"}]}, f)
    return data_dir, image_dir
