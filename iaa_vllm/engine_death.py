"""Tell an engine death from a requested stop in `iaa-vllm serve`.

When the engine core dies, vLLM's API server stops by itself, and its main
returns as after SIGTERM: exit code 0 (measured on 0.32, stock Llama and IAA
alike), which a supervisor restarting on failure takes for a clean stop.
`watch_engine_death` lets `iaa-vllm serve` exit 3 instead (cli.py).
"""

from __future__ import annotations

import functools


def watch_engine_death():
    """Remember when this process's API server stops because its engine died; returns `died() -> bool`.

    vLLM stops the server on engine death through `terminate_if_errored`, from its
    5 s watchdog or from a request that met the dead engine, and only then. A stop
    asked for (SIGTERM, SIGINT) first shuts the engine client down, which makes the
    engine look errored too, so a stop under way (`AsyncLLM.shutdown` called) is
    not a death. Checked against vLLM 0.26 and 0.32 (`compat.API_LAUNCHER_MODULE`,
    `vllm/v1/engine/async_llm.py`). Call before the server's modules are imported:
    they import `terminate_if_errored` by name. Idempotent; serve processes only.
    """
    import importlib

    from vllm.v1.engine.async_llm import AsyncLLM

    from iaa_vllm.engine import compat

    launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)
    if getattr(launcher.terminate_if_errored, "_iaa_death_watch", False):
        return launcher.terminate_if_errored.died
    state = {"stopping": False, "died": False}
    terminate_original, shutdown_original = launcher.terminate_if_errored, AsyncLLM.shutdown

    @functools.wraps(terminate_original)
    def terminate_if_errored(server, engine):
        was_exiting = server.should_exit
        terminate_original(server, engine)
        if server.should_exit and not was_exiting and not state["stopping"]:
            state["died"] = True

    @functools.wraps(shutdown_original)
    def shutdown(self, *args, **kwargs):
        state["stopping"] = True
        return shutdown_original(self, *args, **kwargs)

    terminate_if_errored._iaa_death_watch = True
    terminate_if_errored.died = lambda: state["died"]
    launcher.terminate_if_errored = terminate_if_errored
    AsyncLLM.shutdown = shutdown
    return terminate_if_errored.died
