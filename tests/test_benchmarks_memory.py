"""The arithmetic of benchmarks/memory.py and soak.py, on made-up samples (no server)."""

from __future__ import annotations

import math

from benchmarks import load, memory, soak


def _samples(mib_per_request: float, warmup_jump: float, n: int = 50) -> list[dict]:
    """RSS that jumps during the first 100 requests, then grows linearly."""
    out = []
    for i in range(n):
        done = i * 40
        total = 5000 + (warmup_jump if done >= 100 else 0) + mib_per_request * done
        out.append({"t_s": float(i), "done": done, "VLLM::Worker": total - 3000, "total": total})
    return out


def test_fit_leaves_the_warmup_out_and_slices_the_rest():
    fitted = memory.fit(_samples(0.02, warmup_jump=300), warmup=200, segments=4)
    assert math.isclose(fitted["total"]["slope"], 20.0, rel_tol=1e-6)  # MiB per 1,000 requests
    assert len(fitted["total"]["segments"]) == 4
    assert all(math.isclose(s, 20.0, rel_tol=1e-6) for s in fitted["total"]["segments"])
    assert math.isclose(fitted["VLLM::Worker"]["slope"], 20.0, rel_tol=1e-6)
    # Fitted from the start, the warm-up jump would inflate the slope.
    assert load.slope_per_1000(_samples(0.02, warmup_jump=300)) > 30


def test_summary_gives_each_runs_slope_and_their_range():
    runs = [{"config": "stock", "fit": memory.fit(_samples(rate, 0), warmup=0, segments=2)}
            for rate in (0.01, 0.03)]
    total = memory.summarise(runs)["stock"]["total"]
    assert [round(v, 6) for v in total["runs"]] == [10.0, 30.0]
    assert (round(total["min"], 6), round(total["mean"], 6), round(total["max"], 6)) == (10.0, 20.0, 30.0)


def test_stock_and_iaa_text_get_the_same_bodies_and_mixed_gets_all_workflows():
    stock, text = memory.request_bodies("stock", "m"), memory.request_bodies("iaa-text", "m")
    assert stock == text and stock and all("vllm_xargs" not in b for b in stock.values())
    assert {name.split("/")[0] for name in memory.request_bodies("iaa-mixed", "m")} == {"text", "mm", "grounding"}


def test_soak_schedule_mixes_good_bad_and_hung_up_streams():
    kinds = [soak.slot_kind(i, bad_every=4, cancel_every=6) for i in range(24)]
    assert kinds.count("bad") == 6 and kinds.count("cancel") == 4 and kinds.count("good") == 14
    assert kinds[:4] == ["cancel", "good", "good", "bad"]
    assert soak.slot_kind(1, bad_every=4, cancel_every=0) == "good"  # 0: no hung-up streams


def test_soak_windows_split_latencies_by_start_time():
    records = [{"kind": "good", "start_s": s, "latency_s": lat} for s, lat in ((1, 0.1), (2, 0.3), (11, 1.0))]
    records.append({"kind": "bad", "start_s": 3, "latency_s": 9.0})  # bad requests are left out
    first, second = soak.windows(records, window_s=10)
    assert first["good_requests"] == 2 and math.isclose(first["p50_s"], 0.2)
    assert second["good_requests"] == 1 and second["p99_s"] == 1.0
