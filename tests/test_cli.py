"""The `iaa-vllm` command: `serve` answers OpenAI chat requests for every workflow."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import make_image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture(scope="module")
def server(tiny_dir):
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [sys.executable, "-m", "iaa_vllm.cli", "serve", tiny_dir, "--enforce-eager",
               "--dtype", "float32", "--max-model-len", "2048", "--host", "127.0.0.1",
               "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        assert process.poll() is None, "iaa-vllm serve exited during start-up"
        try:
            urllib.request.urlopen(f"{base}/health", timeout=5)
            break
        except OSError:
            time.sleep(2)
    yield base
    process.terminate()
    process.wait(timeout=60)


def _image_url() -> str:
    buffer = io.BytesIO()
    make_image(300, 200, 1).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat(base: str, tiny_dir: str, content, workflow: str | None):
    body = {"model": tiny_dir, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}
    if workflow:
        body["vllm_xargs"] = {"iaa_workflow": workflow}
    return _post(f"{base}/v1/chat/completions", body)


@pytest.mark.slow
def test_serve_answers_every_workflow_and_rejects_bad_ones(server, tiny_dir):
    image = [{"type": "image_url", "image_url": {"url": _image_url()}},
             {"type": "text", "text": "What is this?"}]
    answers = {}
    for workflow in ("mm", "grounding", None):
        status, reply = _chat(server, tiny_dir, image, workflow)
        assert status == 200, reply
        assert reply["usage"]["prompt_tokens"] > 576  # the image became 576 placeholders
        answers[workflow] = reply["choices"][0]["message"]["content"]
    assert answers[None] == answers["mm"]  # an image request defaults to mm
    assert answers["mm"] != answers["grounding"]
    status, reply = _chat(server, tiny_dir, "What is this?", "text")
    assert status == 200 and reply["usage"]["prompt_tokens"] < 100
    status, reply = _chat(server, tiny_dir, image, "text")
    assert status == 400 and "cannot take an image" in reply["error"]["message"]
    status, reply = _chat(server, tiny_dir, "hi", "ocr")
    assert status == 400 and "valid: ['text', 'mm', 'grounding']" in reply["error"]["message"]


def test_init_writes_a_checkpoint_and_rejects_unknown_presets(tmp_path, capsys):
    from iaa_vllm.cli import main

    assert main(["init", str(tmp_path / "m"), "--preset", "tiny"]) == 0
    assert (tmp_path / "m" / "config.json").exists()
    with pytest.raises(SystemExit):
        main(["init", str(tmp_path / "n"), "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
