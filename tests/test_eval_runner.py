"""iaa_vllm/eval/runner.py: resume, top-up, skips and stats, without an engine.

The runner's own bookkeeping is checked here against a scripted engine: a
small class with the two methods `run_local` calls (`add_request`, `step`) that
answers in a known order. What the real engine answers, a killed and resumed
CLI run, and the Ray path run in tests/test_eval_engine.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from PIL import Image

from iaa_vllm.eval import runner
from iaa_vllm.eval.store import AnswerStore
from iaa_vllm.tokenizer import build_prompt


@dataclass
class Item:
    id: str
    image_path: str
    question: str

    @property
    def prompt(self) -> str:
        return self.question


def _output(request_id: str, text: str, tokens: int, finished: bool = True):
    return SimpleNamespace(request_id=request_id, finished=finished,
                           outputs=[SimpleNamespace(text=text, token_ids=list(range(tokens)))])


class ScriptedEngine:
    """Finishes the oldest request each step: answer `  answer <id> ` (padded), id-length tokens."""

    def __init__(self, refuse: tuple[str, ...] = ()):
        self.added, self.in_flight, self.in_flight_per_step = [], [], []
        self.refuse = refuse

    def add_request(self, request_id, prompt, params):
        if request_id in self.refuse:
            raise ValueError(f"refused {request_id}")
        self.added.append((request_id, prompt, params))
        self.in_flight.append(request_id)

    def step(self):
        assert self.in_flight, "step() with nothing in flight waits forever on a real engine"
        self.in_flight_per_step.append(len(self.in_flight))
        request_id = self.in_flight.pop(0)
        # An unfinished output first: only finished ones are answers.
        return [_output(request_id, "partial", 1, finished=False),
                _output(request_id, f"  answer {request_id} \n", len(request_id))]


@pytest.fixture
def items(tmp_path) -> list[Item]:
    paths = []
    for i, (size, mode) in enumerate([((30, 20), "RGB"), ((16, 40), "L"), ((25, 25), "RGBA")] * 2):
        path = str(tmp_path / f"image{i}.png")
        Image.new(mode, size).save(path)
        paths.append(path)
    return [Item(f"q{i}", path, f"question {i}?") for i, path in enumerate(paths)]


def _run(engine, items, store, **kwargs):
    return runner.run_local(SimpleNamespace(llm_engine=engine), items, store, "grounding",
                            max_tokens=5, progress=False, **kwargs)


def test_only_unanswered_items_are_sent_and_every_answer_is_stored(tmp_path, items):
    store = AnswerStore(str(tmp_path / "answers.jsonl"))
    store.append({"id": "q1", "answer": "old"})
    store.append({"id": "q4", "answer": "old"})
    engine = ScriptedEngine()
    stats = _run(engine, items, store)
    assert [request_id for request_id, _, _ in engine.added] == ["q0", "q2", "q3", "q5"]
    assert {k: r["answer"] for k, r in store.records.items()} == {
        "q0": "answer q0", "q1": "old", "q2": "answer q2", "q3": "answer q3", "q4": "old", "q5": "answer q5"}
    assert (stats.answered, stats.resumed, stats.tokens, stats.skipped) == (4, 2, 8, {})
    store.close()
    with AnswerStore(store.path) as reopened:  # appended to disk as they came
        assert reopened.records == store.records


def test_requests_carry_the_prompt_the_image_and_the_workflow(tmp_path, items):
    engine = ScriptedEngine()
    with AnswerStore(str(tmp_path / "answers.jsonl")) as store:
        _run(engine, items[:2], store)
    (_, first, params), (_, second, _) = engine.added
    assert first["prompt"] == build_prompt("question 0?", with_image=True)
    image = second["multi_modal_data"]["image"]
    assert (image.mode, image.size) == ("RGB", (16, 40))  # a grey-scale file, converted
    assert (params.temperature, params.max_tokens, params.extra_args) == (0.0, 5, {"iaa_workflow": "grounding"})


def test_the_engine_is_topped_up_to_max_in_flight(tmp_path, items):
    engine = ScriptedEngine()
    with AnswerStore(str(tmp_path / "answers.jsonl")) as store:
        stats = _run(engine, items, store, max_in_flight=4)
    # Refilled after every answer while items remain, then drained.
    assert engine.in_flight_per_step == [4, 4, 4, 3, 2, 1]
    assert stats.answered == 6


def test_bad_images_and_refused_requests_are_skipped_by_name(tmp_path, items):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg")
    bad = [Item("missing", str(tmp_path / "nowhere.png"), "q?"), Item("corrupt", str(corrupt), "q?")]
    engine = ScriptedEngine(refuse=("q2",))
    with AnswerStore(str(tmp_path / "answers.jsonl")) as store:
        stats = _run(engine, bad[:1] + items[:3] + bad[1:], store)
        assert sorted(store.records) == ["q0", "q1"]
    assert sorted(stats.skipped) == ["corrupt", "missing", "q2"]
    assert stats.skipped["missing"].startswith("FileNotFoundError: ") and "nowhere.png" in stats.skipped["missing"]
    assert stats.skipped["corrupt"].startswith("UnidentifiedImageError: ")
    assert stats.skipped["q2"] == "ValueError: refused q2"
    assert "missing" not in [r for r, _, _ in engine.added]


def test_a_run_with_only_bad_items_ends_without_stepping(tmp_path):
    engine = ScriptedEngine()  # step() with nothing in flight fails the test
    with AnswerStore(str(tmp_path / "answers.jsonl")) as store:
        stats = _run(engine, [Item("gone", str(tmp_path / "gone.png"), "q?")], store)
    assert (stats.answered, list(stats.skipped), engine.in_flight_per_step) == (0, ["gone"], [])


def test_load_image_decodes_now_and_returns_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 3), (10, 20, 30, 40)).save(path)
    image = runner.load_image(str(path))
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (5, 3), (10, 20, 30))
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:80])
    with pytest.raises(OSError):
        runner.load_image(str(truncated))


def test_summary_rates():
    stats = runner.RunStats(answered=10, resumed=3, skipped={"x": "why"}, tokens=100, seconds=4.0)
    assert stats.summary() == ("10 answered in 4.0 s: 2.50 questions/s, 25.0 generated tokens/s "
                               "(3 already done, 1 skipped)")
    stats.replicas, stats.start_seconds = {11, 12}, 30.0
    assert stats.summary().endswith("; answers from 2 replicas, the first after 30.0 s "
                                    "(Ray and engine start), the rate counted from it")
    assert "0.00 questions/s" in runner.RunStats(resumed=5).summary()  # nothing run: no division by 0


def test_a_replica_returns_one_row_per_item_in_order(tmp_path, items):
    """Ray's batch function: answers stay with their ids when a bad image drops out of the generate call."""
    class ScriptedLLM:
        def generate(self, requests, params, use_tqdm):
            self.requests = requests
            return [_output("", f" about {r['prompt'].split('question ')[1][:2]} ", 3) for r in requests]

    replica = runner._Replica.__new__(runner._Replica)  # its engine start is the Ray test's
    replica.llm, replica.params = ScriptedLLM(), None
    batch = {"id": ["q0", "bad", "q2"], "prompt": ["question 0?", "question 1?", "question 2?"],
             "image_path": [items[0].image_path, str(tmp_path / "none.png"), items[2].image_path]}
    rows = replica(batch)
    assert len(replica.llm.requests) == 2
    assert sorted(zip(rows["id"], rows["answer"], rows["tokens"])) == [
        ("bad", "", 0), ("q0", "about 0?", 3), ("q2", "about 2?", 3)]
    error = dict(zip(rows["id"], rows["error"]))
    assert error["bad"].startswith("FileNotFoundError") and error["q0"] == error["q2"] == ""
    assert rows["replica"] == [os.getpid()] * 3


def test_ray_start_is_retried_only_on_the_startup_timeout(monkeypatch):
    calls = []

    def init(**kwargs):
        calls.append(kwargs["address"])
        if calls.count(kwargs["address"]) < 3:
            raise Exception("The current node timed out during startup.")

    ray = SimpleNamespace(init=init, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", ray)
    runner._init_ray("local")
    assert calls == ["local", "shutdown", "local", "shutdown", "local"]  # third try succeeds

    def broken(**kwargs):
        raise Exception("address refused")

    ray.init, calls[:] = broken, []
    with pytest.raises(Exception, match="address refused"):
        runner._init_ray(None)
    assert calls == []
