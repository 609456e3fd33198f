"""Bounded load on loopback: concurrent OpenAI clients mixing the three workflows and bad requests.

Every good request is first run alone (greedy) to get its solo answer; then
`--clients` threads start together, each sending `--requests-per-client`
requests from a fixed schedule in which every fourth request is bad (invalid
base64, not an image, a decompression bomb, an unknown workflow, `text` with an
image, a prompt over `max_model_len`). Pass criteria, reported in the JSON:
no 5xx, every bad request a 4xx, every good answer equal to its solo answer.
The server's memory (RSS of the API server and its engine process) is read
before and after the load.

    .venv/bin/python -m benchmarks.load [--model checkpoints/tiny] [--clients 64] [--requests-per-client 4]
    .venv/bin/python -m benchmarks.load --base-url http://127.0.0.1:8000 --pid SERVER_PID   # a running server

Without `--base-url` it starts `iaa-vllm serve` on a free loopback port and
stops it at the end. Writes benchmarks/results/load.json and load.png.

The server and the raw HTTP come from `iaa_vllm.local_server`. This file's own
pieces are shared: `memory.py` (RSS slope against stock vLLM) and `soak.py` (a
long run with hung-up streams) use `workload`, `solo_answers`, `send` and `sustained`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from benchmarks import report
from benchmarks.server_probes import decompression_bomb, server_memory
from iaa_vllm.local_server import Server, chat_body, encode, noise_image, png_bytes, post, serve

BAD_EVERY = 4  # every fourth scheduled request is a bad one
COLOURS = {"text": "tab:blue", "mm": "tab:green", "grounding": "tab:orange", "bad": "tab:red"}


# ---- the workload ---------------------------------------------------------------------------

def workload(model: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(good, bad) request bodies by name; mm and grounding share images (one encoder entry)."""
    from iaa_vllm import grounding

    wide, tall = (encode(png_bytes(noise_image(w, h, seed))) for w, h, seed in ((300, 200, 1), (180, 260, 2)))
    good = {
        "text/colours": chat_body(model, "Name three colours.", workflow="text"),
        "text/story": chat_body(model, "Tell me a short story about a lighthouse."),
        "mm/wide": chat_body(model, "What is in this image?", wide, "mm"),
        "mm/tall": chat_body(model, "Describe the picture.", tall),
        "grounding/wide": chat_body(model, grounding.question("the left half"), wide, "grounding"),
        "grounding/tall": chat_body(model, grounding.question("the top object"), tall, "grounding"),
    }
    bad = {
        "bad/base64": chat_body(model, "What is this?", "data:image/png;base64,!!!not base64!!!"),
        "bad/not-an-image": chat_body(model, "What is this?", encode(b"plain text, not an image " * 8)),
        "bad/bomb": chat_body(model, "What is this?", encode(decompression_bomb())),
        "bad/workflow": chat_body(model, "hi", workflow="ocr"),
        "bad/text-with-image": chat_body(model, "What is this?", wide, "text"),
        "bad/too-long": chat_body(model, "hello " * 1600, wide),
    }
    return good, bad


def schedule(good: dict, bad: dict, clients: int, per_client: int) -> list[list[str]]:
    """Request names per client: goods round-robin, every BAD_EVERY-th slot a bad one."""
    good_names, bad_names = list(good), list(bad)
    plan, g, b = [], 0, 0
    for slot in range(clients * per_client):
        if slot % BAD_EVERY == BAD_EVERY - 1:
            plan.append(bad_names[b % len(bad_names)])
            b += 1
        else:
            plan.append(good_names[g % len(good_names)])
            g += 1
    return [plan[c::clients] for c in range(clients)]  # neighbours in time go to different clients


# ---- the run ---------------------------------------------------------------------------------

def _answer(reply: dict) -> str | None:
    choices = reply.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def solo_answers(server: Server, good: dict[str, dict]) -> dict[str, str]:
    """Each good request alone, greedy: the answer it must give under load too."""
    solo = {}
    for name, body in good.items():
        status, reply = post(server.base, body)
        if status != 200:
            raise RuntimeError(f"solo run of {name} failed: {status} {reply}")
        solo[name] = _answer(reply)
    return solo


def send(server: Server, name: str, body: dict, t0: float, **fields) -> dict:
    """One request, timed from `t0`; the record that `summarise` reads."""
    start = time.perf_counter()
    status, reply = post(server.base, body)
    end = time.perf_counter()
    return {**fields, "name": name, "status": status, "start_s": start - t0, "latency_s": end - start,
            "answer": _answer(reply) if status == 200 else None,
            "tokens": (reply.get("usage") or {}).get("completion_tokens", 0) if status == 200 else 0,
            "error": (reply.get("error") or {}).get("message") if status != 200 else None}


def _round(server: Server, bodies: dict, plans: list[list[str]], round_index: int, t0: float) -> list[dict]:
    """All clients start together; each sends its plan's requests one after another."""
    barrier = threading.Barrier(len(plans))

    def client(plan: list[str]) -> list[dict]:
        barrier.wait()
        return [send(server, name, bodies[name], t0, round=round_index) for name in plan]

    with ThreadPoolExecutor(len(plans)) as pool:
        return [r for rs in pool.map(client, plans) for r in rs]


def run_load(server: Server, clients: int, per_client: int, rounds: int = 1) -> dict:
    """Solo answers first, then `rounds` rounds of concurrent load; memory after each."""
    good, bad = workload(server.model)
    bodies = {**good, **bad}
    solo = solo_answers(server, good)
    memory = [server_memory(server.pid)] if server.pid else []
    plans = schedule(good, bad, clients, per_client)
    records, wall_s, t0 = [], 0.0, time.perf_counter()
    for round_index in range(rounds):
        start = time.perf_counter()
        records += _round(server, bodies, plans, round_index, t0)  # start_s counts from the first round
        wall_s += time.perf_counter() - start
        if server.pid:
            memory.append(server_memory(server.pid))
    summary = summarise(records, solo, set(bad), wall_s, clients, per_client)
    summary["rounds"] = rounds
    summary["server_rss_mib"] = {"before": memory[0]["total"] if memory else None,
                                 "after": memory[-1]["total"] if memory else None,
                                 "after_each_round": [m["total"] for m in memory[1:]],
                                 "by_process": memory}
    return summary


def sustained(server: Server, job: Callable[[int, float], dict | None], clients: int,
              sample_s: float) -> tuple[list[dict], list[dict]]:
    """(records, memory samples): `clients` threads run `job(i, t0)` for i = 0, 1, ... until it returns None.

    A sampler thread reads the server's RSS per process every `sample_s` seconds
    with the number of finished jobs: `{"t_s", "done", <process>: MiB, ..., "total"}`.
    The first sample is taken before the load, the last after it.
    """
    next_index, finished = itertools.count(), itertools.count(1)
    done, lock, stop = [0], threading.Lock(), threading.Event()
    t0 = time.perf_counter()
    samples = [{"t_s": 0.0, "done": 0, **server_memory(server.pid)}]

    def sample() -> None:
        with lock:
            count = done[0]
        samples.append({"t_s": time.perf_counter() - t0, "done": count, **server_memory(server.pid)})

    def sampler() -> None:
        while not stop.wait(sample_s):
            sample()

    def client() -> list[dict]:
        records = []
        while (record := job(next(next_index), t0)) is not None:
            records.append(record)
            with lock:
                done[0] = next(finished)
        return records

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    with ThreadPoolExecutor(clients) as pool:
        records = [r for rs in pool.map(lambda _: client(), range(clients)) for r in rs]
    stop.set()
    thread.join()
    sample()
    return records, samples


def slope_per_1000(samples: list[dict], key: str = "total") -> float:
    """Least-squares MiB per 1,000 finished requests of `key` over `samples`."""
    xs = np.array([s["done"] for s in samples], dtype=float)
    ys = np.array([s.get(key, 0.0) for s in samples], dtype=float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return float("nan")
    return float(np.polyfit(xs, ys, 1)[0] * 1000)


def summarise(records, solo, bad_names, wall_s, clients, per_client) -> dict:
    goods = [r for r in records if r["name"] not in bad_names]
    bads = [r for r in records if r["name"] in bad_names]
    latencies = [r["latency_s"] for r in goods]
    by_kind = {}
    for r in goods:
        by_kind.setdefault(r["name"].split("/")[0], []).append(r["latency_s"])
    return {
        "clients": clients, "requests_per_client": per_client, "requests": len(records),
        "good_requests": len(goods), "bad_requests": len(bads),
        "server_errors_5xx": sum(r["status"] >= 500 for r in records),
        "good_not_200": [r for r in goods if r["status"] != 200],
        "bad_not_4xx": [r for r in bads if not 400 <= r["status"] < 500],
        "mismatches": [{**r, "solo": solo[r["name"]]} for r in goods
                       if r["status"] == 200 and r["answer"] != solo[r["name"]]],
        "bad_statuses": {name: sorted({r["status"] for r in bads if r["name"] == name})
                         for name in sorted(bad_names)},
        "wall_s": wall_s, "good_per_s": len(goods) / wall_s,
        "latency_good_s": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                           "max": max(latencies, default=float("nan"))},
        "latency_by_workflow_s": {k: {"p50": percentile(v, 50), "p99": percentile(v, 99)} for k, v in by_kind.items()},
        "latency_bad_s": {"p50": percentile([r["latency_s"] for r in bads], 50),
                          "p99": percentile([r["latency_s"] for r in bads], 99)},
        "records": records,
    }


def passed(summary: dict) -> bool:
    return not (summary["server_errors_5xx"] or summary["good_not_200"] or summary["bad_not_4xx"]
                or summary["mismatches"])


def plot(summary: dict, path: str) -> None:
    """Latency of every request against its start time, one colour per workflow (bad in red)."""
    report.figure(path, [report.Panel(
        f"{summary['requests']} requests, {summary['clients']} clients, 5xx: {summary['server_errors_5xx']}, "
        f"mismatches: {len(summary['mismatches'])}", "latency (s)", "request start (s)",
        points=points_by_kind(summary["records"], COLOURS,
                              lambda r: "bad" if r["name"].startswith("bad/") else r["name"].split("/")[0]),
        colours=COLOURS)], panel_size=(9, 5))


def points_by_kind(records: list[dict], kinds, kind) -> dict[str, tuple[list[float], list[float]]]:
    """(start, latency) of each record, by `kind(record)`, in the order of `kinds`."""
    found: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in kinds}
    for r in records:
        xs, ys = found.setdefault(kind(r), ([], []))
        xs.append(r["start_s"])
        ys.append(r["latency_s"])
    return {k: xy for k, xy in found.items() if xy[0]}


def write_results(summary: dict, name: str = "load") -> str:
    """benchmarks/results/<name>.json and .png; returns the common path stem."""
    return report.write(report.RESULTS_DIR, name, {**summary, "machine": report.machine(), "passed": passed(summary)},
                        plot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/tiny", help="checkpoint to serve (ignored with --base-url)")
    parser.add_argument("--base-url", help="use a running server (http://HOST:PORT) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --base-url: the server's pid, for its memory")
    parser.add_argument("--served-model", help="with --base-url: the model name (default: from /v1/models)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="load rounds; memory is read after each")
    args = parser.parse_args(argv)

    if args.base_url:
        model = args.served_model or json.load(urllib.request.urlopen(f"{args.base_url}/v1/models"))["data"][0]["id"]
        context = contextlib.nullcontext(Server(args.base_url.rstrip("/"), model, args.pid))
    else:
        context = serve(args.model)
    with context as server:
        summary = run_load(server, args.clients, args.requests_per_client, args.rounds)
    write_results(summary)
    rss = summary["server_rss_mib"]
    print(json.dumps({k: v for k, v in summary.items() if k not in ("records", "bad_statuses")}, indent=1))
    if rss["before"] is not None:  # known only with the server's pid
        print(f"server RSS MiB before: {rss['before']:.0f}, after each round: "
              + ", ".join(f"{m:.0f}" for m in rss["after_each_round"]))
    print(f"passed: {passed(summary)}")
    return 0 if passed(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
