"""`iaa-vllm serve` on loopback from Python, and raw HTTP to talk to it.

    from iaa_vllm import local_server
    with local_server.serve("checkpoints/tiny") as server:   # a free port; returns once /health answers
        status, reply = local_server.post(server.base, local_server.chat_body(server.model, "Hello"))

`serve` starts the server in a process group of its own and, on exit, stops it
with its engine core: nothing is left holding memory or the port. The helpers
below it speak plain HTTP, without the `openai` client, so that error statuses,
raw bodies and hung-up streams can be looked at as they are. The tests and the
load benchmarks use them; what only they need (memory, `/metrics`, a
decompression bomb) is in `benchmarks/server_probes.py`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
from PIL import Image

from iaa_vllm import EXTRA_ARGS_KEY

SERVE_ARGS = ("--dtype", "float32", "--max-model-len", "2048")  # the CPU settings of the tests and benchmarks
MAX_TOKENS = 8  # chat_body's default: short greedy answers
LOG_TAIL_CHARS = 3000  # of a server that died at start, in the error


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    model: str  # the served model name (the path it was started with)
    pid: int | None  # API server process; its children are the engine
    log: str | None = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model: str, extra_args: tuple[str, ...] = (), kv_space_gib: int = 1, timeout_s: float = 600):
    """`iaa-vllm serve MODEL` (with `SERVE_ARGS`, then `extra_args`) on a free loopback
    port until /health answers; yields a `Server`, stopped on exit with its engine core.

    The environment is passed on, with `VLLM_CPU_KVCACHE_SPACE=kv_space_gib`. The
    server's output goes to a log file, `Server.log`, removed after a clean exit and
    kept, its path in the error, after a failure. A server that exits during start-up
    raises RuntimeError with its exit code and the end of its log.
    """
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_space_gib)}
    command = [sys.executable, "-m", "iaa_vllm.cli", "serve", model, *SERVE_ARGS, *extra_args,
               "--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.NamedTemporaryFile("w+b", prefix="iaa-serve-", suffix=".log", delete=False)
    # A process group of its own: on exit the engine core goes too, whatever state the server is in.
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    server = Server(f"http://127.0.0.1:{port}", model, process.pid, log.name)
    try:
        deadline = time.time() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"iaa-vllm serve {model} exited with code {process.returncode} during "
                                   f"start-up; log: {log.name}\n{_tail(log.name)}")
            if time.time() > deadline:
                raise TimeoutError(f"iaa-vllm serve {model} not healthy after {timeout_s} s; log: {log.name}")
            try:
                urllib.request.urlopen(f"{server.base}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        yield server
    except BaseException:
        log.close()  # kept: its path is in the error
        raise
    else:
        log.close()
        os.unlink(log.name)
    finally:
        process.terminate()  # the server first: it shuts its engine down itself
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        stop_process_group(process)


def _tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-LOG_TAIL_CHARS:]


def stop_process_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to the process group led by `process` (started with `process_group=0`),
    SIGKILL to whatever is left after `grace_s`; returns once the group is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader: a zombie still counts as a member of the group
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


# ---- requests ---------------------------------------------------------------------------------

def post(base: str, body: dict, path: str = "/v1/chat/completions", timeout: float = 600) -> tuple[int, dict]:
    """(HTTP status, JSON body); error statuses are returned, not raised. A body that is
    not JSON comes back as {"raw": its text}."""
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, {"raw": raw.decode(errors="replace")}


def stream_chat(base: str, body: dict, cancel_after: int | None = None, timeout: float = 600) -> dict:
    """One streamed chat completion; with `cancel_after`, the client hangs up after that many chunks.

    `cancel_after=0` closes the connection as soon as the request is sent, before any
    token; `None` reads the stream to its end. Returns the HTTP status, the text
    received, the number of content chunks and whether the stream ended (`[DONE]`).
    """
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    record = {"status": None, "text": "", "chunks": 0, "done": False}
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                           {"Content-Type": "application/json"})
        if cancel_after == 0:
            return record  # hung up before the response: the server sees a disconnect
        response = connection.getresponse()
        record["status"] = response.status
        if response.status != 200:
            record["error"] = response.read().decode(errors="replace")
            return record
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                record["done"] = True
                break
            delta = (json.loads(data).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                record["text"] += delta["content"]
                record["chunks"] += 1
                if cancel_after is not None and record["chunks"] >= cancel_after:
                    break  # hang up mid-stream
        return record
    finally:
        with contextlib.suppress(OSError):
            if connection.sock is not None:
                connection.sock.shutdown(socket.SHUT_RDWR)  # a FIN now, not when GC closes it
        connection.close()


# ---- request bodies -----------------------------------------------------------------------------

def encode(data: bytes, mime: str = "image/png") -> str:
    """A base64 data URL of `data` as it is, an image or not (`iaa_vllm.client.data_url` takes an image)."""
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """Seeded random RGB pixels, so tests and benchmarks need no dataset: the same
    pixels for the same (width, height, seed), in every run."""
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def chat_body(model: str, text: str, image_url: str | None = None, workflow: str | None = None,
              **options) -> dict:
    """A greedy chat request of `MAX_TOKENS` (unless `options` say otherwise), with one
    image URL and the workflow as `vllm_xargs.iaa_workflow` when given."""
    content = text if image_url is None else [
        {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}]
    body = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **options}
    if workflow:
        body["vllm_xargs"] = {EXTRA_ARGS_KEY: workflow}
    return body
