"""Where every benchmark's results go: `<out>/<stem>.json` and a PNG beside it."""

from __future__ import annotations

import json
import os
from typing import Callable


def write(out_dir: str, stem: str, report: dict, plot: Callable[[dict, str], None]) -> str:
    """Write the report as JSON and draw its plot; returns the common path stem."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    plot(report, base + ".png")
    print(f"wrote {base}.json and .png")
    return base
