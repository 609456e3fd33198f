"""Starting real vLLM CPU engines for tests, and driving them step by step.

Engines take ~30-50 s to start on the CI machine, so fixtures share them
(`conftest.py`); everything here runs the real engine, nothing is mocked.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Tests ship small inspection functions to the worker with `LLM.apply_model`.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
# One compile cache per test run, shared by its engines and servers (children inherit
# it): the second engine of a configuration loads the first one's artifacts instead
# of compiling again, and nothing compiled by another run, from other code, is ever
# loaded. Engines whose test counts what Dynamo traced, and the stock engine they are
# compared with bit for bit, start cold instead (`cold_compile_cache`).
if "VLLM_CACHE_ROOT" not in os.environ:
    RUN_CACHE = os.environ["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="iaa-tests-vllm-cache-")
    atexit.register(shutil.rmtree, RUN_CACHE, True)

import pytest  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

# vLLM's defaults otherwise: on CPU that is torch.compile (eager only where a
# test asks for `enforce_eager=True`).
ENGINE_DEFAULTS = dict(
    gpu_memory_utilization=0.3,
    max_model_len=2048,
    dtype="float32",
    seed=0,
)


@contextlib.contextmanager
def cold_compile_cache():
    """No compile cache for the engines and children started inside: each traces and
    compiles from scratch, and Dynamo's own counters see it (vLLM's AOT compile, on
    whenever the cache is, would take the model past them).

    vLLM's workers read the environment when they start; the run's cache is back
    for everything started after.
    """
    before = os.environ.get("VLLM_DISABLE_COMPILE_CACHE")
    os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLLM_DISABLE_COMPILE_CACHE")
        else:
            os.environ["VLLM_DISABLE_COMPILE_CACHE"] = before


# What the compile cache did for the servers of the run, read from their logs, for
# the summary at the end of the run (tests/conftest.py): hits are shown, not assumed.
COMPILE_CACHE_REPORTS: list[str] = []
_CACHE_LOG_WORDS = ("torch_aot_compile", "Directly load", "from the cache", "load failure")


def note_compile_cache(name: str, log_path: str | None = None, text: str = "") -> None:
    """Add the compile-cache lines (vLLM's words, trimmed) of `name`'s log file or
    output `text` to the run's summary."""
    if log_path and os.path.exists(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as log:
            text += log.read()
    lines = [line.strip()[:220] for line in text.splitlines() if any(word in line for word in _CACHE_LOG_WORDS)]
    COMPILE_CACHE_REPORTS.append(f"{name}:")
    COMPILE_CACHE_REPORTS.extend(f"    {line}" for line in lines or ["(no compile-cache line logged)"])


# The shared `iaa-vllm serve` of the server tests (tests/conftest.py: `iaa_server`):
# short image-fetch limits, so that tests/test_serve_fetch.py's stalled and endless
# downloads end in seconds, and its loopback origin among the allowed domains.
FETCH_TIMEOUT_S, FETCH_TRIES, MAX_DOWNLOAD_MB = 2, 2, 1
SERVER_ENV = {"VLLM_IMAGE_FETCH_TIMEOUT": str(FETCH_TIMEOUT_S), "VLLM_MEDIA_FETCH_MAX_RETRIES": str(FETCH_TRIES),
              "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB": str(MAX_DOWNLOAD_MB)}
ALLOWED_HOSTS = ("127.0.0.1", "nowhere.invalid")
SERVER_ARGS = ("--allowed-media-domains", *ALLOWED_HOSTS)


def start_engine(model: str, cold_cache: bool = False, **overrides) -> LLM:
    """An engine with `ENGINE_DEFAULTS` and `overrides`, on the run's compile cache or,
    with `cold_cache`, on none."""
    with cold_compile_cache() if cold_cache else contextlib.nullcontext():
        return LLM(model=model, **{**ENGINE_DEFAULTS, **overrides})


def stop_engine(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()


QUESTIONS = [
    "What is in the image?",
    "Describe the colours you see, one by one, in as much detail as you can manage.",
    "Is there a cat?",
]


def image_request(question: str, image) -> dict:
    from iaa_vllm.tokenizer import build_prompt

    return {"prompt": build_prompt(question, with_image=True), "multi_modal_data": {"image": image}}


def text_request(question: str) -> dict:
    from iaa_vllm.tokenizer import build_prompt

    return {"prompt": build_prompt(question, with_image=False)}


def per_step_logprobs(output) -> list[dict[int, float]]:
    """Every returned logprob of every generated step, for exact comparisons."""
    return [{t: lp.logprob for t, lp in step.items()} for step in output.outputs[0].logprobs]


def greedy(
    workflow: str | None = None, max_tokens: int = 8, logprobs: int = 1, **kwargs
) -> SamplingParams:
    # Options go through the constructor: its __post_init__ derives settings from
    # them (prompt_logprobs turns off prefix-cache reads, for instance).
    extra = {"iaa_workflow": workflow} if workflow else None
    return SamplingParams(
        max_tokens=max_tokens, temperature=0.0, logprobs=logprobs, extra_args=extra, **kwargs
    )


def tokens_and_logprobs(output) -> tuple[list[int], list[float]]:
    """Generated ids and the logprob of each chosen id from a RequestOutput."""
    completion = output.outputs[0]
    ids = list(completion.token_ids)
    return ids, [lp[t].logprob for t, lp in zip(ids, completion.logprobs)]


def generate_together(llm: LLM, prompts: list[dict], params) -> list:
    """`llm.generate`, made repeatable for exact comparisons.

    `LLM.generate` sends its requests to the engine core one by one while the core
    already steps: how many it sees in its first step depends on timing, and a
    different batch split moves fp32 GEMM blocking and so the last bit (0.26 lane,
    CI at 3cb3f9c). Here the prefix cache is emptied, then the core's scheduler is
    paused (vLLM's own `pause_scheduler("keep")`) while every request is added, so
    each run starts from the same cache with one first batch. The pause leaves the
    caches alone: its cache reset would empty the core's multimodal cache behind the
    frontend's back, which still counts its images as sent.
    """
    engine = llm.llm_engine
    params = params if isinstance(params, list) else [params] * len(prompts)
    assert llm.reset_prefix_cache(), "the prefix cache resets only on an idle engine"
    engine.engine_core.call_utility("pause_scheduler", "keep", False)
    try:
        for index, (prompt, request_params) in enumerate(zip(prompts, params)):
            engine.add_request(str(index), prompt, request_params)
    finally:
        engine.engine_core.call_utility("resume_scheduler")
    finished = _run_to_end(engine)
    return [finished[index] for index in range(len(prompts))]


def run_staggered(llm: LLM, schedule: list[tuple[int, dict, SamplingParams]]) -> dict:
    """Add each (step, prompt, params) when the engine reaches that step; run to the end.

    Returns request index -> finished RequestOutput. Requests therefore join a
    running batch mid-decode, as on a server.
    """
    engine = llm.llm_engine
    pending = sorted(enumerate(schedule), key=lambda item: item[1][0])
    finished, step = {}, 0
    while pending:
        while pending and pending[0][1][0] <= step:
            index, (_, prompt, params) = pending.pop(0)
            engine.add_request(str(index), prompt, params)
        finished.update(_step(engine))
        step += 1
    return {**finished, **_run_to_end(engine)}


def _step(engine) -> dict:
    return {int(o.request_id): o for o in engine.step() if o.finished}


def _run_to_end(engine) -> dict:
    finished = {}
    while engine.has_unfinished_requests():
        finished.update(_step(engine))
    return finished


# fp32 on both sides, but different kernels (vLLM's fused add+RMSNorm, CPU paged
# attention, GEMM blocking) reorder sums: the largest gap measured on these cases
# was 9.5e-7; 1e-3 keeps headroom for other CPUs' kernels and stays far below
# the gaps between workflows (> 1e-2).
LOGPROB_ATOL = 1e-3


def assert_matches_reference(output, reference, tokenizer, request, workflow):
    from tests.inputs import reference_prompt_ids

    expected_prompt = reference_prompt_ids(tokenizer, request["prompt"])
    assert list(output.prompt_token_ids) == expected_prompt
    pixels = None
    if "multi_modal_data" in request:
        pixels = reference.preprocess(request["multi_modal_data"]["image"])[None]
    ids, logprobs = tokens_and_logprobs(output)
    ref_ids, ref_logprobs = reference.generate(
        expected_prompt, workflow, pixel_values=pixels, max_tokens=len(ids)
    )
    assert ids == ref_ids, f"{workflow}: engine {ids} != reference {ref_ids}"
    assert logprobs == pytest.approx(ref_logprobs, abs=LOGPROB_ATOL)
