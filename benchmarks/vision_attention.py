"""CLIP encoder attention at 577 tokens: xformers vs vLLM's own vision-attention paths.

CLIP ViT-L/14-336 attends over 577 tokens (576 patches + CLS) with 16 heads of 64,
non-causal, one sequence per image. On an H100, vLLM's `MMEncoderAttention` picks
FLASH_ATTN, i.e. `vllm.vllm_flash_attn.flash_attn_varlen_func(..., fa_version=3)` over
the images packed as one varlen batch (vllm/v1/attention/ops/vit_attn_wrappers.py);
its fallback is TORCH_SDPA (`F.scaled_dot_product_attention` on [B, H, S, D]). Both
are timed here against `xformers.ops.memory_efficient_attention`, each called the way
its user calls it, on the same bf16 inputs, 1 to 64 images per call; every output is
checked against an fp32 reference first. xformers would replace vLLM's path only if it
is faster.

    python -m benchmarks.vision_attention   # writes results/vision_attention.{json,png}

Needs a CUDA device; the FA3 path needs vLLM's `vllm_flash_attn` package (the GPU
vLLM wheel; a provider that cannot be imported is reported and skipped).
"""

from __future__ import annotations

import sys

from benchmarks import report as report_files

TOKENS, HEADS, HEAD_DIM = 577, 16, 64
IMAGES = [1, 2, 4, 8, 16, 32, 64]
SCALE = HEAD_DIM**-0.5


def providers() -> tuple[dict, dict]:
    """name -> fn(q, k, v) with q/k/v [B, S, H, D]; and name -> why it is missing."""
    import torch
    import torch.nn.functional as F

    found, missing = {}, {}

    def torch_sdpa(q, k, v):  # vLLM's apply_sdpa
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=SCALE)
        return out.transpose(1, 2)

    found["vllm_torch_sdpa"] = torch_sdpa
    try:
        from vllm.vllm_flash_attn.flash_attn_interface import flash_attn_varlen_func

        def vllm_fa3(q, k, v):  # vLLM's flash_attn_maxseqlen_wrapper
            b, s = q.shape[:2]
            cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
            out = flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                         cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=s,
                                         max_seqlen_k=s, softmax_scale=SCALE, causal=False,
                                         fa_version=3)
            return out.unflatten(0, (b, s))

        found["vllm_flash_attn_fa3"] = vllm_fa3
    except Exception as exc:  # noqa: BLE001 - report any import failure, keep measuring the rest
        missing["vllm_flash_attn_fa3"] = f"{type(exc).__name__}: {exc}"
    try:
        import xformers.ops as xops

        found["xformers"] = lambda q, k, v: xops.memory_efficient_attention(q, k, v, scale=SCALE)
    except Exception as exc:  # noqa: BLE001
        missing["xformers"] = f"{type(exc).__name__}: {exc}"
    return found, missing


def xformers_op(q, k, v) -> str | None:
    """Which xformers kernel the dispatcher picks for these inputs (FA3, cutlass...)."""
    try:
        from xformers.ops import fmha

        inp = fmha.Inputs(query=q, key=k, value=v, scale=SCALE)
        return fmha._dispatch_fw(inp, False).NAME
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__})"


def run() -> tuple[list[dict], dict, str | None]:
    import torch
    import triton.testing

    found, missing = providers()
    rows, op = [], None
    for images in IMAGES:
        g = torch.Generator(device="cuda").manual_seed(images)
        q, k, v = (torch.randn(images, TOKENS, HEADS, HEAD_DIM, device="cuda", generator=g,
                               dtype=torch.bfloat16) for _ in "qkv")
        ref = torch.softmax((q.float().transpose(1, 2) @ k.float().transpose(1, 2).transpose(-1, -2)) * SCALE,
                            -1) @ v.float().transpose(1, 2)
        ref = ref.transpose(1, 2)
        row = {"images": images, "ms": {}, "rel_err": {}}
        for name, fn in list(found.items()):
            try:
                out = fn(q, k, v)
            except Exception as exc:  # noqa: BLE001 - e.g. xformers without kernels for this torch
                missing[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                del found[name]
                continue
            row["rel_err"][name] = ((out.float() - ref).norm() / ref.norm()).item()
            assert row["rel_err"][name] < 1e-2, (name, row["rel_err"][name])
            row["ms"][name] = triton.testing.do_bench(lambda: fn(q, k, v), warmup=25, rep=100,
                                                      return_mode="median")
        if "xformers" in found and op is None:  # noqa: SIM102
            op = xformers_op(q, k, v)
        fastest = min(row["ms"], key=row["ms"].get)
        row["fastest"] = fastest
        print(f"{images:3d} images: " + ", ".join(f"{n} {t * 1e3:8.1f} us" for n, t in row["ms"].items())
              + f"  -> {fastest}", flush=True)
        rows.append(row)
    return rows, missing, op


def plot(report: dict, path: str) -> None:
    """Time per image for each provider."""
    rows = report["rows"]
    report_files.figure(path, [report_files.Panel(
        "vision attention: time per image", "us", "images per call", [f"{r['images']} img" for r in rows],
        {n: [r["ms"][n] * 1e3 / r["images"] for r in rows] for n in rows[0]["ms"]},
    )], caption=f"{report['machine']}; {TOKENS} tokens, {HEADS}x{HEAD_DIM}, bf16")


def main(argv: list[str] | None = None) -> int:
    args = report_files.gpu_args(__doc__, "it times GPU attention kernels", argv)
    if args is None:
        return 2
    import torch

    rows, missing, op = run()
    report = {"machine": torch.cuda.get_device_name(), "torch": torch.__version__,
              "shape": dict(tokens=TOKENS, heads=HEADS, head_dim=HEAD_DIM, dtype="bfloat16"),
              "note": "triton.testing.do_bench medians, ms per call (all images)",
              "xformers_kernel": op, "missing": missing, "rows": rows}
    print(f"xformers dispatches to: {op}; missing providers: {missing or 'none'}")
    report_files.write(args.out, "vision_attention", report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
