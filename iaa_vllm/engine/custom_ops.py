"""IAA's custom ops: insertion layers and workflow norms, opaque inside vLLM's compiled `LlamaModel`.

IAA runs its insertion layers right after chosen frozen layers, and each image
workflow's own final norm. Both choose rows per request, which is data-dependent
work a CUDA graph cannot capture and Dynamo should not trace. So they run as
registered custom ops, called from inside `LlamaModel`'s own forward (vLLM's
`@support_torch_compile`):

- `iaa::insertion_layer(hidden, residual, positions, layer_name)`, called by
  `IAADecoderLayer` (the `layer_type` LlamaModel builds its layers with) after
  a frozen layer at an insertion depth;
- `iaa::workflow_norm(out, stream, layer_name)`, called by `IAAFinalNorm` (the
  model's `norm`) after the frozen final norm.

Both mutate the image rows in place and return at once when the step has no
image-workflow row (`routing.Step` is None): text rows, and text-only steps,
stay exactly the stock Llama computation. The model lists both in
`compilation_config.splitting_ops` (`SPLITTING_OPS`), so vLLM's piecewise
compilation cuts the graph there and captures CUDA graphs only for the frozen
pieces between them. The ops find their modules by name in the forward
context, as vLLM's attention op does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.library import Library
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.models.llama import LlamaDecoderLayer
from vllm.model_executor.models.utils import extract_layer_index
from vllm.utils.torch_utils import direct_register_custom_op

from iaa_vllm.engine.names import IMAGE_WORKFLOWS
from iaa_vllm.engine.routing import WorkflowState

_LIBRARY = Library("iaa", "FRAGMENT")  # the ops live as long as this module
SPLITTING_OPS = ("iaa::insertion_layer", "iaa::workflow_norm")


def _insertion_layer(
    hidden_states: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, layer_name: str
) -> None:
    layer = get_forward_context().no_compile_layers[layer_name]
    step = layer.workflows.step
    if step is not None:
        layer(positions, hidden_states, residual, step.rows)


def _workflow_norm(out: torch.Tensor, stream: torch.Tensor, layer_name: str) -> None:
    norm = get_forward_context().no_compile_layers[layer_name]
    step = norm.workflows.step
    if step is not None:
        norm.apply_workflow_norms_(out, stream, step.rows)


def _mutates_only(*args) -> None:
    return None


direct_register_custom_op(
    "insertion_layer", _insertion_layer, mutates_args=["hidden_states", "residual"],
    fake_impl=_mutates_only, target_lib=_LIBRARY,
)
direct_register_custom_op(
    "workflow_norm", _workflow_norm, mutates_args=["out"], fake_impl=_mutates_only,
    target_lib=_LIBRARY,
)


def register_layer(vllm_config, name: str, layer) -> None:
    """Make `layer` findable by the ops (and the V1 adapter) under `name`."""
    layers = vllm_config.compilation_config.static_forward_context
    if name in layers:
        raise ValueError(f"duplicate layer name {name!r}")
    layers[name] = layer


class IAADecoderLayer(LlamaDecoderLayer):
    """A frozen Llama layer; at an insertion depth, the insertion op runs right after it.

    insertion_names: frozen layer index -> the name its insertion layer is
    registered under. Built with functools.partial as LlamaModel's `layer_type`.
    """

    def __init__(self, *, vllm_config, prefix: str = "", insertion_names: dict[int, str]):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.insertion_name = insertion_names.get(extract_layer_index(prefix))

    def forward(self, positions, hidden_states, residual):
        hidden_states, residual = super().forward(positions, hidden_states, residual)
        if self.insertion_name is not None:
            torch.ops.iaa.insertion_layer(hidden_states, residual, positions, self.insertion_name)
        return hidden_states, residual


class IAAFinalNorm(RMSNorm):
    """The frozen final norm (`model.norm`), then each image workflow's own on its rows.

    Checkpoint names: `model.norm` (frozen), and per workflow `model.norm_condition*`,
    held here as `workflow_norms.{wf}` because they run inside the compiled Llama.
    """

    def __init__(self, hidden_size: int, eps: float, workflows: WorkflowState, layer_name: str):
        super().__init__(hidden_size, eps=eps)
        self.workflow_norms = nn.ModuleDict({wf: RMSNorm(hidden_size, eps=eps) for wf in IMAGE_WORKFLOWS})
        self.workflows, self.layer_name = workflows, layer_name

    def forward(self, x: torch.Tensor, residual: torch.Tensor):
        out, stream = super().forward(x, residual)
        torch.ops.iaa.workflow_norm(out, stream, self.layer_name)
        return out, stream

    def apply_workflow_norms_(self, out, stream, rows: dict[str, torch.Tensor]) -> None:
        """out [T, H]: the frozen norm of stream [T, H]; image rows get their own norm."""
        for wf, idx in rows.items():
            out[idx] = self.workflow_norms[wf](stream[idx])
