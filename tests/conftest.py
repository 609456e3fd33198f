"""Shared fixtures: one tiny checkpoint, one pure-torch reference, one IAA engine."""

from __future__ import annotations

import pytest
from PIL import Image

from iaa_vllm.local_server import noise_image
from tests import engines


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
    from iaa_vllm.stock_llama import write_stock_llama

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


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """A wide, a tall and a square image (padding to square matters for the first two)."""
    return [noise_image(300, 200, 1), noise_image(180, 260, 2), noise_image(336, 336, 3)]


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
