"""RefCOCO / RefCOCO+ / RefCOCOg in the refer annotation format, scored by Acc@0.5.

Layout (the `refer` toolkit's `data/<dataset>/`): `refs(<split_by>).p`, a pickle of
refs (`ref_id`, `ann_id`, `image_id`, `split`, `sentences: [{sent_id, sent}]`), and
`instances.json` (COCO `images` with `file_name`/`width`/`height`, `annotations` with
`bbox` in COCO `[x, y, w, h]` pixels); images are COCO `train2014`. Split-by is
`unc` for refcoco/refcoco+ (splits val, testA, testB) and `umd` or `google` for
refcocog (val, test). Pickles run code when loaded: load only files you trust.

Each sentence is one question on the `grounding` workflow with the release's prompt
(docs/design.md §1). A sentence counts as found when one of the answer's boxes, mapped
to original-image pixels, has IoU >= 0.5 with the ground truth, the rule of the
release's `compute_precision.py` (which also reads every `"; "`-separated box).
Ours clips predicted boxes to the image; with the ground truth inside the image,
clipping never lowers the IoU.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
from dataclasses import dataclass

from iaa_vllm import grounding

IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class Expression:
    id: str            # the sentence id
    split: str
    expression: str
    image_path: str
    width: int
    height: int
    bbox: tuple[float, float, float, float]  # ground truth, COCO [x, y, w, h] pixels

    @property
    def prompt(self) -> str:
        return grounding.question(self.expression)


def refs_file(data_dir: str, split_by: str | None = None) -> str:
    """The `refs(<split_by>).p` in `data_dir`; `split_by` picks one when there are several."""
    if split_by is not None:
        path = os.path.join(data_dir, f"refs({split_by}).p")
        if not os.path.isfile(path):
            raise ValueError(f"no {path!r}")
        return path
    found = sorted(glob.glob(os.path.join(glob.escape(data_dir), "refs(*).p")))
    if len(found) != 1:
        names = [re.search(r"refs\((.*)\)\.p$", p).group(1) for p in found]
        raise ValueError(f"{data_dir!r} must hold exactly one refs(<split_by>).p or pass --split-by; "
                         f"found split_by choices {names}")
    return found[0]


def load(data_dir: str, image_dir: str, splits: list[str] | None = None,
         split_by: str | None = None) -> list[Expression]:
    """Every sentence of the chosen splits (default: every split but train), in file order."""
    with open(refs_file(data_dir, split_by), "rb") as f:
        refs = pickle.load(f, encoding="latin1")  # the refer pickles are Python 2's
    with open(os.path.join(data_dir, "instances.json"), encoding="utf-8") as f:
        instances = json.load(f)
    images = {image["id"]: image for image in instances["images"]}
    boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
    available = sorted({ref["split"] for ref in refs})
    chosen = [s for s in available if s != "train"] if not splits else splits
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; {data_dir!r} has {available}")
    expressions = []
    for ref in refs:
        if ref["split"] not in chosen:
            continue
        image = images[ref["image_id"]]
        for sentence in ref["sentences"]:
            expressions.append(Expression(
                str(sentence["sent_id"]), ref["split"], sentence["sent"],
                os.path.join(image_dir, image["file_name"]), int(image["width"]), int(image["height"]),
                tuple(float(v) for v in boxes[ref["ann_id"]])))
    return expressions


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two `[x1, y1, x2, y2]` boxes; 0 when they do not overlap."""
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    if left >= right or top >= bottom:
        return 0.0
    intersection = (right - left) * (bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union


def is_hit(answer: str, width: int, height: int, bbox_xywh: tuple[float, ...]) -> bool:
    x, y, w, h = bbox_xywh
    truth = (x, y, x + w, y + h)
    return any(iou(box, truth) >= IOU_THRESHOLD for box in grounding.pixel_boxes(answer, width, height))


def score(expressions: list[Expression], answers: dict[str, dict]) -> dict:
    """Acc@0.5 per split over the answered sentences."""
    splits: dict[str, dict] = {}
    for e in expressions:
        if e.id not in answers:
            continue
        s = splits.setdefault(e.split, {"answered": 0, "hits": 0})
        s["answered"] += 1
        s["hits"] += is_hit(answers[e.id]["answer"], e.width, e.height, e.bbox)
    for s in splits.values():
        s["acc"] = s["hits"] / s["answered"]
    return {"splits": splits}


def report(scores: dict) -> str:
    return "\n".join(f"  {split:<8} Acc@0.5 {s['acc'] * 100:6.2f}  ({s['hits']}/{s['answered']})"
                     for split, s in scores["splits"].items())
