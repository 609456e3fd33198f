"""The `mlp2x_gelu` projector, y = Linear2(GELU_erf(Linear1(x))), as two Triton GEMMs.

Three things side by side: the private `@triton.jit` kernel, the public
launcher `projector_forward` and the pure-torch `projector_reference`.

What is fused. One GEMM kernel, launched twice: Linear1 with bias + exact (erf) GELU
in its epilogue, then Linear2 with bias in its epilogue. Both accumulate in fp32 and
round once, to the input dtype, on store. The unfused torch path moves the
[N, H] intermediate four times (Linear1 writes it, GELU reads it and writes its
output, Linear2 reads that); the fused path writes the GELU'd intermediate once and
reads it once, and saves the GELU launch. Both GEMMs remain; fusing them into one
kernel is not worth it at these shapes: every Linear2 output tile needs the whole
intermediate row (H = 4096), so a single kernel would recompute Linear1 per output
tile or hold [BLOCK_M, 4096] on chip. Expected gain, estimated before measuring: at
8 images (N = 4608, bf16) fusion saves 2 x 38 MB of traffic, ~25 us at H100 bandwidth,
against ~0.3 ms of GEMMs (193 GFLOP), so under 10 %; anything beyond that has to come
from the GEMMs themselves matching cuBLAS.

Where the kernel runs (`projector_forward`): only under Triton's interpreter
(TRITON_INTERPRET=1 set before this module was imported, for tests). Everywhere
else, CUDA and vLLM's CPU backend included, it is `projector_reference`: see below.

Measured (benchmarks/projector.py --sweep, H100 80GB HBM3, torch 2.11 + Triton 3.6,
bf16, 1 to 64 images of 576 tokens): the kernel is SLOWER than torch eager (cuBLAS)
at every shape, 0.60-0.77x with the default tiles and at most 0.96x with the best of
11 tile configs. Eager already runs the two GEMMs at ~640 TFLOP/s (8 images: 193
GFLOP in 0.303 ms) against a measured ~800 TFLOP/s ceiling, so even perfect fusion
could not reach a 1.2x speed-up. So the launcher keeps torch on CUDA (`_use_triton`),
and the model does not call it at all: `iaa_vllm/engine/projector.py` runs vLLM's parallel
linear layers, which carry tensor parallelism and quantization. The kernel runs under
the interpreter in tests and stays here, with its benchmark (benchmarks/projector.py),
for GPUs or shapes where a later measurement says otherwise.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the launcher takes the torch path
    triton = None

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Triton's @jit reads TRITON_INTERPRET when the kernel is decorated, i.e. at import.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if triton is not None:

    @triton.jit
    def _linear_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, M, N, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
        APPLY_GELU: tl.constexpr, DOT_IN_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        """y [M, N] = act(x [M, K] @ w [N, K]^T + b [N]); act = erf GELU or identity."""
        # Grouped order (Triton matmul tutorial): GROUP_M row blocks in a row walk the
        # same weight column blocks, so those stay in L2.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        pids_per_group = GROUP_M * num_pid_n
        first_m = (pid // pids_per_group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % pids_per_group) % group_m
        pid_n = (pid % pids_per_group) // group_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn  # w^T tile
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
            w = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
            if DOT_IN_FP32:
                # fp32: torch's matmul does not use TF32 by default, so neither do we.
                # Interpreter: its dot multiplies bf16 bit patterns as integers; the
                # upcast is exact (a bf16 x bf16 product fits in fp32).
                acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk

        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if APPLY_GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))  # x * Phi(x), exact
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def projector_reference(x, w1, b1, w2, b2) -> torch.Tensor:
    """x [N, K], w1 [H, K], b1 [H], w2 [H, H], b2 [H] → [N, H], in x's dtype.

    What vLLM's ColumnParallelLinear → GELU → RowParallelLinear compute at TP 1
    unquantized on CUDA (F.linear, F.gelu with approximate="none").
    """
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="none"), w2, b2)


def projector_forward(x, w1, b1, w2, b2) -> torch.Tensor:
    """x [N, K], w1 [H, K], b1 [H], w2 [H, H], b2 [H] (nn.Linear layout) → [N, H].

    The fused Triton path where it can run and `_use_triton` picks it, else
    `projector_reference`. Raises ValueError on mismatched shapes, dtypes or devices.
    """
    _check_inputs(x, w1, b1, w2, b2)
    n, k = x.shape
    h = w1.shape[0]
    if not (_triton_can_run(x) and _use_triton(n, k, h, x.dtype)):
        return projector_reference(x, w1, b1, w2, b2)
    return _fused(x, w1, b1, w2, b2)


def _fused(x, w1, b1, w2, b2, config: dict | None = None) -> torch.Tensor:
    """The Triton path, unchecked (the benchmark times it whatever `_use_triton` says,
    and sweeps `config`, the tile sizes, which default to `_block_config`)."""
    hidden = _linear(x, w1, b1, apply_gelu=True, config=config)  # [N, H], GELU'd: written once, read once
    return _linear(hidden, w2, b2, apply_gelu=False, config=config)


def _triton_can_run(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or _INTERPRET)


def _use_triton(n: int, k: int, h: int, dtype: torch.dtype) -> bool:
    """Shapes where the kernel is the faster path: none measured on CUDA (module docstring:
    cuBLAS wins on an H100 at every benchmarked shape), so only the interpreter (tests)."""
    return _INTERPRET and 0 < n and n * max(k, h) < 2**31  # the kernel's offsets are int32


def _block_config(m: int) -> dict:
    """Tile sizes: the matmul tutorial's 128x128x64 tiles, smaller M tiles for few tokens.

    Under the interpreter each loop step costs milliseconds of Python whatever the
    tile, so it gets wide N and K tiles and M tiles no taller than the token count.
    """
    if _INTERPRET:
        return dict(BLOCK_M=min(128, max(16, triton.next_power_of_2(m))), BLOCK_N=256, BLOCK_K=256, GROUP_M=8)
    if m <= 64:
        return dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)


def _linear(x, w, b, apply_gelu: bool, config: dict | None = None) -> torch.Tensor:
    """One launch of `_linear_kernel`: x [M, K], w [N, K], b [N] → [M, N] in x's dtype."""
    (m, k), n = x.shape, w.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    config = config or _block_config(m)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    _linear_kernel[grid](
        x, w, b, y, m, n, k,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
        APPLY_GELU=apply_gelu, DOT_IN_FP32=x.dtype == torch.float32 or _INTERPRET, **config,
    )
    return y


def _check_inputs(x, w1, b1, w2, b2) -> None:
    if x.ndim != 2:
        raise ValueError(f"projector_forward: x must be [N, K], got shape {tuple(x.shape)}")
    n, k = x.shape
    h = w1.shape[0] if w1.ndim == 2 else "H"
    expected = {"w1": (h, k), "b1": (h,), "w2": (h, h), "b2": (h,)}
    for name, t in zip(expected, (w1, b1, w2, b2)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"projector_forward: {name} has shape {tuple(t.shape)}, expected {expected[name]} "
                f"(x is {tuple(x.shape)}; w1 [H, K], b1 [H], w2 [H, H], b2 [H])"
            )
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"projector_forward: x has dtype {x.dtype}; supported: {SUPPORTED_DTYPES}")
    for name, t in zip(expected, (w1, b1, w2, b2)):
        if t.dtype != x.dtype:
            raise ValueError(f"projector_forward: {name} has dtype {t.dtype}, expected x's dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"projector_forward: {name} is on {t.device}, x on {x.device}")
