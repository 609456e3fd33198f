"""A dead engine is visible (engine/patches/launcher.py, async_llm.py): /health stops answering 200 and
`iaa-vllm serve` exits non-zero, promptly.

The server test SIGKILLs the engine core process (as the kernel's OOM killer would) of
a server per model: the IAA checkpoint, and the stock Llama cut out of it, which
`iaa-vllm serve` serves as plain vLLM. Both must behave alike. The IAA server is the
session's shared one (`iaa_server`): its case runs after every other test
(`kills_iaa_server`, tests/conftest.py); the stock Llama gets a server of its own.
vLLM alone exits 0 here, as after SIGTERM; `iaa-vllm serve` exits
`ENGINE_DIED_EXIT` so that a supervisor restarting on failure restarts it.

The watch that tells a death from a requested stop is also checked alone, without
an engine, in a process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from iaa_vllm.cli import ENGINE_DIED_EXIT
from iaa_vllm.local_server import chat_body, post, serve
from tests import engines

# Measured on the 2-core CI VM: /health 503 within 0.3 s, exit after 4-7 s (vLLM's
# watchdog looks every 5 s, then the engine client shuts down). Bounds leave room for load.
HEALTH_BOUND_S = 10
EXIT_BOUND_S = 60


def _health(base: str) -> int | str:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:  # refused once the server has closed its socket
        return type(error).__name__


@pytest.fixture(scope="module")
def stock_server(stock_dir):
    """For this module alone: the test kills its engine."""
    with serve(stock_dir, timeout_s=900) as server:
        yield server
        engines.note_compile_cache("stock_server (iaa-vllm serve, stock Llama)", server.log)


@pytest.mark.slow
@pytest.mark.kills_iaa_server
def test_engine_death_of_the_iaa_server_fails_health_and_exits_nonzero(iaa_server):
    if os.environ.get("IAA_TEST_SERVER"):
        pytest.skip("IAA_TEST_SERVER: a reused server is not ours to kill")
    _kill_engine_and_check(iaa_server)


@pytest.mark.slow
def test_engine_death_of_a_stock_llama_server_fails_health_and_exits_nonzero(stock_server):
    _kill_engine_and_check(stock_server)


def _kill_engine_and_check(server):
    status, reply = post(server.base, chat_body(server.model, "Hello", max_tokens=2))
    assert status == 200, reply
    api_server = psutil.Process(server.pid)
    family = api_server.children(recursive=True)
    cores = [p for p in family if "EngineCore" in p.name()]
    assert len(cores) == 1, [p.name() for p in family]

    killed = time.monotonic()
    cores[0].send_signal(signal.SIGKILL)
    unhealthy_after = exit_code = None
    while time.monotonic() - killed < EXIT_BOUND_S:
        if unhealthy_after is None and _health(server.base) != 200:
            unhealthy_after = time.monotonic() - killed
        try:
            exit_code = api_server.wait(timeout=0.25)  # our child: psutil returns its exit code
            break
        except psutil.TimeoutExpired:
            pass
    exited_after = time.monotonic() - killed
    print(f"\n{server.model}: /health non-200 after {unhealthy_after} s, exit {exit_code} after {exited_after:.2f} s")

    assert unhealthy_after is not None and unhealthy_after < HEALTH_BOUND_S
    assert exit_code == ENGINE_DIED_EXIT, f"exit code {exit_code} after {exited_after:.1f} s; log: {server.log}"
    _, alive = psutil.wait_procs([p for p in family if p.is_running()], timeout=30)
    assert not alive, f"processes left behind: {alive}"  # nothing holds memory or the port for the restart
    with open(server.log, encoding="utf-8", errors="replace") as log:
        assert f"the engine died; exiting {ENGINE_DIED_EXIT}" in log.read()


_DEATH_WATCH_SCRIPT = """
import importlib, sys
from vllm.v1.engine.async_llm import AsyncLLM
from iaa_vllm.engine import compat
from iaa_vllm.engine.patches import watch_engine_death

died = watch_engine_death()
assert watch_engine_death() is died  # idempotent
launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)

class Server:
    should_exit = False

class DeadEngine:  # what vLLM's launcher reads of a dead engine
    errored, is_running = True, False

if sys.argv[1] == "stop":
    try:
        AsyncLLM.shutdown(None)  # a requested stop begins with the engine client's shutdown
    except AttributeError:
        pass
launcher.terminate_if_errored(Server(), DeadEngine())
print("died" if died() else "stopped")
"""


@pytest.mark.parametrize("scenario, verdict", [("death", "died"), ("stop", "stopped")])
def test_engine_death_watch_tells_a_death_from_a_requested_stop(scenario, verdict):
    # A process each: the watch is process-wide, as in `iaa-vllm serve`.
    done = subprocess.run([sys.executable, "-c", _DEATH_WATCH_SCRIPT, scenario], capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == verdict
