"""iaa_vllm/engine/custom_ops.py: the two custom ops and the workflow final norm, without an engine.

The ops are called here as the compiled LlamaModel calls them, with a forward
context that holds the named layers. In the engine: tests/test_model.py counts
insertion calls (none on text-only steps) and checks the whole Llama with the
ops traces as one Dynamo graph; tests/test_insertion.py checks the layers' rows.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from iaa_vllm.engine import custom_ops
from iaa_vllm.engine.routing import Step
from tests.reference import rms_norm

HIDDEN, EPS = 64, 1e-5
# fp32 on both sides; vLLM's CPU RMSNorm kernel vectorises the mean of squares in
# another order than the reference's torch ops: ulp-level gaps on O(1) values.
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.config import VllmConfig, set_current_vllm_config

    config = VllmConfig()
    with set_current_vllm_config(config):
        yield config


def _context(**layers):
    from vllm.forward_context import override_forward_context

    # The ops read only `no_compile_layers` from the forward context.
    return override_forward_context(SimpleNamespace(no_compile_layers=layers))


def _step(num_tokens: int, rows: dict[str, list[int]]) -> Step:
    workflow = torch.zeros(num_tokens, dtype=torch.long)
    for wf_id, idx in zip((1, 2), rows.values()):
        workflow[idx] = wf_id
    return Step(workflow, {wf: torch.tensor(idx) for wf, idx in rows.items() if idx},
                torch.zeros(num_tokens, dtype=torch.bool))


def test_the_ops_are_registered_with_what_they_mutate():
    assert custom_ops.SPLITTING_OPS == ("iaa::insertion_layer", "iaa::workflow_norm")
    schemas = {name: getattr(torch.ops.iaa, name.split("::")[1]).default._schema for name in custom_ops.SPLITTING_OPS}
    written = {name: [a.name for a in s.arguments if a.alias_info is not None and a.alias_info.is_write]
               for name, s in schemas.items()}
    assert written == {"iaa::insertion_layer": ["hidden_states", "residual"], "iaa::workflow_norm": ["out"]}
    assert all(not s.returns for s in schemas.values())


def test_the_fake_impls_let_tracing_run_without_a_forward_context():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        hidden, residual = torch.empty(5, HIDDEN), torch.empty(5, HIDDEN)
        assert torch.ops.iaa.insertion_layer(hidden, residual, torch.arange(5), "anything") is None
        assert torch.ops.iaa.workflow_norm(hidden, residual, "anything") is None


class RecordingLayer:
    """Stands in for an IAAInsertionLayer: what the op passes it, and a visible write."""

    def __init__(self, step):
        self.workflows, self.calls = SimpleNamespace(step=step), []

    def __call__(self, positions, hidden, residual, rows):
        self.calls.append((positions, rows))
        hidden[rows["mm"]] = 1.0


def test_the_insertion_op_runs_its_layer_only_on_steps_with_image_rows():
    hidden, residual, positions = torch.zeros(7, HIDDEN), torch.zeros(7, HIDDEN), torch.arange(7)
    idle = RecordingLayer(step=None)
    with _context(**{"insertion_layers.0": idle}):
        torch.ops.iaa.insertion_layer(hidden, residual, positions, "insertion_layers.0")
    assert idle.calls == [] and not hidden.any()

    step = _step(7, {"mm": [2, 5]})
    busy = RecordingLayer(step)
    with _context(**{"insertion_layers.0": idle, "insertion_layers.1": busy}):
        torch.ops.iaa.insertion_layer(hidden, residual, positions, "insertion_layers.1")
    ((got_positions, rows),) = busy.calls
    assert got_positions is positions and rows is step.rows and idle.calls == []
    assert hidden[:, 0].tolist() == [0, 0, 1, 0, 0, 1, 0]  # the in-place write reached the caller


def _final_norm(step):
    norm = custom_ops.IAAFinalNorm(HIDDEN, EPS, SimpleNamespace(step=step), "model.norm")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (norm, *norm.workflow_norms.values()):
            module.weight.copy_(1 + 0.1 * torch.randn(HIDDEN, generator=generator))
    return norm


@pytest.mark.parametrize("num_tokens, rows", [
    (1, {"mm": [0]}),                                   # one decode row
    (7, {"mm": [1, 2, 3], "grounding": [5]}),           # odd counts, text rows around
    (577, {"grounding": list(range(1, 577))}),          # BOS as text, a whole image
    (769, {"mm": list(range(0, 769, 2)), "grounding": list(range(1, 769, 4))}),
])
def test_final_norm_gives_image_rows_their_workflows_norm(vllm_config, num_tokens, rows):
    step = _step(num_tokens, rows)
    norm = _final_norm(step)
    generator = torch.Generator().manual_seed(num_tokens)
    x, residual = torch.randn(num_tokens, HIDDEN, generator=generator), torch.randn(num_tokens, HIDDEN, generator=generator)
    stream = x + residual
    with torch.no_grad(), _context(**{"model.norm": norm}):
        out, stream_out = norm(x.clone(), residual.clone())
    torch.testing.assert_close(stream_out, stream, rtol=0, atol=1e-6)  # the add: one rounding
    text = step.token_workflow == 0
    expected = rms_norm(stream_out, norm.weight.detach(), EPS)
    for wf, idx in step.rows.items():
        expected[idx] = rms_norm(stream_out[idx], norm.workflow_norms[wf].weight.detach(), EPS)
    torch.testing.assert_close(out, expected, **TOLERANCE)
    with torch.no_grad():  # text rows: the frozen norm's own output, bit for bit
        frozen_out, _ = custom_ops.RMSNorm.forward(norm, x.clone(), residual.clone())
    assert torch.equal(out[text], frozen_out[text])
    # The workflow norms are not the frozen one: the check above could tell them apart.
    assert (rms_norm(stream_out, norm.weight.detach(), EPS)[~text] - out[~text]).abs().max() > 1e-2


def test_register_layer_refuses_a_duplicate_name(vllm_config):
    name = "test_custom_ops.layer"
    custom_ops.register_layer(vllm_config, name, object())
    with pytest.raises(ValueError, match="duplicate layer name 'test_custom_ops.layer'"):
        custom_ops.register_layer(vllm_config, name, object())
