"""`iaa-vllm serve` as an OpenAI server: health, models, metrics, streaming, image URLs, template.

All against the one loopback server of the session (`iaa_server`, tests/conftest.py).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import urllib.request

import pytest

from iaa_vllm.local_server import chat_body, encode, noise_image, png_bytes, post
from tests.inputs import chat_answer, reference_prompt_ids

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read().decode()




def test_health_and_models(iaa_server):
    assert _get(f"{iaa_server.base}/health") == (200, "")
    status, text = _get(f"{iaa_server.base}/v1/models")
    models = json.loads(text)
    assert status == 200 and models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [iaa_server.model]
    assert models["data"][0]["max_model_len"] == 2048


def _metric(text: str, name: str) -> float:
    """Sum of a Prometheus counter over its label sets."""
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, flags=re.M)
    assert values, f"{name} not in /metrics"
    return sum(float(v) for v in values)


def test_metrics_count_requests_and_tokens(iaa_server):
    status, before = _get(f"{iaa_server.base}/metrics")
    assert status == 200
    body = chat_body(iaa_server.model, "What is this?", encode(png_bytes(noise_image(64, 48, 5))), "grounding")
    chat_answer(iaa_server, body)
    for _ in range(50):  # stats are logged just after the response is sent
        after = _get(f"{iaa_server.base}/metrics")[1]
        if _metric(after, "vllm:request_success_total") > _metric(before, "vllm:request_success_total"):
            break
        time.sleep(0.1)
    assert _metric(after, "vllm:request_success_total") == _metric(before, "vllm:request_success_total") + 1
    prompt_growth = _metric(after, "vllm:prompt_tokens_total") - _metric(before, "vllm:prompt_tokens_total")
    assert prompt_growth > 576  # the image's placeholders are prompt tokens
    generated = _metric(after, "vllm:generation_tokens_total") - _metric(before, "vllm:generation_tokens_total")
    assert generated == body["max_tokens"]


def test_streaming_gives_the_same_answer_as_one_response(iaa_server, api):
    url = encode(png_bytes(noise_image(300, 200, 1)))
    for workflow in ("text", "mm", "grounding"):
        body = chat_body(iaa_server.model, "What is this?", None if workflow == "text" else url, workflow)
        whole = chat_answer(iaa_server, body)
        chunks = list(api.chat.completions.create(
            model=body["model"], messages=body["messages"], max_tokens=body["max_tokens"], temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"vllm_xargs": body["vllm_xargs"]}))
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert len([p for p in pieces if p]) > 1, "streamed in one piece"
        assert "".join(pieces) == whole, workflow
        assert chunks[-1].usage.completion_tokens == body["max_tokens"]


def test_chat_template_adds_the_release_system_prompt(iaa_server, tokenizer):
    from iaa_vllm.tokenizer import build_prompt

    body = chat_body(iaa_server.model, "What is this?", encode(png_bytes(noise_image(64, 64, 6))), "mm",
                     return_token_ids=True)
    status, reply = post(iaa_server.base, body)
    assert status == 200, reply
    assert reply["prompt_token_ids"] == reference_prompt_ids(tokenizer, build_prompt("What is this?", with_image=True))


class _OneImage(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path != "/cat.png":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    _OneImage.png = png_bytes(noise_image(300, 200, 1))
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneImage)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{host.server_address[1]}"
    host.shutdown()


def test_http_image_url_equals_the_data_url(iaa_server, image_host):
    for workflow in ("mm", "grounding"):
        by_url = chat_answer(iaa_server, chat_body(iaa_server.model, "What is this?", f"{image_host}/cat.png", workflow))
        inline = chat_answer(iaa_server, chat_body(iaa_server.model, "What is this?", encode(_OneImage.png), workflow))
        assert by_url == inline, workflow


def test_missing_http_image_is_a_4xx(iaa_server, image_host):
    status, reply = post(iaa_server.base, chat_body(iaa_server.model, "What is this?", f"{image_host}/nope.png"))
    assert status == 422, reply
    assert "HTTP 404" in reply["error"]["message"]
