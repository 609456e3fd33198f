"""Slot -> workflow bookkeeping and slot -> token expansion (no engine needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from iaa_vllm import routing

IMG = 128049


def make_router(max_reqs: int = 8) -> routing.WorkflowRouter:
    config = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=max_reqs),
        model_config=SimpleNamespace(hf_config=SimpleNamespace(image_token_index=IMG)),
    )
    return routing.WorkflowRouter(config, torch.device("cpu"), False)


def params(workflow=None) -> SamplingParams:
    return SamplingParams(extra_args={"iaa_workflow": workflow} if workflow else None)


def update(router, added=(), removed=(), moved=()):
    router.update_state(BatchUpdate(len(added), list(removed), list(added), list(moved)))


def test_added_requests_get_their_workflow_and_defaults():
    router = make_router()
    update(router, added=[
        (0, params("grounding"), [1, IMG, 2], []),
        (1, params(), [1, 2, 3, 4], []),       # no image, nothing asked: text
        (2, params(), [1, IMG, IMG], []),       # image placeholders, nothing asked: mm
    ])
    assert router.workflow[:3].tolist() == [routing.GROUNDING, routing.TEXT, routing.MM]
    assert router.prompt_len[:3].tolist() == [3, 4, 3]


def test_swaps_and_moves_follow_the_requests():
    router = make_router()
    update(router, added=[(0, params("mm"), [1], []), (1, params("text"), [1, 2], []),
                          (2, params("grounding"), [1, 2, 3], [])])
    update(router, moved=[(0, 2, MoveDirectionality.SWAP)])
    assert router.workflow[:3].tolist() == [routing.GROUNDING, routing.TEXT, routing.MM]
    update(router, removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)])
    assert router.workflow[:2].tolist() == [routing.GROUNDING, routing.MM]
    assert router.prompt_len[:2].tolist() == [3, 1]


def test_token_workflows_expand_slots_to_tokens_and_pad_as_text():
    router = make_router()
    update(router, added=[(0, params("text"), [1, 2], []), (1, params("mm"), [1, IMG], []),
                          (2, params("grounding"), [1, IMG, 3], [])])
    query_start_loc = torch.tensor([0, 3, 4, 7])  # prefill of 3, decode of 1, prefill of 3
    workflow, prompt_len = routing.token_workflows(router, query_start_loc, num_tokens=9)
    assert workflow.tolist() == [0, 0, 0, 1, 2, 2, 2, 0, 0]
    assert prompt_len.tolist() == [2, 2, 2, 2, 3, 3, 3, 0, 0]


def test_all_text_batch_routes_nothing():
    router = make_router()
    update(router, added=[(0, params("text"), [1], []), (1, params(), [1, 2], [])])
    assert routing.token_workflows(router, torch.tensor([0, 1, 2]), 2) is None


def test_unknown_workflow_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"valid: \['text', 'mm', 'grounding'\]"):
        routing.WorkflowRouter.validate_params(params("ocr"))
