"""Serving benchmarks: IAA vs LLaVA on MME-shaped requests, the text path vs stock
Llama, mixed-workflow traffic, and memory. One command, JSON + PNG out.

    .venv/bin/python -m benchmarks.serving --preset tiny     # CPU, a few minutes
    python -m benchmarks.serving --preset real               # GPU, real shapes

`tiny`: the tiny IAA checkpoint, the stock Llama cut out of it and a tiny LLaVA with
the same Llama and CLIP (written to benchmarks/results/models/). On CPU the ratios
are what it shows; absolute times say nothing about a GPU.
`real`: IAA-8 and IAA-14 against LLaVA-1.5-7B, a LLaVA on Llama-3-8B and
LLaVA-1.5-13B, and the stock Llama-3-8B, all at their real shapes with
`load_format="dummy"` (vLLM's random weights, every parameter seeded alike, so the
IAA engine's frozen Llama equals the stock engine's). Same engine settings for all.

Measured per engine, each in its own process (benchmarks/engine_runner.py):
- MME-shaped latency: one random-pixel image of an MME-like size, the release's MME
  prompt (design.md section 1), greedy, 3 output tokens; one request at a time
  (batch 1) and all at once (concurrent); latency and TTFT percentiles. Each
  latency ratio is printed beside its FLOP ratio (benchmarks/shapes.py).
- Text path: the same text prompts on the IAA engine and on stock vLLM Llama:
  throughput ratio (goal >= 0.99) and whether the outputs are identical; each
  engine runs the batch `repeat` times and the fastest run counts (engines run one
  after another, so a shared machine's load hits them at different times). LLaVA
  engines run it too: a stock multimodal model's text throughput, for scale.
- Mixed traffic: text / mm / grounding 1:1:1 at once vs each workflow alone.
- Memory: weight bytes and KV capacity (tokens) as the engines report it, and the
  arithmetic for the real shapes, also vs three separate single-workflow models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from benchmarks import engine_runner, shapes
from benchmarks import report as report_files
from iaa_vllm.tokenizer import build_prompt

MME_SUFFIX = "\nAnswer the question using a single word or phrase."
MME_QUESTIONS = [  # MME-length questions (the dataset's are 8-20 words)
    "Is there a red car parked on the left side of the street in this image?",
    "Are there exactly three people standing near the table in the picture?",
    "Is the text on the sign in this photo written in English?",
    "Does this image show a famous landmark located in Paris, France?",
    "Is the person in the image holding an umbrella while it rains?",
    "Is this painting an example of the impressionist style of art?",
]
MME_SIZES = [(1024, 768), (800, 533), (640, 480), (1280, 853), (500, 375), (1920, 1080)]
TEXT_PROMPT = ("Summarise, in a few sentences, why a frozen language model with inserted "
               "adapter layers can serve plain text requests exactly as the original model "
               "does. Question {i}: what changes for the text workflow?")
GROUNDING = "Please provide the bounding box coordinate of the region this sentence describes: "
MODES = {
    "tiny": dict(iaa=["tiny"], llava=["tiny"], dtype="float32", load_format="auto", max_model_len=2048,
                 mme_requests=6, concurrent=6, text_requests=16, text_tokens=48, mixed_per_workflow=4, repeat=3),
    "real": dict(iaa=["iaa-8", "iaa-14"], llava=list(shapes.LLAVA_DECODERS), dtype="bfloat16",
                 load_format="dummy", max_model_len=4096, mme_requests=50, concurrent=32,
                 text_requests=256, text_tokens=128, mixed_per_workflow=64, repeat=3),
}


def mme_requests(n: int, workflow: str | None, seed: int = 0, per_image: int = 1) -> list[dict]:
    """`n` MME-shaped requests, `per_image` questions about each random image (the
    dataset asks 2 about each of its 1,187 images), images seeded from `seed`."""
    mme = [build_prompt(q + MME_SUFFIX, with_image=True) for q in MME_QUESTIONS]
    images = [(*MME_SIZES[k % len(MME_SIZES)], seed + k) for k in range(-(-n // per_image))]
    return [{"prompt": mme[i % len(mme)], "image": [*images[i // per_image]], "workflow": workflow, "max_tokens": 3}
            for i in range(n)]


def text_requests(n: int, max_tokens: int, workflow: str | None = "text") -> list[dict]:
    return [{"prompt": build_prompt(TEXT_PROMPT.format(i=i), with_image=False), "image": None,
             "workflow": workflow, "max_tokens": max_tokens} for i in range(n)]


def mixed_requests(per_workflow: int, max_tokens: int) -> dict[str, list[dict]]:
    mm = [dict(r, max_tokens=max_tokens) for r in mme_requests(per_workflow, "mm", seed=1000)]
    grounding = [{"prompt": build_prompt(GROUNDING + f"the object number {i} on the left", with_image=True),
                  "image": [*MME_SIZES[i % len(MME_SIZES)], 2000 + i], "workflow": "grounding",
                  "max_tokens": max_tokens} for i in range(per_workflow)]
    text = text_requests(per_workflow, max_tokens)
    interleaved = [r for triple in zip(text, mm, grounding) for r in triple]
    return {"mixed": interleaved, "text_alone": text, "mm_alone": mm, "grounding_alone": grounding}


def write_iaa(path: str, preset: str, dtype: str, dummy: bool) -> str:
    """An IAA checkpoint of `preset` at `path` (config and tokenizer only when `dummy`:
    vLLM's dummy weights); kept when a config.json is already there."""
    from iaa_vllm import checkpoint

    if not os.path.isfile(os.path.join(path, "config.json")):
        checkpoint.write_checkpoint(path, preset, dtype, config_only=dummy, overwrite=True, progress=False)
    return path


def write_stock(iaa_dir: str, path: str, dummy: bool) -> str:
    """The stock Llama of the IAA checkpoint `iaa_dir` at `path`: its frozen weights cut
    out, or, when `dummy`, the Llama config and tokenizer only."""
    from iaa_vllm.stock_llama import llama_config, write_stock_llama
    from iaa_vllm import tokenizer

    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if not dummy:
        return write_stock_llama(iaa_dir, path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(iaa_dir, "config.json"), encoding="utf-8") as f:
        config = llama_config(json.load(f))
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    tokenizer.save_tokenizer(path)
    return path


def write_models(mode: str, root: str) -> dict[str, str]:
    """Model directories for the mode, written once under `root`."""
    from benchmarks.llava_checkpoint import write_llava

    cfg = MODES[mode]
    dummy = cfg["load_format"] == "dummy"
    dirs = {f"iaa:{p}": write_iaa(os.path.join(root, f"iaa-{p}"), p, cfg["dtype"], dummy) for p in cfg["iaa"]}
    dirs["llama"] = write_stock(dirs[f"iaa:{cfg['iaa'][0]}"], os.path.join(root, "llama"), dummy)
    for name in cfg["llava"]:
        path = dirs[f"llava:{name}"] = os.path.join(root, f"llava-{name}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            write_llava(path, name, cfg["dtype"])
    return dirs


def run_engine(model_dir: str, mode: str, workloads: list[dict], warmup: list[dict],
               runner=engine_runner.run_in_child) -> dict:
    """One eager engine in its own process (`runner`: engine_runner.run_in_child, or
    SharedEngines.run: compile_modes.py's eager engines have these settings)."""
    cfg = MODES[mode]
    engine = engine_runner.engine_args("eager", dtype=cfg["dtype"], max_model_len=cfg["max_model_len"], seed=0,
                                       load_format=cfg["load_format"], gpu_memory_utilization=0.85, max_num_seqs=256)
    return runner(model_dir, engine, workloads, warmup)


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"mean": statistics.fmean(values), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def summarise_latency(workload: dict) -> dict:
    reqs = workload["requests"]
    return {"requests": len(reqs), "latency_s": percentiles([r["latency_s"] for r in reqs]),
            "ttft_s": percentiles([r["ttft_s"] for r in reqs]),
            "prompt_tokens": statistics.fmean(r["prompt_tokens"] for r in reqs)}


def throughput(workload: dict) -> dict:
    reqs = workload["requests"]
    tokens = sum(len(r["token_ids"]) for r in reqs)
    return {"requests": len(reqs), "wall_s": workload["wall_s"], "tokens_per_s": tokens / workload["wall_s"],
            "requests_per_s": len(reqs) / workload["wall_s"]}


def run_all(mode: str, root: str, progress=print, runner=engine_runner.run_in_child) -> dict:
    cfg = MODES[mode]
    dirs = write_models(mode, root)
    text = text_requests(cfg["text_requests"], cfg["text_tokens"])
    report = {"mode": mode, "models": {}, "text_path": {}, "mixed": {}}
    for preset in cfg["iaa"]:
        progress(f"IAA {preset}: MME latency, text path, mixed traffic")
        mixed = mixed_requests(cfg["mixed_per_workflow"], cfg["text_tokens"])
        workloads = [
            {"name": "mme_batch1", "mode": "sequential", "requests": mme_requests(cfg["mme_requests"], "mm")},
            {"name": "mme_concurrent", "mode": "concurrent", "requests": mme_requests(cfg["concurrent"], "mm", 500)},
            {"name": "text", "mode": "concurrent", "requests": text, "repeat": cfg["repeat"]},
            *({"name": name, "mode": "concurrent", "requests": reqs} for name, reqs in mixed.items()),
        ]
        result = run_engine(dirs[f"iaa:{preset}"], mode, workloads, mme_requests(2, "mm", 900), runner)
        report["models"][f"IAA {preset}"] = _model_entry(shapes.iaa(preset), result, cfg["dtype"])
        report["mixed"][preset] = {name: throughput(result["workloads"][name]) for name in mixed}
        report["text_path"][preset] = result["workloads"]["text"]
    progress("stock Llama: text path")
    stock = run_engine(dirs["llama"], mode, [{"name": "text", "mode": "concurrent", "repeat": cfg["repeat"],
                                               "requests": text_requests(cfg["text_requests"], cfg["text_tokens"], None)}],
                       text_requests(2, 4, None), runner)
    report["models"]["stock Llama"] = {"kv_tokens": stock["kv_tokens"], "start_s": stock["start_s"],
                                       "weight_gb": _weight_gb(shapes.llama(cfg["iaa"][0]), cfg["dtype"])}
    report["text_path"] = _text_path(report["text_path"], stock["workloads"]["text"])
    for name in cfg["llava"]:
        progress(f"LLaVA {name}: MME latency, text path")
        workloads = [
            {"name": "mme_batch1", "mode": "sequential", "requests": mme_requests(cfg["mme_requests"], None)},
            {"name": "mme_concurrent", "mode": "concurrent", "requests": mme_requests(cfg["concurrent"], None, 500)},
            # A stock multimodal model on text: how much of any text-path gap is vLLM's
            # multimodal runner path rather than IAA's routing.
            {"name": "text", "mode": "concurrent", "repeat": cfg["repeat"],
             "requests": text_requests(cfg["text_requests"], cfg["text_tokens"], None)},
        ]
        result = run_engine(dirs[f"llava:{name}"], mode, workloads, mme_requests(2, None, 900), runner)
        report["models"][f"LLaVA {name}"] = _model_entry(shapes.llava(name), result, cfg["dtype"])
        text = throughput(result["workloads"]["text"])
        report["text_path"][f"LLaVA {name}"] = {
            **text, "throughput_ratio_vs_stock": text["tokens_per_s"] / report["text_path"]["stock"]["tokens_per_s"]}
    report["ratios"] = _ratios(report["models"])
    report["memory"] = memory_table(mode)
    return report


def _weight_gb(model: shapes.Model, dtype: str) -> float:
    return model.weight_params() * (4 if dtype == "float32" else 2) / 1e9


def request_gflop(model: shapes.Model, latency: dict) -> float:
    """GFLOPs of one request of a `summarise_latency` workload (3 output tokens)."""
    return model.request_flops(round(latency["prompt_tokens"]), 3) / 1e9


def _model_entry(model: shapes.Model, result: dict, dtype: str) -> dict:
    batch1 = summarise_latency(result["workloads"]["mme_batch1"])
    return {"kv_tokens": result["kv_tokens"], "start_s": result["start_s"], "mme_batch1": batch1,
            "mme_concurrent": summarise_latency(result["workloads"]["mme_concurrent"]),
            "request_gflop": request_gflop(model, batch1), "weight_gb": _weight_gb(model, dtype)}


def _text_path(iaa_text: dict, stock_text: dict) -> dict:
    stock_tp = throughput(stock_text)
    out = {"stock": stock_tp}
    for preset, workload in iaa_text.items():
        tp = throughput(workload)
        same = all(a["token_ids"] == b["token_ids"] for a, b in zip(workload["requests"], stock_text["requests"]))
        out[preset] = {**tp, "throughput_ratio_vs_stock": tp["tokens_per_s"] / stock_tp["tokens_per_s"],
                       "identical_outputs": same}
    return out


def _ratios(models: dict) -> list[dict]:
    """Each IAA / LLaVA pair: batch-1 mean latency ratio beside the FLOP ratio."""
    rows = []
    for a, ea in models.items():
        for b, eb in models.items():
            if a.startswith("IAA") and b.startswith("LLaVA"):
                rows.append({"iaa": a, "llava": b,
                             "latency_ratio": ea["mme_batch1"]["latency_s"]["mean"] / eb["mme_batch1"]["latency_s"]["mean"],
                             "flop_ratio": ea["request_gflop"] / eb["request_gflop"]})
    return rows


def memory_table(mode: str) -> list[dict]:
    """Weights and KV bytes per token at the real shapes, bf16, and the KV tokens an
    80 GB GPU holds at 90 % utilisation after weights (activations not counted)."""
    budget = 80e9 * 0.9
    rows = []
    entries = [(f"IAA {p}", shapes.iaa(p)) for p in ("iaa-8", "iaa-14")] + [("stock Llama-3-8B", shapes.llama("iaa-8"))]
    entries += [(f"LLaVA {n}", shapes.llava(n)) for n in shapes.LLAVA_DECODERS]
    for name, model in entries:
        weights = model.weight_params() * 2
        per_token = model.kv_bytes_per_token(2)
        rows.append({"model": name, "weight_gb": weights / 1e9, "kv_bytes_per_token": per_token,
                     "kv_tokens_80gb": int((budget - weights) // per_token)})
    for preset in ("iaa-8", "iaa-14"):
        # Three engines: stock Llama for text, and one model per image workflow (frozen
        # Llama + that workflow's set), each given a third of the memory.
        iaa, llama = shapes.iaa(preset), shapes.llama(preset)
        one_set = (iaa.weight_params() - llama.weight_params()
                   - iaa.vision.params(iaa.vision.layers_used)) // 2 + iaa.vision.params(iaa.vision.layers_used)
        weights = [llama.weight_params() * 2, *(2 * (llama.weight_params() + one_set),) * 2]
        per_token = [llama.kv_bytes_per_token(2), *(iaa.kv_bytes_per_token(2),) * 2]
        tokens = sum(max(0, int((budget / 3 - w) // t)) for w, t in zip(weights, per_token))
        rows.append({"model": f"3 separate models ({preset} sets)", "weight_gb": sum(weights) / 1e9,
                     "kv_bytes_per_token": None, "kv_tokens_80gb": tokens})
    return rows


def print_report(report: dict) -> None:
    print(f"\n== MME-shaped latency ({report['mode']}), 3 output tokens ==")
    print(f"{'model':28s} {'b1 p50 s':>9s} {'b1 p99 s':>9s} {'ttft p50':>9s} {'conc p50':>9s} {'GFLOP':>9s} {'KV tok':>9s}")
    for name, m in report["models"].items():
        if "mme_batch1" not in m:
            continue
        b1, conc = m["mme_batch1"], m["mme_concurrent"]
        print(f"{name:28s} {b1['latency_s']['p50']:9.4f} {b1['latency_s']['p99']:9.4f} {b1['ttft_s']['p50']:9.4f} "
              f"{conc['latency_s']['p50']:9.4f} {m['request_gflop']:9.1f} {m['kv_tokens']:9d}")
    for r in report["ratios"]:
        print(f"{r['iaa']} / {r['llava']}: latency {r['latency_ratio']:.3f}  FLOPs {r['flop_ratio']:.3f}")
    print("\n== text path vs stock Llama ==")
    for name, t in report["text_path"].items():
        if name != "stock":
            label = name if name.startswith("LLaVA") else f"IAA {name}"
            same = f"; identical outputs: {t['identical_outputs']}" if "identical_outputs" in t else ""
            print(f"{label}: {t['tokens_per_s']:.1f} tok/s vs stock {report['text_path']['stock']['tokens_per_s']:.1f}"
                  f" -> ratio {t['throughput_ratio_vs_stock']:.3f}{same}")
    print("\n== mixed traffic (tokens/s, requests/s) ==")
    for preset, rows in report["mixed"].items():
        for name, t in rows.items():
            print(f"IAA {preset} {name:16s} {t['tokens_per_s']:9.1f} tok/s {t['requests_per_s']:7.2f} req/s")
    print("\n== memory at real shapes, bf16 (80 GB GPU, 90 %) ==")
    for r in report["memory"]:
        print(f"{r['model']:36s} weights {r['weight_gb']:6.1f} GB   KV tokens {r['kv_tokens_80gb']:>9,d}")


def plot(report: dict, path: str) -> None:
    """Batch-1 MME latency per model and the latency vs FLOP ratios."""
    models = [(n, m["mme_batch1"]["latency_s"]["p50"]) for n, m in report["models"].items() if "mme_batch1" in m]
    ratios = report["ratios"]
    report_files.figure(path, [
        report_files.Panel(f"MME-shaped request, batch 1, {report['mode']} mode", "p50 latency (s)",
                           groups=[n.replace(" ", "\n", 1) for n, _ in models], dodge=False, value_format="{:.3f}",
                           bars={family: [v if n.startswith(family) else None for n, v in models]
                                 for family in ("IAA", "LLaVA")},
                           colours={"IAA": "tab:orange", "LLaVA": "tab:blue"}),
        report_files.Panel("IAA / LLaVA: latency ratio vs FLOP ratio", "ratio",
                           groups=[f"{r['iaa'].split()[1]}/\n{r['llava'].split()[1]}" for r in ratios],
                           bars={"latency": [r["latency_ratio"] for r in ratios],
                                 "FLOPs": [r["flop_ratio"] for r in ratios]},
                           value_format="{:.2f}", colours={"latency": "tab:orange", "FLOPs": "grey"}),
    ])


def main(argv: list[str] | None = None, runner=engine_runner.run_in_child) -> int:
    """`runner`: how an engine is run (benchmarks/smoke.py passes SharedEngines.run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(MODES), default="tiny",
                        help="tiny: CPU-sized models; real: real shapes, dummy weights (GPU)")
    parser.add_argument("--models-dir", default=os.path.join(report_files.RESULTS_DIR, "models"),
                        help="where the benchmark's checkpoints are written (reused when present)")
    parser.add_argument("--out", default=report_files.RESULTS_DIR, help="where serving_<preset>.{json,png} go")
    parser.add_argument("--quick", action="store_true", help="tiny mode with fewer requests (CI smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        if args.preset != "tiny":
            parser.error("--quick is for --preset tiny")
        MODES["tiny"].update(mme_requests=2, concurrent=2, text_requests=3, text_tokens=4, mixed_per_workflow=1,
                             repeat=1)
    report = run_all(args.preset, os.path.join(args.models_dir, args.preset), progress=lambda m: print(m, flush=True),
                     runner=runner)
    report["machine"] = machine()
    print_report(report)
    report_files.write(args.out, f"serving_{args.preset}{'_quick' if args.quick else ''}", report, plot)
    return 0


def machine() -> dict:
    import torch

    return {**report_files.machine(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


if __name__ == "__main__":
    sys.exit(main())
