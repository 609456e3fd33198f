"""Where every benchmark's results go (`<out>/<stem>.json` and a PNG beside it), the
machine they ran on, and how a benchmark starts another as a child process."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Callable


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    """What the figures ran on; the load average says how much shared cores were contended."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "memory_gib": memory / 2**30, "load_average": os.getloadavg()}


def versions(*dists: str) -> dict[str, str]:
    """The version of each of `dists` that is installed; the others are left out."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


def child(module: str, *args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(command, environment) for `python -m module args` in a child process: the
    repository root goes first on its PYTHONPATH, so it starts from any folder."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", module, *args], env


def gpu_args(doc: str, needs: str, argv: list[str] | None) -> argparse.Namespace | None:
    """`--out` for a GPU-only benchmark; None (after saying why) without a CUDA device."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=RESULTS_DIR, help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"needs a CUDA device; {needs}", file=sys.stderr)
        return None
    return args


def write_json(path: str, data: dict) -> None:
    """Whole or not at all: a reader (or a run killed mid-write) never sees half a file."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def write(out_dir: str, stem: str, report: dict, plot: Callable[[dict, str], None]) -> str:
    """Write the report as JSON and draw its plot; returns the common path stem."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    write_json(base + ".json", report)
    plot(report, base + ".png")
    print(f"wrote {base}.json and .png")
    return base
