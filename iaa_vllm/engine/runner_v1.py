"""V1 model runner adapter: the persistent batch's slot -> workflow, fed to `WorkflowState`.

The V1 runner tells its logits processors, before every forward, which requests
joined the persistent batch (with their `SamplingParams`) and how rows moved
(`update_state`). That is the only per-request hook V1 offers a model, so
`WorkflowSlots` is a logits processor that never changes logits. It is attached
to IAA engines only, by `config_hook.py` (vLLM's per-architecture config hook),
never through the `vllm.logits_processors` entry point every engine loads.

It finds the model's `WorkflowState` where vLLM keeps a model's per-layer
objects for its custom ops: the compilation config's static forward context.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from iaa_vllm.engine.routing import WorkflowState, requested_workflow


class WorkflowSlots(LogitsProcessor):
    """Keeps the model's slot -> (workflow, prompt length) in step with the batch."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self._compilation = vllm_config.compilation_config
        self._state: WorkflowState | None = None

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        requested_workflow(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    @property
    def state(self) -> WorkflowState:
        # Looked up on first use: the runner builds its logits processors before
        # it loads the model.
        if self._state is None:
            layers = self._compilation.static_forward_context
            found = [v for v in layers.values() if isinstance(v, WorkflowState)]
            if len(found) != 1:
                raise RuntimeError(f"expected one IAA WorkflowState in the engine, found {len(found)}")
            self._state = found[0]
        return self._state

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index, params, prompt_ids, _ in batch_update.added:
            self.state.add(index, params, len(prompt_ids or ()))
        for src, dst, direction in batch_update.moved:
            self.state.move(src, dst, swap=direction == MoveDirectionality.SWAP)
