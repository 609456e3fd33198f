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
