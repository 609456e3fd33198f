"""Starting real vLLM CPU engines for tests, and driving them step by step.

Engines take ~30-50 s to start on the CI machine, so fixtures share them
(`conftest.py`); everything here runs the real engine, nothing is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Tests ship small inspection functions to the worker with `LLM.apply_model`.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
# Every compiled engine traces the model afresh: graph-break counts are real, and
# no engine runs an artifact compiled from other code on this machine.
os.environ.setdefault("VLLM_DISABLE_COMPILE_CACHE", "1")

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


def start_engine(model: str, **overrides) -> LLM:
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


def run_staggered(llm: LLM, schedule: list[tuple[int, dict, SamplingParams]]) -> dict:
    """Add each (step, prompt, params) when the engine reaches that step; run to the end.

    Returns request index -> finished RequestOutput. Requests therefore join a
    running batch mid-decode, as on a server.
    """
    engine = llm.llm_engine
    pending = sorted(enumerate(schedule), key=lambda item: item[1][0])
    finished, step = {}, 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][1][0] <= step:
            index, (_, prompt, params) = pending.pop(0)
            engine.add_request(str(index), prompt, params)
        for output in engine.step():
            if output.finished:
                finished[int(output.request_id)] = output
        step += 1
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
