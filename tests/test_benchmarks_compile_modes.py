"""benchmarks/compile_modes.py, once in its CPU smoke mode: tiny only, eager and
compiled, so four real engines (IAA and the stock Llama cut out of it, per mode),
run by benchmarks/smoke.py (`benchmark_smoke`), whose eager pair serving.py's smoke
run then uses too.

No timing is asserted. What must hold: every engine answered every request, vLLM
resolved the mode asked for, and in each mode the IAA text path gave the stock
Llama's token ids.
"""

from __future__ import annotations

import json
import pathlib

import pytest


@pytest.mark.slow
def test_cpu_smoke_run(benchmark_smoke):
    out = pathlib.Path(benchmark_smoke)
    with open(out / "compile_modes_quick.json", encoding="utf-8") as f:
        report = json.load(f)
    assert (out / "compile_modes_quick.png").stat().st_size > 0
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
