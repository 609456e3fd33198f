"""Image downloads (engine/patches/media_connector.py, http_connection.py): each way a
fetch fails is a clear client error.

A real vLLM `MediaConnector` against a loopback origin that fails on purpose
(tests/media_origin.py), on the server's async path and the offline path; no engine.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from vllm.exceptions import VLLMValidationError

from tests.media_origin import UNRESOLVABLE_URL, MediaOrigin

FETCH_LIMITS = {"VLLM_IMAGE_FETCH_TIMEOUT": "1", "VLLM_MEDIA_FETCH_MAX_RETRIES": "1",
                "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB": "1"}
# case: (URL on the origin, HTTP status the server would answer, words of the message)
FETCH_FAILURES = {
    "refused": (lambda o: o.refused_url, 400, "connection refused"),
    "unresolvable": (lambda o: UNRESOLVABLE_URL, 400, "the host name does not resolve"),
    "stalled": (lambda o: o.url("stall.png"), 400, "no answer in time (VLLM_IMAGE_FETCH_TIMEOUT=1 s, 1 tries"),
    "redirect loop": (lambda o: o.url("loop.png"), 422, "too many redirects"),
    "host answers 503": (lambda o: o.url("unavailable.png"), 400, "the host answered HTTP 503"),
    "endless body": (lambda o: o.url("endless.png"), 422, "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=1"),
    "declared 2 GiB": (lambda o: o.url("declared.png"), 422, "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=1"),
    "file URL": (lambda o: "file:///etc/hostname", 400, "file:// URLs are off; serve with --allowed-local-media-path"),
    "other domain": (lambda o: "http://example.com/x.png", 400, "allowed domains"),
}


def _http_status(error: Exception) -> int:
    """The status vLLM's server answers for `error` (vllm/entrypoints/.../error_response.py)."""
    from vllm.exceptions import VLLMUnprocessableEntityError

    if isinstance(error, VLLMUnprocessableEntityError):
        return 422
    return 400 if isinstance(error, (ValueError, VLLMValidationError)) else 500


@pytest.fixture(scope="module")
def origin():
    from iaa_vllm.engine import patches
    from iaa_vllm.local_server import noise_image, png_bytes

    patches.install()  # what the plugin entry point does in every vLLM process
    served = MediaOrigin(png_bytes(noise_image(64, 48, 1)))
    yield served
    served.close()


def _fetch(url: str, asynchronous: bool):
    from vllm.connections import HTTPConnection
    from vllm.multimodal.media.connector import MediaConnector

    # A client per call: each asyncio.run has its own event loop.
    connection = HTTPConnection()
    connector = MediaConnector(connection=connection, allowed_media_domains=["127.0.0.1", "nowhere.invalid"])
    if not asynchronous:
        return connector.fetch_image(url)

    async def fetch():
        try:
            return await connector.fetch_image_async(url)
        finally:
            await (await connection.get_async_client()).close()

    return asyncio.run(fetch())


@pytest.mark.parametrize("asynchronous", [True, False], ids=["server path", "offline path"])
@pytest.mark.parametrize("case", list(FETCH_FAILURES))
def test_failed_image_download_is_a_clear_client_error(origin, monkeypatch, case, asynchronous):
    for name, value in FETCH_LIMITS.items():
        monkeypatch.setenv(name, value)
    make_url, status, words = FETCH_FAILURES[case]
    url = make_url(origin)
    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        _fetch(url, asynchronous)
    message = str(caught.value)
    assert _http_status(caught.value) == status, f"{type(caught.value).__name__}: {message}"
    assert words in message
    if case not in ("endless body", "declared 2 GiB", "other domain"):  # vLLM's own words there
        assert message.startswith(f"could not fetch image from {url}: ")
    assert time.monotonic() - start < 10  # one try of a 1 s timeout, no retry waits
    assert _fetch(origin.url("good.png"), asynchronous).size == (64, 48)  # the connector still works


def test_endless_body_is_cut_at_the_cap_not_read_whole(origin, monkeypatch):
    monkeypatch.setenv("VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "1")
    origin.body_bytes_sent.pop("/endless.png", None)
    with pytest.raises(Exception, match="VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB=1"):
        _fetch(origin.url("endless.png"), asynchronous=True)
    deadline = time.monotonic() + 10
    while "/endless.png" not in origin.body_bytes_sent and time.monotonic() < deadline:
        time.sleep(0.05)  # the origin notices the hang-up on its next write
    assert origin.body_bytes_sent["/endless.png"] < 32 * 2**20  # 1 MiB read, plus socket buffers


def test_fetch_patches_are_idempotent_and_match_the_installed_vllm():
    from vllm.connections import HTTPConnection
    from vllm.multimodal.media.connector import MediaConnector

    from iaa_vllm.engine import compat, patches

    patches.install()
    fetch, fetch_async, get_bytes = (MediaConnector.fetch_image, MediaConnector.fetch_image_async,
                                     HTTPConnection.get_bytes)
    patches.install()
    assert (MediaConnector.fetch_image, MediaConnector.fetch_image_async, HTTPConnection.get_bytes) == (
        fetch, fetch_async, get_bytes)
    assert fetch._iaa_patch and fetch_async._iaa_patch
    # 0.32 caps downloads itself; only 0.26 gets ours
    assert getattr(get_bytes, "_iaa_patch", False) is not compat.MEDIA_DOWNLOADS_CAPPED


def test_download_cap_setting_is_checked(monkeypatch):
    from iaa_vllm.engine.patches.http_connection import DEFAULT_MAX_DOWNLOAD_MB, MAX_DOWNLOAD_ENV, max_download_bytes

    monkeypatch.delenv(MAX_DOWNLOAD_ENV, raising=False)
    assert max_download_bytes() == DEFAULT_MAX_DOWNLOAD_MB * 2**20
    monkeypatch.setenv(MAX_DOWNLOAD_ENV, "0")
    assert max_download_bytes() is None
    monkeypatch.setenv(MAX_DOWNLOAD_ENV, "lots")
    with pytest.raises(ValueError, match=r"VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB='lots' is not a whole number"):
        max_download_bytes()
