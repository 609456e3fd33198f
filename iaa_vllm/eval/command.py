"""`iaa-vllm eval mme | refcoco | mme-score`: arguments and the run behind each.

Output folder: `answers.jsonl` (appended as answers finish; a rerun with the same
folder resumes), `skipped.json` (this run's unreadable items and why),
`scores.json`, and for MME `results/<category>.txt` in the official result format.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from iaa_vllm.eval import mme, refcoco
from iaa_vllm.eval.runner import RunStats, run_local, run_ray
from iaa_vllm.eval.store import AnswerStore


def engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(dtype=args.dtype, max_model_len=args.max_model_len, seed=0,
                  tensor_parallel_size=args.tensor_parallel_size, enable_prefix_caching=True)
    if args.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    return kwargs


def run(args: argparse.Namespace, items: list, workflow: str, llm=None) -> tuple[AnswerStore, RunStats]:
    """Answer every item not yet in `<out>/answers.jsonl`; `llm`: an engine to reuse (tests)."""
    os.makedirs(args.out, exist_ok=True)
    store = AnswerStore(os.path.join(args.out, "answers.jsonl"))
    progress = not args.no_progress
    if args.ray:
        stats = run_ray(args.model, engine_kwargs(args), items, store, workflow, args.max_tokens,
                        replicas=args.replicas, batch_size=args.ray_batch_size,
                        cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                        address=args.ray_address, progress=progress)
    elif llm is not None:
        stats = run_local(llm, items, store, workflow, args.max_tokens, args.batch_size, progress)
    elif any(item.id not in store for item in items):
        from vllm import LLM

        start = time.perf_counter()
        llm = LLM(model=args.model, **engine_kwargs(args))
        print(f"engine start {time.perf_counter() - start:.1f} s", flush=True)
        stats = run_local(llm, items, store, workflow, args.max_tokens, args.batch_size, progress)
        llm.llm_engine.engine_core.shutdown()
    else:
        stats = RunStats(resumed=len(items))
    store.close()
    with open(os.path.join(args.out, "skipped.json"), "w", encoding="utf-8") as f:
        json.dump(stats.skipped, f, indent=1)
    print(stats.summary(), flush=True)
    return store, stats


def _save_scores(out: str, scores: dict) -> None:
    with open(os.path.join(out, "scores.json"), "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=1)


def main_mme(args: argparse.Namespace, llm=None) -> int:
    questions = mme.load(args.data, args.images)
    store, _ = run(args, questions, "mm", llm)
    mme.write_results(os.path.join(args.out, "results"), questions, store.records)
    scores = mme.score(os.path.join(args.out, "results"))
    _save_scores(args.out, scores)
    print(mme.report(scores))
    return 0


def main_refcoco(args: argparse.Namespace, llm=None) -> int:
    expressions = refcoco.load(args.data, args.images, args.splits, args.split_by)
    store, _ = run(args, expressions, "grounding", llm)
    scores = refcoco.score(expressions, store.records)
    _save_scores(args.out, scores)
    print(refcoco.report(scores))
    return 0


def main_mme_score(args: argparse.Namespace) -> int:
    print(mme.report(mme.score(args.results)))
    return 0


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="IAA checkpoint directory")
    p.add_argument("--out", required=True, help="output folder; rerunning with the same folder resumes")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate per question (release: 128)")
    p.add_argument("--batch-size", type=int, default=256, help="requests kept in the engine at once")
    p.add_argument("--dtype", default="auto", help="engine dtype (float32 on CPU)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM's; 0.3 on CPU")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray Data scale-out")
    ray.add_argument("--ray", action="store_true", help="run on Ray: one engine per replica")
    ray.add_argument("--replicas", type=int, default=1, help="engines (Ray actors)")
    ray.add_argument("--ray-address", default=None,
                     help="Ray cluster address; 'local' starts a fresh local Ray (default: Ray's own "
                          "choice: RAY_ADDRESS, a cluster already running here, else a fresh local one)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs each replica reserves")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0,
                     help="Ray GPUs each replica reserves (GPU clusters: the tensor-parallel size)")
    ray.add_argument("--ray-batch-size", type=int, default=16, help="questions per Ray Data batch")


def add_arguments(subparsers) -> None:
    """`mme`, `refcoco` and `mme-score` under `iaa-vllm eval`."""
    p = subparsers.add_parser("mme", help="MME: answers, official result files, official score",
                              description="Run MME through one engine (or Ray replicas) and score it.")
    _add_run_arguments(p)
    p.add_argument("--data", required=True,
                   help="official MME folder (one folder per category), or a LLaVA-style .jsonl")
    p.add_argument("--images", default=None, help="image folder of a .jsonl question list")
    p.set_defaults(func=main_mme)

    p = subparsers.add_parser("refcoco", help="RefCOCO/+/g: grounding answers, Acc@0.5 per split",
                              description="Run RefCOCO-style referring expressions on the grounding workflow.")
    _add_run_arguments(p)
    p.add_argument("--data", required=True, help="refer folder: refs(<split_by>).p and instances.json")
    p.add_argument("--images", required=True, help="COCO train2014 image folder")
    p.add_argument("--splits", nargs="+", default=None, help="splits to run (default: all but train)")
    p.add_argument("--split-by", default=None, help="unc, umd or google when the folder holds several")
    p.set_defaults(func=main_refcoco)

    p = subparsers.add_parser("mme-score", help="score a folder of official MME result files",
                              description="Official MME score of <category>.txt result files.")
    p.add_argument("results", help="folder of <category>.txt files")
    p.set_defaults(func=main_mme_score)
