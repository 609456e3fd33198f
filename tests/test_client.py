"""`iaa_vllm.client` and the OpenAI examples against the session's loopback server."""

from __future__ import annotations

import base64
import importlib.util
import os

import pytest
from PIL import Image

from iaa_vllm import client, grounding
from iaa_vllm.local_server import chat_body, encode, noise_image, png_bytes
from tests.inputs import chat_answer

pytestmark = pytest.mark.slow

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_url_keeps_file_bytes_and_encodes_pil_as_png(tmp_path):
    image = noise_image(40, 30, 3)
    image.save(tmp_path / "a.jpg", format="JPEG")
    url = client.data_url(tmp_path / "a.jpg")
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == (tmp_path / "a.jpg").read_bytes()
    assert client.data_url(image) == encode(png_bytes(image))
    assert client.image_size(tmp_path / "a.jpg") == client.image_size(image) == (40, 30)


def test_chat_matches_a_raw_request(iaa_server, api):
    image = noise_image(300, 200, 1)
    assert client.served_model(api) == iaa_server.model
    raw = chat_answer(iaa_server, chat_body(iaa_server.model, "What is this?", encode(png_bytes(image))))
    assert client.chat(api, "What is this?", image, max_tokens=8) == raw  # default: mm
    text = chat_answer(iaa_server, chat_body(iaa_server.model, "Name three colours.", workflow="text"))
    assert client.chat(api, "Name three colours.", max_tokens=8) == text


@pytest.mark.parametrize("size", [(300, 200), (180, 260)])
def test_ground_returns_the_answer_and_its_pixel_boxes(iaa_server, api, tmp_path, size):
    image = noise_image(*size, seed=4)
    image.save(tmp_path / "img.png")
    body = chat_body(iaa_server.model, grounding.question("the left half"), encode(png_bytes(image)),
                     "grounding", max_tokens=24)
    raw = chat_answer(iaa_server, body)
    for given in (image, tmp_path / "img.png"):
        result = client.ground(api, given, "the left half", max_tokens=24)
        assert result.answer == raw
        assert result.size == size
        assert result.boxes == grounding.pixel_boxes(raw, *size)


def test_openai_client_example_runs_the_three_workflows(iaa_server, capsys):
    answers = _example("openai_client").main(["--base-url", f"{iaa_server.base}/v1", "--max-tokens", "8"])
    assert answers["mm"] == answers["mm-stream"]
    image = Image.new("RGB", (400, 300), "teal")
    for workflow, text, url in (("text", "Name three colours.", None),
                                ("mm", "What is in this image?", encode(png_bytes(image))),
                                ("grounding", grounding.question("the whole picture"), encode(png_bytes(image)))):
        assert answers[workflow] == chat_answer(iaa_server, chat_body(iaa_server.model, text, url, workflow))
    assert "[grounding]" in capsys.readouterr().out


def test_draw_boxes_example_writes_a_png(iaa_server, tmp_path):
    out = tmp_path / "boxes.png"
    result = _example("draw_boxes").main(["--base-url", f"{iaa_server.base}/v1", "--out", str(out)])
    with Image.open(out) as drawn:
        assert drawn.format == "PNG" and drawn.size == result.size == (480, 320)
    assert result.boxes == grounding.pixel_boxes(result.answer, 480, 320)


def test_draw_outlines_each_box():
    draw = _example("draw_boxes").draw
    drawn = draw(Image.new("RGB", (100, 80), "white"), [(10.0, 20.0, 60.0, 70.0)], width=2)
    assert drawn.getpixel((10, 45)) == drawn.getpixel((35, 20)) == (255, 0, 0)  # left and top edges
    assert drawn.getpixel((35, 50)) == drawn.getpixel((80, 10)) == (255, 255, 255)  # inside, outside
