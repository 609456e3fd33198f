"""Every vLLM object iaa-vllm changes, in one place: one file per object patched.

The plugin changes vLLM in two ways. Registrations use the extension points
vLLM and transformers offer, keyed by IAA's names, so no other model can meet
them. Patches replace a method or function of a vLLM class or module; vLLM
offers no hook at those places. Each patch wraps vLLM's own code (the original
runs first or around it), is idempotent (marked `_iaa_patch`), and was read
against vLLM 0.26 to 0.33, run on 0.26 and 0.32 in CI and on 0.27-0.31 by
`scripts/compat_matrix.sh` (0.33: its source and import-level tests; no CPU build).

Registrations (`iaa_vllm.engine.register`, in every vLLM process; IAA only):

| registry | entry | by |
| --- | --- | --- |
| `vllm.ModelRegistry` | `IAALlamaForCausalLM` -> `engine.model` | `register` |
| transformers `AutoConfig`, vLLM `_CONFIG_REGISTRY` | `model_type: IAA` -> `IAAConfig` | `config.register_config` |
| `MODELS_CONFIG_MAP` | `IAALlamaForCausalLM` -> `IAAEngineConfig` (IAA's engine settings) | `config_hook.install` |
| torch ops | `iaa::insertion_layer`, `iaa::workflow_norm` | `custom_ops` (on import, in the worker) |

Patches:

| vLLM object (file) | what it changes | why | engines affected | installed by | remove when |
| --- | --- | --- | --- | --- | --- |
| `InputProcessor.process_inputs` (`input_processor.py`) | hands each rendered request of an IAA engine to `admission.admit`: workflow resolved, checked, image workflows salted | vLLM has no per-request hook that sees the prompt and the sampling params before the engine core | IAA only: installed in every process, other models' requests are returned untouched (`tests/test_plugin_isolation.py`: a stock engine answers bit for bit as with plugins off) | `install`, from `register` | vLLM gains a per-model request-validation hook |
| `ImageMediaIO.load_bytes`, `.load_base64` (`image_media_io.py`) | Pillow's `DecompressionBombError` and bad base64 become vLLM's "Failed to load image" ValueError (HTTP 400) | vLLM lets both through as 500s | every model in a process where the plugin is loaded: a media loader is built without the model's config | `install`, from `register` | vLLM catches both |
| `MediaConnector.fetch_image`, `.fetch_image_async` (`media_connector.py`) | a failed download (refused, unresolvable, no answer, 5xx, `file://` off, a redirect loop) is a 400 (the loop a 422) naming the reason | vLLM answers 500 with a traceback | every model in a process where the plugin is loaded: a connector is built from the request's media options alone | `install`, from `register` | vLLM answers these as client errors |
| `HTTPConnection.get_bytes`, `.async_get_bytes` (`http_connection.py`) | a download stops at `VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB` while it streams | vLLM 0.26-0.28 read a download whole; 0.29+ cap it themselves (no patch there) | every model in a process where the plugin is loaded, on vLLM 0.26-0.28 only | `install`, from `register` | vLLM 0.28 leaves the supported range |
| `AsyncLLM.shutdown` (`async_llm.py`) | notes that a stop was asked for | the death watch must not take a requested stop for a death | `iaa-vllm serve` processes, any model | `watch_engine_death`, from `cli.serve` | with the launcher patch |
| `terminate_if_errored` in `compat.API_LAUNCHER_MODULE` (`launcher.py`) | remembers that the API server stopped because its engine died, so `iaa-vllm serve` exits 3, not 0 | vLLM's server exits 0 after an engine death, which a supervisor takes for a clean stop | `iaa-vllm serve` processes, any model | `watch_engine_death`, from `cli.serve` | vLLM exits non-zero after an engine death |

`vllm serve` and `LLM(...)` get the first four only. Their reach is as the table
says because a vLLM process loads the plugin's entry point whatever model it
serves; the media patches cannot ask which model a request is for.
"""

from __future__ import annotations

from iaa_vllm.engine.patches.launcher import watch_engine_death

__all__ = ["install", "watch_engine_death"]


def install() -> None:
    """The patches every vLLM process gets (`register`); idempotent."""
    from iaa_vllm.engine.patches import http_connection, image_media_io, input_processor, media_connector

    input_processor.install()
    image_media_io.install()
    media_connector.install()
    http_connection.install()
