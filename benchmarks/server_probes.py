"""What the tests and the load benchmarks measure a running server with, or send it to
break it: its memory, its Prometheus gauges, a decompression bomb.

Not part of the product (`iaa_vllm.local_server` starts and talks to the server).
Here rather than in `tests/`: the load and soak benchmarks use them too, and
benchmarks do not import the tests.
"""

from __future__ import annotations

import contextlib
import struct
import time
import urllib.request
import zlib


def server_rss(pid: int) -> int:
    """Resident bytes of the server process and all its children (engine core, worker)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def server_memory(pid: int) -> dict[str, float]:
    """RSS in MiB of each process of the server (by name) and their total."""
    import psutil

    root = psutil.Process(pid)
    by_name = {}
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            name = process.name() if process is not root else "api_server"
            by_name[name] = by_name.get(name, 0.0) + process.memory_info().rss / 2**20
    return {**by_name, "total": sum(by_name.values())}


def metrics(base: str) -> list[tuple[str, dict[str, str], float]]:
    """The server's Prometheus samples: (name, labels, value)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        pairs = (pair.split("=", 1) for pair in labels.rstrip("}").split(",") if "=" in pair)
        with contextlib.suppress(ValueError):
            samples.append((name, {k: v.strip('"') for k, v in pairs}, float(value)))
    return samples


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    return sum(value for n, have, value in samples
               if n == name and all(have.get(k) == v for k, v in labels.items()))


IDLE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def wait_idle(base: str, kv_idle: float = 0.0, timeout_s: float = 60) -> dict[str, float]:
    """The idle gauges, once no request runs or waits and KV usage is back to `kv_idle`.

    Aborts of hung-up streams land a scheduler step after the hang-up, so this
    polls; after `timeout_s` it returns what it last saw, for the caller to report.
    """
    deadline = time.time() + timeout_s
    while True:
        samples = metrics(base)
        gauges = {name: metric(samples, name) for name in IDLE_GAUGES}
        if (gauges["vllm:num_requests_running"] == 0 and gauges["vllm:num_requests_waiting"] == 0
                and gauges["vllm:kv_cache_usage_perc"] <= kv_idle) or time.time() > deadline:
            return gauges
        time.sleep(0.5)


def decompression_bomb(side: int = 40000) -> bytes:
    """A ~1 KB PNG whose header declares side x side RGB pixels (4.8 GB at 40000):
    bad input a server must refuse with a 400, before decoding it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = zlib.compress((b"\x00" * (1 + 3 * side)) * 8, 9)  # a few rows; the header is the bomb
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
