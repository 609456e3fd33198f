"""Request admission for IAA engines: resolve, check and salt each request's workflow.

Runs in the frontend process (offline `LLM` and `vllm serve` alike) right after
vLLM has rendered a request (`patches/input_processor.py` calls `admit`), so a bad
request fails alone, as a `WorkflowError` (a ValueError offline, HTTP 400 on the
server), before it reaches the engine core:

- the workflow is resolved (`resolve_workflow`: default `mm` with an image, else
  `text`) and written into `extra_args`, so the worker never has to guess
  (`routing.admitted_workflow` reads it back);
- `text` with an image, `mm`/`grounding` without one, and image tokens typed
  into a prompt that carries no image are rejected with the valid choices;
- image workflows get a per-workflow `cache_salt`: prefix-cache block hashes do
  not know the workflow, yet an image request's frozen-layer KV differs from a
  text request's on the same tokens (design.md §3). Text keeps the caller's
  salt, so text prefix caching behaves exactly as for stock Llama.
"""

from __future__ import annotations

from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from iaa_vllm.engine.names import EXTRA_ARGS_KEY, IMAGE_WORKFLOWS, WORKFLOWS

SALT_PREFIX = "iaa-workflow:"


class WorkflowError(VLLMValidationError, ValueError):
    """A request the IAA engine refuses: HTTP 400 on the server, ValueError offline."""


def requested_workflow(params: SamplingParams | None) -> str | None:
    """The workflow named in `extra_args`, checked; None when not given."""
    extra = (params.extra_args if params is not None else None) or {}
    name = extra.get(EXTRA_ARGS_KEY)
    if name is not None and name not in WORKFLOWS:
        raise WorkflowError(
            f"{EXTRA_ARGS_KEY}={name!r} is not a workflow; valid: {list(WORKFLOWS)}",
            parameter=EXTRA_ARGS_KEY,
        )
    return name


def resolve_workflow(params: SamplingParams | None, has_image: bool) -> str:
    """The request's workflow: as asked, else `mm` with an image, else `text`."""
    name = requested_workflow(params)
    if name is None:
        return "mm" if has_image else "text"
    if name == "text" and has_image:
        raise WorkflowError(
            f"{EXTRA_ARGS_KEY}='text' cannot take an image; use one of "
            f"{list(IMAGE_WORKFLOWS)} for image requests",
            parameter=EXTRA_ARGS_KEY,
        )
    if name in IMAGE_WORKFLOWS and not has_image:
        raise WorkflowError(
            f"{EXTRA_ARGS_KEY}={name!r} needs an image; none was given",
            parameter=EXTRA_ARGS_KEY,
        )
    return name


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
