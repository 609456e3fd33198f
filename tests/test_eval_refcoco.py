"""RefCOCO in the refer format: loading, IoU and Acc@0.5 against hand-computed numbers."""

from __future__ import annotations

import pytest

from iaa_vllm.eval import refcoco, synthetic


def test_iou_hand_computed():
    assert refcoco.iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert refcoco.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert refcoco.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert refcoco.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_hits_map_square_coordinates_to_pixels():
    # A 200x100 image sits 50 px down in its 200 px square; ground truth xywh (20, 10, 40, 30).
    gt = (20, 10, 40, 30)
    assert refcoco.is_hit("[0.1, 0.3, 0.3, 0.45]", 200, 100, gt)        # IoU 1
    assert not refcoco.is_hit("[0.2, 0.3, 0.4, 0.45]", 200, 100, gt)    # 20 px right: IoU 1/3
    assert not refcoco.is_hit("[0.1, 0.05, 0.3, 0.2]", 200, 100, gt)    # the padding ignored: miss
    assert refcoco.is_hit("[0.5, 0.5, 0.6, 0.6]; [0.1, 0.3, 0.3, 0.45]", 200, 100, gt)  # any box, as the release
    assert not refcoco.is_hit("[0.1, 0.3]", 200, 100, gt)
    assert not refcoco.is_hit("a cat", 200, 100, gt)


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return synthetic.write_refer(str(tmp_path_factory.mktemp("refer")), images=4)


def test_load_refer_format(refer):
    data_dir, image_dir = refer
    expressions = refcoco.load(data_dir, image_dir)
    assert [e.id for e in expressions] == ["0", "1", "2", "3", "4", "5", "6", "7"]  # train left out
    assert [e.split for e in expressions[:4]] == ["val", "val", "testA", "testA"]
    first = expressions[0]
    assert (first.expression, first.width, first.height, first.bbox) == ("the red rectangle", 320, 240, (64, 80, 106, 60))
    assert first.prompt == ("Please provide the bounding box coordinate of the region this sentence "
                            "describes: the red rectangle")
    assert first.image_path.endswith("train2014/COCO_train2014_000000000001.jpg")
    assert {e.split for e in refcoco.load(data_dir, image_dir, splits=["val"])} == {"val"}
    assert len(refcoco.load(data_dir, image_dir, splits=["train"])) == 1
    with pytest.raises(ValueError, match=r"unknown split.*testB"):
        refcoco.load(data_dir, image_dir, splits=["testB"])
    with pytest.raises(ValueError, match="no .*refs\\(umd\\)"):
        refcoco.load(data_dir, image_dir, split_by="umd")


def test_acc_per_split_hand_computed(refer):
    from iaa_vllm import grounding

    expressions = {e.id: e for e in refcoco.load(*refer)}

    def right(sent_id):
        e = expressions[sent_id]
        x, y, w, h = e.bbox
        return grounding.format_boxes([grounding.to_normalised((x, y, x + w, y + h), e.width, e.height)], digits=4)

    answers = {"0": right("0"), "1": right("1"), "4": "[0, 0, 0.01, 0.01]",          # val: 2 of 3, "5" unanswered
               "2": right("2"), "3": "no idea", "6": right("6"), "7": right("7")}    # testA: 3 of 4
    scores = refcoco.score(list(expressions.values()), {k: {"answer": v} for k, v in answers.items()})
    assert scores["splits"]["val"] == {"answered": 3, "hits": 2, "acc": pytest.approx(2 / 3)}
    assert scores["splits"]["testA"] == {"answered": 4, "hits": 3, "acc": pytest.approx(3 / 4)}
