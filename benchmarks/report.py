"""Where every benchmark's results go (`<out>/<stem>.json` and a PNG beside it), how
that PNG is drawn, the machine they ran on, and how a benchmark starts another as a
child process."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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


@dataclasses.dataclass
class Panel:
    """One set of axes of a figure, as plain data.

    Bars: `groups` along x and, per series, one value per group (None: no bar);
    `dodge=False` puts every series in the group's one slot (one series per group).
    Lines: per series, curves of (xs, ys), one legend entry for all of them.
    Points: per series, (xs, ys). `hlines` / `vlines`: labelled reference lines.
    Series named "" stay out of the legend."""

    title: str
    ylabel: str = ""
    xlabel: str = ""
    groups: list[str] = dataclasses.field(default_factory=list)
    bars: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    dodge: bool = True
    value_format: str | None = None  # e.g. "{:.2f}": each bar's value above it
    lines: dict[str, list[tuple[list[float], list[float]]]] = dataclasses.field(default_factory=dict)
    points: dict[str, tuple[list[float], list[float]]] = dataclasses.field(default_factory=dict)
    hlines: dict[str, float] = dataclasses.field(default_factory=dict)
    vlines: dict[str, float] = dataclasses.field(default_factory=dict)
    colours: dict[str, str] = dataclasses.field(default_factory=dict)  # series -> colour


def figure(path: str, panels: list[Panel], caption: str = "", columns: int | None = None,
           caption_colour: str = "grey", panel_size: tuple[float, float] = (5.2, 3.8)) -> None:
    """Draw `panels` (side by side, or `columns` to a row), each `panel_size` inches,
    and save the PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark hosts
    import matplotlib.pyplot as plt

    columns = columns or len(panels)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size[0] * columns, panel_size[1] * rows),
                             squeeze=False, layout="constrained")
    for ax, panel in zip(axes.flat, panels):
        _draw(ax, panel)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    if caption:
        fig.supxlabel(caption, fontsize=8, color=caption_colour)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw(ax, p: Panel) -> None:
    ax.set_title(p.title, fontsize=10)
    if not (p.bars or p.lines or p.points):
        ax.axis("off")  # a panel that only says what did not run
    ax.set_ylabel(p.ylabel)
    ax.set_xlabel(p.xlabel)
    if p.bars:
        slots = len(p.bars) if p.dodge else 1
        width = 0.8 / slots
        for i, (name, values) in enumerate(p.bars.items()):
            offset = (i - (slots - 1) / 2) * width if p.dodge else 0.0
            xs = [g + offset for g, v in enumerate(values) if v is not None]
            bars = ax.bar(xs, [v for v in values if v is not None], width * 0.95, label=name,
                          color=p.colours.get(name))
            if p.value_format:
                ax.bar_label(bars, fmt=p.value_format, fontsize=8)
        ax.set_xticks(range(len(p.groups)), p.groups)
        ax.margins(y=0.25)  # room for the value labels and the legend
    for n, (name, curves) in enumerate(p.lines.items()):
        for k, (xs, ys) in enumerate(curves):  # one colour and one legend entry per series
            ax.plot(xs, ys, color=p.colours.get(name, f"C{n}"), label=name if k == 0 else None)
    for name, (xs, ys) in p.points.items():
        ax.scatter(xs, ys, s=6, color=p.colours.get(name), label=name)
    if p.points:
        ax.set_ylim(bottom=0)
    for label, y in p.hlines.items():
        ax.axhline(y, color="black", linewidth=0.8, linestyle="--")
        ax.annotate(label, (1, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8)
    for label, x in p.vlines.items():
        ax.axvline(x, color="grey", linewidth=0.8)
        ax.annotate(f" {label}", (x, 0.02), xycoords=("data", "axes fraction"), ha="left", va="bottom", fontsize=8)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, markerscale=2)
