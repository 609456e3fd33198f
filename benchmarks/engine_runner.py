"""One vLLM engine in its own process: start it, run timed workloads, report JSON.

The benchmarks (serving.py, compile_modes.py, gpu/run.py) start one child per
engine, so every engine gets a fresh process and its memory back on exit. A child
reads a spec

    {"model": DIR, "engine": {vLLM engine args}, "warmup": [requests],
     "workloads": [{"name": ..., "mode": "sequential" | "concurrent", "requests": [...]}]}

where a request is {"prompt": str, "image": [width, height, seed] | null,
"workflow": str | null, "max_tokens": int}. It runs them through vLLM's AsyncLLM
(what `vllm serve` runs) and writes, per request, latency and time to first token
from submission, and the output token ids. It rewrites OUT.json after the start
and after every workload, so a child killed at a deadline still leaves what it
finished.

    python -m benchmarks.engine_runner SPEC.json OUT.json

`run_in_child` is the parent's side: it writes the spec, runs the child and reads
its report back. `engine_args` turns an execution mode into vLLM engine args.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import report as report_files
from iaa_vllm import EXTRA_ARGS_KEY
from iaa_vllm.local_server import noise_image, stop_process_group

# Execution modes -> vLLM engine args. `compiled` is vLLM's default: torch.compile
# on CPU (DYNAMO_TRACE_ONCE + inductor), torch.compile + CUDA graphs on a GPU.
# `piecewise` is the GPU default of IAA engines (its config hook picks PIECEWISE
# when no cudagraph_mode is given), asked for explicitly from other models so that
# stock Llama and LLaVA run in the same mode as IAA.
MODES = {
    "eager": {"enforce_eager": True},
    "compiled": {"enforce_eager": False},
    "piecewise": {"enforce_eager": False, "compilation_config": {"cudagraph_mode": "PIECEWISE"}},
}


def engine_args(mode: str, iaa: bool = False, **settings) -> dict:
    """vLLM engine args for execution `mode` plus `settings` (dtype, max_model_len, ...).
    `iaa`: an IAA engine, whose `piecewise` comes from its config hook, not from an arg."""
    if mode not in MODES:
        raise ValueError(f"unknown execution mode {mode!r}; valid: {', '.join(MODES)}")
    args = dict(MODES[mode])
    if iaa and mode == "piecewise":
        args.pop("compilation_config")  # the hook's default is what is being run
    return {**settings, **args}


class EngineFailed(RuntimeError):
    """The child exited with an error; `partial` is what it reported before that."""

    def __init__(self, message: str, partial: dict | None):
        super().__init__(message)
        self.partial = partial


# MME-sized photos without the dataset; an image asked about twice (MME: 2 questions each) is drawn once.
make_image = functools.lru_cache(maxsize=64)(noise_image)


def build_inputs(request: dict):
    from vllm import SamplingParams

    prompt = {"prompt": request["prompt"]}
    if request.get("image"):
        prompt["multi_modal_data"] = {"image": make_image(*request["image"])}
    extra = {EXTRA_ARGS_KEY: request["workflow"]} if request.get("workflow") else None
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


def versions() -> dict:
    """What this process runs on: device, vLLM, torch (recorded beside every result)."""
    import platform

    import torch
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else report_files.cpu_name()
    return {"device": device, "vllm": vllm.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


async def run(spec: dict, save=lambda report: None) -> dict:
    """Start the engine, run warm-up and workloads; `save(report)` after each stage."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    start = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=spec["model"], **spec["engine"]))
    report = {"start_s": time.perf_counter() - start, "versions": versions(), "workloads": {}}
    try:
        cache = engine.vllm_config.cache_config
        report["kv_tokens"] = cache.num_gpu_blocks * cache.block_size
        # What the platform resolved: on CPU, enforce_eager=False becomes DYNAMO_TRACE_ONCE +
        # inductor and no CUDA graphs. The backend is only used when the mode is not NONE.
        compilation = engine.vllm_config.compilation_config
        graphs = compilation.cudagraph_mode
        report["compilation"] = {"mode": compilation.mode.name, "backend": compilation.backend,
                                 "cudagraph_mode": graphs.name if graphs is not None else None}
        save(report)
        for i, request in enumerate(spec.get("warmup", [])):
            await run_one(engine, request, f"warmup-{i}")
        report["warmup_s"] = time.perf_counter() - start - report["start_s"]
        for w in spec["workloads"]:
            report["workloads"][w["name"]] = await run_workload(engine, w)
            save(report)
    finally:
        engine.shutdown()
    return report


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_in_child(model: str, engine: dict, workloads: list[dict], warmup: list[dict],
                 env: dict[str, str] | None = None, timeout_s: float | None = None,
                 log_path: str | None = None) -> dict:
    """Start an engine on `model` with vLLM engine args `engine` in a fresh process
    (extra environment `env`), run the warm-up and the workloads, return the child's report.

    `timeout_s`: after that long the child and every process it started (vLLM's
    engine core) are killed, and the report holds what it finished, with
    `timed_out: true`. `log_path`: where the child's stdout and stderr go (default:
    a temporary file, whose tail is in the error). Raises EngineFailed on a
    non-zero exit.
    """
    spec = {"model": model, "engine": engine, "warmup": warmup, "workloads": workloads}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        log_path = log_path or os.path.join(tmp, "engine.log")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        # vLLM's CPU default (4 GiB of KV) is more than the benchmarks need on a small machine.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
        with open(log_path, "w", encoding="utf-8") as log:
            # Its own process group: on a timeout the whole group goes, engine core
            # included, so the next engine gets the GPU memory back.
            command, env = report_files.child("benchmarks.engine_runner", spec_path, out_path, env=env)
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_process_group(proc)
                return {**(_read_json(out_path) or {}), "timed_out": True, "timeout_s": timeout_s}
            except BaseException:  # the parent was interrupted: leave no engine behind
                stop_process_group(proc)
                raise
        report = _read_json(out_path)
        if code != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-4000:]
            raise EngineFailed(f"engine on {model} failed (exit {code}):\n{tail}", report)
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="SPEC.json: the model, engine args, warm-up and workloads")
    parser.add_argument("out", help="OUT.json: the report, rewritten after every stage")
    args = parser.parse_args(argv)
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    report = asyncio.run(run(spec, save=lambda partial: report_files.write_json(args.out, partial)))
    report_files.write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
