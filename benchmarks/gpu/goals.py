"""Issue 12's performance goals, read off the step summaries: measured as measured,
misses included. A goal whose step did not run says so (`met: null`, `why`).
On `--cpu-smoke` the models are tiny stand-ins, so the goals are computed but
say nothing about a GPU."""

from __future__ import annotations

LATENCY_S = 0.040  # IAA-14, MME-shaped request, batch 1
RATIO_TOLERANCE = 0.05  # latency ratio within 5 % of the FLOP ratio
VS_LLAVA_13B = 0.83  # IAA-14 latency / LLaVA-1.5-13B latency
TEXT_THROUGHPUT = 0.99  # IAA text / stock Llama, with identical ids


def evaluate(steps: dict) -> list[dict]:
    pairs = steps.get("3_real_shapes", {}).get("result", {}).get("pairs", {})
    text = steps.get("4_text_vs_stock", {}).get("result", {})
    found = []
    iaa14 = pairs.get("iaa-14/llava-13b")
    found.append(_goal(f"IAA-14 batch-1 MME latency p50 <= {LATENCY_S} s", iaa14, "step 3 pair iaa-14",
                       lambda p: p["iaa"]["latency_s"]["p50"], lambda v: v <= LATENCY_S))
    for name in ("iaa-14/llava-13b", "iaa-8/llava-8b"):
        pair = pairs.get(name)
        goal = _goal(f"{name}: latency ratio (p50) within {RATIO_TOLERANCE:.0%} of the FLOP ratio", pair,
                     f"step 3 pair {name.split('/')[0]}", lambda p: p["latency_ratio_p50"] / p["flop_ratio"],
                     lambda v: abs(v - 1) <= RATIO_TOLERANCE)
        if pair:
            goal.update(latency_ratio=pair["latency_ratio_p50"], flop_ratio=pair["flop_ratio"])
        found.append(goal)
    found.append(_goal(f"IAA-14 latency <= {VS_LLAVA_13B}x LLaVA-1.5-13B (p50)", iaa14, "step 3 pair iaa-14",
                       lambda p: p["latency_ratio_p50"], lambda v: v <= VS_LLAVA_13B))
    for batch in ("text_b1", "text_b32"):
        row = text.get(batch)
        goal = _goal(f"text path at batch {batch[6:]}: >= {TEXT_THROUGHPUT} of stock throughput, identical ids",
                     row, f"step 4 {batch}", lambda r: r["throughput_ratio"],
                     lambda v, r=row: v >= TEXT_THROUGHPUT and r["identical_ids"])
        if row:
            goal["identical_ids"] = row["identical_ids"]
        found.append(goal)
    return found


def _goal(goal: str, data: dict | None, source: str, measure, met) -> dict:
    if not data:
        return {"goal": goal, "measured": None, "met": None, "why": f"{source} did not run"}
    value = measure(data)
    return {"goal": goal, "measured": value, "met": bool(met(value))}
