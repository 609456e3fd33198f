"""Request admission for IAA engines: resolve, check and salt each request.

Runs in the frontend process (offline `LLM` and `vllm serve` alike) right after
vLLM has rendered a request, so a bad request fails alone, as a `WorkflowError`
(a ValueError offline, HTTP 400 on the server), before it reaches the engine core:

- the workflow is resolved (default `mm` with an image, else `text`) and written
  into `extra_args`, so the worker never has to guess;
- `text` with an image, `mm`/`grounding` without one, and image tokens typed
  into a prompt that carries no image are rejected with the valid choices;
- image workflows get a per-workflow `cache_salt`: prefix-cache block hashes do
  not know the workflow, yet an image request's frozen-layer KV differs from a
  text request's on the same tokens (design.md §3). Text keeps the caller's
  salt, so text prefix caching behaves exactly as for stock Llama.

vLLM has no per-request hook that sees both the prompt and the sampling params,
so this wraps `InputProcessor.process_inputs` (see `install`). This module holds
every patch the plugin makes to vLLM; each names the vLLM versions it was
checked against, and acts on IAA engines only where the patched code can tell.

Images are admitted one step earlier, when the server decodes an `image_url`:
Pillow refuses an image declaring more than `2 * PIL.Image.MAX_IMAGE_PIXELS`
pixels from its header alone, but raises `DecompressionBombError`, which vLLM
0.32 does not catch, so the server answered 500. `install` turns it into the
ValueError (HTTP 400) vLLM gives for every other undecodable image, and names
bad base64 in a data URL as such (vLLM passes on binascii's bare "Non-base64
digit found").
"""

from __future__ import annotations

import functools

from iaa_vllm import MODEL_TYPE
from iaa_vllm.routing import EXTRA_ARGS_KEY, WorkflowError, resolve_workflow

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


def _reject_bombs(load_bytes):
    """Wrap `ImageMediaIO.load_bytes`: a decompression bomb is a bad image, not a crash."""
    from PIL import Image

    @functools.wraps(load_bytes)
    def guarded(self, data: bytes):
        try:
            return load_bytes(self, data)
        except Image.DecompressionBombError as error:  # raised before any pixel is decoded
            raise ValueError(f"Failed to load image: {error}") from None

    guarded._iaa_admission = True
    return guarded


def _name_bad_base64(load_base64):
    """Wrap `ImageMediaIO.load_base64`: say which part of the request was malformed."""
    import binascii

    @functools.wraps(load_base64)
    def guarded(self, media_type: str, data: str):
        try:
            return load_base64(self, media_type, data)
        except binascii.Error as error:
            raise ValueError(f"Failed to load image: the data URL is not valid base64 ({error})") from None

    guarded._iaa_admission = True
    return guarded


def _is_iaa(input_processor) -> bool:
    hf_config = input_processor.model_config.hf_config
    return getattr(hf_config, "model_type", None) == MODEL_TYPE


def install() -> None:
    """Wrap `InputProcessor.process_inputs` and `ImageMediaIO`'s loaders once per process.

    Idempotent. Checked against vLLM 0.26 and 0.32 (`vllm/v1/engine/input_processor.py`,
    `vllm/multimodal/media/image.py`).
    - `process_inputs`: admits requests of IAA engines only (`_is_iaa`); other
      models' requests pass through untouched.
    - The image loaders apply to every model in the process: a media loader is
      built without the model's config, so it cannot tell. They only turn an
      uncaught Pillow error (a 500) into the 400 vLLM gives every other
      undecodable image, and name bad base64 as such.
    """
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.v1.engine.input_processor import InputProcessor

    if not getattr(ImageMediaIO.load_bytes, "_iaa_admission", False):
        ImageMediaIO.load_bytes = _reject_bombs(ImageMediaIO.load_bytes)
        ImageMediaIO.load_base64 = _name_bad_base64(ImageMediaIO.load_base64)

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
