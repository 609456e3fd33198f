"""Bounded soak on loopback: mixed workflows, bad requests and hung-up streams for `--minutes`.

`--clients` threads send requests one after another until the time is up, then
stop. Slot i of the shared schedule is a bad request when i % `--bad-every` is
the last of its cycle (the six bad kinds of `load.py` in turn), a streamed chat
completion that the client hangs up when i % `--cancel-every` == 0 (alternately
after `--cancel-after` chunks and before the first token; these ask for
`--cancel-max-tokens` tokens with `ignore_eos`, so they are still generating
when the client leaves), and otherwise a good greedy request of one of the three
workflows. Every answer is checked against its solo run: good answers equal it,
the text a hung-up stream received is a prefix of it.

Reported (JSON + PNG): 5xx count, mismatches, bad requests not answered 4xx,
good latency p50/p99 per `--window-minutes` window, the RSS slope per process
after `--warmup-minutes` (MiB per 1,000 requests and per hour), and the
`/metrics` gauges once the load is over (no request running or waiting, KV usage
back at its idle value) with the solo answers asked again.

    .venv/bin/python -m benchmarks.soak --model checkpoints/tiny                # 20 minutes
    .venv/bin/python -m benchmarks.soak --base-url http://127.0.0.1:8000 --pid SERVER_PID --minutes 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.request

from benchmarks import load, report
from benchmarks.server_probes import metric, metrics, wait_idle
from iaa_vllm.local_server import Server, serve, stream_chat

KIND_COLOURS = {**load.COLOURS, "cancel": "tab:purple"}


def long_body(body: dict, max_tokens: int) -> dict:
    """A request that keeps generating (no EOS stop) until the client hangs up."""
    return {**body, "max_tokens": max_tokens, "ignore_eos": True}


def slot_kind(i: int, bad_every: int, cancel_every: int) -> str:
    if i % bad_every == bad_every - 1:
        return "bad"
    if cancel_every and i % cancel_every == 0:  # even slots: never a bad one when --bad-every is even
        return "cancel"
    return "good"


def run_soak(server: Server, seconds: float, clients: int = 16, window_s: float = 300,
             warmup_s: float = 120, bad_every: int = 4, cancel_every: int = 6, cancel_after: int = 2,
             cancel_max_tokens: int = 128, sample_s: float = 5.0) -> dict:
    """The soak against a running server; the summary that `passed` judges."""
    good, bad = load.workload(server.model)
    streams = {name: long_body(body, cancel_max_tokens) for name, body in good.items()}
    solo = load.solo_answers(server, good)
    solo_long = load.solo_answers(server, streams)
    idle = wait_idle(server.base)
    generated_before = metric(metrics(server.base), "vllm:generation_tokens_total")
    counters = {k: [0] for k in ("good", "bad", "cancel")}
    good_names, bad_names = list(good), list(bad)
    deadline = time.perf_counter() + seconds

    def job(i: int, t0: float) -> dict | None:
        if time.perf_counter() >= deadline:
            return None
        kind = slot_kind(i, bad_every, cancel_every)
        n = counters[kind][0] = counters[kind][0] + 1  # races only shift which body a slot gets
        if kind == "good":
            name = good_names[n % len(good_names)]
            return {**load.send(server, name, good[name], t0), "kind": "good"}
        if kind == "bad":
            name = bad_names[n % len(bad_names)]
            return {**load.send(server, name, bad[name], t0), "kind": "bad"}
        name = good_names[n % len(good_names)]
        after = cancel_after if n % 2 else 0  # alternately mid-stream and before the first token
        start = time.perf_counter()
        streamed = stream_chat(server.base, streams[name], cancel_after=after)
        return {"kind": "cancel", "name": name, "cancel_after": after, "start_s": start - t0,
                "latency_s": time.perf_counter() - start, **streamed}

    records, samples = load.sustained(server, job, clients, sample_s)
    after_gauges = wait_idle(server.base, kv_idle=idle["vllm:kv_cache_usage_perc"])
    generated = metric(metrics(server.base), "vllm:generation_tokens_total") - generated_before
    solo_after = load.solo_answers(server, good)
    return summarise(records, samples, solo, solo_long, solo_after, idle, after_gauges, generated,
                     window_s=window_s, warmup_s=warmup_s, seconds=seconds, clients=clients)


def windows(records: list[dict], window_s: float) -> list[dict]:
    """Good-request latency p50/p99 per window of start time."""
    goods = [r for r in records if r["kind"] == "good"]
    count = int(max((r["start_s"] for r in goods), default=0) // window_s) + 1
    out = []
    for w in range(count):
        latencies = [r["latency_s"] for r in goods if w * window_s <= r["start_s"] < (w + 1) * window_s]
        out.append({"start_s": w * window_s, "end_s": (w + 1) * window_s, "good_requests": len(latencies),
                    "p50_s": load.percentile(latencies, 50), "p99_s": load.percentile(latencies, 99)})
    return out


def summarise(records, samples, solo, solo_long, solo_after, idle, after_gauges, generated, *,
              window_s, warmup_s, seconds, clients) -> dict:
    goods = [r for r in records if r["kind"] == "good"]
    bads = [r for r in records if r["kind"] == "bad"]
    cancels = [r for r in records if r["kind"] == "cancel"]
    kept = [s for s in samples if s["t_s"] >= warmup_s]
    wall_s = samples[-1]["t_s"]
    processes = [k for k in samples[0] if k not in ("t_s", "done")]
    hours = (kept[-1]["t_s"] - kept[0]["t_s"]) / 3600 if len(kept) > 1 else float("nan")
    per_1000 = {k: load.slope_per_1000(kept, k) for k in processes}
    requests_per_hour = (kept[-1]["done"] - kept[0]["done"]) / hours if len(kept) > 1 else float("nan")
    return {
        "seconds": seconds, "wall_s": wall_s, "clients": clients, "requests": len(records),
        "good_requests": len(goods), "bad_requests": len(bads),
        "cancelled_streams": {"mid_stream": sum(r["cancel_after"] > 0 for r in cancels),
                              "before_first_token": sum(r["cancel_after"] == 0 for r in cancels)},
        "server_errors_5xx": sum((r["status"] or 0) >= 500 for r in records),
        "good_not_200": [r for r in goods if r["status"] != 200],
        "bad_not_4xx": [r for r in bads if not 400 <= r["status"] < 500],
        "mismatches": [{**r, "solo": solo[r["name"]]} for r in goods
                       if r["status"] == 200 and r["answer"] != solo[r["name"]]],
        "cancel_not_prefix": [{**r, "solo": solo_long[r["name"]]} for r in cancels
                              if r["status"] not in (None, 200) or not solo_long[r["name"]].startswith(r["text"])],
        "solo_after_load_changed": {n: [solo[n], a] for n, a in solo_after.items() if a != solo[n]},
        # Tokens the engine generated for hung-up streams (all generated tokens less
        # the good answers'): a stream that ran on after its client left would add
        # up to --cancel-max-tokens. vLLM 0.32 does not count client aborts in
        # request_success_total{finished_reason="abort"}, so this is the evidence.
        "tokens_per_hung_up_stream": (generated - sum(r["tokens"] for r in goods)) / max(len(cancels), 1),
        "idle_gauges_before": idle, "idle_gauges_after": after_gauges,
        "good_per_s": len(goods) / wall_s,
        "latency_windows": windows(records, window_s),
        "rss_warmup_s": warmup_s,
        "rss_mib": {"first": samples[0], "last": samples[-1]},
        "rss_slope_mib_per_1000_requests": per_1000,
        "rss_slope_mib_per_hour": {k: v * requests_per_hour / 1000 for k, v in per_1000.items()},
        "samples": samples, "records": records,
    }


def passed(summary: dict) -> bool:
    after, before = summary["idle_gauges_after"], summary["idle_gauges_before"]
    return not (summary["server_errors_5xx"] or summary["good_not_200"] or summary["bad_not_4xx"]
                or summary["mismatches"] or summary["cancel_not_prefix"] or summary["solo_after_load_changed"]
                or after["vllm:num_requests_running"] or after["vllm:num_requests_waiting"]
                or after["vllm:kv_cache_usage_perc"] > before["vllm:kv_cache_usage_perc"])


def plot(summary: dict, path: str) -> None:
    """Top: latency of every request against its start; bottom: server RSS against time."""
    samples = summary["samples"]
    kind = lambda r: r["kind"] if r["kind"] != "good" else r["name"].split("/")[0]  # noqa: E731
    report.figure(path, [
        report.Panel(f"{summary['requests']} requests, 5xx: {summary['server_errors_5xx']}, "
                     f"mismatches: {len(summary['mismatches'])}", "latency (s)", "request start (s)",
                     points=load.points_by_kind(summary["records"], KIND_COLOURS, kind), colours=KIND_COLOURS),
        report.Panel(f"server RSS (all processes); slope after warm-up "
                     f"{summary['rss_slope_mib_per_1000_requests']['total']:.1f} MiB / 1,000 requests",
                     "RSS (MiB)", "time (s)", colours={"": "black"},
                     lines={"": [([s["t_s"] for s in samples], [s["total"] for s in samples])]}),
    ], columns=1, panel_size=(9, 3.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="checkpoints/tiny", help="checkpoint to serve (ignored with --base-url)")
    parser.add_argument("--base-url", help="use a running server (http://HOST:PORT) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --base-url: the server's pid, for its memory (required)")
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the load runs")
    parser.add_argument("--window-minutes", type=float, default=5.0, help="latency percentiles per window this long")
    parser.add_argument("--warmup-minutes", type=float, default=2.0, help="left out of the RSS slope fit")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--bad-every", type=int, default=4, help="one slot in this many is a bad request")
    parser.add_argument("--cancel-every", type=int, default=6,
                        help="one slot in this many is a stream the client hangs up (0: none)")
    parser.add_argument("--cancel-after", type=int, default=2,
                        help="content chunks read before a mid-stream hang-up")
    parser.add_argument("--cancel-max-tokens", type=int, default=128, help="max_tokens of the hung-up streams")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--kv-space-gib", type=int, default=1,
                        help="VLLM_CPU_KVCACHE_SPACE of the server it starts")
    parser.add_argument("--out", default=report.RESULTS_DIR, help="where soak.json and soak.png go")
    parser.add_argument("--stem", default="soak", help="file name of the results, without extension")
    args = parser.parse_args(argv)
    if args.base_url and not args.pid:
        parser.error("--base-url needs --pid: the soak reports the server's memory")

    if args.base_url:
        with urllib.request.urlopen(f"{args.base_url}/v1/models", timeout=30) as response:
            model = json.load(response)["data"][0]["id"]
        context = contextlib.nullcontext(Server(args.base_url.rstrip("/"), model, args.pid))
    else:
        context = serve(args.model, kv_space_gib=args.kv_space_gib)
    machine_at_start = report.machine()
    with context as server:
        summary = run_soak(server, args.minutes * 60, args.clients, args.window_minutes * 60,
                           args.warmup_minutes * 60, args.bad_every, args.cancel_every, args.cancel_after,
                           args.cancel_max_tokens, args.sample_s)
    result = {**summary, "passed": passed(summary), "options": vars(args), "command": " ".join(sys.argv),
              "machine_at_start": machine_at_start, "machine": report.machine()}
    report.write(args.out, args.stem, result, plot)
    brief = {k: v for k, v in result.items() if k not in ("records", "samples", "options", "rss_mib")}
    print(json.dumps(brief, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
