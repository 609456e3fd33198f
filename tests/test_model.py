"""The IAA model on the real vLLM CPU engine under vLLM's defaults (torch.compile),
against a stock Llama compiled the same way and the pure-torch reference.

tests/test_model_eager.py repeats the core comparisons with `enforce_eager=True`.
"""

from __future__ import annotations

import pytest
import torch

from tests import engines
from tests.engines import (
    LOGPROB_ATOL,
    QUESTIONS,
    assert_matches_reference,
    image_request,
    per_step_logprobs,
    text_request,
)



def test_text_is_bit_identical_to_stock_llama(iaa_engine, stock_engine):
    requests = [text_request(q) for q in QUESTIONS] + [{"prompt": "Once upon a time"}]
    params = engines.greedy(max_tokens=12, logprobs=5)
    iaa = engines.generate_together(iaa_engine, requests, params)
    stock = engines.generate_together(stock_engine, requests, params)
    for ours, theirs in zip(iaa, stock):
        assert ours.outputs[0].token_ids == theirs.outputs[0].token_ids
        # Bit-identical: every top-5 logprob of every step, compared exactly.
        assert per_step_logprobs(ours) == per_step_logprobs(theirs)


def test_text_inside_a_mixed_batch_is_bit_identical_to_stock_llama(iaa_engine, stock_engine, images):
    """Text rows of a batch that also runs mm and grounding keep the stock bits.

    Like for like: stock Llama gets a batch of the same shape, the image requests'
    prompts as plain token ids (same lengths, same positions), so only the IAA rows
    differ between the two engines.
    """
    image_requests = [image_request(QUESTIONS[0], images[0]), image_request(QUESTIONS[2], images[1])]
    text = [text_request(QUESTIONS[1]), {"prompt": "Once upon a time"}]
    mixed = [text[0], image_requests[0], text[1], image_requests[1]]
    # ignore_eos: every request decodes every step in both engines, so the batches match.
    params = [engines.greedy(wf, max_tokens=8, logprobs=5, ignore_eos=True)
              for wf in ("text", "mm", "text", "grounding")]
    iaa = engines.generate_together(iaa_engine, mixed, params)
    as_tokens = [text[0], {"prompt_token_ids": list(iaa[1].prompt_token_ids)},
                 text[1], {"prompt_token_ids": list(iaa[3].prompt_token_ids)}]
    stock = engines.generate_together(stock_engine, as_tokens, engines.greedy(None, 8, 5, ignore_eos=True))
    for i in (0, 2):
        assert iaa[i].outputs[0].token_ids == stock[i].outputs[0].token_ids
        assert per_step_logprobs(iaa[i]) == per_step_logprobs(stock[i])


@pytest.mark.parametrize("workflow", ["mm", "grounding"])
def test_image_workflows_match_reference(iaa_engine, reference, tokenizer, images, workflow):
    requests = [image_request(q, im) for q, im in zip(QUESTIONS, images)]
    outputs = iaa_engine.generate(requests, engines.greedy(workflow, max_tokens=6))
    for output, request in zip(outputs, requests):
        assert_matches_reference(output, reference, tokenizer, request, workflow)


def test_workflows_give_different_answers(iaa_engine, images):
    request = image_request(QUESTIONS[0], images[0])
    outs = {
        wf: iaa_engine.generate([request], engines.greedy(wf, max_tokens=4))[0]
        for wf in ("mm", "grounding")
    }
    text = iaa_engine.generate([text_request(QUESTIONS[0])], engines.greedy(max_tokens=4))[0]
    logprobs = {wf: engines.tokens_and_logprobs(o)[1] for wf, o in {**outs, "text": text}.items()}
    assert logprobs["mm"] != logprobs["grounding"] != logprobs["text"]


def test_default_workflow_is_mm_with_image_and_text_without(iaa_engine, images):
    request = image_request(QUESTIONS[0], images[0])
    default, mm = engines.generate_together(iaa_engine, [request, request], [engines.greedy(), engines.greedy("mm")])
    assert engines.tokens_and_logprobs(default) == engines.tokens_and_logprobs(mm)
    text = text_request(QUESTIONS[1])
    default, explicit = engines.generate_together(iaa_engine, [text, text], [engines.greedy(), engines.greedy("text")])
    assert engines.tokens_and_logprobs(default) == engines.tokens_and_logprobs(explicit)


def test_mixed_batch_with_staggered_arrivals_equals_solo_runs(iaa_engine, images):
    schedule = [
        (0, text_request(QUESTIONS[1]), engines.greedy("text", max_tokens=10)),
        (0, image_request(QUESTIONS[0], images[0]), engines.greedy("mm", max_tokens=8)),
        (2, image_request(QUESTIONS[2], images[1]), engines.greedy("grounding", max_tokens=9)),
        (3, text_request(QUESTIONS[2]), engines.greedy("text", max_tokens=5)),
        (5, image_request(QUESTIONS[1], images[2]), engines.greedy("grounding", max_tokens=7)),
        (6, image_request(QUESTIONS[2], images[2]), engines.greedy("mm", max_tokens=6)),
    ]
    mixed = engines.run_staggered(iaa_engine, schedule)
    for index, (_, request, params) in enumerate(schedule):
        solo = iaa_engine.generate([request], params)[0]
        ids, logprobs = engines.tokens_and_logprobs(mixed[index])
        solo_ids, solo_logprobs = engines.tokens_and_logprobs(solo)
        assert ids == solo_ids, f"request {index} ({params.extra_args})"
        # Same engine and kernels; only the batch shape differs, so GEMM blocking
        # may move the last bits (one measured run was bit-equal); 1e-4 allows that.
        assert logprobs == pytest.approx(solo_logprobs, abs=1e-4)


def test_prefix_caching_is_correct_across_workflows(iaa_engine, reference, tokenizer, images):
    """text, then mm, then grounding on a shared prefix each give the fresh-run answer."""
    long_question = "Look carefully. " * 40 + QUESTIONS[0]
    steps = [
        ("text", text_request(long_question)),
        ("mm", image_request(long_question, images[0])),
        ("grounding", image_request(long_question, images[0])),
        ("mm", image_request(long_question, images[0])),  # repeat: must hit the cache
    ]
    outputs = []
    for workflow, request in steps:
        output = iaa_engine.generate([request], engines.greedy(workflow, max_tokens=5))[0]
        assert_matches_reference(output, reference, tokenizer, request, workflow)
        outputs.append(output)
    # Caching is really on: the repeated mm request reuses the image prefix.
    assert outputs[3].num_cached_tokens >= 576


@pytest.mark.slow
def test_tensor_parallel_2_equals_1(iaa_engine, tiny_dir, images, monkeypatch):
    # The CPU backend binds one OpenMP thread group per rank; one core each here.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    requests = [text_request(QUESTIONS[0]), image_request(QUESTIONS[1], images[0]),
                image_request(QUESTIONS[2], images[1])]
    params = [engines.greedy(wf, max_tokens=6) for wf in ("text", "mm", "grounding")]
    tp2 = engines.start_engine(tiny_dir, tensor_parallel_size=2, distributed_executor_backend="mp")
    try:
        sharded = tp2.generate(requests, params)
    finally:
        engines.stop_engine(tp2)
    for ours, single in zip(sharded, iaa_engine.generate(requests, params)):
        ids, logprobs = engines.tokens_and_logprobs(ours)
        single_ids, single_logprobs = engines.tokens_and_logprobs(single)
        assert ids == single_ids
        # Sharded GEMMs plus an all-reduce reorder fp32 sums: 9.5e-7 measured.
        assert logprobs == pytest.approx(single_logprobs, abs=1e-4)


def test_prompt_logprobs_use_each_workflows_head(iaa_engine, reference, tokenizer, images):
    request = image_request(QUESTIONS[0], images[0])
    params = engines.greedy("grounding", max_tokens=1, prompt_logprobs=0)
    output = iaa_engine.generate([request], params)[0]
    ids = list(output.prompt_token_ids)
    pixels = reference.preprocess(images[0])[None]
    expected = reference.logits(ids, "grounding", pixel_values=pixels).log_softmax(-1)
    got = [step[token].logprob for step, token in zip(output.prompt_logprobs[1:], ids[1:])]
    want = expected[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
    assert got == pytest.approx(want, abs=LOGPROB_ATOL)


def _count_insertion_calls(model):
    model._calls = getattr(model, "_calls", 0)
    if not getattr(model, "_counting", False):
        def hook(module, args):
            model._calls += 1
        for layer in model.insertion_layers:
            layer.register_forward_pre_hook(hook)
        model._counting = True
    return model._calls


def test_text_only_batches_run_no_insertion_layer(iaa_engine, images):
    calls = lambda: sum(iaa_engine.apply_model(_count_insertion_calls))  # noqa: E731
    start = calls()
    iaa_engine.generate([text_request(q) for q in QUESTIONS], engines.greedy("text", 4))
    assert calls() == start
    iaa_engine.generate([image_request(QUESTIONS[0], images[0])], engines.greedy("mm", 4))
    # Every step of the image request (1 prefill + 3 decodes) ran every insertion layer.
    assert calls() - start == 4 * 3


def _dynamo_counts(model) -> dict:
    import inspect

    from torch._dynamo.utils import counters, get_compilation_metrics

    # Only the frames Dynamo compiled from LlamaModel's file: vLLM 0.26's CPU sampler
    # torch.compiles a function of its own (`compiled_random_sample`) in the same worker.
    llama_file = inspect.getsourcefile(type(model.model))
    frames = [m for m in get_compilation_metrics() if m.co_filename == llama_file]
    return {"graph_breaks": sum(counters["graph_break"].values()),
            "graphs": len(frames), "ops": sum(m.graph_op_count or 0 for m in frames)}


def test_the_whole_llama_with_iaa_ops_compiles_as_one_graph(iaa_engine):
    """Dynamo traced LlamaModel's forward, insertion and norm ops inside, with no break."""
    (counts,) = iaa_engine.apply_model(_dynamo_counts)
    assert counts["graph_breaks"] == 0
    assert counts["graphs"] == 1
    # A graph of the whole model, not of one small op: 4 layers, attention, norms, 3 IAA ops.
    assert counts["ops"] > 100


# ---- the per-step path, without an engine -------------------------------------
# The forward's routing, image-row embedding and logits run here on `meta` tensors,
# which hold no data: a read back to the host (`.cpu()`, `.item()`, `.any()`,
# `nonzero`, a boolean mask) raises, as a host sync would stall a GPU.

def _per_step_model(workflows, hidden=64, mm_hidden=32, vocab=100):
    from types import SimpleNamespace

    from torch import nn

    meta = dict(device="meta")
    adapter = lambda: SimpleNamespace(  # noqa: E731
        embed_tokens=nn.Embedding(vocab, hidden, **meta), projector=nn.Linear(mm_hidden, hidden, **meta),
        lm_head=nn.Linear(hidden, vocab, bias=False, **meta))
    calls = []

    def llama(input_ids, positions, intermediate_tensors, inputs_embeds):
        calls.append((input_ids, inputs_embeds))
        return torch.empty(positions.shape[0], hidden, **meta)

    from iaa_vllm.engine.model import IAALlamaForCausalLM as IAA

    model = SimpleNamespace(
        config=SimpleNamespace(mm_hidden_size=mm_hidden), workflows=workflows,
        adapters={"mm": adapter(), "grounding": adapter()},
        lm_head=nn.Linear(hidden, vocab, bias=False, **meta),
        logits_processor=lambda head, rows: rows @ head.weight.T,
        model=llama, calls=calls,
    )
    model._embed_image_rows_ = lambda *args: IAA._embed_image_rows_(model, *args)
    return model


def _mixed_step_state():
    import numpy as np

    from iaa_vllm.engine import routing
    from vllm import SamplingParams

    state = routing.WorkflowState(max_slots=4, image_token=7)
    for slot, (workflow, prompt_len) in enumerate([("text", 2), ("mm", 3), ("grounding", 2)]):
        state.add(slot, SamplingParams(extra_args={"iaa_workflow": workflow}), prompt_len)
    state.set_batch(slots=np.array([0, 1, 2]), query_start_loc=np.array([0, 2, 5, 6]))
    return state


def test_an_image_step_reads_nothing_back_from_the_device():
    from iaa_vllm.engine.model import IAALlamaForCausalLM as IAA

    state = _mixed_step_state()
    state.features_pending = True  # as embed_input_ids leaves it when CLIP features came
    model = _per_step_model(state)
    input_ids, positions = (torch.empty(8, dtype=torch.long, device="meta") for _ in range(2))
    embeds = torch.empty(8, 64, device="meta")
    tagged = IAA.forward(model, input_ids, positions, inputs_embeds=embeds)
    assert model.calls == [(None, embeds)]  # the runner's buffer, image rows swapped in place
    logits = IAA.compute_logits(model, tagged[torch.tensor([1, 4, 5], device="meta")])
    assert logits.shape == (3, 100)


def test_without_the_runners_embeddings_the_llama_reads_its_input_ids():
    """Graph-safe inputs: the compiled Llama never reads a tensor the forward made."""
    import numpy as np

    from iaa_vllm.engine.model import IAALlamaForCausalLM as IAA

    state = _mixed_step_state()
    state.set_batch(slots=np.array([0]), query_start_loc=np.array([0, 2]))  # a text step
    model = _per_step_model(state)
    input_ids, positions = torch.zeros(2, dtype=torch.long), torch.arange(2)
    IAA.forward(model, input_ids, positions, inputs_embeds=None)
    assert model.calls[0][0] is input_ids and model.calls[0][1] is None
    state.set_batch(slots=np.array([1]), query_start_loc=np.array([0, 2]))  # image rows
    with pytest.raises(RuntimeError, match="without the runner's inputs_embeds"):
        IAA.forward(model, input_ids, positions, inputs_embeds=None)
