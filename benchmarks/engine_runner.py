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

`SharedEngines` keeps children running between benchmarks in one process (the CI
smoke run, benchmarks/smoke.py): a child started with `--jobs` starts its engine
once and then runs one job (warm-up and workloads) per line on its stdin, writing
each job's report to the path the line names.

    python -m benchmarks.engine_runner --jobs SPEC.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

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


async def run_workload(engine, workload: dict, prefix: str = "") -> dict:
    """Run the requests `repeat` times (default 1); report the fastest run and every
    run's wall time (the fastest is the one least disturbed by other load)."""
    runs = []
    for attempt in range(workload.get("repeat", 1)):
        tag = f"{prefix}{workload['name']}-{attempt}"
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


def start(spec: dict):
    """(engine, what it is): vLLM's AsyncLLM on the spec's model and engine args, and
    its start time, versions, KV capacity and the compilation vLLM resolved."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    start_time = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=spec["model"], **spec["engine"]))
    info = {"start_s": time.perf_counter() - start_time, "versions": versions()}
    cache = engine.vllm_config.cache_config
    info["kv_tokens"] = cache.num_gpu_blocks * cache.block_size
    # What the platform resolved: on CPU, enforce_eager=False becomes DYNAMO_TRACE_ONCE +
    # inductor and no CUDA graphs. The backend is only used when the mode is not NONE.
    compilation = engine.vllm_config.compilation_config
    graphs = compilation.cudagraph_mode
    info["compilation"] = {"mode": compilation.mode.name, "backend": compilation.backend,
                           "cudagraph_mode": graphs.name if graphs is not None else None}
    return engine, info


async def run_job(engine, info: dict, job: dict, save=lambda report: None, prefix: str = "") -> dict:
    """The job's warm-up, then its workloads; `save(report)` before and after each
    workload. `prefix` starts every request id (an engine's ids must not repeat)."""
    report = {**info, "workloads": {}}
    save(report)
    warmup_start = time.perf_counter()
    for i, request in enumerate(job.get("warmup", [])):
        await run_one(engine, request, f"{prefix}warmup-{i}")
    report["warmup_s"] = time.perf_counter() - warmup_start
    for w in job["workloads"]:
        report["workloads"][w["name"]] = await run_workload(engine, w, prefix)
        save(report)
    return report


async def run(spec: dict, save=lambda report: None) -> dict:
    """Start the engine, run warm-up and workloads; `save(report)` after each stage."""
    engine, info = start(spec)
    try:
        return await run_job(engine, info, spec, save)
    finally:
        engine.shutdown()


async def serve_jobs(spec: dict) -> None:
    """Start the engine once, then run a job per stdin line until stdin closes. A
    line is {"warmup": [...], "workloads": [...], "out": PATH}; PATH is rewritten as
    the job goes, and last with "finished": true."""
    engine, info = start(spec)
    try:
        for number in itertools.count():
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            job = json.loads(line)
            save = functools.partial(report_files.write_json, job["out"])
            report = await run_job(engine, {**info, "job": number}, job, save, prefix=f"job{number}-")
            save({**report, "finished": True})
    finally:
        engine.shutdown()


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    # vLLM's CPU default (4 GiB of KV) is more than the benchmarks need on a small machine.
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(extra or {})}


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
        env = _child_env(env)
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


class SharedEngines:
    """Engines kept running across the benchmarks of one process: `run` (run_in_child's
    signature, less the deadline) starts a child per (model, engine args, extra
    environment) on first use and gives later runs with the same key to it, so two
    benchmarks of one model and mode start it once. A later run's report has
    "job" > 0; its start_s and warmup state are the engine's, not its own.

        with SharedEngines(keep=lambda model, engine, env: engine["enforce_eager"]) as engines:
            compile_modes.main([...], runner=engines.run)
            serving.main([...], runner=engines.run)

    An idle CPU engine holds its memory (~3.5 GB for a tiny one: frontend, engine
    core, worker and KV), so only engines that `keep` names stay up after their run;
    the others stop at once, and starting one of those first stops the kept ones (the
    sharing is over by then: order the runs so that the shared ones come together).
    """

    def __init__(self, keep: Callable[[str, dict, dict], bool] = lambda model, engine, env: True):
        self._keep = keep
        self._children: dict[str, tuple[subprocess.Popen, str, dict]] = {}
        self._dir = tempfile.mkdtemp(prefix="shared-engines-")
        self._jobs = 0
        self.started: list[dict] = []  # per engine started: model, engine args, env, jobs run
        self.most_up = 0  # the most engines up at once

    def run(self, model: str, engine: dict, workloads: list[dict], warmup: list[dict],
            env: dict[str, str] | None = None) -> dict:
        key = json.dumps([model, engine, env or {}], sort_keys=True)
        kept = self._keep(model, engine, env or {})
        if key not in self._children:
            if not kept:
                self._stop_all()
            self.started.append({"model": model, "engine": engine, "env": env or {}, "jobs": 0})
            self._children[key] = (*self._start(model, engine, env), self.started[-1])
            self.most_up = max(self.most_up, len(self._children))
        proc, log_path, record = self._children[key]
        record["jobs"] += 1
        self._jobs += 1
        out_path = os.path.join(self._dir, f"job{self._jobs}.json")
        proc.stdin.write(json.dumps({"warmup": warmup, "workloads": workloads, "out": out_path}) + "\n")
        proc.stdin.flush()
        while not (report := _read_json(out_path) or {}).get("finished"):
            if proc.poll() is not None:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-4000:]
                del self._children[key]
                raise EngineFailed(f"engine on {model} failed (exit {proc.returncode}):\n{tail}", report or None)
            time.sleep(0.2)
        report.pop("finished")
        if not kept:
            self._stop_all()
        return report

    def _start(self, model: str, engine: dict, env: dict[str, str] | None) -> tuple[subprocess.Popen, str]:
        spec_path = os.path.join(self._dir, f"engine{len(self.started)}.json")
        log_path = spec_path.replace(".json", ".log")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump({"model": model, "engine": engine}, f)
        command, child_env = report_files.child("benchmarks.engine_runner", "--jobs", spec_path, env=_child_env(env))
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(command, env=child_env, stdin=subprocess.PIPE, stdout=log,
                                    stderr=subprocess.STDOUT, text=True, process_group=0)
        return proc, log_path

    def _stop_all(self) -> None:
        """Close every child's stdin (its engine shuts down) and wait; kill what lingers."""
        for proc, _, _ in self._children.values():
            proc.stdin.close()
        for proc, _, _ in self._children.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                stop_process_group(proc)
        self._children.clear()

    def close(self) -> None:
        self._stop_all()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SharedEngines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", metavar="SPEC.json",
                        help="start the engine of SPEC.json (model, engine args), then run a job per stdin line")
    parser.add_argument("spec", nargs="?", help="SPEC.json: the model, engine args, warm-up and workloads")
    parser.add_argument("out", nargs="?", help="OUT.json: the report, rewritten after every stage")
    args = parser.parse_args(argv)
    if args.jobs:
        with open(args.jobs, encoding="utf-8") as f:
            asyncio.run(serve_jobs(json.load(f)))
        return 0
    if not (args.spec and args.out):
        parser.error("SPEC.json and OUT.json are needed (or --jobs SPEC.json)")
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    report = asyncio.run(run(spec, save=lambda partial: report_files.write_json(args.out, partial)))
    report_files.write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
