"""iaa_vllm/eval/store.py: the answer file survives a kill in the middle of a write."""

from __future__ import annotations

from iaa_vllm.eval.store import AnswerStore


def test_store_drops_a_torn_last_line_and_keeps_appending(tmp_path):
    path = str(tmp_path / "answers.jsonl")
    with AnswerStore(path) as store:
        for i in range(3):
            store.append({"id": f"q{i}", "answer": "yes"})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "q3", "ans')  # a kill in the middle of a write
    with AnswerStore(path) as store:
        assert sorted(store.records) == ["q0", "q1", "q2"] and "q3" not in store
        store.append({"id": "q3", "answer": "no"})
    with AnswerStore(path) as store:
        assert len(store) == 4 and store.records["q3"]["answer"] == "no"
    assert len(open(path, encoding="utf-8").read().splitlines()) == 4
