"""The worker's workflow state: slot state, token expansion, logits rows (no engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from iaa_vllm.engine import routing

IMG = 128049


def params(workflow=None) -> SamplingParams:
    return SamplingParams(extra_args={"iaa_workflow": workflow} if workflow else None)


def state_with(*slots) -> routing.WorkflowState:
    """slots: (workflow, prompt length) per slot, as admission and an adapter leave them."""
    state = routing.WorkflowState(max_slots=8, image_token=IMG)
    for slot, (workflow, prompt_len) in enumerate(slots):
        state.add(slot, params(workflow), prompt_len)
    return state


def test_the_worker_reads_the_admitted_name_and_never_guesses():
    assert routing.admitted_workflow(params("grounding")) == routing.GROUNDING
    with pytest.raises(RuntimeError, match="without iaa_workflow"):
        routing.admitted_workflow(params())


@pytest.mark.parametrize("req_id", ["_warmup_0_", "_warmup_17_", "_v2_mixed_warmup_decode_",
                                    "_sparse_mla_v2_warmup_prefill_", "_step5_dsa_warmup_decode_",
                                    "_step5_dsa_warmup_prefill_"])  # the last two: vLLM 0.33
def test_vllms_own_warmup_requests_are_text(req_id):
    assert routing.admitted_workflow(params(), req_id) == routing.TEXT
    # a named workflow still wins: only the missing name is filled in
    assert routing.admitted_workflow(params("mm"), req_id) == routing.MM


@pytest.mark.parametrize("req_id", ["0-1a2b3c4d", "_warmup_0_-1a2b3c4d", "chatcmpl-_warmup_", "warmup", "_warmup"])
def test_a_real_request_without_the_name_still_fails(req_id):
    """A frontend's id (vLLM appends "-" and a random suffix) is never taken for a warm-up."""
    with pytest.raises(RuntimeError, match=f"request '{req_id}' reached the IAA model without iaa_workflow"):
        routing.admitted_workflow(params(), req_id)


def test_moves_and_swaps_follow_the_requests():
    state = state_with(("mm", 1), ("text", 2), ("grounding", 3))
    state.move(0, 2, swap=True)
    assert state.workflow[:3].tolist() == [routing.GROUNDING, routing.TEXT, routing.MM]
    state.move(2, 1, swap=False)
    assert state.workflow[:2].tolist() == [routing.GROUNDING, routing.MM]
    assert state.prompt_len[:2].tolist() == [3, 1]


def test_a_step_expands_slots_to_tokens_and_pads_as_text():
    # slot 1 text (prefill 3), slot 0 mm (decode 1), slot 2 grounding (prefill 3), then 2 padding rows
    state = state_with(("mm", 2), ("text", 2), ("grounding", 3))
    state.set_batch(slots=np.array([1, 0, 2]), query_start_loc=np.array([0, 3, 4, 7]))
    input_ids = torch.tensor([5, 6, 7, 8, 1, IMG, IMG, 0, 0])
    positions = torch.tensor([0, 1, 2, 2, 0, 1, 3, 0, 0])  # the last IMG is generated: not a placeholder
    step = state.begin_step(input_ids, positions)
    assert step.token_workflow.tolist() == [0, 0, 0, 1, 2, 2, 2, 0, 0]
    assert {wf: rows.tolist() for wf, rows in step.rows.items()} == {"mm": [3], "grounding": [4, 5, 6]}
    assert step.image_rows.nonzero().flatten().tolist() == [5]
    # Sampling's rows are one per request, in batch order: text, mm, grounding.
    assert {wf_id: rows.tolist() for wf_id, rows in step.sampled_rows.items()} == {0: [0], 1: [1], 2: [2]}
    assert state.step is step


def test_sampled_rows_are_handed_out_once_and_only_for_sampling():
    state = state_with(("mm", 2), ("text", 2))
    state.set_batch(slots=np.array([0, 1]), query_start_loc=np.array([0, 2, 4]))
    step = state.begin_step(torch.tensor([1, IMG, 3, 4]), torch.tensor([0, 1, 0, 1]))
    assert state.take_sampled_rows(3) is None  # not one row per request: prompt logprobs
    state.begin_step(torch.tensor([1, IMG, 3, 4]), torch.tensor([0, 1, 0, 1]))
    assert state.take_sampled_rows(2) is state.step.sampled_rows
    assert state.take_sampled_rows(2) is None  # later calls are prompt-logprob slices
    assert step.has_features is False  # no CLIP features were handed to the step


def test_v1_layout_drops_padding_requests_and_reads_the_metadata_on_the_host():
    from vllm.forward_context import override_forward_context
    from types import SimpleNamespace

    state = state_with(("mm", 4), ("text", 1), ("grounding", 1))  # slot 2 is stale: not scheduled
    # V1 pads query_start_loc for graph sizes with requests of no tokens.
    metadata = SimpleNamespace(query_start_loc=torch.tensor([0, 2, 3, 3, 3]))
    with override_forward_context(SimpleNamespace(attn_metadata={"layer": metadata})):
        step = state.begin_step(torch.tensor([1, 2, 3, 0]), torch.tensor([0, 1, 0, 0]))
    assert step.token_workflow.tolist() == [1, 1, 0, 0]
    assert {wf_id: rows.tolist() for wf_id, rows in step.sampled_rows.items()} == {0: [1], 1: [0]}


def test_v1_layout_without_query_start_loc_names_what_works():
    from vllm.forward_context import override_forward_context
    from types import SimpleNamespace

    class FlashInferMetadata:  # the form of a backend that keeps no query_start_loc
        pass

    state = state_with(("mm", 4))
    with override_forward_context(SimpleNamespace(attn_metadata={"layer": FlashInferMetadata()})):
        with pytest.raises(RuntimeError, match="FlashInferMetadata has none; use Model Runner V2"):
            state.begin_step(torch.tensor([1]), torch.tensor([0]))


def test_a_step_reads_nothing_back_from_the_device():
    """The step is built on the host and copied once; on `meta` tensors (no data),
    any read back (`.cpu()`, `.item()`, `.any()`, `nonzero`, boolean masks) raises."""
    state = state_with(("text", 2), ("mm", 3), ("grounding", 2))
    state.features_pending = True
    state.set_batch(slots=np.array([0, 1, 2]), query_start_loc=np.array([0, 2, 5, 6]))
    input_ids = torch.empty(8, dtype=torch.long, device="meta")
    positions = torch.empty(8, dtype=torch.long, device="meta")
    step = state.begin_step(input_ids, positions)
    assert step.token_workflow.device.type == "meta" and step.image_rows.shape == (8,)
    assert {wf: rows.shape[0] for wf, rows in step.rows.items()} == {"mm": 3, "grounding": 1}
    assert step.has_features and not state.features_pending  # consumed by this step
    tagged = routing.tag_rows(torch.empty(8, 4, device="meta"), step)
    assert tagged.shape == (8, 5)


def test_a_step_without_image_rows_is_none():
    state = state_with(("text", 1), ("mm", 2))
    state.set_batch(slots=np.array([0]), query_start_loc=np.array([0, 1]))
    assert state.begin_step(torch.tensor([3]), torch.tensor([0])) is None
    state.set_batch(slots=np.zeros(0, dtype=np.int64), query_start_loc=np.zeros(1))  # dummy run
    assert state.begin_step(torch.tensor([3]), torch.tensor([0])) is None
    assert state.step is None


def test_rows_carry_their_workflow_through_gathers_and_slices():
    state = state_with(("grounding", 2), ("text", 1))
    state.set_batch(slots=np.array([0, 1]), query_start_loc=np.array([0, 2, 3]))
    step = state.begin_step(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0]))
    hidden = torch.randn(3, 4)
    tagged = routing.tag_rows(hidden, step)
    assert tagged.shape == (3, 5)
    rows, workflow = routing.untag_rows(tagged[torch.tensor([1, 2])])  # sampling gathers the last rows
    assert torch.equal(rows, hidden[1:]) and rows.is_contiguous()
    assert workflow.tolist() == [routing.GROUNDING, routing.TEXT]
    rows, workflow = routing.untag_rows(tagged[0:2])  # prompt logprobs slice a request's rows
    assert workflow.tolist() == [routing.GROUNDING, routing.GROUNDING]
    assert routing.untag_rows(routing.tag_rows(hidden, None))[1].tolist() == [0, 0, 0]
