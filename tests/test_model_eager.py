"""The IAA model with `enforce_eager=True`: the debugging mode stays exact.

Eager against a stock Llama also run eager, the image workflows against the
reference, and the same greedy answers as the compiled engine (tests/test_model.py).
"""

from __future__ import annotations

import pytest

from tests import engines
from tests.engines import (
    QUESTIONS,
    assert_matches_reference,
    image_request,
    per_step_logprobs,
    text_request,
)


@pytest.fixture(scope="module")
def eager_engine(tiny_dir):
    llm = engines.start_engine(tiny_dir, enforce_eager=True)
    yield llm
    engines.stop_engine(llm)


@pytest.fixture(scope="module")
def eager_stock_engine(stock_dir):
    llm = engines.start_engine(stock_dir, enforce_eager=True)
    yield llm
    engines.stop_engine(llm)


def test_text_is_bit_identical_to_eager_stock_llama(eager_engine, eager_stock_engine):
    requests = [text_request(q) for q in QUESTIONS]
    params = engines.greedy(max_tokens=12, logprobs=5)
    for ours, theirs in zip(engines.generate_together(eager_engine, requests, params),
                            engines.generate_together(eager_stock_engine, requests, params)):
        assert ours.outputs[0].token_ids == theirs.outputs[0].token_ids
        assert per_step_logprobs(ours) == per_step_logprobs(theirs)


@pytest.mark.parametrize("workflow", ["mm", "grounding"])
def test_image_workflows_match_reference(eager_engine, reference, tokenizer, images, workflow):
    requests = [image_request(q, im) for q, im in zip(QUESTIONS, images)]
    for output, request in zip(eager_engine.generate(requests, engines.greedy(workflow, 6)), requests):
        assert_matches_reference(output, reference, tokenizer, request, workflow)


def test_eager_and_compiled_give_the_same_greedy_answers(eager_engine, iaa_engine, images):
    requests = [text_request(QUESTIONS[1]), image_request(QUESTIONS[0], images[0]),
                image_request(QUESTIONS[2], images[1])]
    params = [engines.greedy(wf, max_tokens=8) for wf in ("text", "mm", "grounding")]
    eager = eager_engine.generate(requests, params)
    compiled = iaa_engine.generate(requests, params)
    for e, c in zip(eager, compiled):
        assert e.outputs[0].token_ids == c.outputs[0].token_ids
