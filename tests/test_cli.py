"""The `iaa-vllm` command: `serve` answers OpenAI chat requests for every workflow."""

from __future__ import annotations

import pytest

from iaa_vllm.local_server import chat_body, encode, noise_image, png_bytes, post


@pytest.fixture(scope="module")
def server(iaa_server) -> str:
    return iaa_server.base  # one server for every server test (tests/conftest.py)


@pytest.fixture(scope="module")
def served_model(iaa_server) -> str:
    return iaa_server.model


def _chat(base: str, model: str, text: str, image_url: str | None, workflow: str | None):
    return post(base, chat_body(model, text, image_url, workflow, max_tokens=4), timeout=120)


@pytest.mark.slow
def test_serve_answers_every_workflow_and_rejects_bad_ones(server, served_model):
    image = encode(png_bytes(noise_image(300, 200, 1)))
    answers = {}
    for workflow in ("mm", "grounding", None):
        status, reply = _chat(server, served_model, "What is this?", image, workflow)
        assert status == 200, reply
        assert reply["usage"]["prompt_tokens"] > 576  # the image became 576 placeholders
        answers[workflow] = reply["choices"][0]["message"]["content"]
    assert answers[None] == answers["mm"]  # an image request defaults to mm
    assert answers["mm"] != answers["grounding"]
    status, reply = _chat(server, served_model, "What is this?", None, "text")
    assert status == 200 and reply["usage"]["prompt_tokens"] < 100
    status, reply = _chat(server, served_model, "What is this?", image, "text")
    assert status == 400 and "cannot take an image" in reply["error"]["message"]
    status, reply = _chat(server, served_model, "hi", None, "ocr")
    assert status == 400 and "valid: ['text', 'mm', 'grounding']" in reply["error"]["message"]


def test_init_writes_a_checkpoint_and_rejects_unknown_presets(tmp_path, capsys):
    from iaa_vllm.cli import main

    assert main(["init", str(tmp_path / "m"), "--preset", "tiny"]) == 0
    assert (tmp_path / "m" / "config.json").exists()
    with pytest.raises(SystemExit):
        main(["init", str(tmp_path / "n"), "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
