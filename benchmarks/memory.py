"""Server memory under sustained load: stock vLLM Llama against IAA, text-only and mixed.

Three configurations under the same server settings (`local_server.SERVE_ARGS`, compiled,
`--kv-space-gib` of KV cache) and the same client load (`--clients` threads, each
sending greedy requests one after another until `--requests` have been answered):

- `stock`: vLLM's own `LlamaForCausalLM`, the frozen weights cut out of the IAA
  checkpoint (`iaa_vllm/stock_llama.py`), sent the text requests;
- `iaa-text`: the IAA checkpoint, sent the very same text request bodies;
- `iaa-mixed`: the IAA checkpoint, sent text, mm and grounding requests in turn.

A sampler thread reads the RSS of each server process (API server, engine core,
worker) every `--sample-s` seconds along with the number of answered requests.
The slope (MiB per 1,000 requests) is a least-squares fit of RSS against answered
requests after the first `--warmup` requests, per process and in total. Its
spread comes from `--runs` independent runs (a fresh server each) and, within each
run, from `--segments` consecutive slices of the post-warm-up samples fitted
alone. Every answer is checked against its solo (greedy) run.

The worker's RSS rises in steps and levels off (glibc keeps its heap's high-water
mark): on the tiny checkpoint, over the first ~15,000 mixed requests. A run of
10,000 with the default warm-up of 2,000 compares the three configurations on
that rise; `--requests 30000 --warmup 15000` fits the plateau instead.

    .venv/bin/python -m benchmarks.memory --model checkpoints/tiny          # 3 configurations x 2 runs x 10,000
    .venv/bin/python -m benchmarks.memory --model checkpoints/tiny --quick  # 1 run x 1,000 requests each

Writes `<out>/memory.json` and `memory.png` (RSS against answered requests).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from benchmarks import load, report
from iaa_vllm import local_server

CONFIGS = ("stock", "iaa-text", "iaa-mixed")
PLOT_COLOURS = {"stock": "grey", "iaa-text": "tab:blue", "iaa-mixed": "tab:orange"}


def request_bodies(config: str, model: str) -> dict[str, dict]:
    """The good requests a configuration is sent.

    The text bodies carry no `vllm_xargs`, so stock and IAA get byte-identical
    requests (IAA picks `text` for a request without an image).
    """
    good, _ = load.workload(model)
    if config == "iaa-mixed":
        return good
    return {name: {k: v for k, v in body.items() if k != "vllm_xargs"}
            for name, body in good.items() if name.startswith("text/")}


def fit(samples: list[dict], warmup: int, segments: int) -> dict:
    """Slopes after the warm-up, per process: over the whole rest and per segment."""
    kept = [s for s in samples if s["done"] >= warmup]
    processes = [k for k in samples[0] if k not in ("t_s", "done")]
    edges = np.linspace(warmup, max(s["done"] for s in samples), segments + 1)
    slices = [[s for s in kept if lo <= s["done"] <= hi] for lo, hi in zip(edges, edges[1:])]
    return {key: {"slope": load.slope_per_1000(kept, key),
                  "segments": [load.slope_per_1000(part, key) for part in slices]}
            for key in processes}


def measure(config: str, model: str, args: argparse.Namespace, run: int) -> dict:
    """One run of one configuration on a fresh server."""
    with local_server.serve(model, kv_space_gib=args.kv_space_gib) as server:
        bodies = request_bodies(config, server.model)
        solo = load.solo_answers(server, bodies)
        names = list(bodies)

        def job(i: int, t0: float) -> dict | None:
            if i >= args.requests:
                return None
            name = names[i % len(names)]
            return load.send(server, name, bodies[name], t0)

        records, samples = load.sustained(server, job, args.clients, args.sample_s)
    bad = [r for r in records if r["status"] != 200 or r["answer"] != solo[r["name"]]]
    latencies = [r["latency_s"] for r in records]
    wall_s = samples[-1]["t_s"]
    result = {"config": config, "run": run, "requests": len(records), "wall_s": wall_s,
              "requests_per_s": len(records) / wall_s,
              "latency_s": {"p50": load.percentile(latencies, 50), "p99": load.percentile(latencies, 99)},
              "not_200_or_not_solo": bad[:20], "failures": len(bad),
              "fit": fit(samples, args.warmup, args.segments), "samples": samples}
    total = result["fit"]["total"]
    print(f"{config} run {run}: {len(records)} requests in {wall_s:.0f} s, {len(bad)} failures; total RSS "
          f"{samples[0]['total']:.0f} -> {samples[-1]['total']:.0f} MiB, slope {total['slope']:.1f} MiB/1k "
          f"(segments {', '.join(f'{v:.1f}' for v in total['segments'])})", flush=True)
    return result


def summarise(runs: list[dict]) -> dict:
    """Per configuration and process: each run's slope and segment slopes, and their range."""
    table = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        table[config] = {}
        for key in mine[0]["fit"]:
            slopes = [r["fit"][key]["slope"] for r in mine]
            segments = [v for r in mine for v in r["fit"][key]["segments"]]
            table[config][key] = {"runs": slopes, "mean": float(np.mean(slopes)),
                                  "min": float(np.min(slopes)), "max": float(np.max(slopes)),
                                  "segments": segments,
                                  "segments_min": float(np.min(segments)), "segments_max": float(np.max(segments))}
    return table


def plot(result: dict, path: str) -> None:
    """Total server RSS against answered requests, one line per run, coloured by configuration."""
    totals = {config: slopes["total"] for config, slopes in result["slopes"].items()}
    labels = {config: f"{config}: {t['mean']:.1f} MiB/1k requests (runs {t['min']:.1f}..{t['max']:.1f})"
              for config, t in totals.items()}
    lines: dict[str, list] = {label: [] for label in labels.values()}
    for r in result["runs"]:
        lines[labels[r["config"]]].append(([s["done"] for s in r["samples"]], [s["total"] for s in r["samples"]]))
    report.figure(path, [report.Panel(
        "server RSS (all processes)", "RSS (MiB)", "answered requests", lines=lines,
        vlines={f"warm-up {result['options']['warmup']} requests": result["options"]["warmup"]},
        colours={label: PLOT_COLOURS[config] for config, label in labels.items()})], panel_size=(9, 5.2))


def checkpoints(args: argparse.Namespace) -> dict[str, str]:
    """The model each configuration serves; the stock one is cut out of `--model` unless given."""
    stock = args.stock_model
    if stock is None and "stock" in args.configs:
        from iaa_vllm.stock_llama import write_stock_llama

        stock = write_stock_llama(args.model, tempfile.mkdtemp(prefix="iaa-stock-llama-"))
    return {"stock": stock, "iaa-text": args.model, "iaa-mixed": args.model}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="checkpoints/tiny", help="the IAA checkpoint to serve")
    parser.add_argument("--stock-model", help="a stock Llama checkpoint (default: cut out of --model "
                                              "into a temporary directory with iaa_vllm/stock_llama.py)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                        help="configurations to run, in this order")
    parser.add_argument("--runs", type=int, default=2, help="independent runs per configuration, a fresh server each")
    parser.add_argument("--requests", type=int, default=10000, help="requests per run")
    parser.add_argument("--warmup", type=int, default=2000, help="answered requests left out of the fit")
    parser.add_argument("--segments", type=int, default=4,
                        help="slices of each run's post-warm-up samples, each fitted alone")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--sample-s", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--kv-space-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE of each server")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 run x 1,000 requests, warm-up 200 (overrides those three)")
    parser.add_argument("--out", default=report.RESULTS_DIR, help="where memory.json and memory.png go")
    parser.add_argument("--stem", default="memory", help="file name of the results, without extension")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.requests, args.warmup = 1, 1000, 200
    if args.warmup >= args.requests:
        parser.error(f"--warmup ({args.warmup}) must be below --requests ({args.requests})")

    models = checkpoints(args)
    start_machine = report.machine()
    runs = [measure(config, models[config], args, run) for config in args.configs for run in range(args.runs)]
    result = {"options": {k: v for k, v in vars(args).items()}, "command": " ".join(sys.argv),
              "machine_at_start": start_machine, "machine": report.machine(),
              "slopes": summarise(runs), "failures": sum(r["failures"] for r in runs), "runs": runs}
    report.write(args.out, args.stem, result, plot)
    for config, by_process in result["slopes"].items():
        for key, s in by_process.items():
            print(f"{config:9s} {key:22s} {s['mean']:7.2f} MiB/1k requests; runs {s['min']:.2f}..{s['max']:.2f}; "
                  f"segments {s['segments_min']:.2f}..{s['segments_max']:.2f}")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
