"""What the GPU command runs on: the model behind each role, the modes, the
request counts and the time guesses, for a GPU (`gpu`) and for CI on CPU (`cpu-smoke`).

A role is what a step asks for ("iaa-14", "llava-13b", "stock-8b", ...). On a GPU each
role is its real-shape model with vLLM's dummy weights (benchmarks/serving.py's
`real` preset); the smoke roles are the tiny checkpoint and the stock Llama cut out
of it. On CPU every role is a tiny stand-in: all IAA roles are the tiny IAA, both
LLaVA roles the tiny LLaVA, both stock roles the tiny Llama, so roles that share a
model share one engine and the smoke starts four engines in all.
"""

from __future__ import annotations

import dataclasses
import os

from benchmarks import serving, shapes


@dataclasses.dataclass(frozen=True)
class Model:
    name: str  # engine names and model directories start with it
    kind: str  # "iaa" | "llava" | "llama"
    preset: str  # IAA preset; LLaVA name (shapes.LLAVA_DECODERS or "tiny"); llama: the IAA preset it is cut from
    dummy: bool  # vLLM's dummy weights: only config and tokenizer on disk

    def shape(self) -> shapes.Model:
        return {"iaa": shapes.iaa, "llava": shapes.llava, "llama": shapes.llama}[self.kind](self.preset)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    dtype: str
    graph_mode: str  # the default mode (engine_runner.MODES); step 5 sets it against eager
    roles: dict[str, Model]
    counts: dict[str, int]
    max_model_len: dict[str, int]  # per model name; default "real"
    # Seconds guessed for one engine start + warm-up, per model name (eager: half),
    # and per unit of work; only used to skip what cannot finish before the deadline.
    start_s: dict[str, float]
    work_s: dict[str, float]
    budget_s: float
    steps: tuple[int, ...]  # run by default

    def engine_settings(self, model: Model) -> dict:
        """vLLM engine args besides the mode: the same for every engine of the target."""
        return dict(dtype=self.dtype, max_model_len=self.max_model_len.get(model.name, self.max_model_len["real"]),
                    seed=0, load_format="dummy" if model.dummy else "auto", gpu_memory_utilization=0.85,
                    max_num_seqs=256)


_TINY_IAA = Model("tiny-iaa", "iaa", "tiny", dummy=False)
_TINY_LLAMA = Model("tiny-llama", "llama", "tiny", dummy=False)
_TINY_LLAVA = Model("tiny-llava", "llava", "tiny", dummy=False)

TARGETS = {
    "gpu": Target(
        name="gpu", dtype="bfloat16", graph_mode="piecewise",
        roles={
            "smoke-iaa": _TINY_IAA, "smoke-stock": _TINY_LLAMA,
            "iaa-14": Model("iaa-14", "iaa", "iaa-14", dummy=True),
            "llava-13b": Model("llava-1.5-13b", "llava", "llava-1.5-13b", dummy=True),
            "iaa-8": Model("iaa-8", "iaa", "iaa-8", dummy=True),
            "llava-8b": Model("llava-llama3-8b", "llava", "llava-llama3-8b", dummy=True),
            "stock-8b": Model("llama-3-8b", "llama", "iaa-8", dummy=True),
        },
        # MME batch 1: >= 20 measured requests after warm-up; text: 128
        # tokens per request, batch 1 and 32; the whole MME: 2,374 questions.
        counts=dict(mme_batch1=30, mme_warmup=3, text_tokens=128, text_b1=4, text_b32=32, repeat=3,
                    smoke_per_workflow=2, smoke_tokens=16, mme_full=2374),
        max_model_len={"real": 4096, "tiny-iaa": 2048, "tiny-llama": 2048},
        # Guesses, not measured on a GPU yet (cold torch.compile + graph capture: 1-2
        # minutes at 8B/13B); run.py rescales them by the starts it has seen.
        start_s={"tiny-iaa": 60, "tiny-llama": 50, "iaa-14": 130, "iaa-8": 110, "llama-3-8b": 90,
                 "llava-1.5-13b": 120, "llava-llama3-8b": 100},
        work_s=dict(mme_request=0.15, text_token_b1=0.02, text_step_b32=0.04, smoke=10, mme_full_request=0.06),
        budget_s=540, steps=(1, 2, 3, 4, 5),
    ),
    "cpu-smoke": Target(
        name="cpu-smoke", dtype="float32", graph_mode="compiled",
        roles={"smoke-iaa": _TINY_IAA, "smoke-stock": _TINY_LLAMA, "iaa-14": _TINY_IAA, "llava-13b": _TINY_LLAVA,
               "iaa-8": _TINY_IAA, "llava-8b": _TINY_LLAVA, "stock-8b": _TINY_LLAMA},
        counts=dict(mme_batch1=3, mme_warmup=1, text_tokens=8, text_b1=2, text_b32=32, repeat=1,
                    smoke_per_workflow=2, smoke_tokens=8, mme_full=8),
        max_model_len={"real": 2048},
        start_s={"tiny-iaa": 150, "tiny-llama": 120, "tiny-llava": 120},
        work_s=dict(mme_request=0.5, text_token_b1=0.05, text_step_b32=0.1, smoke=10, mme_full_request=0.3),
        # About 5 minutes of CPU time; a shared 2-core machine has stretched the wall
        # time to 28 minutes (engine starts of 10 minutes), and CI must not skip.
        budget_s=3600, steps=(1, 2, 3, 4, 5, 6),
    ),
}


def write_model(model: Model, target: Target, root: str) -> str:
    """The model's directory under `root`, written on first use (serving.py's writers)."""
    from benchmarks.llava_checkpoint import write_llava

    path = os.path.join(root, model.name)
    if model.kind == "iaa":
        return serving.write_iaa(path, model.preset, target.dtype, model.dummy)
    if model.kind == "llama":
        # Cut from the target's own IAA of that preset: the very weights its engine loads.
        source = next((m for m in target.roles.values() if m.kind == "iaa" and m.preset == model.preset),
                      Model(model.preset, "iaa", model.preset, model.dummy))
        return serving.write_stock(write_model(source, target, root), path, model.dummy)
    if not os.path.isfile(os.path.join(path, "config.json")):
        write_llava(path, model.preset, target.dtype)
    return path
