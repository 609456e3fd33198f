"""The prepared GPU command: the checks and benchmarks a GPU session runs
in one call of at most 10 minutes, in priority order, under one deadline.

    bash benchmarks/gpu/run.sh OUTDIR                # the GPU host (unpacks .gpu/ first)
    bash benchmarks/gpu/run.sh --cpu-smoke OUTDIR    # CPU, tiny stand-ins (CI)
    python -m benchmarks.gpu.run OUTDIR [options]    # where vLLM already imports

Steps (benchmarks/gpu/steps.py):
1. vLLM loads and computes: vllm_check.py (vLLM's kernels against torch), and the
   bundle's gpu_check.py when given.
2. smoke run on the tiny checkpoint: three workflows; text ids equal to stock vLLM
   Llama in the same mode.
3. real shapes, dummy bf16 weights: MME-shaped batch-1 latency (p50/p90) and TTFT,
   IAA-14 vs LLaVA-1.5-13B, then IAA-8 vs a LLaVA on Llama-3-8B, each latency ratio
   beside its FLOP ratio (benchmarks/shapes.py).
4. the text path vs stock Llama-3-8B: greedy ids and throughput at batch 1 and 32.
5. eager vs the graph mode (PIECEWISE CUDA graphs, IAA's default; on CPU torch.compile).
6. optional: a whole MME-sized run, 2,374 synthetic questions, end to end.

Each engine runs in its own process (benchmarks/engine_runner.py); steps needing
the same engine share it. Before each group of engines the time left is compared
with a guess of what they need (targets.py); what does not fit is skipped with the
reason, and a started engine is killed at the deadline, keeping what it finished.
OUTDIR/gpu_run.json is rewritten after every engine and every step; each engine's
full report and log are in OUTDIR/engines/. At the end gpu_run.png plots step 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from benchmarks import engine_runner, serving
from benchmarks import report as report_files
from benchmarks.gpu import goals, targets
from benchmarks.gpu.steps import PAIRS, STEPS, Engine, warmup

CHECK_S = 30  # step 1's guess: importing vLLM and the kernel checks
RESERVE_S = 10  # kept back at the deadline: killing an engine and writing the JSON


class Run:
    def __init__(self, args: argparse.Namespace, target: targets.Target):
        self.args, self.target = args, target
        self.deadline = args.started_at + args.budget_s
        self.steps = [s for s in STEPS if s.number in args.steps]
        self.options = {"pairs": args.pairs}
        # Built once: the MME-sized step alone is 2,374 requests.
        self.units = {step.key: step.units(target, self.options) for step in STEPS}
        self.results: dict[str, dict] = {}  # engine name -> engine_runner's report
        self.vllm_ok = True
        self.report = {
            "command": args.command or shlex.join([sys.executable, *sys.argv]),
            "target": target.name, "budget_s": args.budget_s, "started_at": args.started_at,
            "setup": args.setup_note, "finished": False, "environment": {"cores": os.cpu_count()},
            "settings": {"steps": args.steps, "pairs": args.pairs, "counts": target.counts,
                         "graph_mode": target.graph_mode, "models_dir": args.models_dir,
                         "engine_modes": engine_runner.MODES},
            "steps": {}, "engines": {}, "goals": [],
        }
        os.makedirs(os.path.join(args.out, "engines"), exist_ok=True)

    # -- time and output ----------------------------------------------------------

    def left(self) -> float:
        return self.deadline - time.time()

    def say(self, message: str) -> None:
        """A progress line, on stdout and in OUTDIR/run.log."""
        line = f"[{time.time() - self.args.started_at:6.0f} s] {message}"
        print(line, flush=True)
        with open(os.path.join(self.args.out, "run.log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def save(self) -> None:
        self.report["elapsed_s"] = time.time() - self.args.started_at
        self.report["goals"] = goals.evaluate(self.report["steps"])
        report_files.write_json(os.path.join(self.args.out, "gpu_run.json"), self.report)

    # -- step 1 ---------------------------------------------------------------------

    def check(self) -> None:
        record = self._step_record(1, "1_check", "vLLM loads and computes: its kernels against torch")
        if 1 not in self.args.steps:
            return self._skip_step(record, "not in --steps")
        if self.left() < CHECK_S:
            return self._skip_step(
                record, f"needs ~{CHECK_S} s, {self.left():.0f} s left of --budget-s {self.args.budget_s:.0f}")
        self.say("step 1: vLLM check")
        started = time.time()
        ours = self._run_check(*report_files.child("benchmarks.gpu.vllm_check"))
        record["result"] = {"vllm_check": ours}
        record["checks"] = {"vllm_ops": bool(ours.get("passed"))}
        if self.args.gpu_check:
            bundle = self._run_check([sys.executable, self.args.gpu_check], parse="lines")
            record["result"]["gpu_check"] = bundle
            record["checks"]["gpu_check"] = bundle["exit"] == 0
        self.vllm_ok = "vllm" in ours  # it printed its report: vLLM imported
        self.report["environment"].update({k: ours.get(k) for k in ("device", "vllm", "torch", "transformers",
                                                                     "python", "platform", "capability")})
        self.report["trusted"] = all(record["checks"].values())
        record.update(status="ran" if self.vllm_ok else "failed", elapsed_s=time.time() - started,
                      **self._where())
        self.say(f"step 1: {record['checks']}")
        self.save()

    def _run_check(self, command: list[str], env: dict[str, str] | None = None, parse: str = "json") -> dict:
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=min(240, max(1, self.left())))
        except subprocess.TimeoutExpired:
            return {"exit": None, "error": "timed out"}
        if parse == "lines":  # gpu_check.py: one PASS / FAIL line per check
            lines = proc.stdout.splitlines()
            return {"exit": proc.returncode, "lines": lines, "failed": [l for l in lines if l.startswith("FAIL")],
                    "stderr_tail": proc.stderr[-2000:]}
        try:
            return {"exit": proc.returncode, **json.loads(proc.stdout.strip().splitlines()[-1])}
        except (IndexError, ValueError):
            return {"exit": proc.returncode, "error": "no report", "stderr_tail": proc.stderr[-4000:]}

    # -- steps 2-6 ------------------------------------------------------------------

    def run_step(self, step) -> None:
        record = self._step_record(step.number, step.key, step.title)
        if step not in self.steps:
            return self._skip_step(record, "not in --steps")
        if not self.vllm_ok:
            return self._skip_step(record, "step 1: vLLM did not load")
        started = time.time()
        units = self.units[step.key]
        record["engines"] = {e.name: self._engine_info(e) for unit in units for e, _ in unit}
        for unit in units:
            self._run_unit(step, unit, record)
        ran = [name for name in record["engines"] if name in self.report["engines"]]
        failed = [n for n in ran if self.report["engines"][n]["status"] != "ok"]
        record["status"] = ("failed" if failed else "ran" if len(ran) == len(record["engines"])
                            else "partial" if ran else "skipped")
        if record["status"] == "skipped":
            record["reason"] = "; ".join(sorted(set(record["skipped"].values())))
        try:
            record.update(step.summarise(self.target, self.options, self.results))
        except Exception as e:  # noqa: BLE001 - a bug in one summary must not lose the run's data
            record.update(status="failed", summary_error=f"{type(e).__name__}: {e}")
        record.update(elapsed_s=time.time() - started, **self._where(record["engines"]))
        self.say(f"step {step.number}: {record['status']}; checks {record.get('checks')}")
        self.save()

    def _run_unit(self, step, unit, record: dict) -> None:
        """Start the unit's engines that have not run yet, if all of them fit in the time left."""
        broken = [e.name for e, _ in unit if self.report["engines"].get(e.name, {}).get("status", "ok") != "ok"]
        pending = [e for e, _ in unit if e.name not in self.report["engines"]]
        if broken:
            return self._skip_engines(record, pending, f"needs {broken[0]}, which did not finish")
        needed = {e.name: self._estimate(e) for e in pending}
        if pending and sum(needed.values()) > self.left() - RESERVE_S:
            return self._skip_engines(record, pending, (
                f"needs ~{sum(needed.values()):.0f} s ({', '.join(f'{n} ~{s:.0f} s' for n, s in needed.items())}), "
                f"{self.left():.0f} s left of --budget-s {self.args.budget_s:.0f}"))
        for i, engine in enumerate(pending):
            self._run_engine(engine, step)
            if self.report["engines"][engine.name]["status"] != "ok":
                return self._skip_engines(record, pending[i + 1:], f"needs {engine.name}, which did not finish")

    def _skip_engines(self, record: dict, engines: list[Engine], reason: str) -> None:
        for engine in engines:
            record["skipped"][engine.name] = reason
            self.say(f"skip {engine.name}: {reason}")

    def _workloads(self, engine: Engine) -> list[dict]:
        """Every selected step's workloads on this engine, each name once."""
        found: dict[str, dict] = {}
        for step in self.steps:
            for unit in self.units[step.key]:
                for e, workloads in unit:
                    for w in workloads if e == engine else ():
                        if found.setdefault(w["name"], w) != w:
                            raise ValueError(f"two different workloads named {w['name']!r} on {engine.name}")
        return list(found.values())

    def _start_guess(self, engine: Engine) -> float:
        t = self.target
        return t.start_s.get(engine.model.name, max(t.start_s.values())) * (0.5 if engine.mode == "eager" else 1)

    def _estimate(self, engine: Engine) -> float:
        """Start + warm-up + workloads, the start guess scaled by how the starts so far
        compared with their guesses (a slower or faster host than guessed)."""
        seen = [(e["start_s"] + e.get("warmup_s", 0)) / e["start_guess_s"]
                for e in self.report["engines"].values() if e.get("start_s") and e.get("start_guess_s")]
        scale = min(3.0, max(0.5, sum(seen) / len(seen))) if seen else 1.0
        return self._start_guess(engine) * scale + sum(w["est_s"] for w in self._workloads(engine))

    def _engine_info(self, engine: Engine) -> dict:
        return {"model": engine.model.name, "kind": engine.model.kind, "mode": engine.mode,
                "args": self._engine_args(engine)}

    def _engine_args(self, engine: Engine) -> dict:
        return engine_runner.engine_args(engine.mode, iaa=engine.model.kind == "iaa",
                                         **self.target.engine_settings(engine.model))

    def _run_engine(self, engine: Engine, step) -> None:
        workloads = self._workloads(engine)
        base = os.path.join(self.args.out, "engines", engine.name)
        entry = self.report["engines"][engine.name] = {
            **self._engine_info(engine), "status": "running", "first_step": step.key,
            "start_guess_s": self._start_guess(engine),
            "workloads_asked": [w["name"] for w in workloads], "log": os.path.relpath(base + ".log", self.args.out)}
        self.save()
        timeout = self.left() - RESERVE_S
        self.say(f"start {engine.name}: {', '.join(entry['workloads_asked'])} "
                 f"(guess ~{self._estimate(engine):.0f} s, killed after {timeout:.0f} s)")
        started = time.time()
        report, error = None, None
        try:
            model_dir = targets.write_model(engine.model, self.target, self.args.models_dir)
            specs = [{k: v for k, v in w.items() if k != "est_s"} for w in workloads]
            report = engine_runner.run_in_child(model_dir, entry["args"], specs, warmup(self.target, engine.model),
                                                env=self._engine_env(), timeout_s=timeout, log_path=base + ".log")
        except engine_runner.EngineFailed as e:
            report, error = e.partial, str(e)
        except Exception as e:  # noqa: BLE001 - e.g. a checkpoint that could not be written
            error = f"{type(e).__name__}: {e}"
        report = report or {}
        if report:
            self.results[engine.name] = report
            report_files.write_json(base + ".json", report)
        entry.update(
            status="error" if error else "timed_out" if report.get("timed_out") else "ok",
            elapsed_s=time.time() - started,
            **{k: report[k] for k in ("start_s", "warmup_s", "kv_tokens", "compilation", "versions") if k in report},
            workloads_done=list(report.get("workloads", {})),
        )
        if error:
            entry["error"] = error[-3000:]
        self.say(f"{engine.name}: {entry['status']} in {entry['elapsed_s']:.0f} s"
                 + (f" (start {entry['start_s']:.0f} s)" if "start_s" in entry else ""))
        self.save()

    def _engine_env(self) -> dict:
        if self.target.name == "cpu-smoke":  # a cold compile cache of the run's own, as the tests
            return {"VLLM_CACHE_ROOT": os.path.join(self.args.models_dir, "vllm-cache")}
        return {}

    # -- records ----------------------------------------------------------------------

    def _step_record(self, number: int, key: str, title: str) -> dict:
        record = self.report["steps"][key] = {"title": title, "status": "pending", "skipped": {}}
        return record

    def _skip_step(self, record: dict, reason: str) -> None:
        record.update(status="skipped", reason=reason)
        self.say(f"skip {record['title']}: {reason}")
        self.save()

    def _where(self, engines: dict | None = None) -> dict:
        """What a step ran on: device, versions and modes (recorded per step, so each number names its setup)."""
        env = dict(self.report["environment"])
        for name in engines or {}:
            env.update(self.report["engines"].get(name, {}).get("versions", {}))
        return {"device": env.get("device"), "vllm": env.get("vllm"), "torch": env.get("torch"),
                "modes": sorted({e["mode"] for e in (engines or {}).values()}), "command": self.report["command"]}

    def finish(self) -> int:
        """Write the final JSON and plot; 0 if every check that ran passed, else 1."""
        self.report["finished"] = True
        self.save()
        report_files.write(self.args.out, "gpu_run", self.report, plot)
        for goal in self.report["goals"]:
            self.say(f"goal {goal['goal']}: measured {goal['measured']} -> met {goal['met']}")
        bad = [f"{key}: {name}" for key, step in self.report["steps"].items()
               for name, ok in step.get("checks", {}).items() if not ok]
        bad += [f"{key}: {step['status']}" for key, step in self.report["steps"].items() if step["status"] == "failed"]
        self.say("all checks that ran passed" if not bad else f"FAILED: {'; '.join(bad)}")
        return 1 if bad else 0


def plot(report: dict, path: str) -> None:
    """Step 3's batch-1 latencies and latency vs FLOP ratios (serving.py's plot)."""
    pairs = report["steps"].get("3_real_shapes", {}).get("result", {}).get("pairs", {})
    models, ratios = {}, []
    for name, pair in pairs.items():
        iaa, llava = (f"IAA {pair['iaa']['engine']}", f"LLaVA {pair['llava']['engine']}")
        models[iaa], models[llava] = {"mme_batch1": pair["iaa"]}, {"mme_batch1": pair["llava"]}
        ratios.append({"iaa": iaa, "llava": llava, "latency_ratio": pair["latency_ratio_p50"],
                       "flop_ratio": pair["flop_ratio"]})
    if models:
        serving.plot({"mode": f"{report['target']}, {report['settings']['graph_mode']}", "models": models,
                      "ratios": ratios}, path)
    else:
        report_files.figure(path, [report_files.Panel("step 3 did not run: no latencies to plot")], panel_size=(6, 1))


def _steps(text: str) -> list[int]:
    try:
        numbers = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        numbers = []
    if not numbers or any(n not in range(1, 7) for n in numbers):
        raise argparse.ArgumentTypeError(f"--steps {text!r}: comma-separated step numbers; valid: 1,2,3,4,5,6")
    return numbers


def _pairs(text: str) -> list[str]:
    valid = [iaa for iaa, _ in PAIRS]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in valid for n in names):
        raise argparse.ArgumentTypeError(f"--pairs {text!r}: valid: {', '.join(valid)} (comma-separated)")
    return names


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, targets.Target]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("out", help="output folder: gpu_run.json, gpu_run.png, engines/<engine>.{json,log}")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="CPU: tiny stand-ins for every model, few requests, eager vs compiled (CI)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="total seconds from --started-at; steps that do not fit are skipped "
                             "(default: 540 on a GPU, 3600 with --cpu-smoke)")
    parser.add_argument("--started-at", type=float, default=None,
                        help="Unix time the budget counts from (run.sh passes its own start; default: now)")
    parser.add_argument("--steps", type=_steps, default=None,
                        help="which steps, e.g. 1,4,5 (default: 1-5 on a GPU; 1-6 with --cpu-smoke)")
    parser.add_argument("--pairs", type=_pairs, default=[iaa for iaa, _ in PAIRS],
                        help="step 3's IAA / LLaVA pairs, named by IAA: iaa-14 (vs LLaVA-1.5-13B), "
                             "iaa-8 (vs a LLaVA on Llama-3-8B); default both, in that order")
    parser.add_argument("--gpu-check", default=None,
                        help="also run this check script in step 1 (run.sh passes the bundle's .gpu/gpu_check.py)")
    parser.add_argument("--models-dir", default=None,
                        help="where model directories are written (default: a temporary folder; not OUTDIR, "
                             "whose files travel back from the GPU host)")
    parser.add_argument("--plan", action="store_true",
                        help="print the engines, workloads and time guesses as JSON; start nothing")
    parser.add_argument("--command", default=None, help="the command line to record (run.sh passes its own)")
    parser.add_argument("--setup-note", default=None, help="a line recorded as `setup` (run.sh: the bundle unpack)")
    args = parser.parse_args(argv)
    target = targets.TARGETS["cpu-smoke" if args.cpu_smoke else "gpu"]
    args.started_at = args.started_at or time.time()
    args.budget_s = target.budget_s if args.budget_s is None else args.budget_s
    args.steps = args.steps or list(target.steps)
    args.models_dir = args.models_dir or tempfile.mkdtemp(prefix="iaa-gpu-models-")
    return args, target


def plan(run: Run) -> dict:
    """What would run, in order, with the time guesses: the engines of each step."""
    out = {}
    for step in run.steps:
        out[step.key] = [[{"engine": e.name, **run._engine_info(e), "estimate_s": run._estimate(e),
                           "workloads": [{"name": w["name"], "mode": w["mode"], "requests": len(w["requests"]),
                                          "max_tokens": w["requests"][0]["max_tokens"], "repeat": w.get("repeat", 1)}
                                         for w in run._workloads(e)]}
                          for e, _ in unit] for unit in run.units[step.key]]
    return out


def main(argv: list[str] | None = None) -> int:
    args, target = parse_args(argv)
    run = Run(args, target)
    if args.plan:
        print(json.dumps(plan(run), indent=2))
        return 0
    run.say(f"{target.name}: steps {args.steps}, budget {args.budget_s:.0f} s, out {args.out}")
    run.check()
    for step in STEPS:
        run.run_step(step)
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
