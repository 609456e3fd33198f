"""benchmarks/smoke.py: both CPU smoke runs from five engines, the eager pair shared.

`benchmark_smoke` runs it once; test_benchmarks_compile_modes.py and
test_benchmarks_serving.py check each benchmark's own report of that run.
"""

from __future__ import annotations

import json
import os

import pytest


@pytest.mark.slow
def test_the_eager_pair_serves_both_benchmarks_and_the_compiled_engines_start_cold(benchmark_smoke):
    with open(os.path.join(benchmark_smoke, "smoke.json"), encoding="utf-8") as f:
        smoke = json.load(f)
    started = smoke["engines"]
    assert smoke["most_engines_up"] == 2  # the shared pair; every other engine alone
    runs = {(os.path.basename(e["model"]), e["engine"]["enforce_eager"]): e for e in started}
    assert len(runs) == len(started) == 5, [(e["model"], e["engine"]) for e in started]
    # compile_modes' eager IAA and stock engines ran serving's jobs too; nothing else is shared
    assert {key: e["jobs"] for key, e in runs.items()} == {
        ("iaa-tiny", True): 2, ("llama", True): 2, ("iaa-tiny", False): 1, ("llama", False): 1,
        ("llava-tiny", True): 1}
    for (name, eager), e in runs.items():
        cache = e["env"].get("VLLM_CACHE_ROOT")
        if eager:
            assert cache is None, name
        else:  # each compiled engine its own fresh cache: a cold start, as compile_modes promises
            assert cache and e["env"]["TORCHINDUCTOR_CACHE_DIR"].startswith(cache), name
    assert len({e["env"].get("VLLM_CACHE_ROOT") for e in started if not e["engine"]["enforce_eager"]}) == 2

