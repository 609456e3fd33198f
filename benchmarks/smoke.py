"""The CPU smoke runs of compile_modes.py and serving.py in one process, sharing engines.

    .venv/bin/python -m benchmarks.smoke --out DIR [--models-dir DIR]

Runs `compile_modes --quick` (IAA tiny and the stock Llama cut out of it, eager and
compiled) and then `serving --quick` (the same pair, eager, and a tiny LLaVA) on
one checkpoint pair under `--models-dir`. The engines both benchmarks start with the
same model and settings, IAA and stock Llama eager, start once and serve both
(engine_runner.SharedEngines): five engines instead of seven, never more than two
up at once. The compiled engines are compile_modes' own, each with a cold compile
cache as it promises.
Writes compile_modes_quick.{json,png} and serving_tiny_quick.{json,png} to DIR, as
the two commands run alone would (a shared engine's start_s is its one start), and
smoke.json: the engines started, the jobs each ran and the most up at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks import compile_modes, engine_runner, serving
from benchmarks import report as report_files


def _shared(model: str, engine: dict, env: dict) -> bool:
    """The engines both benchmarks start alike: eager IAA tiny and its stock Llama."""
    return engine.get("enforce_eager") is True and os.path.basename(model) in ("iaa-tiny", "llama")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=report_files.RESULTS_DIR, help="where both benchmarks' JSON and plots go")
    parser.add_argument("--models-dir", default=os.path.join(report_files.RESULTS_DIR, "models"),
                        help="where the tiny checkpoints are written (reused while they match the preset)")
    args = parser.parse_args(argv)
    common = ["--quick", "--out", args.out, "--models-dir", args.models_dir]
    # Compiled first, so that the shared eager pair runs back to back: compile_modes'
    # eager IAA and stock, then serving's IAA and stock on them; serving's LLaVA,
    # not kept, stops them before it starts. Never more than two engines are up.
    with engine_runner.SharedEngines(keep=_shared) as engines:
        for benchmark, extra in ((compile_modes, ["--modes", "compiled,eager"]), (serving, [])):
            code = benchmark.main(common + extra, runner=engines.run)
            if code:
                return code
    os.makedirs(args.out, exist_ok=True)
    report_files.write_json(os.path.join(args.out, "smoke.json"), {"engines": engines.started,
                                                                     "most_engines_up": engines.most_up})
    print(f"{len(engines.started)} engines for {sum(e['jobs'] for e in engines.started)} engine runs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
