"""Shared fixtures: one tiny checkpoint, one pure-torch reference, one IAA engine."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from iaa_vllm.local_server import noise_image
from tests import engines


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from iaa_vllm.checkpoint import write_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    write_checkpoint(str(path), preset="tiny", dtype="float32", seed=0)
    return str(path)


@pytest.fixture(scope="session")
def reference(tiny_dir):
    from tests.reference import IAAReference

    return IAAReference.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


# Session engines are stopped right after the last test that uses them, not at the
# end of the run: each holds ~2 GB that the server and Ray tests after them need.
_LAST_USER: dict[str, str] = {}  # fixture name -> nodeid of its last test
_OPEN: dict[str, object] = {}    # fixture name -> its running engine


_IN_PROCESS = {"iaa_engine", "stock_engine"}
_SERVER = {"iaa_server", "api"}
# Modules that start engines of their own before they use the in-process one: first
# of their group, so that theirs are stopped before it starts.
_BEFORE_IN_PROCESS = ("tests/test_eval_engine.py",)


def _moved_alone(item) -> bool:
    return "benchmark_smoke" in getattr(item, "fixturenames", ()) or \
        item.get_closest_marker("kills_iaa_server") is not None


def _run_order(items) -> dict[str, tuple]:
    """Each test's place: modules without a shared engine, then the in-process engines'
    modules (`_BEFORE_IN_PROCESS` first, those that use `stock_engine` last), then the
    server's; then the test that kills the server; the benchmark smoke's readers last.

    Whole modules move, so module fixtures are set up once. Grouped so, the in-process
    engines are stopped (after their last user) before the server starts: the three
    of them (~3.5 GB each) were up together for most of the run beside the 0.26 lane
    and the Ray runs, near the CI machine's 24 GiB (docs/development.md, CI).
    """
    uses: dict[str, set[str]] = {}
    for item in items:
        if not _moved_alone(item):
            uses.setdefault(item.nodeid.split("::")[0], set()).update(getattr(item, "fixturenames", ()))
    order = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        names = uses.get(module, set())
        group = 2 if names & _SERVER else 1 if names & _IN_PROCESS else 0
        order[item.nodeid] = ("benchmark_smoke" in getattr(item, "fixturenames", ()),
                              item.get_closest_marker("kills_iaa_server") is not None,
                              group, module not in _BEFORE_IN_PROCESS, "stock_engine" in names)
    return order


def pytest_collection_modifyitems(config, items):
    # The test that kills the shared server's engine runs after every other server test;
    # the benchmark smoke's readers run last of all, so that a smoke run CI started in
    # the background (IAA_BENCHMARK_SMOKE_DIR, `benchmark_smoke`) is waited for only then.
    order = _run_order(items)
    items.sort(key=lambda item: order[item.nodeid])  # stable: file order within a group
    for item in items:
        for name in ("iaa_engine", "stock_engine"):
            if name in getattr(item, "fixturenames", ()):
                _LAST_USER[name] = item.nodeid


def pytest_runtest_teardown(item, nextitem):
    for name, nodeid in _LAST_USER.items():
        if nodeid == item.nodeid and name in _OPEN:
            engines.stop_engine(_OPEN.pop(name))


def _session_engine(name: str, model: str, **kwargs):
    _OPEN[name] = engines.start_engine(model, **kwargs)
    yield _OPEN[name]
    if name in _OPEN:  # a run cut short (-x, a target's subset): stop it here
        engines.stop_engine(_OPEN.pop(name))


def pytest_terminal_summary(terminalreporter):
    if engines.COMPILE_CACHE_REPORTS:
        terminalreporter.section("compile cache")
        terminalreporter.write_line(f"run cache: {os.environ.get('VLLM_CACHE_ROOT')}")
        for line in engines.COMPILE_CACHE_REPORTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def iaa_engine(tiny_dir):
    # No compile cache: tests/test_model.py counts the graphs Dynamo traced in this
    # engine, which vLLM's cached (AOT) compile would take past Dynamo's counters.
    yield from _session_engine("iaa_engine", tiny_dir, cold_cache=True)


@pytest.fixture(scope="session")
def stock_dir(tiny_dir, tmp_path_factory) -> str:
    """A stock `LlamaForCausalLM` checkpoint: the frozen weights cut out of the tiny one."""
    from iaa_vllm.stock_llama import write_stock_llama

    out = str(tmp_path_factory.mktemp("stock") / "llama")
    write_stock_llama(tiny_dir, out)
    return out


@pytest.fixture(scope="session")
def stock_engine(stock_dir):
    """Stock vLLM Llama under the same engine settings as `iaa_engine` (compiled, no
    compile cache): its answers are the bit-for-bit reference of IAA's `text`."""
    yield from _session_engine("stock_engine", stock_dir, cold_cache=True)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """A wide, a tall and a square image (padding to square matters for the first two)."""
    return [noise_image(300, 200, 1), noise_image(180, 260, 2), noise_image(336, 336, 3)]


SMOKE_TIMEOUT_S = 2400


@pytest.fixture(scope="session")
def benchmark_smoke(tmp_path_factory) -> str:
    """The folder of one `python -m benchmarks.smoke` run: compile_modes' and serving's
    CPU smoke runs, sharing their eager engines (each test reads its benchmark's JSON).

    IAA_BENCHMARK_SMOKE_DIR=D waits for a run started elsewhere into D instead (`.ci/run`
    starts it beside this suite, once the 0.26 lane is done), which writes D/smoke.rc
    (its exit status) last and its output to D/smoke.log.
    """
    import subprocess
    import sys
    import time

    given = os.environ.get("IAA_BENCHMARK_SMOKE_DIR")
    if given:
        rc_file, deadline = os.path.join(given, "smoke.rc"), time.monotonic() + SMOKE_TIMEOUT_S
        while not os.path.exists(rc_file):
            assert time.monotonic() < deadline, f"no {rc_file} after {SMOKE_TIMEOUT_S} s"
            time.sleep(5)
        with open(rc_file) as f:
            rc = int(f.read())
        with open(os.path.join(given, "smoke.log"), errors="replace") as f:
            assert rc == 0, f"benchmarks.smoke exited {rc}:\n" + f.read()[-6000:]
        return given
    out = tmp_path_factory.mktemp("benchmark-smoke")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.smoke", "--out", str(out),
                           "--models-dir", str(out / "models")],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return str(out)


@pytest.fixture(scope="session")
def iaa_server(tiny_dir):
    """One `iaa-vllm serve` on loopback (an `iaa_vllm.local_server.Server`) for every server test,
    with the fetch limits and allowed domains of `engines.SERVER_ENV` / `SERVER_ARGS`.
    The engine-death test kills it after every other test (`kills_iaa_server`).

    IAA_TEST_SERVER=http://127.0.0.1:PORT,PID reuses a running server instead (a
    tiny checkpoint served with `local_server.SERVE_ARGS`): engine start takes
    minutes on a busy 2-core machine.
    """
    import json
    import os
    import urllib.request

    from iaa_vllm.local_server import Server, serve

    if os.environ.get("IAA_TEST_SERVER"):
        base, pid = os.environ["IAA_TEST_SERVER"].rsplit(",", 1)
        with urllib.request.urlopen(f"{base}/v1/models", timeout=30) as response:
            model = json.load(response)["data"][0]["id"]
        yield Server(base, model, int(pid))
        return
    with pytest.MonkeyPatch.context() as patch:
        for name, value in engines.SERVER_ENV.items():
            patch.setenv(name, value)  # serve() passes the environment on
        with serve(tiny_dir, extra_args=engines.SERVER_ARGS, timeout_s=900) as server:
            yield server
            engines.note_compile_cache("iaa_server (iaa-vllm serve, IAA tiny)", server.log)


@pytest.fixture(scope="session")
def api(iaa_server):
    """An OpenAI client on the shared server."""
    from openai import OpenAI

    return OpenAI(base_url=f"{iaa_server.base}/v1", api_key="EMPTY")
