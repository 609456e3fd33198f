"""Starting real vLLM CPU engines for tests, and driving them step by step.

Engines take ~30-50 s to start on the CI machine, so fixtures share them
(`conftest.py`); everything here runs the real engine, nothing is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Tests ship small inspection functions to the worker with `LLM.apply_model`.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from vllm import LLM, SamplingParams  # noqa: E402

ENGINE_DEFAULTS = dict(
    enforce_eager=True,
    gpu_memory_utilization=0.3,
    max_model_len=2048,
    dtype="float32",
    seed=0,
)


def start_engine(model: str, **overrides) -> LLM:
    return LLM(model=model, **{**ENGINE_DEFAULTS, **overrides})


def stop_engine(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()


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
