"""The V1 runner adapter keeps the model's WorkflowState in step with the persistent batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from iaa_vllm.engine import routing
from iaa_vllm.engine.runner_v1 import WorkflowSlots

IMG = 128049


def adapter_and_state():
    state = routing.WorkflowState(max_slots=8, image_token=IMG)
    # What the model registers: its state among the engine's per-layer objects.
    layers = {"model.layers.0.self_attn.attn": object(), "workflows": state}
    config = SimpleNamespace(compilation_config=SimpleNamespace(static_forward_context=layers))
    return WorkflowSlots(config, torch.device("cpu"), False), state


def params(workflow) -> SamplingParams:
    return SamplingParams(extra_args={"iaa_workflow": workflow})


def update(adapter, added=(), removed=(), moved=()):
    adapter.update_state(BatchUpdate(len(added), list(removed), list(added), list(moved)))


def test_added_and_moved_requests_reach_the_state():
    adapter, state = adapter_and_state()
    update(adapter, added=[(0, params("grounding"), [1, IMG, 2], []), (1, params("text"), [1, 2, 3, 4], []),
                           (2, params("mm"), [1, IMG], [])])
    assert state.workflow[:3].tolist() == [routing.GROUNDING, routing.TEXT, routing.MM]
    assert state.prompt_len[:3].tolist() == [3, 4, 2]
    update(adapter, moved=[(0, 2, MoveDirectionality.SWAP)])
    assert state.workflow[:3].tolist() == [routing.MM, routing.TEXT, routing.GROUNDING]
    update(adapter, removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)])
    assert state.workflow[:2].tolist() == [routing.MM, routing.GROUNDING]
    update(adapter)  # nothing changed: nothing to do
    adapter.update_state(None)


def test_it_never_changes_logits_and_checks_names_at_the_frontend():
    adapter, _ = adapter_and_state()
    logits = torch.randn(2, 5)
    assert adapter.apply(logits) is logits and adapter.is_argmax_invariant()
    with pytest.raises(ValueError, match=r"valid: \['text', 'mm', 'grounding'\]"):
        WorkflowSlots.validate_params(params("ocr"))


def test_an_engine_without_the_iaa_model_is_an_error():
    config = SimpleNamespace(compilation_config=SimpleNamespace(static_forward_context={}))
    adapter = WorkflowSlots(config, torch.device("cpu"), False)
    with pytest.raises(RuntimeError, match="found 0"):
        update(adapter, added=[(0, params("mm"), [1], [])])
