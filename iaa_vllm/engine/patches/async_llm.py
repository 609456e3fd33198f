"""`AsyncLLM.shutdown`: `iaa-vllm serve` notes that a stop was asked for.

A stop asked for (SIGTERM, SIGINT) first shuts the engine client down, which
makes the engine look errored to vLLM's launcher, so the engine-death watch
(`launcher.py`) must know a stop is under way to not call it a death.
Registry: `patches/__init__.py`.
"""

from __future__ import annotations

import functools

_stopping = False


def stopping() -> bool:
    """Whether `AsyncLLM.shutdown` has been called in this process (since `install`)."""
    return _stopping


def install() -> None:
    """Wrap `shutdown` once (idempotent). Checked against vLLM 0.26-0.33 (`vllm/v1/engine/async_llm.py`)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    original = AsyncLLM.shutdown
    if getattr(original, "_iaa_patch", False):
        return

    @functools.wraps(original)
    def shutdown(self, *args, **kwargs):
        global _stopping
        _stopping = True
        return original(self, *args, **kwargs)

    shutdown._iaa_patch = True
    AsyncLLM.shutdown = shutdown
