"""iaa_vllm/engine/insertion.py: each insertion layer, run by the real compiled engine,
against the pure-torch reference's insertion layer at awkward token counts.

vLLM's `Attention` needs the engine's forward context and paged KV cache, so the
layer is checked where it runs: hooks in the worker (`LLM.apply_model`) record
every call's input stream and output stream, with the batch layout
(`query_start_loc`) and each row's workflow. The rows of one request, joined
over the steps that computed them (chunked prefill, then one row per decode),
are its whole sequence at that depth; the reference layer recomputes attention
over it from scratch, causally, so its row p is what the engine computed at
position p from the paged KV of rows 0..p-1.
"""

from __future__ import annotations

import pytest
import torch

from iaa_vllm.engine.config import IMAGE_TOKEN
from iaa_vllm.local_server import noise_image
from tests import engines
from tests.inputs import IMAGE_TOKENS
from tests.reference import PARTS, llama_layer, rope_cos_sin

# fp32 on both sides; vLLM's fused add+RMSNorm, CPU paged attention and oneDNN GEMMs
# reorder sums against the reference's plain ops: largest gap measured 6e-8 on
# streams up to 0.23. These bounds keep >15x headroom and stay far below what the
# layer changes (input vs output: > 6e-2) and the other workflow's layer (> 9e-2).
STREAM_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
DIFFERENT = 1e-2  # a gap that says "another computation", 10^4 x the tolerance


def _start_capture(model) -> int:
    """Record every insertion-layer call of the following forwards (in the worker)."""
    from vllm.forward_context import get_forward_context

    calls = model._insertion_capture = []

    def before(layer, args):
        positions, hidden, residual, _ = args
        metadata = get_forward_context().attn_metadata
        starts = next(iter(metadata.values())).query_start_loc.cpu().clone()
        used = int(starts[-1])
        calls.append(dict(
            layer=layer._capture_index, query_start_loc=starts,
            positions=positions[:used].cpu().clone(),
            workflow=layer.workflows.step.token_workflow[:used].cpu().clone(),
            stream_in=(hidden[:used] + residual[:used]).cpu().clone(),
            split_in=(hidden[:used].cpu().clone(), residual[:used].cpu().clone()),
        ))

    def after(layer, args, output):
        call = calls[-1]
        used = len(call["positions"])
        hidden, residual = output
        call["stream_out"] = (hidden[:used] + residual[:used]).cpu().clone()
        text = call["workflow"] == 0  # routing.TEXT
        hidden_in, residual_in = call.pop("split_in")
        # Text rows must come back untouched, bit for bit; send back only whether they did.
        call["text_rows"] = int(text.sum())
        call["text_rows_kept"] = (torch.equal(hidden_in[text], hidden[:used].cpu()[text])
                                  and torch.equal(residual_in[text], residual[:used].cpu()[text]))

    model._insertion_hooks = []
    for index, layer in enumerate(model.insertion_layers):
        layer._capture_index = index
        model._insertion_hooks += [layer.register_forward_pre_hook(before),
                                   layer.register_forward_hook(after)]
    return len(model.insertion_layers)


def _stop_capture(model) -> list[dict]:
    for hook in model._insertion_hooks:
        hook.remove()
    for layer in model.insertion_layers:
        del layer._capture_index
    calls = model._insertion_capture
    del model._insertion_hooks, model._insertion_capture
    return calls


def join_requests(calls: list[dict], layer: int) -> list[dict]:
    """One layer's calls -> per request: workflow, stream_in / stream_out [n, H] over positions 0..n-1.

    A segment (one batch row of one call) continues the request of the same
    workflow whose rows so far end just before it; one starting at position 0
    is a new request. Prompts have distinct lengths, so the match is unique.
    """
    requests: list[dict] = []
    for call in (c for c in calls if c["layer"] == layer):
        starts = call["query_start_loc"].tolist()
        for begin, end in zip(starts[:-1], starts[1:]):
            workflow = int(call["workflow"][begin])
            if workflow == 0:
                continue
            positions = call["positions"][begin:end]
            assert torch.equal(positions, torch.arange(int(positions[0]), int(positions[0]) + end - begin))
            first = int(positions[0])
            if first == 0:
                request = dict(workflow=workflow, stream_in=[], stream_out=[], length=0)
                requests.append(request)
            else:
                matches = [r for r in requests if r["workflow"] == workflow and r["length"] == first]
                assert len(matches) == 1, f"segment at position {first}: {len(matches)} requests fit"
                (request,) = matches
            request["stream_in"].append(call["stream_in"][begin:end])
            request["stream_out"].append(call["stream_out"][begin:end])
            request["length"] = first + end - begin
    for request in requests:
        request["stream_in"] = torch.cat(request["stream_in"])
        request["stream_out"] = torch.cat(request["stream_out"])
    return requests


def reference_layer(reference, workflow: str, layer: int, stream: torch.Tensor) -> torch.Tensor:
    """The reference's insertion layer `layer` of `workflow` over one whole sequence [n, H]."""
    cfg = reference.config
    cos, sin = rope_cos_sin(stream.shape[0], cfg["head_dim"], reference.rope_theta, stream.dtype)
    with torch.no_grad():
        return llama_layer(stream, reference.sd, f"{PARTS[workflow][1]}.{layer}", cfg, cos, sin)


def image_prompt(text: str, seed: int) -> dict:
    """A raw prompt: BOS, the image token, then `text` (no chat template: few text tokens)."""
    return {"prompt": IMAGE_TOKEN + text, "multi_modal_data": {"image": noise_image(320, 200, seed)}}


# Awkward rows: 1 and 7 text tokens next to the 576 image tokens, chat-formatted
# prompts, a text request whose rows the layer must leave alone, max_tokens that
# leave the last decode steps with a single routed row, and 4,279 prompt tokens
# against the engine's 4,096-token step budget, so the last prompt's prefill is
# chunked inside its image. (workflow, request, max_tokens, text tokens if raw.)
REQUESTS = [
    ("text", engines.text_request(engines.QUESTIONS[1]), 4, None),
    ("mm", image_prompt("", 101), 3, 1),
    ("grounding", image_prompt("\nIs there a cat?", 102), 8, 7),
    ("grounding", image_prompt("", 103), 2, 1),
    ("mm", engines.image_request(engines.QUESTIONS[0], noise_image(200, 280, 104)), 4, None),
    ("grounding", engines.image_request("Where is the dog on the left of the red car?",
                                        noise_image(336, 336, 105)), 3, None),
    ("mm", engines.image_request(engines.QUESTIONS[1], noise_image(250, 250, 106)), 2, None),
    ("mm", image_prompt("\nthe red circle, left", 107), 5, 7),
]
# A salt of their own: no prefix-cache hit from another test may skip rows.
for _, _request, _, _ in REQUESTS:
    _request["cache_salt"] = __name__
PARTS_BY_ID = {1: "mm", 2: "grounding"}  # routing's workflow ids


@pytest.fixture(scope="module")
def captured(iaa_engine):
    """(every insertion-layer call, RequestOutputs in REQUESTS order) of one mixed batch.

    Scheduling is paused while the requests are queued, so the first step sees
    them all, in order, and the step budget cuts the last prompt: on every run.
    """
    iaa_engine.apply_model(_start_capture)
    try:
        iaa_engine.sleep(level=0)  # level 0: scheduling only, weights and KV stay
        try:
            iaa_engine.enqueue(
                [request for _, request, _, _ in REQUESTS],
                [engines.greedy(wf, max_tokens=n, ignore_eos=True) for wf, _, n, _ in REQUESTS],
                use_tqdm=False,
            )
        finally:
            iaa_engine.wake_up(tags=["scheduling"])
        outputs = iaa_engine.wait_for_completion(use_tqdm=False)  # sorted by request id
    finally:
        (calls,) = iaa_engine.apply_model(_stop_capture)
    assert [o.prompt for o in outputs] == [request["prompt"] for _, request, _, _ in REQUESTS]
    return calls, outputs


def test_prompts_have_the_awkward_lengths(captured):
    _, outputs = captured
    for (_, _, _, text_tokens), output in zip(REQUESTS, outputs):
        ids = list(output.prompt_token_ids)
        assert output.num_cached_tokens == 0
        if text_tokens is not None:
            assert len(ids) == IMAGE_TOKENS + text_tokens


def test_insertion_layers_match_reference_at_awkward_token_counts(captured, reference):
    calls, outputs = captured
    num_layers = len(reference.depths)
    image = [(wf, out) for (wf, *_), out in zip(REQUESTS, outputs) if wf != "text"]
    for layer in range(num_layers):
        requests = join_requests(calls, layer)
        # Every image request, every row: the prompt plus each decoded token but the last.
        want = sorted((wf, len(o.prompt_token_ids) + len(o.outputs[0].token_ids) - 1) for wf, o in image)
        assert sorted((PARTS_BY_ID[r["workflow"]], r["length"]) for r in requests) == want
        for request in requests:
            workflow = PARTS_BY_ID[request["workflow"]]
            got = request["stream_out"]
            expected = reference_layer(reference, workflow, layer, request["stream_in"])
            torch.testing.assert_close(
                got, expected, **STREAM_TOLERANCE,
                msg=lambda m: f"layer {layer}, {workflow}, {request['length']} rows: {m}",
            )
            # The comparison tells the workflows apart: the other set's layer is far off.
            other = "grounding" if workflow == "mm" else "mm"
            assert (reference_layer(reference, other, layer, request["stream_in"]) - got).abs().max() > DIFFERENT


def test_text_rows_pass_through_untouched(captured):
    calls, _ = captured
    assert sum(c["text_rows"] for c in calls) > 0  # the batch did put text rows through the layers
    assert all(c["text_rows_kept"] for c in calls)


def test_decode_steps_with_a_single_routed_row_were_checked(captured):
    calls, _ = captured
    routed = [int((c["workflow"] != 0).sum()) for c in calls]
    assert 1 in routed  # the grounding request's last decodes ran alone


def test_a_prefill_was_chunked_inside_an_image(captured, iaa_engine):
    """The rows after the chunk boundary attended to the first chunk's paged KV."""
    calls, _ = captured
    budget = iaa_engine.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert budget == 4096, "REQUESTS are sized for vLLM's CPU default step budget (LLM class)"
    # Step one: all eight prompts, 62 + 3,634 rows, then the last one's first 400 rows.
    assert calls[0]["query_start_loc"].tolist()[-2:] == [3696, 4096]
    continued = [
        int(c["positions"][begin]) for c in calls
        for begin, end in zip(c["query_start_loc"][:-1].tolist(), c["query_start_loc"][1:].tolist())
        if end - begin > 1 and c["positions"][begin] > 0
    ]
    # Step two goes on at row 400, inside the image (rows 1-576), at every depth.
    assert continued == [400] * len({c["layer"] for c in calls})


def test_the_batch_answers_as_the_reference(captured, reference, tokenizer):
    """End to end on the same batch: the chunked-in-its-image prompt included (greedy ids, logprobs)."""
    _, outputs = captured
    for (workflow, request, _, _), output in zip(REQUESTS, outputs):
        if workflow != "text":  # text: bit-identical to stock Llama, tests/test_model.py
            engines.assert_matches_reference(output, reference, tokenizer, request, workflow)


def test_the_layer_reads_nothing_back_from_the_device():
    """The layer's row routing on `meta` tensors (no data): a host read back raises.
    Projections, rope and attention are stand-ins; what runs is the layer's own code."""
    from types import SimpleNamespace

    from torch import nn

    from iaa_vllm.engine.insertion import IAAInsertionLayer

    hidden, q_size, kv_size, meta = 64, 64, 32, dict(device="meta")

    def workflow_layer():
        qkv, o = nn.Linear(hidden, q_size + 2 * kv_size, **meta), nn.Linear(q_size, hidden, **meta)
        return SimpleNamespace(
            input_layernorm=lambda x: x,
            self_attn=SimpleNamespace(qkv_proj=lambda x: (qkv(x), None), o_proj=lambda x: (o(x), None)),
            post_attention_layernorm=lambda out, residual: (out + residual, out + residual),
            mlp=nn.Linear(hidden, hidden, **meta))

    layer = SimpleNamespace(
        q_size=q_size, kv_size=kv_size, workflow_layers={"mm": workflow_layer(), "grounding": workflow_layer()},
        rotary_emb=lambda positions, q, k: (q, k), attn=lambda q, k, v: q)
    rows = {"mm": torch.empty(3, dtype=torch.long, **meta), "grounding": torch.empty(1, dtype=torch.long, **meta)}
    states = torch.empty(8, hidden, **meta), torch.empty(8, hidden, **meta)
    out = IAAInsertionLayer.forward(layer, torch.empty(8, dtype=torch.long, **meta), *states, rows)
    assert out[0] is states[0] and out[1] is states[1]  # in place
