"""The `iaa-vllm` command: `serve` answers OpenAI chat requests for every workflow."""

from __future__ import annotations

import pytest

from iaa_vllm.local_server import encode, noise_image, png_bytes, post


@pytest.fixture(scope="module")
def server(iaa_server) -> str:
    return iaa_server.base  # one server for every server test (tests/conftest.py)


@pytest.fixture(scope="module")
def served_model(iaa_server) -> str:
    return iaa_server.model


def _chat(base: str, model: str, content, workflow: str | None):
    body = {"model": model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}
    if workflow:
        body["vllm_xargs"] = {"iaa_workflow": workflow}
    return post(base, body, timeout=120)


@pytest.mark.slow
def test_serve_answers_every_workflow_and_rejects_bad_ones(server, served_model):
    image = [{"type": "image_url", "image_url": {"url": encode(png_bytes(noise_image(300, 200, 1)))}},
             {"type": "text", "text": "What is this?"}]
    answers = {}
    for workflow in ("mm", "grounding", None):
        status, reply = _chat(server, served_model, image, workflow)
        assert status == 200, reply
        assert reply["usage"]["prompt_tokens"] > 576  # the image became 576 placeholders
        answers[workflow] = reply["choices"][0]["message"]["content"]
    assert answers[None] == answers["mm"]  # an image request defaults to mm
    assert answers["mm"] != answers["grounding"]
    status, reply = _chat(server, served_model, "What is this?", "text")
    assert status == 200 and reply["usage"]["prompt_tokens"] < 100
    status, reply = _chat(server, served_model, image, "text")
    assert status == 400 and "cannot take an image" in reply["error"]["message"]
    status, reply = _chat(server, served_model, "hi", "ocr")
    assert status == 400 and "valid: ['text', 'mm', 'grounding']" in reply["error"]["message"]


def test_init_writes_a_checkpoint_and_rejects_unknown_presets(tmp_path, capsys):
    from iaa_vllm.cli import main

    assert main(["init", str(tmp_path / "m"), "--preset", "tiny"]) == 0
    assert (tmp_path / "m" / "config.json").exists()
    with pytest.raises(SystemExit):
        main(["init", str(tmp_path / "n"), "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
