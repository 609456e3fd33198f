"""`terminate_if_errored` (vLLM's API launcher): `iaa-vllm serve` tells an engine death from a requested stop.

When the engine core dies, vLLM's API server stops by itself, and its main
returns as after SIGTERM: exit code 0 (measured on 0.32, stock Llama and IAA
alike), which a supervisor restarting on failure takes for a clean stop.
`watch_engine_death` lets `iaa-vllm serve` exit 3 instead (cli.py).
Registry: `patches/__init__.py`.
"""

from __future__ import annotations

import functools

from iaa_vllm.engine.patches import async_llm


def watch_engine_death():
    """Remember when this process's API server stops because its engine died; returns `died() -> bool`.

    vLLM stops the server on engine death through `terminate_if_errored`, from its
    5 s watchdog or from a request that met the dead engine, and only then. A stop
    asked for is not a death (`async_llm.stopping`). Checked against vLLM 0.26-0.33
    (`compat.API_LAUNCHER_MODULE`). Call before the server's modules are imported:
    they import `terminate_if_errored` by name. Idempotent; serve processes only.
    """
    import importlib

    from iaa_vllm.engine import compat

    async_llm.install()
    launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)
    if getattr(launcher.terminate_if_errored, "_iaa_patch", False):
        return launcher.terminate_if_errored.died
    state = {"died": False}
    original = launcher.terminate_if_errored

    @functools.wraps(original)
    def terminate_if_errored(server, engine):
        was_exiting = server.should_exit
        original(server, engine)
        if server.should_exit and not was_exiting and not async_llm.stopping():
            state["died"] = True

    terminate_if_errored._iaa_patch = True
    terminate_if_errored.died = lambda: state["died"]
    launcher.terminate_if_errored = terminate_if_errored
    return terminate_if_errored.died
