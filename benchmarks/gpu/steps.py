"""Steps 2-6 of the GPU command: which engines each needs, with which workloads, and
what it reports from their results (step 1, the vLLM check, is in run.py).

A step's engines come in units: engines only useful together (an IAA and the LLaVA
it is compared with). run.py starts a unit only if all of its engines fit in the
time left. An engine is a model in a mode; steps that need the same engine share it
(and each other's workloads on it). Workloads are engine_runner specs; two steps
asking one engine for a workload of the same name get one run of it.

Every summary says what ran, and `checks`: the correctness conditions (all
answered, text ids equal to stock, the mode vLLM resolved), True or False.
Performance goals are not checks; run.py reports them beside the numbers.
"""

from __future__ import annotations

import dataclasses

from benchmarks import serving
from benchmarks.gpu.targets import Model, Target
from benchmarks.shapes import IMAGE_TOKENS


@dataclasses.dataclass(frozen=True)
class Engine:
    model: Model
    mode: str  # engine_runner.MODES

    @property
    def name(self) -> str:
        return f"{self.model.name}.{self.mode}"


Unit = list[tuple[Engine, list[dict]]]


# -- workloads ------------------------------------------------------------------------

def _workflow(model: Model, workflow: str) -> str | None:
    return workflow if model.kind == "iaa" else None  # stock models take no workflow


def mme_batch1(t: Target, model: Model) -> dict:
    n = t.counts["mme_batch1"]
    return {"name": "mme_batch1", "mode": "sequential", "requests": serving.mme_requests(n, _workflow(model, "mm")),
            "est_s": n * t.work_s["mme_request"]}


def text_b1(t: Target, model: Model) -> dict:
    n, tokens = t.counts["text_b1"], t.counts["text_tokens"]
    return {"name": "text_b1", "mode": "sequential",
            "requests": serving.text_requests(n, tokens, _workflow(model, "text")),
            "est_s": n * tokens * t.work_s["text_token_b1"]}


def text_b32(t: Target, model: Model) -> dict:
    n, tokens, repeat = t.counts["text_b32"], t.counts["text_tokens"], t.counts["repeat"]
    return {"name": "text_b32", "mode": "concurrent", "repeat": repeat,
            "requests": serving.text_requests(n, tokens, _workflow(model, "text")),
            "est_s": repeat * tokens * t.work_s["text_step_b32"]}


def warmup(t: Target, model: Model) -> list[dict]:
    """Before any workload: MME requests (the batch-1 latency is measured after
    warm-up) and one of each workflow the engine serves; images not reused later."""
    text = serving.text_requests(1, 4, _workflow(model, "text"))
    if model.kind == "llama":
        return text
    mme = serving.mme_requests(t.counts["mme_warmup"], _workflow(model, "mm"), seed=900)
    if model.kind == "llava":
        return mme + text
    grounding = [r for r in serving.mixed_requests(1, 4)["mixed"] if r["workflow"] == "grounding"]
    return mme + [dict(r, image=[*r["image"][:2], 950]) for r in grounding] + text


# -- results --------------------------------------------------------------------------

def workload(results: dict, engine: Engine, name: str) -> dict | None:
    """A finished workload of an engine's report, or None."""
    return (results.get(engine.name) or {}).get("workloads", {}).get(name)


def answered(w: dict | None, tokens: int) -> bool:
    return bool(w) and all(len(r["token_ids"]) == tokens for r in w["requests"])


def ids(w: dict) -> list[list[int]]:
    return [r["token_ids"] for r in w["requests"]]


def mode_resolved(mode: str, compilation: dict | None) -> bool:
    """Did vLLM run the mode asked for? (What it resolved, from engine_runner.)"""
    if not compilation:
        return False
    if mode == "eager":
        return compilation["mode"] == "NONE"
    if mode == "piecewise":
        return compilation["mode"] == "VLLM_COMPILE" and compilation["cudagraph_mode"] == "PIECEWISE"
    return compilation["mode"] != "NONE"  # compiled: DYNAMO_TRACE_ONCE on CPU


def check_modes(checks: dict, results: dict, engines: list[Engine], key: str = "modes_resolved") -> None:
    """checks[key]: every engine ran the mode asked for; left out while one has not started."""
    found = [(results.get(e.name) or {}).get("compilation") for e in engines]
    if all(found):
        checks[key] = all(mode_resolved(e.mode, c) for e, c in zip(engines, found))


# -- the steps ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Step:
    number: int
    key: str
    title: str

    def units(self, t: Target, options: dict) -> list[Unit]:
        raise NotImplementedError

    def summarise(self, t: Target, options: dict, results: dict) -> dict:
        raise NotImplementedError


class Smoke(Step):
    def units(self, t, options):
        iaa, stock = Engine(t.roles["smoke-iaa"], t.graph_mode), Engine(t.roles["smoke-stock"], t.graph_mode)
        return [[(iaa, [self._mixed(t, "smoke_mixed"), self._mixed(t, "smoke_mixed_again"), self._text(t, "text")]),
                 (stock, [self._text(t, None)])]]

    @staticmethod
    def _mixed(t, name):
        requests = serving.mixed_requests(t.counts["smoke_per_workflow"], t.counts["smoke_tokens"])["mixed"]
        return {"name": name, "mode": "concurrent", "requests": requests, "est_s": t.work_s["smoke"]}

    @staticmethod
    def _text(t, workflow):
        n, tokens = 2 * t.counts["smoke_per_workflow"], t.counts["smoke_tokens"]
        return {"name": "smoke_text", "mode": "concurrent", "requests": serving.text_requests(n, tokens, workflow),
                "est_s": t.work_s["smoke"]}

    def summarise(self, t, options, results):
        (unit,) = self.units(t, options)
        (iaa, _), (stock, _) = unit
        tokens = t.counts["smoke_tokens"]
        first, again = workload(results, iaa, "smoke_mixed"), workload(results, iaa, "smoke_mixed_again")
        text, stock_text = workload(results, iaa, "smoke_text"), workload(results, stock, "smoke_text")
        out, checks = {"workflows": {}}, {}
        if first and again:
            for wf in ("text", "mm", "grounding"):
                rows = [(a["token_ids"], b["token_ids"]) for a, b in zip(first["requests"], again["requests"])
                        if a["workflow"] == wf]
                out["workflows"][wf] = {"token_ids": [a for a, _ in rows], "requests": len(rows),
                                        "deterministic": all(a == b for a, b in rows)}
                checks[f"{wf}_deterministic"] = out["workflows"][wf]["deterministic"]
            checks["workflows_answered"] = answered(first, tokens) and answered(again, tokens)
        if text and stock_text:
            out["text_identical_to_stock"] = checks["text_identical_to_stock"] = ids(text) == ids(stock_text)
            checks["text_answered"] = answered(text, tokens) and answered(stock_text, tokens)
        check_modes(checks, results, [iaa, stock])
        return {"result": out, "checks": checks}


class RealShapes(Step):
    """IAA against LLaVA on MME-shaped requests at batch 1, pair by pair."""

    def units(self, t, options):
        return [[(engine, [mme_batch1(t, engine.model)]) for engine in self._engines(t, pair)]
                for pair in self._pairs(options)]

    def summarise(self, t, options, results):
        pairs, checks = {}, {}
        for pair in self._pairs(options):
            iaa, llava = self._engines(t, pair)
            found = compare(iaa, llava, results)
            if found:
                pairs["/".join(pair)] = found
                checks[f"{pair[0]}_answered"] = found["answered"]
                tokens = found["prompt_tokens"]
                checks[f"{pair[0]}_same_prompt_tokens"] = tokens["iaa"] == tokens["llava"]
                check_modes(checks, results, [iaa, llava], f"{pair[0]}_modes_resolved")
        return {"result": {"pairs": pairs}, "checks": checks}

    @staticmethod
    def _pairs(options) -> list[tuple[str, str]]:
        return [pair for pair in PAIRS if pair[0] in options["pairs"]]

    @staticmethod
    def _engines(t, pair) -> list[Engine]:
        return [Engine(t.roles[role], t.graph_mode) for role in pair]


PAIRS = (("iaa-14", "llava-13b"), ("iaa-8", "llava-8b"))  # step 3's roles, in priority order


def compare(iaa: Engine, llava: Engine, results: dict) -> dict | None:
    """Batch-1 latency and TTFT of an IAA / LLaVA pair, the latency ratio beside the FLOP ratio."""
    a, b = workload(results, iaa, "mme_batch1"), workload(results, llava, "mme_batch1")
    if not (a and b):
        return None
    la, lb = serving.summarise_latency(a), serving.summarise_latency(b)
    ga, gb = serving.request_gflop(iaa.model.shape(), la), serving.request_gflop(llava.model.shape(), lb)
    return {
        "iaa": {"engine": iaa.name, **la, "gflop": ga}, "llava": {"engine": llava.name, **lb, "gflop": gb},
        "prompt_tokens": {"iaa": la["prompt_tokens"], "llava": lb["prompt_tokens"]},
        "text_tokens": la["prompt_tokens"] - IMAGE_TOKENS,  # the prompt minus the expanded image
        "flop_ratio": ga / gb,
        "latency_ratio_p50": la["latency_s"]["p50"] / lb["latency_s"]["p50"],
        "latency_ratio_mean": la["latency_s"]["mean"] / lb["latency_s"]["mean"],
        "ttft_ratio_p50": la["ttft_s"]["p50"] / lb["ttft_s"]["p50"],
        "answered": answered(a, 3) and answered(b, 3),
    }


class TextVsStock(Step):
    def units(self, t, options):
        iaa, stock = t.roles["iaa-8"], t.roles["stock-8b"]
        return [[(Engine(iaa, t.graph_mode), [text_b1(t, iaa), text_b32(t, iaa)]),
                 (Engine(stock, t.graph_mode), [text_b1(t, stock), text_b32(t, stock)])]]

    def summarise(self, t, options, results):
        (unit,) = self.units(t, options)
        (iaa, _), (stock, _) = unit
        out, checks = {}, {}
        for name in ("text_b1", "text_b32"):
            a, b = workload(results, iaa, name), workload(results, stock, name)
            if not (a and b):
                continue
            ta, tb = serving.throughput(a), serving.throughput(b)
            out[name] = {"iaa": {**ta, "all_wall_s": a["all_wall_s"]}, "stock": {**tb, "all_wall_s": b["all_wall_s"]},
                         "throughput_ratio": ta["tokens_per_s"] / tb["tokens_per_s"],
                         "identical_ids": ids(a) == ids(b)}
            checks[f"{name}_identical_ids"] = out[name]["identical_ids"]
            checks[f"{name}_answered"] = answered(a, t.counts["text_tokens"]) and answered(b, t.counts["text_tokens"])
        check_modes(checks, results, [iaa, stock])
        return {"result": out, "checks": checks}


class EagerVsGraphs(Step):
    """IAA-14 in the target's graph mode (PIECEWISE on a GPU, compiled on CPU) and eager."""

    def units(self, t, options):
        model = t.roles["iaa-14"]
        work = [mme_batch1(t, model), text_b1(t, model)]
        return [[(Engine(model, t.graph_mode), work), (Engine(model, "eager"), work)]]

    def summarise(self, t, options, results):
        (unit,) = self.units(t, options)
        engines = [engine for engine, _ in unit]
        out, checks = {"modes": {}}, {}
        for engine in engines:
            mme, text = workload(results, engine, "mme_batch1"), workload(results, engine, "text_b1")
            if mme and text:
                out["modes"][engine.mode] = {"engine": engine.name, "mme_batch1": serving.summarise_latency(mme),
                                             "text_b1": serving.throughput(text), "ids": ids(mme) + ids(text)}
                checks[f"{engine.mode}_answered"] = answered(mme, 3) and answered(text, t.counts["text_tokens"])
        if len(out["modes"]) == 2:
            graph, eager = out["modes"][t.graph_mode], out["modes"]["eager"]
            out["graph_mode"] = t.graph_mode
            out["eager_over_graph_mme_latency_p50"] = (eager["mme_batch1"]["latency_s"]["p50"]
                                                       / graph["mme_batch1"]["latency_s"]["p50"])
            out["graph_over_eager_text_b1_tokens_per_s"] = (graph["text_b1"]["tokens_per_s"]
                                                            / eager["text_b1"]["tokens_per_s"])
            # Reported, not required: compiled kernels may sum in another order.
            out["ids_equal_across_modes"] = graph["ids"] == eager["ids"]
        check_modes(checks, results, engines)
        return {"result": out, "checks": checks}


class MmeFull(Step):
    """The whole MME, synthetic: 2,374 questions, two about each image, all submitted
    at once to one IAA-14 engine and timed end to end."""

    def units(self, t, options):
        model, n = t.roles["iaa-14"], t.counts["mme_full"]
        work = {"name": "mme_full", "mode": "concurrent", "est_s": n * t.work_s["mme_full_request"],
                "requests": serving.mme_requests(n, _workflow(model, "mm"), seed=10_000, per_image=2)}
        return [[(Engine(model, t.graph_mode), [work])]]

    def summarise(self, t, options, results):
        (unit,) = self.units(t, options)
        ((engine, _),) = unit
        w = workload(results, engine, "mme_full")
        if not w:
            return {"result": {}, "checks": {}}
        report = results[engine.name]
        n = len(w["requests"])
        return {"result": {"engine": engine.name, "questions": n, "images": (n + 1) // 2, "wall_s": w["wall_s"],
                           "questions_per_s": n / w["wall_s"], "engine_start_s": report["start_s"],
                           "start_plus_wall_s": report["start_s"] + w["wall_s"],
                           "latency_s": serving.percentiles([r["latency_s"] for r in w["requests"]])},
                "checks": {"answered": answered(w, 3),
                           "modes_resolved": mode_resolved(engine.mode, report.get("compilation"))}}


STEPS = (
    Smoke(2, "2_smoke", "tiny checkpoint: three workflows; text equal to stock vLLM Llama in the same mode"),
    RealShapes(3, "3_real_shapes",
               "real shapes, dummy bf16 weights: MME-shaped batch-1 latency and TTFT, IAA vs LLaVA"),
    TextVsStock(4, "4_text_vs_stock", "text path vs stock Llama-3-8B: greedy ids and throughput at batch 1 and 32"),
    EagerVsGraphs(5, "5_eager_vs_graphs", "IAA-14 eager vs the graph mode"),
    MmeFull(6, "6_mme_full", "a whole MME-sized run (2,374 synthetic questions), end to end"),
)
