"""iaa_vllm/eval/command.py: `iaa-vllm eval` arguments, and its runs when nothing is left to ask.

Every run here finds its answers already on disk, so no engine starts (the model
path does not exist: starting one would fail the test). Runs that ask the engine
are tests/test_eval_engine.py's.
"""

from __future__ import annotations

import json
import os

import pytest

from iaa_vllm.cli import build_parser, main
from iaa_vllm.eval import command, mme, refcoco, synthetic
from iaa_vllm.eval.store import AnswerStore

NO_MODEL = "/nonexistent/iaa-checkpoint"


def _args(*argv: str):
    return build_parser().parse_args(["eval", *argv])


def test_defaults_and_engine_settings():
    args = _args("mme", NO_MODEL, "--data", "d", "--out", "o")
    assert (args.max_tokens, args.batch_size, args.dtype, args.max_model_len) == (128, 256, "auto", 2048)
    assert (args.ray, args.replicas, args.ray_address, args.ray_batch_size) == (False, 1, None, 16)
    assert args.func is command.main_mme
    kwargs = command.engine_kwargs(args)
    assert kwargs == dict(dtype="auto", max_model_len=2048, seed=0, tensor_parallel_size=1,
                          enable_prefix_caching=True)  # vLLM's own memory default unless given
    args = _args("refcoco", NO_MODEL, "--data", "d", "--images", "i", "--out", "o",
                 "--gpu-memory-utilization", "0.3", "--tensor-parallel-size", "2", "--splits", "val", "testA")
    assert command.engine_kwargs(args)["gpu_memory_utilization"] == 0.3
    assert command.engine_kwargs(args)["tensor_parallel_size"] == 2
    assert (args.splits, args.func) == (["val", "testA"], command.main_refcoco)


@pytest.mark.parametrize("argv, message", [
    (["coco", NO_MODEL], "invalid choice: 'coco' (choose from 'mme', 'refcoco', 'mme-score')"),
    (["mme", NO_MODEL, "--data", "d"], "the following arguments are required: --out"),
    (["refcoco", NO_MODEL, "--data", "d", "--out", "o"], "the following arguments are required: --images"),
    (["mme", NO_MODEL, "--data", "d", "--out", "o", "--max-tokens", "many"], "invalid int value: 'many'"),
    (["mme", NO_MODEL, "--data", "d", "--out", "o", "--replicas", "1.5"], "invalid int value: '1.5'"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _args(*argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_split_is_named_before_any_engine_starts(tmp_path, capsys):
    data_dir, image_dir = synthetic.write_refer(str(tmp_path / "refer"), images=2)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "refcoco", NO_MODEL, "--data", data_dir, "--images", image_dir,
              "--out", str(tmp_path / "out"), "--splits", "val", "testB"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("iaa-vllm eval: error: unknown split(s) ['testB']") and "'testA'" in err and "'val'" in err


def test_a_finished_mme_run_scores_without_an_engine(tmp_path, capsys):
    data, out = str(tmp_path / "MME"), str(tmp_path / "out")
    synthetic.write_mme_official(data, images_per_category=2)
    questions = mme.load(data)
    with AnswerStore(os.path.join(out, "answers.jsonl")) as store:  # every prediction "Yes"
        for q in questions:
            store.append({"id": q.id, "answer": "Yes"})
    assert command.main_mme(_args("mme", NO_MODEL, "--data", data, "--out", out, "--no-progress")) == 0
    printed = capsys.readouterr().out
    assert "0 answered in 0.0 s" in printed and f"({len(questions)} already done, 0 skipped)" in printed
    assert sorted(os.listdir(out)) == ["answers.jsonl", "results", "scores.json", "skipped.json"]
    assert json.load(open(os.path.join(out, "skipped.json"))) == {}
    scores = json.load(open(os.path.join(out, "scores.json")))
    # "Yes" is right on half the questions and never on both of an image's: acc 50, acc+ 0.
    assert {c: s["score"] for c, s in scores["categories"].items()} == \
        {"celebrity": 50.0, "code_reasoning": 50.0, "existence": 50.0}
    assert scores["perception"]["score"] == 100.0 and "perception: 100.00" in printed
    assert sorted(os.listdir(os.path.join(out, "results"))) == \
        ["celebrity.txt", "code_reasoning.txt", "existence.txt"]


def test_a_finished_refcoco_run_scores_without_an_engine(tmp_path, capsys):
    data_dir, image_dir = synthetic.write_refer(str(tmp_path / "refer"), images=4)
    out = str(tmp_path / "out")
    expressions = refcoco.load(data_dir, image_dir, splits=["val"])
    with AnswerStore(os.path.join(out, "answers.jsonl")) as store:
        for e in expressions:  # the whole padded square: a miss on every box
            store.append({"id": e.id, "answer": "[0, 0, 1, 1]"})
    args = _args("refcoco", NO_MODEL, "--data", data_dir, "--images", image_dir, "--out", out,
                 "--splits", "val", "--no-progress")
    assert command.main_refcoco(args) == 0
    scores = json.load(open(os.path.join(out, "scores.json")))
    assert scores["splits"] == {"val": {"answered": 4, "hits": 0, "acc": 0.0}}
    assert "(4 already done, 0 skipped)" in capsys.readouterr().out


def test_mme_score_reports_a_results_folder(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "existence.txt").write_text("a.jpg\tq?\tYes\tyes\na.jpg\tq?\tNo\tno\n", encoding="utf-8")
    assert main(["eval", "mme-score", str(results)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("perception: 200.00")  # acc 100 + acc+ 100
