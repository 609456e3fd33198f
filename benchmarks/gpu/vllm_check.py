"""Step 1 of the GPU command: does the vLLM on this machine load and compute?

Imports vLLM, asks its platform which device it runs on, and runs vLLM's own
custom ops (`vllm._custom_ops`, the `_C` library: the CUDA kernels on a GPU, the
CPU kernels on CPU) against plain-torch references: rms_norm, fused_add_rms_norm,
silu_and_mul, gelu_quick and the neox rotary embedding. Prints one JSON object
(versions, device, each op's max relative error) and exits 0 only if every op is
within tolerance. On the GPU host the bundle's `.gpu/gpu_check.py` runs beside it
(FlashAttention-3 too); this one also runs where vLLM is installed normally.

    python -m benchmarks.gpu.vllm_check
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Max relative error allowed, per dtype: fp32 kernels agree with torch to rounding
# (measured 1.2e-7 on CPU); bf16 keeps 8 bits of mantissa, 2e-2 as the bundle's check.
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


def _rel(out, ref) -> float:
    return ((out.float() - ref.float()).abs().max() / (ref.float().abs().max() + 1e-6)).item()


def _rms(x, w, eps=1e-5):
    x = x.float()
    return x * (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt() * w.float()


def op_checks(torch, device: str, dtype) -> dict:
    """Each op on odd-sized inputs against its torch reference: name -> max relative
    error, or the exception's text where the op did not run."""
    from vllm import _custom_ops as ops

    c = torch.ops._C  # vLLM's compiled kernels; _custom_ops wraps only some of them
    g = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, generator=g)  # noqa: E731

    def rms_norm():
        x, w = randn(37, 512), randn(512)
        out = torch.empty_like(x)
        c.rms_norm(out, x, w, 1e-5)
        return _rel(out, _rms(x, w))

    def fused_add_rms_norm():
        x, r, w = randn(37, 640), randn(37, 640), randn(640)
        ref = _rms(x.float() + r.float(), w)
        c.fused_add_rms_norm(x, r, w, 1e-5)  # in place: x <- norm(x + r), r <- x + r
        return _rel(x, ref)

    def silu_and_mul():
        x = randn(37, 2 * 448)
        out = torch.empty(37, 448, device=device, dtype=dtype)
        c.silu_and_mul(out, x)
        a, b = x.float().chunk(2, -1)
        return _rel(out, torch.nn.functional.silu(a) * b)

    def gelu_quick():
        x = randn(37, 512)
        out = torch.empty_like(x)
        c.gelu_quick(out, x)
        return _rel(out, x.float() * torch.sigmoid(1.702 * x.float()))

    def rotary_embedding_neox():
        return _rotary(ops, torch, randn, device, dtype)

    errors = {}
    for check in (rms_norm, fused_add_rms_norm, silu_and_mul, gelu_quick, rotary_embedding_neox):
        try:
            errors[check.__name__] = check()
        except Exception as e:  # noqa: BLE001 - the report names the op and the error
            errors[check.__name__] = f"{type(e).__name__}: {e}"
    return errors


def _rotary(ops, torch, randn, device, dtype) -> float:
    tokens, heads, kv_heads, head, max_pos = 37, 4, 2, 64, 128
    inv = 1.0 / (500000.0 ** (torch.arange(0, head, 2, device=device).float() / head))
    freqs = torch.outer(torch.arange(max_pos, device=device).float(), inv)
    cache = torch.cat([freqs.cos(), freqs.sin()], -1).to(dtype)  # vLLM's cos_sin_cache layout
    positions = torch.randint(0, max_pos, (tokens,), device=device)
    q, k = randn(tokens, heads * head), randn(tokens, kv_heads * head)

    def reference(t):
        t = t.float().view(tokens, -1, head)
        cos, sin = cache[positions].float().chunk(2, -1)
        cos, sin = cos[:, None], sin[:, None]
        a, b = t[..., : head // 2], t[..., head // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).view(tokens, -1)

    ref_q, ref_k = reference(q), reference(k)
    ops.rotary_embedding(positions, q, k, head, cache, True)  # in place
    return max(_rel(q, ref_q), _rel(k, ref_k))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # no options; --help
    started = time.perf_counter()
    import torch
    import transformers
    import vllm
    from vllm.platforms import current_platform

    from benchmarks.engine_runner import versions

    cuda = torch.cuda.is_available()
    device, dtype_name = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    report = {
        **versions(), "vllm_file": vllm.__file__, "transformers": transformers.__version__,
        "platform": type(current_platform).__name__,
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "dtype": dtype_name, "tolerance": TOLERANCE[dtype_name], "import_s": time.perf_counter() - started,
    }
    report["max_rel_error"] = op_checks(torch, device, getattr(torch, dtype_name))
    # An exception's text, or a NaN, fails too.
    report["failed"] = [name for name, err in report["max_rel_error"].items()
                        if not (isinstance(err, float) and err <= TOLERANCE[dtype_name])]
    report["passed"] = not report["failed"]
    print(json.dumps(report), flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
