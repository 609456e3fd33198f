"""One vLLM engine in its own process: start it, run timed workloads, report JSON.

The serving benchmarks (benchmarks/serving.py) start one child per model, so every
engine gets a fresh process and its memory back on exit. A child reads a spec

    {"model": DIR, "engine": {vLLM engine args}, "warmup": [requests],
     "workloads": [{"name": ..., "mode": "sequential" | "concurrent", "requests": [...]}]}

where a request is {"prompt": str, "image": [width, height, seed] | null,
"workflow": str | null, "max_tokens": int}. It runs them through vLLM's AsyncLLM
(what `vllm serve` runs) and writes, per request, latency and time to first token
from submission, and the output token ids.

    python benchmarks/engine_runner.py SPEC.json OUT.json

`run_in_child` is the parent's side: it writes the spec, runs the child and reads
its report back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time


def make_image(width: int, height: int, seed: int):
    """Random RGB pixels: MME-sized photos, without the dataset."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def build_inputs(request: dict):
    from vllm import SamplingParams

    prompt = {"prompt": request["prompt"]}
    if request.get("image"):
        prompt["multi_modal_data"] = {"image": make_image(*request["image"])}
    extra = {"iaa_workflow": request["workflow"]} if request.get("workflow") else None
    # ignore_eos: every model produces exactly max_tokens, so the work is comparable.
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True,
                            extra_args=extra)
    return prompt, params


async def run_one(engine, request: dict, request_id: str) -> dict:
    prompt, params = build_inputs(request)  # built before the clock: the client's work
    start = time.perf_counter()
    first = None
    final = None
    async for output in engine.generate(prompt, params, request_id):
        if first is None and output.outputs and output.outputs[0].token_ids:
            first = time.perf_counter()
        final = output
    end = time.perf_counter()
    return {"latency_s": end - start, "ttft_s": (first or end) - start,
            "prompt_tokens": len(final.prompt_token_ids), "token_ids": list(final.outputs[0].token_ids),
            "workflow": request.get("workflow")}


async def run_workload(engine, workload: dict) -> dict:
    """Run the requests `repeat` times (default 1); report the fastest run and every
    run's wall time (the fastest is the one least disturbed by other load)."""
    runs = []
    for attempt in range(workload.get("repeat", 1)):
        tag = f"{workload['name']}-{attempt}"
        start = time.perf_counter()
        if workload["mode"] == "sequential":
            results = [await run_one(engine, r, f"{tag}-{i}") for i, r in enumerate(workload["requests"])]
        else:
            results = await asyncio.gather(*(run_one(engine, r, f"{tag}-{i}")
                                             for i, r in enumerate(workload["requests"])))
        runs.append({"wall_s": time.perf_counter() - start, "requests": results})
    fastest = min(runs, key=lambda run: run["wall_s"])
    return {**fastest, "all_wall_s": [run["wall_s"] for run in runs]}


async def run(spec: dict) -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    start = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=spec["model"], **spec["engine"]))
    report = {"start_s": time.perf_counter() - start}
    try:
        cache = engine.vllm_config.cache_config
        report["kv_tokens"] = cache.num_gpu_blocks * cache.block_size
        # What the platform resolved: on CPU, enforce_eager=False becomes DYNAMO_TRACE_ONCE +
        # inductor. The backend is only used when the mode is not NONE.
        compilation = engine.vllm_config.compilation_config
        report["compilation"] = {"mode": compilation.mode.name, "backend": compilation.backend}
        for i, request in enumerate(spec.get("warmup", [])):
            await run_one(engine, request, f"warmup-{i}")
        report["workloads"] = {w["name"]: await run_workload(engine, w) for w in spec["workloads"]}
    finally:
        engine.shutdown()
    return report


def run_in_child(model: str, engine: dict, workloads: list[dict], warmup: list[dict],
                 env: dict[str, str] | None = None) -> dict:
    """Start an engine on `model` with vLLM engine args `engine` in a fresh process
    (extra environment `env`), run the warm-up and the workloads, return the child's report."""
    spec = {"model": model, "engine": engine, "warmup": warmup, "workloads": workloads}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        # vLLM's CPU default (4 GiB of KV) is more than the benchmarks need on a small machine.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), spec_path, out_path], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"engine on {model} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out_path, encoding="utf-8") as f:
            return json.load(f)


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    report = asyncio.run(run(spec))
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
