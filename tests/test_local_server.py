"""iaa_vllm/local_server.py: the raw HTTP helpers against a stub server, process
groups stopped, and a server that dies at start.

A running `iaa-vllm serve` is exercised by every server test through the session
`iaa_server` fixture (conftest.py); here only the failure at start starts one,
and it exits within about half a minute.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time

import psutil
import pytest

from benchmarks import server_probes
from iaa_vllm import local_server

PROMETHEUS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:generation_tokens_total{engine="0",model_name="m"} 40.0
process_open_fds 12.0
"""


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers by path: /ok echoes the JSON body, /bad is a 400 in JSON, /broken a
    500 in plain text, /metrics the samples above."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/ok":
            self._send(200, "application/json", json.dumps(
                {"got": json.loads(body), "content_type": self.headers["Content-Type"]}))
        elif self.path == "/bad":
            self._send(400, "application/json", json.dumps({"error": {"message": "no such workflow"}}))
        else:
            self._send(500, "text/plain", "Internal Server Error")

    def do_GET(self):
        self._send(200, "text/plain", PROMETHEUS)

    def _send(self, status: int, kind: str, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def stub() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_post_sends_json_and_returns_the_status_and_body(stub):
    status, reply = local_server.post(stub, {"model": "m", "n": 1}, path="/ok")
    assert status == 200
    assert reply == {"got": {"model": "m", "n": 1}, "content_type": "application/json"}


def test_post_returns_error_statuses_with_their_body(stub):
    assert local_server.post(stub, {}, path="/bad") == (400, {"error": {"message": "no such workflow"}})
    # A body that is not JSON comes back as text, not as an exception.
    assert local_server.post(stub, {}, path="/broken") == (500, {"raw": "Internal Server Error"})


def test_metrics_parses_samples_and_metric_sums_by_label(stub):  # benchmarks/server_probes.py
    samples = server_probes.metrics(stub)
    assert ("process_open_fds", {}, 12.0) in samples
    assert ("vllm:num_requests_running", {"engine": "0", "model_name": "m"}, 2.0) in samples
    assert server_probes.metric(samples, "vllm:num_requests_running") == 3.0
    assert server_probes.metric(samples, "vllm:num_requests_running", engine="1") == 1.0
    assert server_probes.metric(samples, "vllm:generation_tokens_total", model_name="other") == 0


def test_free_port_is_free_on_loopback():
    port = local_server.free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if something holds it


def test_chat_body_is_greedy_and_names_the_workflow():
    body = local_server.chat_body("m", "What is this?", "data:image/png;base64,AA==", "grounding", max_tokens=3)
    assert body["max_tokens"] == 3 and body["temperature"] == 0
    assert body["vllm_xargs"] == {"iaa_workflow": "grounding"}
    assert body["messages"][0]["content"][0] == {"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,AA=="}}
    text = local_server.chat_body("m", "hi")
    assert text["messages"][0]["content"] == "hi" and "vllm_xargs" not in text
    assert text["max_tokens"] == local_server.MAX_TOKENS


def test_noise_image_is_the_same_for_the_same_arguments():
    image = local_server.noise_image(30, 20, 1)
    assert image.size == (30, 20) and image.mode == "RGB"
    assert image.tobytes() == local_server.noise_image(30, 20, 1).tobytes()
    assert image.tobytes() != local_server.noise_image(30, 20, 2).tobytes()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_stop_process_group_leaves_no_member(ignores_sigterm):
    # A leader with a child of its own, like `iaa-vllm serve` and its engine core;
    # one that ignores SIGTERM needs the SIGKILL after the grace period.
    trap = "trap '' TERM; " if ignores_sigterm else ""
    leader = subprocess.Popen(["bash", "-c", f"{trap}sleep 300 & wait"], process_group=0)
    time.sleep(0.5)  # let bash start its child
    assert _group_alive(leader.pid)
    local_server.stop_process_group(leader, grace_s=2)
    assert not _group_alive(leader.pid)
    assert leader.returncode is not None  # reaped, not a zombie


@pytest.mark.slow
def test_serve_says_why_when_the_server_dies_at_start(tmp_path, monkeypatch):
    bad = tmp_path / "not-a-checkpoint"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["IAALlamaForCausalLM"], "model_type": "IAA"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing to fetch: fail at once
    with pytest.raises(RuntimeError, match="exited with code [1-9][0-9]* during start-up") as failure:
        with local_server.serve(str(bad), timeout_s=300):
            pytest.fail("a server without a checkpoint answered /health")
    message = str(failure.value)
    log = message.split("log: ", 1)[1].split("\n", 1)[0]
    with open(log, encoding="utf-8", errors="replace") as f:
        assert f.read()[-200:] in message  # the end of the log is in the error
    os.unlink(log)
    left = [p for p in psutil.process_iter(["cmdline"]) if str(bad) in " ".join(p.info["cmdline"] or [])]
    assert not left, left
