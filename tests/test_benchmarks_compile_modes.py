"""benchmarks/compile_modes.py, once in its CPU smoke mode: tiny only, eager and
compiled, so four real engines (IAA and the stock Llama cut out of it, per mode).

No timing is asserted. What must hold: every engine answered every request, vLLM
resolved the mode asked for, and in each mode the IAA text path gave the stock
Llama's token ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_modes", "--quick", "--out", str(tmp_path),
                           "--models-dir", str(tmp_path / "models")],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / "compile_modes_quick.json", encoding="utf-8") as f:
        report = json.load(f)
    assert (tmp_path / "compile_modes_quick.png").stat().st_size > 0
    settings = report["settings"]
    assert set(report["results"]) == {"tiny"} and set(report["results"]["tiny"]) == {"eager", "compiled"}
    for mode, run in report["results"]["tiny"].items():
        text, mixed = run["text"], run["mixed"]
        for engine in ("iaa", "stock"):
            assert text[engine]["requests"] == text[engine]["answered"] == settings["text_requests"], (mode, engine)
        assert mixed["answered"] == [3 * settings["mixed_per_workflow"]] * settings["repeat"], mode
        assert text["identical_ids"] is True, mode  # like for like: IAA and stock in the same mode
        expected = "NONE" if mode == "eager" else "DYNAMO_TRACE_ONCE"
        assert run["compilation"]["iaa"]["mode"] == run["compilation"]["stock"]["mode"] == expected
    assert report["machine"]["cores"] and "--quick" in report["command"]
