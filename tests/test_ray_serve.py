"""Ray Serve LLM replicas (examples/ray_serve.py): one engine's answers, both replicas used, clean exit.

The session's shared `iaa-vllm serve` (`iaa_server`) answers a burst of
mixed-workflow chat requests first; then the example starts two Ray Serve LLM replicas (its config's
autoscaling bounds, 1 to 2 replicas, 2 initially) and gets the same burst at once.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from iaa_vllm.local_server import noise_image
from tests import engines

MODEL_ID = "iaa-tiny"  # examples/ray_serve.yaml's model_id
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "ray_serve.py")
START_TIMEOUT_S = 600  # engine start is ~1 min idle, several on a loaded 2-core machine


def _free_port() -> int:
    """A free port between Ray's worker ports (10002-19999) and Linux's ephemeral range
    (from 32768). A port from bind(0) is ephemeral: the Ray node the example starts
    binds ephemeral ports of its own in the meantime, and in one CI run took it first
    (the example's proxy then failed with "Failed to bind to address")."""
    import random
    import socket

    for port in random.sample(range(20_000, 32_768), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


def _image_url(seed: int) -> str:
    buffer = io.BytesIO()
    noise_image(300, 200, seed).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _burst(model: str = MODEL_ID) -> list[dict]:
    """Twelve chat bodies to `model`: four per workflow, two images, distinct questions."""
    bodies = []
    for i in range(4):
        image = [{"type": "image_url", "image_url": {"url": _image_url(1 + i % 2)}},
                 {"type": "text", "text": f"Question {i}: what is in this picture?"}]
        for workflow, content in (("text", f"Question {i}: name a colour."), ("mm", image), ("grounding", image)):
            bodies.append({"model": model, "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": content}],
                           "vllm_xargs": {"iaa_workflow": workflow}})
    return bodies


def _post(base: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _send_burst(base: str, model: str = MODEL_ID) -> list[tuple]:
    """All requests at once; per request (content, completion tokens, finish reason)."""
    bodies = _burst(model)
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda body: _post(base, body), bodies))
    answers = []
    for body, (status, reply) in zip(bodies, replies):
        assert status == 200, (body["vllm_xargs"], reply)
        choice = reply["choices"][0]
        answers.append((choice["message"]["content"], reply["usage"]["completion_tokens"], choice["finish_reason"]))
    return answers


def _wait_until(predicate, process: subprocess.Popen, what: str, log_path: str) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while not predicate():
        if process.poll() is not None:
            with open(log_path) as f:
                tail = f.read()[-3000:]
            pytest.fail(f"{what} exited with {process.returncode} during start-up:\n{tail}")
        assert time.time() < deadline, f"{what} not ready after {START_TIMEOUT_S} s"
        time.sleep(2)


@pytest.fixture(scope="module")
def single_engine_answers(iaa_server):
    """The burst's answers from one plain vLLM OpenAI server (no Ray): the shared one,
    under its own served name."""
    return _send_burst(iaa_server.base, iaa_server.model)


def _finished_per_replica(metrics_url: str) -> dict[str, float]:
    """Requests each replica's vLLM engine finished, from Ray's Prometheus endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("ray_vllm_request_success_total{"):
            replica = re.search(r'ReplicaId="([^"]+)"', line).group(1)
            counts[replica] = counts.get(replica, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def _wait_for_counts(metrics_url: str, total: int) -> dict[str, float]:
    """Ray exports metrics every few seconds: wait until they add up to `total`."""
    deadline = time.time() + 90
    while sum((counts := _finished_per_replica(metrics_url)).values()) < total and time.time() < deadline:
        time.sleep(3)
    return counts


@pytest.mark.slow
def test_two_replicas_answer_like_one_engine_and_shut_down_cleanly(tiny_dir, single_engine_answers, tmp_path):
    port = _free_port()
    log_path = str(tmp_path / "ray_serve.log")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, EXAMPLE, "--model", tiny_dir, "--port", str(port),
                                    "--num-cpus", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def read_log() -> str:
            with open(log_path) as f:
                return f.read()

        _wait_until(lambda: "serving on" in read_log(), process, "examples/ray_serve.py", log_path)
        metrics_url = re.search(r"metrics: (\S+)", read_log()).group(1)
        base = f"http://127.0.0.1:{port}"

        answers = _send_burst(base)
        assert answers == single_engine_answers
        assert len({answers[0], answers[1], answers[2]}) == 3  # text, mm, grounding differ

        # Both engines served part of the burst, and between them all of it.
        counts = _wait_for_counts(metrics_url, len(answers))
        assert len(counts) == 2 and all(counts.values()) and sum(counts.values()) == len(answers), counts

        # The plugin's request admission runs in the replicas too.
        status, reply = _post(base, {**_burst()[0], "vllm_xargs": {"iaa_workflow": "ocr"}})
        assert status == 400 and "valid: ['text', 'mm', 'grounding']" in reply["error"]["message"], reply

        tree = psutil.Process(process.pid).children(recursive=True)
        cores = [p for p in tree if "EngineCore" in " ".join(p.cmdline()) + p.name()]
        assert len(cores) == 2, [p.name() for p in tree]
    finally:
        tree = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    engines.note_compile_cache("examples/ray_serve.py (2 replicas)", log_path)
    assert process.returncode == 0 and "shut down" in read_log(), read_log()[-3000:]
    deadline = time.time() + 60
    while (alive := [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and time.time() < deadline:
        time.sleep(1)
    assert not alive, [f"{p.pid} {p.name()}" for p in alive]
