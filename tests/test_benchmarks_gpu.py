"""benchmarks/gpu/: the prepared GPU command.

The slow test runs `bash benchmarks/gpu/run.sh --cpu-smoke OUT` end to end with this
test's python (four tiny engines: IAA compiled and eager, the stock Llama cut out of
it and a tiny LLaVA) and checks the JSON: every step ran, each correctness check
holds (text ids equal to stock, mm and grounding answers present and the same when
asked twice, the modes vLLM resolved), the numbers are numbers and the FLOP ratios
are shapes.py's. No timing is asserted. The fast tests check the GPU plan (real
shapes, MME-shaped requests, the priority order fits the default budget), a run
with no time left, the goals' arithmetic and the engine runner's deadline kill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import engine_runner, serving, shapes
from benchmarks.gpu import goals, run, targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_KEYS = ["1_check", "2_smoke", "3_real_shapes", "4_text_vs_stock", "5_eager_vs_graphs", "6_mme_full"]


def run_sh(out, *args, timeout=3900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/gpu/run.sh", "--cpu-smoke", "--python", sys.executable, str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def load(out) -> dict:
    with open(os.path.join(out, "gpu_run.json"), encoding="utf-8") as f:
        return json.load(f)


# -- fast: no engine ---------------------------------------------------------------

def test_gpu_plan_is_real_shapes_in_priority_order(tmp_path):
    args, target = run.parse_args([str(tmp_path), "--models-dir", str(tmp_path / "models")])
    plan = run.plan(run.Run(args, target))
    assert list(plan) == STEP_KEYS[1:5]  # step 6 is optional: only when asked for
    engines = lambda key: [[e["engine"] for e in unit] for unit in plan[key]]  # noqa: E731
    assert engines("3_real_shapes") == [["iaa-14.piecewise", "llava-1.5-13b.piecewise"],
                                        ["iaa-8.piecewise", "llava-llama3-8b.piecewise"]]
    assert engines("4_text_vs_stock") == [["iaa-8.piecewise", "llama-3-8b.piecewise"]]
    assert engines("5_eager_vs_graphs") == [["iaa-14.piecewise", "iaa-14.eager"]]
    for unit in plan["3_real_shapes"]:
        for e in unit:
            assert e["args"]["dtype"] == "bfloat16" and e["args"]["load_format"] == "dummy"
            # IAA's PIECEWISE is its config hook's default; the others ask for it
            assert ("compilation_config" in e["args"]) == (e["kind"] != "iaa")
            (mme,) = [w for w in e["workloads"] if w["name"] == "mme_batch1"]
            assert mme["requests"] >= 20 and mme["max_tokens"] == 3 and mme["mode"] == "sequential"
    (stock,) = [e for e in plan["4_text_vs_stock"][0] if e["kind"] == "llama"]
    assert {w["name"]: (w["requests"], w["mode"]) for w in stock["workloads"]} == {
        "text_b1": (4, "sequential"), "text_b32": (32, "concurrent")}
    # The default budget fits step 1, the smoke and the first pair by the guesses.
    first = [e["estimate_s"] for key in ("2_smoke", "3_real_shapes") for e in plan[key][0]]
    assert run.CHECK_S + sum(first) + run.RESERVE_S <= targets.TARGETS["gpu"].budget_s


def test_mme_requests_are_mme_shaped():
    requests = serving.mme_requests(2374, "mm", seed=10_000, per_image=2)
    images = {tuple(r["image"]) for r in requests}
    assert len(images) == 1187 and all(r["max_tokens"] == 3 for r in requests)
    assert {tuple(i[:2]) for i in images} <= set(serving.MME_SIZES)


def test_no_time_left_skips_every_step_with_its_reason(tmp_path):
    proc = run_sh(tmp_path, "--budget-s", "0", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = load(tmp_path)
    assert report["finished"] and list(report["steps"]) == STEP_KEYS and report["engines"] == {}
    for key, step in report["steps"].items():
        assert step["status"] == "skipped" and "left of --budget-s 0" in step["reason"], (key, step)
    assert all(g["met"] is None and "did not run" in g["why"] for g in report["goals"])


def test_goals_report_misses_as_misses():
    pair = {"iaa": {"latency_s": {"p50": 0.05}}, "latency_ratio_p50": 0.9, "flop_ratio": 0.8}
    steps = {"3_real_shapes": {"result": {"pairs": {"iaa-14/llava-13b": pair}}},
             "4_text_vs_stock": {"result": {"text_b1": {"throughput_ratio": 1.2, "identical_ids": False}}}}
    found = {g["goal"].split(":")[0]: g for g in goals.evaluate(steps)}
    assert found["IAA-14 batch-1 MME latency p50 <= 0.04 s"]["met"] is False
    assert found["iaa-14/llava-13b"]["measured"] == pytest.approx(0.9 / 0.8)
    assert found["iaa-14/llava-13b"]["met"] is False  # 12.5 % off the FLOP ratio
    assert found["IAA-14 latency <= 0.83x LLaVA-1.5-13B (p50)"]["met"] is False
    assert found["text path at batch 1"]["met"] is False  # fast, but the ids differ
    assert found["iaa-8/llava-8b"]["met"] is None and found["text path at batch 32"]["met"] is None


def test_engine_killed_at_its_deadline_leaves_no_process(tmp_path):
    marker = f"gpu-run-test-{os.getpid()}-{time.time()}"
    started = time.time()
    # Killed while it still imports vLLM (several seconds).
    report = engine_runner.run_in_child(str(tmp_path / "no-model"), {}, [], [], env={"IAA_TEST_MARKER": marker},
                                        timeout_s=2, log_path=str(tmp_path / "log"))
    assert report == {"timed_out": True, "timeout_s": 2} and time.time() - started < 60
    assert _processes_with(f"IAA_TEST_MARKER={marker}") == []


def _processes_with(variable: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if variable.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:  # gone, or not ours
            pass
    return found


# -- slow: the whole CPU smoke -------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_run")
    started = time.time()
    proc = run_sh(out, "--models-dir", str(out / "models"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = load(out)
    report["_wall_s"], report["_out"] = time.time() - started, str(out)
    return report


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_every_step_ran_and_every_check_holds(smoke):
    assert smoke["finished"] and smoke["trusted"] and list(smoke["steps"]) == STEP_KEYS
    expected = {
        "1_check": {"vllm_ops"},
        "2_smoke": {"text_deterministic", "mm_deterministic", "grounding_deterministic", "workflows_answered",
                    "text_identical_to_stock", "text_answered", "modes_resolved"},
        "3_real_shapes": {f"{iaa}_{c}" for iaa in ("iaa-14", "iaa-8")
                          for c in ("answered", "same_prompt_tokens", "modes_resolved")},
        "4_text_vs_stock": {"text_b1_identical_ids", "text_b1_answered", "text_b32_identical_ids",
                            "text_b32_answered", "modes_resolved"},
        "5_eager_vs_graphs": {"compiled_answered", "eager_answered", "modes_resolved"},
        "6_mme_full": {"answered", "modes_resolved"},
    }
    for key, step in smoke["steps"].items():
        assert step["status"] == "ran" and step["skipped"] == {}, (key, step.get("status"), step.get("skipped"))
        assert step["checks"] == dict.fromkeys(expected[key], True), key


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_each_step_records_where_it_ran(smoke):
    import torch
    import vllm

    assert smoke["environment"]["vllm"] == vllm.__version__ and smoke["environment"]["torch"] == torch.__version__
    for key, step in smoke["steps"].items():
        assert step["vllm"] == vllm.__version__ and step["torch"] == torch.__version__, key
        assert step["device"] and "run.sh --cpu-smoke" in step["command"], key
        for name, engine in step.get("engines", {}).items():
            assert engine["args"]["dtype"] == "float32" and engine["mode"] in step["modes"], (key, name)
    errors = smoke["steps"]["1_check"]["result"]["vllm_check"]["max_rel_error"]
    assert len(errors) == 5 and all(0 <= e < 1e-4 for e in errors.values())


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_engines_are_shared_and_run_the_mode_asked(smoke):
    engines = smoke["engines"]
    assert set(engines) == {"tiny-iaa.compiled", "tiny-llama.compiled", "tiny-llava.compiled", "tiny-iaa.eager"}
    for name, e in engines.items():
        assert e["status"] == "ok" and e["start_s"] > 0 and e["kv_tokens"] > 0, name
        assert e["compilation"]["mode"] == ("NONE" if e["mode"] == "eager" else "DYNAMO_TRACE_ONCE"), name
        assert sorted(e["workloads_done"]) == sorted(e["workloads_asked"]), name
        assert os.path.getsize(os.path.join(smoke["_out"], e["log"])) > 0
        assert os.path.isfile(os.path.join(smoke["_out"], "engines", name + ".json"))
    # one KV slot per frozen layer and per insertion depth: 4 vs 4 + 3 layers of KV
    assert engines["tiny-llama.compiled"]["kv_tokens"] / engines["tiny-iaa.compiled"]["kv_tokens"] == \
        pytest.approx(7 / 4, rel=0.01)
    assert os.path.getsize(os.path.join(smoke["_out"], "gpu_run.png")) > 0


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_smoke_serves_three_workflows_and_text_equals_stock(smoke):
    counts = targets.TARGETS["cpu-smoke"].counts
    result = smoke["steps"]["2_smoke"]["result"]
    assert result["text_identical_to_stock"] is True
    for wf in ("text", "mm", "grounding"):
        found = result["workflows"][wf]
        assert found["requests"] == counts["smoke_per_workflow"] and found["deterministic"] is True
        assert all(len(ids) == counts["smoke_tokens"] for ids in found["token_ids"])
    # different adapter sets (and prompts): the image workflows do not answer alike
    assert result["workflows"]["mm"]["token_ids"] != result["workflows"]["grounding"]["token_ids"]


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_real_shape_pairs_report_latency_beside_flops(smoke):
    counts = targets.TARGETS["cpu-smoke"].counts
    pairs = smoke["steps"]["3_real_shapes"]["result"]["pairs"]
    assert set(pairs) == {"iaa-14/llava-13b", "iaa-8/llava-8b"}
    for name, pair in pairs.items():
        tokens = round(pair["prompt_tokens"]["iaa"])
        flops = shapes.iaa("tiny").request_flops(tokens, 3) / shapes.llava("tiny").request_flops(tokens, 3)
        assert pair["flop_ratio"] == pytest.approx(flops, rel=1e-12), name
        assert pair["prompt_tokens"]["iaa"] == pair["prompt_tokens"]["llava"] > shapes.IMAGE_TOKENS
        assert 50 <= pair["text_tokens"] <= 80  # "about 64 text tokens"
        for side in ("iaa", "llava"):
            lat, ttft = pair[side]["latency_s"], pair[side]["ttft_s"]
            assert pair[side]["requests"] == counts["mme_batch1"]
            assert 0 < lat["p50"] <= lat["p90"] and 0 < ttft["p50"] <= lat["p90"], (name, side)
        assert pair["latency_ratio_p50"] == pytest.approx(pair["iaa"]["latency_s"]["p50"]
                                                          / pair["llava"]["latency_s"]["p50"])
    measured = {g["goal"]: g for g in smoke["goals"]}
    assert len(measured) == 6 and all(isinstance(g["measured"], float) for g in measured.values())
    assert all(isinstance(g["met"], bool) for g in measured.values())


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_text_path_and_modes_and_mme_full(smoke):
    counts = targets.TARGETS["cpu-smoke"].counts
    text = smoke["steps"]["4_text_vs_stock"]["result"]
    for name, n in (("text_b1", counts["text_b1"]), ("text_b32", counts["text_b32"])):
        row = text[name]
        assert row["identical_ids"] is True and row["iaa"]["requests"] == row["stock"]["requests"] == n
        assert row["throughput_ratio"] == pytest.approx(row["iaa"]["tokens_per_s"] / row["stock"]["tokens_per_s"])
    modes = smoke["steps"]["5_eager_vs_graphs"]["result"]
    assert set(modes["modes"]) == {"compiled", "eager"} and modes["eager_over_graph_mme_latency_p50"] > 0
    assert isinstance(modes["ids_equal_across_modes"], bool)
    full = smoke["steps"]["6_mme_full"]["result"]
    assert full["questions"] == counts["mme_full"] and full["images"] == counts["mme_full"] // 2
    assert full["wall_s"] > 0 and full["start_plus_wall_s"] > full["engine_start_s"]
    print(f"CPU smoke wall time: {smoke['_wall_s']:.0f} s")
