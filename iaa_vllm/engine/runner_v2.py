"""Model Runner V2 adapter: V2's per-model request state feeds `WorkflowState`.

V2 gives a model its own `ModelState` (`get_model_state_cls`): `add_request`
sees each new request's `SamplingParams` and prompt, and `prepare_inputs` runs
before every forward with the batch layout (which request-state row each batch
row is, and its token range). V2 refuses V1-style logits processors, so this is
its only feed; `config_hook.py` attaches `runner_v1.WorkflowSlots` only on V1.

Imported only when V2 asks the model for its state class: V2's modules need
Triton, which the CPU backend does not have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vllm.v1.worker.gpu.model_states.default import DefaultModelState

NO_REQUESTS = (np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))


class IAAModelState(DefaultModelState):
    """Stock V2 model state, plus the IAA workflow of each request-state row."""

    def __init__(self, vllm_config, model, encoder_cache, device):
        super().__init__(vllm_config, model, encoder_cache, device)
        self.workflows = model.workflows
        self._live: set[str] = set()  # dummy batches (capture, warm-up) name no live request

    def add_request(self, req_index: int, new_req_data) -> None:
        super().add_request(req_index, new_req_data)
        prompt = new_req_data.prompt_token_ids or ()
        # req_id: V2's own warm-up requests carry no workflow and run as text.
        self.workflows.add(req_index, new_req_data.sampling_params, len(prompt), new_req_data.req_id)
        self._live.add(new_req_data.req_id)

    def remove_request(self, req_id: str) -> None:
        super().remove_request(req_id)
        self._live.discard(req_id)

    def prepare_inputs(self, input_batch, req_states) -> dict[str, Any]:
        n = input_batch.num_reqs
        if n and input_batch.req_ids[0] in self._live:
            self.workflows.set_batch(input_batch.idx_mapping_np[:n], input_batch.query_start_loc_np[: n + 1])
        else:
            self.workflows.set_batch(*NO_REQUESTS)
        return super().prepare_inputs(input_batch, req_states)

    def prepare_dummy_inputs(self, num_reqs: int, num_tokens: int) -> dict[str, Any]:
        self.workflows.set_batch(*NO_REQUESTS)
        return super().prepare_dummy_inputs(num_reqs, num_tokens)
