"""Insertion-layer routing: Triton gather-add / scatter vs torch indexing, on a GPU.

Shapes: a batch of T tokens of width 4096 (Llama-3-8B), bf16, of which n rows belong
to one image workflow, laid out as vLLM lays them out (each request's tokens in one
contiguous span; here spans of 577 tokens, an MME-sized prompt). Each op is checked
bit for bit against torch before it is timed (triton.testing.do_bench medians). For
scale, the same n rows' insertion-layer GEMMs (q/k/v, o, gate/up, down) are timed too:
routing only matters next to them.

    python -m benchmarks.routing        # writes results/routing.{json,png}
"""

from __future__ import annotations

import sys

from benchmarks import report as report_files

HIDDEN, INTERMEDIATE, KV = 4096, 14336, 1024  # Llama-3-8B: 32 q heads, 8 kv heads of 128
SPAN = 577
# (T tokens in the batch, image spans in it): one request alone up to a full 8K batch.
CASES = [(577, 1), (2048, 1), (2048, 3), (8192, 2), (8192, 7), (8192, 14)]


def image_rows(total: int, spans: int, device):
    """Rows of `spans` image requests spread through a batch of `total` tokens."""
    import torch

    gap = (total - spans * SPAN) // max(spans, 1)
    starts = [i * (SPAN + gap) for i in range(spans)]
    return torch.cat([torch.arange(s, s + SPAN) for s in starts]).to(device)


def run() -> list[dict]:
    import torch
    import triton.testing

    from iaa_kernels import routing

    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
    rows = []
    for total, spans in CASES:
        g = torch.Generator(device="cuda").manual_seed(total + spans)
        h, r = (torch.randn(total, HIDDEN, device="cuda", generator=g, dtype=torch.bfloat16) for _ in "hr")
        idx = image_rows(total, spans, "cuda")
        n = idx.numel()
        src = torch.randn(n, HIDDEN, device="cuda", generator=g, dtype=torch.bfloat16)
        assert torch.equal(routing._gather_add(h, r, idx), routing.gather_add_reference(h, r, idx))
        assert torch.equal(routing._scatter_rows(h.clone(), idx, src),
                           routing.scatter_rows_reference(h.clone(), idx, src))
        dst = h.clone()
        ms = {
            "gather_add_torch": bench(lambda: routing.gather_add_reference(h, r, idx)),
            "gather_add_triton": bench(lambda: routing._gather_add(h, r, idx)),
            "scatter_torch": bench(lambda: routing.scatter_rows_reference(dst, idx, src)),
            "scatter_triton": bench(lambda: routing._scatter_rows(dst, idx, src)),
        }
        x = torch.randn(n, HIDDEN, device="cuda", dtype=torch.bfloat16)
        weights = [torch.randn(o, i, device="cuda", dtype=torch.bfloat16) / i**0.5 for o, i in
                   ((HIDDEN + 2 * KV, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN),
                    (HIDDEN, INTERMEDIATE))]
        inner = torch.randn(n, INTERMEDIATE, device="cuda", dtype=torch.bfloat16)

        def layer_gemms():
            for w in weights[:3]:
                torch.nn.functional.linear(x, w)
            torch.nn.functional.linear(inner, weights[3])

        ms["layer_gemms"] = bench(layer_gemms)
        row = {"tokens": total, "image_rows": n, "ms": ms,
               "gather_add_speedup": ms["gather_add_torch"] / ms["gather_add_triton"],
               "scatter_speedup": ms["scatter_torch"] / ms["scatter_triton"],
               # Per insertion layer: one gather-add and scatters of q (4096 wide), k and v
               # (1024 each) and the two stream halves: 3.5 full-width scatters.
               "routing_per_layer_ms": {p: ms[f"gather_add_{p}"] + 3.5 * ms[f"scatter_{p}"]
                                        for p in ("torch", "triton")}}
        print(f"T={total:5d} n={n:5d}: gather-add torch {ms['gather_add_torch'] * 1e3:7.1f} us, "
              f"triton {ms['gather_add_triton'] * 1e3:7.1f} us ({row['gather_add_speedup']:.2f}x); "
              f"scatter torch {ms['scatter_torch'] * 1e3:7.1f} us, triton {ms['scatter_triton'] * 1e3:7.1f} us "
              f"({row['scatter_speedup']:.2f}x); layer GEMMs {ms['layer_gemms']:.3f} ms", flush=True)
        rows.append(row)
    return rows


def plot(report: dict, path: str) -> None:
    """Speed-up of each kernel over torch per case."""
    rows = report["rows"]
    report_files.figure(path, [report_files.Panel(
        "Triton / torch speed-up per case", "speed-up (x)", "tokens T, image rows n",
        [f"T={r['tokens']}\nn={r['image_rows']}" for r in rows],
        {f"{name} triton / torch": [r[f"{name}_speedup"] for r in rows] for name in ("gather_add", "scatter")},
        hlines={"1x": 1.0}, colours={"gather_add triton / torch": "tab:orange", "scatter triton / torch": "tab:blue"},
    )], caption=f"{report['machine']}; bf16, width {HIDDEN}")


def main(argv: list[str] | None = None) -> int:
    args = report_files.gpu_args(__doc__, "the kernels' CPU checks are tests/test_kernels_routing.py", argv)
    if args is None:
        return 2
    import torch

    rows = run()
    report = {"machine": torch.cuda.get_device_name(), "torch": torch.__version__,
              "note": "triton.testing.do_bench medians, ms", "rows": rows}
    report_files.write(args.out, "routing", report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
