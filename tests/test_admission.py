"""Bad requests fail alone, with a clear error, and the engine keeps serving."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from iaa_vllm.engine.admission import SALT_PREFIX, admit
from iaa_vllm.tokenizer import IMAGE_TOKEN, IMAGE_TOKEN_ID, build_prompt
from tests import engines
from tests.engines import image_request, text_request
from tests.media_origin import UNRESOLVABLE_URL, MediaOrigin


class _Request:
    """The EngineCoreRequest fields admission reads and writes."""

    def __init__(self, prompt_token_ids, mm_features=None, workflow=None, cache_salt=None):
        extra = {"iaa_workflow": workflow} if workflow else None
        self.sampling_params = SamplingParams(extra_args=extra)
        self.prompt_token_ids, self.mm_features, self.cache_salt = prompt_token_ids, mm_features, cache_salt


def test_admit_writes_the_default_workflow_and_salts_image_workflows():
    text = _Request([1, 2, 3], cache_salt="user")
    admit(text, IMAGE_TOKEN_ID)
    assert text.sampling_params.extra_args["iaa_workflow"] == "text"
    assert text.cache_salt == "user"  # text keeps stock prefix caching
    image = _Request([1, IMAGE_TOKEN_ID], mm_features=["feature"])
    admit(image, IMAGE_TOKEN_ID)
    assert image.sampling_params.extra_args["iaa_workflow"] == "mm"
    grounding = _Request([1, IMAGE_TOKEN_ID], mm_features=["feature"], workflow="grounding")
    admit(grounding, IMAGE_TOKEN_ID)
    assert image.cache_salt.startswith(SALT_PREFIX)
    assert image.cache_salt != grounding.cache_salt


@pytest.mark.parametrize(
    "request_kind, workflow, message",
    [
        ("text", "video", r"iaa_workflow='video' is not a workflow; valid: \['text', 'mm', 'grounding'\]"),
        ("image", "text", r"iaa_workflow='text' cannot take an image"),
        ("text", "grounding", r"iaa_workflow='grounding' needs an image"),
        ("token_without_image", None, r"image token \(id 128049\) but the request carries no image"),
        ("two_images", "mm", r"(?i)at most 1 image"),
    ],
)
def test_bad_request_fails_alone_and_engine_keeps_serving(
    iaa_engine, images, request_kind, workflow, message
):
    good = [text_request("Hello there"), image_request("What is it?", images[0])]
    good_params = [engines.greedy("text", 5), engines.greedy("grounding", 5)]
    before = [engines.tokens_and_logprobs(o) for o in iaa_engine.generate(good, good_params)]

    bad = {
        "text": text_request("Hello there"),
        "image": image_request("What is it?", images[0]),
        "token_without_image": {"prompt": build_prompt("What is it?", with_image=False) + IMAGE_TOKEN},
        "two_images": {
            "prompt": build_prompt(IMAGE_TOKEN + "\nand this?", with_image=True),
            "multi_modal_data": {"image": images[:2]},
        },
    }[request_kind]
    # vLLM re-raises validation errors as VLLMValidationError (HTTP 400 online).
    with pytest.raises((ValueError, VLLMValidationError), match=message):
        iaa_engine.generate([bad], engines.greedy(workflow, 5))

    after = [engines.tokens_and_logprobs(o) for o in iaa_engine.generate(good, good_params)]
    assert after == before


# ---- image downloads (a real vLLM MediaConnector against a loopback origin; no engine) ----

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
    from iaa_vllm.engine import media
    from iaa_vllm.local_server import png_bytes
    from tests.conftest import make_image

    media.install()  # what the plugin entry point does in a server
    served = MediaOrigin(png_bytes(make_image(64, 48, 1)))
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

    from iaa_vllm.engine import compat, media

    media.install()
    fetch, fetch_async, get_bytes = (MediaConnector.fetch_image, MediaConnector.fetch_image_async,
                                     HTTPConnection.get_bytes)
    media.install()
    assert (MediaConnector.fetch_image, MediaConnector.fetch_image_async, HTTPConnection.get_bytes) == (
        fetch, fetch_async, get_bytes)
    assert fetch._iaa_media and fetch_async._iaa_media
    # 0.32 caps downloads itself; only 0.26 gets ours
    assert getattr(get_bytes, "_iaa_media", False) is not compat.MEDIA_DOWNLOADS_CAPPED


def test_download_cap_setting_is_checked(monkeypatch):
    from iaa_vllm.engine.media import DEFAULT_MAX_DOWNLOAD_MB, MAX_DOWNLOAD_ENV, max_download_bytes

    monkeypatch.delenv(MAX_DOWNLOAD_ENV, raising=False)
    assert max_download_bytes() == DEFAULT_MAX_DOWNLOAD_MB * 2**20
    monkeypatch.setenv(MAX_DOWNLOAD_ENV, "0")
    assert max_download_bytes() is None
    monkeypatch.setenv(MAX_DOWNLOAD_ENV, "lots")
    with pytest.raises(ValueError, match=r"VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB='lots' is not a whole number"):
        max_download_bytes()


_DEATH_WATCH_SCRIPT = """
import importlib, sys
from vllm.v1.engine.async_llm import AsyncLLM
from iaa_vllm.engine import compat
from iaa_vllm.engine_death import watch_engine_death

died = watch_engine_death()
assert watch_engine_death() is died  # idempotent
launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)

class Server:
    should_exit = False

class DeadEngine:  # what vLLM's launcher reads of a dead engine
    errored, is_running = True, False

if sys.argv[1] == "stop":
    try:
        AsyncLLM.shutdown(None)  # a requested stop begins with the engine client's shutdown
    except AttributeError:
        pass
launcher.terminate_if_errored(Server(), DeadEngine())
print("died" if died() else "stopped")
"""


@pytest.mark.parametrize("scenario, verdict", [("death", "died"), ("stop", "stopped")])
def test_engine_death_watch_tells_a_death_from_a_requested_stop(scenario, verdict):
    # A process each: the watch is process-wide, as in `iaa-vllm serve`.
    done = subprocess.run([sys.executable, "-c", _DEATH_WATCH_SCRIPT, scenario], capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == verdict
