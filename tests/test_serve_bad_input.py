"""Bad input to `iaa-vllm serve`: a clear 4xx each, odd images served, and nothing lost.

Every case runs between two copies of one good greedy request, which must give
the answer they gave before any bad input. Messages must be readable: no
traceback, no memory address.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from benchmarks.server_probes import decompression_bomb, server_rss
from iaa_vllm.local_server import chat_body, encode, noise_image, png_bytes, post

pytestmark = pytest.mark.slow

PNG = png_bytes(noise_image(300, 200, 1))
JPEG = png_bytes(noise_image(300, 200, 1), "JPEG")


def _image(url: str, **options):
    return lambda model: chat_body(model, "What is this?", url, **options)


# name: (request body for a model, HTTP status, words the message must contain)
BAD = {
    "invalid base64": (_image("data:image/png;base64,!!!not base64!!!"), 400, "not valid base64"),
    "not an image": (_image(encode(b"plain text, not an image " * 8)), 400, "cannot identify image file"),
    "empty image": (_image("data:image/png;base64,"), 400, "cannot identify image file"),
    "truncated PNG": (_image(encode(PNG[: len(PNG) // 2])), 400, "image file is truncated"),
    "truncated JPEG": (_image(encode(JPEG[: len(JPEG) // 2], "image/jpeg")), 400, "image file is truncated"),
    "two images": (lambda model: {**chat_body(model, "Compare.", encode(PNG)), "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": encode(PNG)}},
        {"type": "image_url", "image_url": {"url": encode(PNG)}},
        {"type": "text", "text": "Compare."}]}]}, 400, "At most 1 image(s)"),
    "unknown workflow": (_image(encode(PNG), workflow="ocr"), 400, "valid: ['text', 'mm', 'grounding']"),
    "text with an image": (_image(encode(PNG), workflow="text"), 400, "cannot take an image"),
    "image workflow without image": (lambda model: chat_body(model, "hi", workflow="grounding"), 400,
                                     "needs an image"),
    "over max_model_len": (lambda model: chat_body(model, "hello " * 1600, encode(PNG)), 400,
                           "maximum context length (2048)"),
    "absurd max_tokens": (_image(encode(PNG), max_tokens=10**9), 400, "cannot be greater than max_model_len"),
    "negative max_tokens": (_image(encode(PNG), max_tokens=-1), 400, "max_tokens must be at least 1"),
    "absurd n": (_image(encode(PNG), n=10**6, temperature=1.0), 400, "n must be at most"),
}


def _clean(message: str) -> None:
    assert "Traceback" not in message and 'File "' not in message, message
    assert not re.search(r"0x[0-9a-fA-F]{6,}", message), message


@pytest.fixture(scope="module")
def good(iaa_server):
    """The one good request, and its answer before any bad input."""
    body = chat_body(iaa_server.model, "What is in this image?", encode(PNG), "grounding")
    status, reply = post(iaa_server.base, body)
    assert status == 200, reply
    return body, reply["choices"][0]["message"]["content"]


def _still_good(server, good) -> None:
    body, answer = good
    status, reply = post(server.base, body)
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] == answer


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_clear_4xx(iaa_server, good, case):
    make_body, status, words = BAD[case]
    got, reply = post(iaa_server.base, make_body(iaa_server.model))
    assert got == status, reply
    message = reply["error"]["message"]
    assert words in message
    _clean(message)
    _still_good(iaa_server, good)


def test_decompression_bomb_is_rejected_before_decoding(iaa_server, good):
    bomb = decompression_bomb(40000)
    assert len(bomb) < 4096  # a few KB declaring 40000 x 40000 RGB (4.8 GB decoded)
    rss_before = server_rss(iaa_server.pid)
    status, reply = post(iaa_server.base, chat_body(iaa_server.model, "What is this?", encode(bomb)))
    rss_after = server_rss(iaa_server.pid)
    assert status == 400, reply  # vLLM 0.32 alone answers 500 (iaa_vllm.engine.admission)
    assert "1600000000 pixels" in reply["error"]["message"] and "exceeds limit" in reply["error"]["message"]
    _clean(reply["error"]["message"])
    assert rss_after - rss_before < 100 * 2**20  # the header was read, no pixel decoded
    _still_good(iaa_server, good)


def _encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


RGB = noise_image(120, 80, 7)
OPAQUE_RGBA = RGB.convert("RGBA")  # alpha 255 everywhere: must see exactly the RGB pixels
PALETTE = RGB.convert("P")
# name: (image bytes, mime, an RGB PNG the server must treat identically, or None: served is enough)
ODD = {
    "1x1": (_encoded(Image.new("RGB", (1, 1), "red"), "PNG"), "image/png", None),
    "1xN": (_encoded(Image.new("RGB", (1, 500), "red"), "PNG"), "image/png", None),
    "Nx1": (_encoded(Image.new("RGB", (500, 1), "red"), "PNG"), "image/png", None),
    "RGBA": (_encoded(OPAQUE_RGBA, "PNG"), "image/png", _encoded(RGB, "PNG")),
    "palette": (_encoded(PALETTE, "PNG"), "image/png", _encoded(PALETTE.convert("RGB"), "PNG")),
    "16-bit": (_encoded(Image.fromarray(np.arange(80 * 120, dtype=np.uint16).reshape(80, 120) * 7), "PNG"),
               "image/png", None),
    "CMYK JPEG": (_encoded(RGB.convert("CMYK"), "JPEG"), "image/jpeg", None),
    "animated GIF": (_animated_gif(), "image/gif", _encoded(Image.new("RGB", (64, 48), "red"), "PNG")),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_images_are_served(iaa_server, good, case):
    data, mime, same_as = ODD[case]
    answers = []
    for url in [encode(data, mime)] + ([encode(same_as)] if same_as else []):
        status, reply = post(iaa_server.base, chat_body(iaa_server.model, "What is this?", url, "mm"))
        assert status == 200, reply
        assert reply["usage"]["prompt_tokens"] > 576
        answers.append(reply["choices"][0]["message"]["content"])
    assert len(set(answers)) == 1  # e.g. a GIF is its first frame, opaque RGBA is RGB
    _still_good(iaa_server, good)
