"""Image URLs the server cannot download: a clear 4xx each, no traceback in the log, nothing lost.

Against the session's shared server (`iaa_server`), which starts with short fetch
limits so the slow cases stay short (`tests/engines.py`), and an origin on loopback (`tests/media_origin.py`) that refuses,
stalls, loops and never stops sending. Each bad request runs between two copies
of one good greedy request, which must give the answer they gave before.
"""

from __future__ import annotations

import os
import time

import pytest

from iaa_vllm.local_server import chat_body, encode, noise_image, png_bytes, post
from tests.engines import FETCH_TIMEOUT_S, FETCH_TRIES, MAX_DOWNLOAD_MB
from tests.media_origin import UNRESOLVABLE_URL, MediaOrigin

pytestmark = pytest.mark.slow

PNG = png_bytes(noise_image(300, 200, 1))
# vLLM's retry loop: try i waits FETCH_TIMEOUT_S * 4**i, then sleeps 4**i s before the next.
STALL_BOUND_S = sum(FETCH_TIMEOUT_S * 4**i for i in range(FETCH_TRIES)) + sum(4**i for i in range(FETCH_TRIES - 1))

# case: (URL on the origin, HTTP status, words of the message, most seconds the answer may take)
FAILURES = {
    "connection refused": (lambda o: o.refused_url, 400, "connection refused", 30),
    "host name does not resolve": (lambda o: UNRESOLVABLE_URL, 400, "the host name does not resolve", 30),
    "stalled server": (lambda o: o.url("stall.png"), 400,
                       f"no answer in time (VLLM_IMAGE_FETCH_TIMEOUT={FETCH_TIMEOUT_S} s, {FETCH_TRIES} tries",
                       STALL_BOUND_S + 20),
    "redirect loop": (lambda o: o.url("loop.png"), 422, "too many redirects", 30),
    "host answers 503": (lambda o: o.url("unavailable.png"), 400, "the host answered HTTP 503", 30),
    "endless body": (lambda o: o.url("endless.png"), 422,
                     f"VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB={MAX_DOWNLOAD_MB}", 30),
    "declared 2 GiB body": (lambda o: o.url("declared.png"), 422,
                            f"VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB={MAX_DOWNLOAD_MB}", 30),
    "file URL": (lambda o: "file:///etc/hostname", 400,
                 "file:// URLs are off; serve with --allowed-local-media-path", 30),
    "domain not allowed": (lambda o: "http://example.com/x.png", 400,
                           "The URL must be from one of the allowed domains", 30),
}
# vLLM's own message already says what went wrong for these; the rest are ours
VLLM_WORDED = ("endless body", "declared 2 GiB body", "domain not allowed")


@pytest.fixture(scope="module")
def origin():
    served = MediaOrigin(PNG)
    yield served
    served.close()


@pytest.fixture(scope="module")
def fetch_server(iaa_server):
    return iaa_server


@pytest.fixture(scope="module")
def good(fetch_server):
    body = chat_body(fetch_server.model, "What is in this image?", encode(PNG), "grounding")
    return body, _answer(fetch_server, body)


def _answer(server, body) -> str:
    status, reply = post(server.base, body)
    assert status == 200, reply
    return reply["choices"][0]["message"]["content"]


def _log_since(server, offset: int) -> str:
    time.sleep(0.5)  # the server logs the request after answering it
    with open(server.log, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_download_is_a_clear_4xx_without_traceback(fetch_server, origin, good, case):
    make_url, status, words, bound_s = FAILURES[case]
    url = make_url(origin)
    body, answer = good
    assert _answer(fetch_server, body) == answer
    offset = os.path.getsize(fetch_server.log)
    start = time.monotonic()
    got, reply = post(fetch_server.base, chat_body(fetch_server.model, "What is this?", url, "grounding"))
    took = time.monotonic() - start
    assert got == status, reply
    message = reply["error"]["message"]
    assert words in message
    if case not in VLLM_WORDED:
        assert message.startswith(f"could not fetch image from {url}: "), message
    assert took < bound_s
    log = _log_since(fetch_server, offset)
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-3000:]
    assert _answer(fetch_server, body) == answer


def test_image_url_gives_the_same_answer_as_its_data_url(fetch_server, origin, good):
    body, answer = good
    by_url = chat_body(fetch_server.model, "What is in this image?", origin.url("good.png"), "grounding")
    assert _answer(fetch_server, by_url) == answer


def test_endless_body_is_cut_at_the_cap(fetch_server, origin):
    origin.body_bytes_sent.pop("/endless.png", None)
    status, reply = post(fetch_server.base, chat_body(fetch_server.model, "What is this?", origin.url("endless.png")))
    assert status == 422, reply
    deadline = time.monotonic() + 10
    while "/endless.png" not in origin.body_bytes_sent and time.monotonic() < deadline:
        time.sleep(0.05)  # the origin notices the hang-up on its next write
    assert origin.body_bytes_sent["/endless.png"] < 32 * 2**20  # 1 MiB read, plus socket buffers
