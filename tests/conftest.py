"""Shared fixtures: one tiny checkpoint, one pure-torch reference, one IAA engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests import engines

IMAGE_TOKENS = 576  # 336 px / 14 px patches, squared


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from iaa_vllm.checkpoint import write_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    write_checkpoint(str(path), preset="tiny", dtype="float32", seed=0)
    return str(path)


@pytest.fixture(scope="session")
def reference(tiny_dir):
    from tests.reference import IAAReference

    return IAAReference.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def iaa_engine(tiny_dir):
    llm = engines.start_engine(tiny_dir)
    yield llm
    engines.stop_engine(llm)


@pytest.fixture(scope="session")
def stock_dir(tiny_dir, tmp_path_factory) -> str:
    """A stock `LlamaForCausalLM` checkpoint: the frozen weights cut out of the tiny one."""
    from benchmarks.stock_llama import write_stock_llama

    out = str(tmp_path_factory.mktemp("stock") / "llama")
    write_stock_llama(tiny_dir, out)
    return out


@pytest.fixture(scope="module")
def stock_engine(stock_dir):
    """Stock vLLM Llama under the same engine settings as `iaa_engine` (compiled).

    Per module, not per session: a session engine would hold ~2 GB through the
    server and Ray tests that follow.
    """
    llm = engines.start_engine(stock_dir)
    yield llm
    engines.stop_engine(llm)


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """Seeded random RGB pixels: the same image for the same arguments, in every run."""
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """A wide, a tall and a square image (padding to square matters for the first two)."""
    return [make_image(300, 200, 1), make_image(180, 260, 2), make_image(336, 336, 3)]


def reference_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids as vLLM should build them: tokenize, expand the image token to 576."""
    from iaa_vllm.tokenizer import IMAGE_TOKEN_ID

    ids = tokenizer(prompt)["input_ids"]
    expanded = []
    for token in ids:
        expanded.extend([token] * IMAGE_TOKENS if token == IMAGE_TOKEN_ID else [token])
    return expanded


@pytest.fixture(scope="session")
def iaa_server(tiny_dir):
    """One `iaa-vllm serve` on loopback (an `iaa_vllm.local_server.Server`) for every server test.

    IAA_TEST_SERVER=http://127.0.0.1:PORT,PID reuses a running server instead (a
    tiny checkpoint served with `local_server.SERVE_ARGS`): engine start takes
    minutes on a busy 2-core machine.
    """
    import json
    import os
    import urllib.request

    from iaa_vllm.local_server import Server, serve

    if os.environ.get("IAA_TEST_SERVER"):
        base, pid = os.environ["IAA_TEST_SERVER"].rsplit(",", 1)
        with urllib.request.urlopen(f"{base}/v1/models", timeout=30) as response:
            model = json.load(response)["data"][0]["id"]
        yield Server(base, model, int(pid))
        return
    with serve(tiny_dir, timeout_s=900) as server:
        yield server


@pytest.fixture(scope="session")
def api(iaa_server):
    """An OpenAI client on the shared server."""
    from openai import OpenAI

    return OpenAI(base_url=f"{iaa_server.base}/v1", api_key="EMPTY")


def chat_answer(server, body: dict) -> str:
    """The text of a chat completion that must succeed (a raw HTTP request, no client)."""
    from iaa_vllm.local_server import post

    status, reply = post(server.base, body)
    assert status == 200, reply
    return reply["choices"][0]["message"]["content"]
