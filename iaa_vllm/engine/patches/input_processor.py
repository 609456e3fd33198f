"""`InputProcessor.process_inputs`: every request of an IAA engine passes admission.

vLLM has no per-request hook that sees both the rendered prompt and the sampling
params, so this wraps the input processor's one entry (offline `LLM` and
`vllm serve` alike) and hands each rendered request of an IAA engine to
`admission.admit`, which resolves, checks and salts its workflow. Requests of
other models' engines are returned as vLLM made them (`_is_iaa`). Registry:
`patches/__init__.py`.
"""

from __future__ import annotations

import functools

from iaa_vllm.engine.admission import admit
from iaa_vllm.engine.names import MODEL_TYPE


def _is_iaa(input_processor) -> bool:
    hf_config = input_processor.model_config.hf_config
    return getattr(hf_config, "model_type", None) == MODEL_TYPE


def install() -> None:
    """Wrap `process_inputs` once (idempotent).

    Checked against vLLM 0.26-0.33 (`vllm/v1/engine/input_processor.py`; wrapped with
    `*args, **kwargs`, as 0.32 passes more keyword arguments).
    """
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs
    if getattr(original, "_iaa_patch", False):
        return

    @functools.wraps(original)
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        if _is_iaa(self):
            admit(request, self.model_config.hf_config.image_token_index)
        return request

    process_inputs._iaa_patch = True
    InputProcessor.process_inputs = process_inputs
