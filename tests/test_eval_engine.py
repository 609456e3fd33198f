"""`iaa-vllm eval` on the real engine and the tiny checkpoint: kill and resume, Ray, both evals.

Order matters for the machine, not for correctness: the two subprocess runs (a
killed CLI run, then the Ray run with its two engines) come first, and this module
runs before the other users of the shared in-process engine (tests/conftest.py), so
they never overlap it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from iaa_vllm.cli import build_parser
from iaa_vllm.eval import command, mme, refcoco, synthetic
from tests import engines

ENGINE = ["--dtype", "float32", "--gpu-memory-utilization", "0.3", "--max-model-len", "2048"]
MAX_TOKENS = "12"
GOOD_MME, BROKEN_MME = 24, 4     # 3 categories x 4 images x 2 questions; a corrupt and a missing image
GOOD_REFS, BROKEN_REFS = 8, 4    # 4 images x 2 sentences; a corrupt and a missing image


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval-data")
    assert synthetic.write_mme_official(str(root / "MME"), images_per_category=4, broken=True) == GOOD_MME + BROKEN_MME
    refer_dir, coco_dir = synthetic.write_refer(str(root / "refer"), images=4, broken=True)
    return {"mme": str(root / "MME"), "refer": refer_dir, "coco": coco_dir, "root": root}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "iaa_vllm.cli", "eval", *args]


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _answers(out: str) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in map(json.loads, _lines(os.path.join(out, "answers.jsonl")))}


@pytest.fixture(scope="module")
def killed_run(tiny_dir, data) -> dict:
    """The MME CLI run, killed (SIGKILL, engine and all) once 3 answers are on disk."""
    out = str(data["root"] / "mme-resumed")
    answers = os.path.join(out, "answers.jsonl")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    # --batch-size 1: one request at a time, so the kill lands mid-run.
    process = subprocess.Popen(_cli("mme", tiny_dir, "--data", data["mme"], "--out", out, "--batch-size", "1",
                                    "--max-tokens", MAX_TOKENS, "--no-progress", *ENGINE),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(answers) and len(_lines(answers)) >= 3:
            break
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = _lines(answers)
    with open(answers, "a", encoding="utf-8") as f:
        f.write('{"id": "existence/exi0003.png#1", "ans')  # and a write torn by the kill
    return {"out": out, "returncode": process.returncode, "done": done}


def test_killed_run_left_only_whole_answers(killed_run):
    assert killed_run["returncode"] == -signal.SIGKILL
    assert 3 <= len(killed_run["done"]) < GOOD_MME
    assert all(json.loads(line)["answer"] is not None for line in killed_run["done"])


@pytest.fixture(scope="module")
def ray_run(tiny_dir, data) -> dict:
    """`iaa-vllm eval refcoco --ray` with 2 tiny replicas on a local Ray (see docs/evaluation.md)."""
    out = str(data["root"] / "refcoco-ray")
    # Two engines on a small shared machine (docs/evaluation.md): no thread pinning, each
    # engine in its actor's process (one process per replica, not three), and Ray's
    # memory monitor off: it counts every process on the node and killed our replicas
    # for other jobs' memory. Ray's session (and the replicas' logs) in a folder of our
    # own, so that a failed run can show them; a short path, as Ray's unix sockets
    # live there (107 characters at most). One thread per replica: unpinned, each
    # engine's torch would take every core, and on 2 cores shared with CI's other
    # lane, the replicas' OpenMP threads would spin against each other.
    ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="iaa-ray-"))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RAY_memory_monitor_refresh_ms": "0",
           "RAY_TMPDIR": str(ray_tmp)}
    process = subprocess.Popen(_cli("refcoco", tiny_dir, "--data", data["refer"], "--images", data["coco"],
                                    "--out", out, "--ray", "--ray-address", "local", "--replicas", "2",
                                    "--cpus-per-replica", "0.5", "--ray-batch-size", "2", "--max-tokens", MAX_TOKENS,
                                    "--no-progress", *ENGINE),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the driver, its Ray and the replicas
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        pytest.fail(f"the Ray run exited {process.returncode}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n"
                    f"{stderr[-5000:]}\n{_ray_logs(ray_tmp)}", pytrace=False)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    engines.note_compile_cache("iaa-vllm eval refcoco --ray (2 replicas)", text=stdout + stderr)
    return {"out": out, "stdout": stdout, "stderr": stderr}


def _ray_logs(ray_tmp, tail: int = 2500) -> str:
    """The end of every log of Ray's last session under `ray_tmp`: the replicas' own output among them."""
    parts = []
    for path in sorted(ray_tmp.glob("**/session_latest/logs/*")):
        if path.is_file() and path.stat().st_size:
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
    return "\n".join(parts) or f"(no Ray logs under {ray_tmp})"


def test_ray_run_uses_two_replicas_and_skips_bad_images(ray_run):
    assert "answers from 2 replicas" in ray_run["stdout"]
    assert len(_answers(ray_run["out"])) == GOOD_REFS
    skipped = json.load(open(os.path.join(ray_run["out"], "skipped.json")))
    assert len(skipped) == BROKEN_REFS
    assert sum("FileNotFoundError" in r for r in skipped.values()) == 2
    scores = json.load(open(os.path.join(ray_run["out"], "scores.json")))
    assert {s: v["answered"] for s, v in scores["splits"].items()} == {"val": 4, "testA": 4}  # one broken image in each
    assert re.search(r"val +Acc@0.5", ray_run["stdout"])


def _args(*argv: str):
    return build_parser().parse_args(["eval", *argv])


def test_resume_finishes_without_redoing_or_losing(tiny_dir, data, killed_run, iaa_engine, capsys):
    out = killed_run["out"]
    args = _args("mme", tiny_dir, "--data", data["mme"], "--out", out, "--max-tokens", MAX_TOKENS, "--no-progress")
    assert command.main_mme(args, llm=iaa_engine) == 0
    printed = capsys.readouterr().out
    done = len(killed_run["done"])
    assert f"{GOOD_MME - done} answered" in printed and f"({done} already done, {BROKEN_MME} skipped)" in printed
    lines = _lines(os.path.join(out, "answers.jsonl"))
    assert lines[:done] == killed_run["done"]                       # nothing lost, nothing rewritten
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == GOOD_MME                    # nothing redone

    fresh = str(data["root"] / "mme-fresh")
    args = _args("mme", tiny_dir, "--data", data["mme"], "--out", fresh, "--max-tokens", MAX_TOKENS, "--no-progress")
    assert command.main_mme(args, llm=iaa_engine) == 0
    assert _answers(out) == _answers(fresh)
    for category in ("existence", "celebrity", "code_reasoning"):
        assert _lines(os.path.join(out, "results", category + ".txt")) == \
            _lines(os.path.join(fresh, "results", category + ".txt"))
    scores = json.load(open(os.path.join(out, "scores.json")))
    assert scores == json.load(open(os.path.join(fresh, "scores.json")))
    assert scores == json.loads(json.dumps(mme.score(os.path.join(out, "results"))))
    assert scores["categories"]["existence"]["questions"] == 8   # its 4 broken questions skipped

    # Run again: nothing is asked twice; only the skipped items are tried again (and skipped).
    assert command.main_mme(_args("mme", tiny_dir, "--data", data["mme"], "--out", out, "--no-progress"),
                            llm=iaa_engine) == 0
    printed = capsys.readouterr().out
    assert "\n0 answered in" in "\n" + printed and f"({GOOD_MME} already done, {BROKEN_MME} skipped)" in printed
    assert len(_lines(os.path.join(out, "answers.jsonl"))) == GOOD_MME


@pytest.fixture(scope="module")
def refcoco_local(tiny_dir, data, iaa_engine) -> str:
    out = str(data["root"] / "refcoco-local")
    args = _args("refcoco", tiny_dir, "--data", data["refer"], "--images", data["coco"], "--out", out,
                 "--max-tokens", MAX_TOKENS, "--no-progress")
    assert command.main_refcoco(args, llm=iaa_engine) == 0
    return out


def test_refcoco_local(data, refcoco_local):
    local = _answers(refcoco_local)
    assert len(local) == GOOD_REFS
    assert len(json.load(open(os.path.join(refcoco_local, "skipped.json")))) == BROKEN_REFS
    expressions = refcoco.load(data["refer"], data["coco"])
    assert json.load(open(os.path.join(refcoco_local, "scores.json"))) == \
        json.loads(json.dumps(refcoco.score(expressions, {k: {"answer": v} for k, v in local.items()})))


def test_ray_answers_match_local(ray_run, refcoco_local):
    assert _answers(ray_run["out"]) == _answers(refcoco_local)
