"""Streams whose client hangs up, mid-stream or before the first token, free what they held.

Against the session's loopback server (`iaa_server`): many streamed chat
completions of the three workflows at once, every one abandoned by its client.
Afterwards `/metrics` must show no running or waiting request and KV usage back
at its idle value, the engine must have stopped the hung-up streams (not run them
to `max_tokens`), and the next requests must give the answers they gave before.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from iaa_vllm import grounding
from benchmarks.server_probes import metric, metrics, wait_idle
from iaa_vllm.local_server import chat_body, encode, noise_image, png_bytes, stream_chat
from tests.inputs import chat_answer

pytestmark = pytest.mark.slow

PER_MODE = 4  # streams per workflow and hang-up point: 3 x 2 x 4 = 24 at once
MAX_TOKENS = 1000  # with ignore_eos: still generating when the client leaves


def _generated(base: str) -> float:
    return metric(metrics(base), "vllm:generation_tokens_total")


def _bodies(model: str) -> dict[str, dict]:
    """One greedy request of each workflow (the load benchmark's text/colours, mm/wide, grounding/wide)."""
    wide = encode(png_bytes(noise_image(300, 200, 1)))
    return {"text": chat_body(model, "Name three colours.", workflow="text"),
            "mm": chat_body(model, "What is in this image?", wide, "mm"),
            "grounding": chat_body(model, grounding.question("the left half"), wide, "grounding")}


def _answers(server, bodies: dict[str, dict]) -> dict[str, str]:
    return {name: chat_answer(server, body) for name, body in bodies.items()}


def test_hung_up_streams_free_their_kv_blocks_and_requests(iaa_server):
    bodies = _bodies(iaa_server.model)
    before = _answers(iaa_server, bodies)
    idle = wait_idle(iaa_server.base)
    assert idle["vllm:num_requests_running"] == 0 and idle["vllm:num_requests_waiting"] == 0
    generated_before = _generated(iaa_server.base)

    jobs = [(name, after) for name in bodies for after in (0, 2) for _ in range(PER_MODE)]
    long = {name: {**body, "max_tokens": MAX_TOKENS, "ignore_eos": True} for name, body in bodies.items()}
    with ThreadPoolExecutor(len(jobs)) as pool:
        streams = list(pool.map(lambda job: stream_chat(iaa_server.base, long[job[0]], cancel_after=job[1]),
                                jobs))

    mid = [s for (_, after), s in zip(jobs, streams) if after]
    assert all(s["status"] == 200 and s["chunks"] == 2 and not s["done"] for s in mid), mid
    for (name, after), s in zip(jobs, streams):  # greedy: what arrived is the start of the solo answer
        if after:
            assert before[name].startswith(s["text"]) or s["text"].startswith(before[name]), (name, s)

    gauges = wait_idle(iaa_server.base, kv_idle=idle["vllm:kv_cache_usage_perc"])
    assert gauges["vllm:num_requests_running"] == 0, gauges
    assert gauges["vllm:num_requests_waiting"] == 0, gauges
    assert gauges["vllm:kv_cache_usage_perc"] <= idle["vllm:kv_cache_usage_perc"], (gauges, idle)

    # The hang-ups reached the engine as aborts: streams run to the end would have
    # generated len(jobs) x MAX_TOKENS tokens; aborted ones stop a few steps in.
    # (vLLM 0.32 does not count client aborts in request_success_total{finished_reason="abort"}.)
    generated = _generated(iaa_server.base) - generated_before
    assert generated < len(jobs) * MAX_TOKENS / 10, generated

    assert _answers(iaa_server, bodies) == before
