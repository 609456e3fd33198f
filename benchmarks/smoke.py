"""The CPU smoke runs of compile_modes.py and serving.py in one process, sharing engines.

    .venv/bin/python -m benchmarks.smoke --out DIR [--models-dir DIR]

Runs `compile_modes --quick` (IAA tiny and the stock Llama cut out of it, eager and
compiled) and then `serving --quick` (the same pair, eager, and a tiny LLaVA) on
one checkpoint pair under `--models-dir`. The engines both benchmarks start with the
same model and settings, IAA and stock Llama eager, start once and serve both
(engine_runner.SharedEngines): five engines instead of seven. The compiled
engines are compile_modes' own, each with a cold compile cache as it promises.
Writes compile_modes_quick.{json,png} and serving_tiny_quick.{json,png} to DIR, as
the two commands run alone would (a shared engine's start_s is its one start), and
smoke.json: the engines started and the jobs each ran.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks import compile_modes, engine_runner, serving
from benchmarks import report as report_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=report_files.RESULTS_DIR, help="where both benchmarks' JSON and plots go")
    parser.add_argument("--models-dir", default=os.path.join(report_files.RESULTS_DIR, "models"),
                        help="where the tiny checkpoints are written (reused while they match the preset)")
    args = parser.parse_args(argv)
    common = ["--quick", "--out", args.out, "--models-dir", args.models_dir]
    with engine_runner.SharedEngines() as engines:
        for benchmark in (compile_modes, serving):
            code = benchmark.main(common, runner=engines.run)
            if code:
                return code
    os.makedirs(args.out, exist_ok=True)
    report_files.write_json(os.path.join(args.out, "smoke.json"), {"engines": engines.started})
    print(f"{len(engines.started)} engines for {sum(e['jobs'] for e in engines.started)} engine runs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
