"""The Model Runner V2 adapter: V2's per-model request state feeds the model's WorkflowState.

V2 itself needs Triton on a GPU, so no V2 engine runs here: this drives the
adapter with V2's own request and batch types, on a real engine config.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.core.sched.output import NewRequestData
from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers

from iaa_vllm.engine import routing
from iaa_vllm.engine.admission import requested_workflow
from iaa_vllm.engine.runner_v2 import IAAModelState

IMG = 128049


@pytest.fixture(scope="module")
def model_state(tiny_dir):
    config = EngineArgs(model=tiny_dir, max_model_len=2048).create_engine_config()
    model = SimpleNamespace(workflows=routing.WorkflowState(8, IMG))  # what the adapter reads
    return IAAModelState(config, model, None, torch.device("cpu"))


def new_request(req_id: str, workflow: str, prompt: list[int]) -> NewRequestData:
    return NewRequestData(
        req_id=req_id, prompt_token_ids=prompt, mm_features=[],
        sampling_params=SamplingParams(extra_args={"iaa_workflow": workflow}),
        pooling_params=None, block_ids=([],), num_computed_tokens=0, lora_request=None,
    )


def batch(req_ids, idx_mapping, query_start_loc) -> InputBatch:
    n, tokens = len(req_ids), int(query_start_loc[-1])
    dummy = InputBatch.make_dummy(n, tokens, InputBuffers(8, 64, torch.device("cpu")))
    return dataclasses.replace(
        dummy, req_ids=list(req_ids), idx_mapping_np=np.array(idx_mapping),
        query_start_loc_np=np.array(query_start_loc, dtype=np.int32),
    )


def test_requests_and_batch_layout_reach_the_state(model_state):
    state = model_state.workflows
    model_state.add_request(3, new_request("a", "grounding", [1, IMG, 2]))
    model_state.add_request(5, new_request("b", "text", [1, 2]))
    assert state.workflow[[3, 5]].tolist() == [routing.GROUNDING, routing.TEXT]
    assert model_state.prepare_inputs(batch(["b", "a"], [5, 3], [0, 2, 5]), None) == {}
    step = state.begin_step(torch.tensor([1, 2, 1, IMG, 2]), torch.tensor([0, 1, 0, 1, 2]))
    assert step.token_workflow.tolist() == [0, 0, 2, 2, 2]
    assert step.image_rows.nonzero().flatten().tolist() == [3]


def test_dummy_batches_route_nothing(model_state):
    model_state.add_request(0, new_request("c", "mm", [IMG]))
    # A warm-up or capture batch reuses slot 0 under a made-up request id.
    model_state.prepare_inputs(batch(["req_0_dummy"], [0], [0, 1]), None)
    assert model_state.workflows.begin_step(torch.tensor([IMG]), torch.tensor([0])) is None
    model_state.prepare_dummy_inputs(num_reqs=1, num_tokens=1)
    assert model_state.workflows.begin_step(torch.tensor([IMG]), torch.tensor([0])) is None
    model_state.remove_request("c")


class _FirstStepBuilt(Exception):
    """Raised where the warm-up would run its first step: what it built is all we need."""


def _warmup_requests(builder, config, *args) -> list:
    """The new requests of the first step that V2's warm-up `builder` makes
    (vllm/v1/worker/gpu/warmup.py), taken where the worker would run it. The runner is
    a stand-in holding only what the builder reads before that step."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    built = []

    def execute(scheduler_output):
        built.extend(scheduler_output.scheduled_new_reqs)
        raise _FirstStepBuilt

    spec = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=8, dtype=torch.float32)
    runner = SimpleNamespace(
        vllm_config=config, model_config=config.model_config, scheduler_config=config.scheduler_config,
        max_model_len=config.model_config.max_model_len, max_num_reqs=4, num_speculative_steps=0,
        decode_query_len=1, is_pooling_model=False, is_encoder_decoder=False, is_encoder_only=False,
        is_last_pp_rank=True,
        adaptive_verification=None, rejection_sampler=None,
        model_state=SimpleNamespace(), kv_block_zeroer=None, block_tables=None,
        kv_connector=SimpleNamespace(set_disabled=lambda disabled: None),
        kv_cache_config=SimpleNamespace(num_blocks=4096, kv_cache_groups=[SimpleNamespace(kv_cache_spec=spec)]))
    with pytest.raises(_FirstStepBuilt):
        builder(runner, execute, lambda grammar_output: None, *args)
    assert built, "the warm-up built no request"
    return built


@pytest.mark.parametrize("builder", ["warmup_kernels", "run_mixed_prefill_decode_warmup"])
def test_v2_warmup_requests_run_as_text(model_state, tiny_dir, builder):
    """V2's kernel warm-up (on by default after profiling) and its mixed prefill+decode
    warm-up make requests with no workflow; the adapter takes them as text."""
    from vllm.v1.worker.gpu import warmup

    config = model_state.vllm_config
    args = (64,) if builder == "run_mixed_prefill_decode_warmup" else ()
    requests = _warmup_requests(getattr(warmup, builder), config, *args)
    state = model_state.workflows
    state.workflow[:] = routing.MM  # so that a slot left unset would show
    for slot, request in enumerate(requests[:4]):
        assert requested_workflow(request.sampling_params) is None, request.req_id
        model_state.add_request(slot, request)
        assert state.workflow[slot] == routing.TEXT, request.req_id
        model_state.remove_request(request.req_id)


def test_a_real_request_without_a_workflow_still_fails(model_state):
    request = dataclasses.replace(new_request("d", "text", [1, 2]), sampling_params=SamplingParams())
    with pytest.raises(RuntimeError, match="request 'd' reached the IAA model without iaa_workflow"):
        model_state.add_request(1, request)
