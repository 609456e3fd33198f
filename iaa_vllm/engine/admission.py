"""Request admission for IAA engines: resolve, check and salt each request.

Runs in the frontend process (offline `LLM` and `vllm serve` alike) right after
vLLM has rendered a request, so a bad request fails alone, as a `WorkflowError`
(a ValueError offline, HTTP 400 on the server), before it reaches the engine core:

- the workflow is resolved (`routing.resolve_workflow`: default `mm` with an image,
  else `text`) and written into `extra_args`, so the worker never has to guess;
- `text` with an image, `mm`/`grounding` without one, and image tokens typed
  into a prompt that carries no image are rejected with the valid choices;
- image workflows get a per-workflow `cache_salt`: prefix-cache block hashes do
  not know the workflow, yet an image request's frozen-layer KV differs from a
  text request's on the same tokens (design.md §3). Text keeps the caller's
  salt, so text prefix caching behaves exactly as for stock Llama.

vLLM has no per-request hook that sees both the prompt and the sampling params,
so this wraps `InputProcessor.process_inputs` (see `install`). This module and
media.py hold every patch the engine side of the plugin makes to vLLM; each names
the vLLM versions it was checked against.
"""

from __future__ import annotations

import functools

from iaa_vllm.engine.names import EXTRA_ARGS_KEY, MODEL_TYPE
from iaa_vllm.engine.routing import WorkflowError, resolve_workflow

SALT_PREFIX = "iaa-workflow:"


def admit(request, image_token: int) -> None:
    """Check one `EngineCoreRequest` of an IAA engine and fill in its workflow."""
    params = request.sampling_params
    if params is None:  # pooling requests: IAA serves generation only
        return
    has_image = bool(request.mm_features)
    if not has_image and image_token in (request.prompt_token_ids or ()):
        raise WorkflowError(
            f"the prompt contains the image token (id {image_token}) but the "
            "request carries no image; attach an image or remove the token"
        )
    workflow = resolve_workflow(params, has_image)
    params.extra_args = {**(params.extra_args or {}), EXTRA_ARGS_KEY: workflow}
    if workflow != "text":
        request.cache_salt = f"{SALT_PREFIX}{workflow}:{request.cache_salt or ''}"


def _is_iaa(input_processor) -> bool:
    hf_config = input_processor.model_config.hf_config
    return getattr(hf_config, "model_type", None) == MODEL_TYPE


def install() -> None:
    """Wrap `InputProcessor.process_inputs` once, for the requests of IAA engines only.

    Idempotent. Checked against vLLM 0.26 and 0.32 (`vllm/v1/engine/input_processor.py`).
    Other models' requests pass through untouched (`_is_iaa`).
    """
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs
    if getattr(original, "_iaa_admission", False):
        return

    @functools.wraps(original)
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        if _is_iaa(self):
            admit(request, self.model_config.hf_config.image_token_index)
        return request

    process_inputs._iaa_admission = True
    InputProcessor.process_inputs = process_inputs
