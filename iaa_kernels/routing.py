"""Per-workflow row routing in the insertion layers, as Triton kernels.

Three things side by side: the private `@triton.jit` kernels, the
public launchers `gather_add` / `scatter_rows_` and the pure-torch references.

What the insertion layer does per workflow (iaa_vllm/engine/insertion.py): gather that
workflow's rows of vLLM's split stream and add them (stream = h[idx] + r[idx]), run
that workflow's layer weights on them, and write the results back into the batch's rows. In torch the
gather-add is three launches and moves 7 n·H elements (two gathers write n·H each and
are read again by the add); the fused kernel reads 2 n·H and writes n·H. The
write-back (`dst[idx] = src`) is one index_put launch in torch already; the kernel
is the same traffic with a simpler index path.

Where the kernels run: CUDA tensors with Triton installed and at least one row to
move (`_use_triton`), and CPU tensors only when TRITON_INTERPRET=1 was set before this module
was imported (tests). Everywhere else, the references.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the launchers take the torch path
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read by @jit at import
BLOCK_H = 1024  # columns per program: 2 KB of bf16 per row, 8 elements per thread at 4 warps

if triton is not None:

    @triton.jit
    def _gather_add_kernel(h_ptr, r_ptr, idx_ptr, out_ptr, H, stride_h, stride_r, stride_out,
                           BLOCK: tl.constexpr):
        """out[i, :] = h[idx[i], :] + r[idx[i], :], added in fp32, rounded once."""
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < H
        src = tl.load(idx_ptr + row).to(tl.int64)  # int64: T * H can pass 2^31
        h = tl.load(h_ptr + src * stride_h + cols, mask=mask).to(tl.float32)
        r = tl.load(r_ptr + src * stride_r + cols, mask=mask).to(tl.float32)
        tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, (h + r).to(out_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _scatter_rows_kernel(dst_ptr, src_ptr, idx_ptr, H, stride_dst, stride_src, BLOCK: tl.constexpr):
        """dst[idx[i], :] = src[i, :]."""
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < H
        dst_row = tl.load(idx_ptr + row).to(tl.int64)
        values = tl.load(src_ptr + row.to(tl.int64) * stride_src + cols, mask=mask)
        tl.store(dst_ptr + dst_row * stride_dst + cols, values.to(dst_ptr.dtype.element_ty), mask=mask)


def gather_add_reference(h: torch.Tensor, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """h, r [T, H], idx [n] → h[idx] + r[idx], [n, H]: what the insertion layer computed."""
    return h[idx] + r[idx]


def scatter_rows_reference(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[idx] = src in place; returns dst."""
    dst[idx] = src
    return dst


def gather_add(h: torch.Tensor, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """h, r [T, H] (same dtype and device), idx [n] int rows of T → [n, H] = h[idx] + r[idx].

    The fused kernel where it can run and there are rows (`_use_triton`), else the reference.
    The kernel adds in fp32 and rounds once; torch adds in the input dtype, which for
    bf16/fp16 is the same correctly rounded sum, so the two agree bit for bit.
    """
    _check_rows("gather_add", h, idx, r=r)
    if not (_triton_can_run(h) and _use_triton(idx.numel())):
        return gather_add_reference(h, r, idx)
    return _gather_add(h, r, idx)


def scatter_rows_(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst [T, H], idx [n] distinct rows of T, src [n, H] → dst with dst[idx] = src (in place)."""
    _check_rows("scatter_rows_", dst, idx, src=src)
    if not (_triton_can_run(dst) and _use_triton(idx.numel())):
        return scatter_rows_reference(dst, idx, src)
    return _scatter_rows(dst, idx, src)


def _gather_add(h, r, idx) -> torch.Tensor:
    """The Triton path, unchecked (the benchmark times it whatever `_use_triton` says)."""
    n, width = idx.numel(), h.shape[1]
    out = torch.empty((n, width), dtype=h.dtype, device=h.device)
    if n:
        _gather_add_kernel[(n, triton.cdiv(width, BLOCK_H))](
            h, r, idx, out, width, h.stride(0), r.stride(0), out.stride(0), BLOCK=BLOCK_H)
    return out


def _scatter_rows(dst, idx, src) -> torch.Tensor:
    n, width = idx.numel(), dst.shape[1]
    if n:
        _scatter_rows_kernel[(n, triton.cdiv(width, BLOCK_H))](
            dst, src, idx, width, dst.stride(0), src.stride(0), BLOCK=BLOCK_H)
    return dst


def _triton_can_run(x: torch.Tensor) -> bool:
    return triton is not None and (x.is_cuda or _INTERPRET)


def _use_triton(n: int) -> bool:
    """True whenever there is a row to move (n > 0): no shape is sent to torch.

    No shape threshold, because every measured shape was faster as a kernel: H100,
    bf16, width 4096, 577 to 8078 routed rows of 577- to 8192-token batches
    (benchmarks/routing.py, two runs): gather-add 1.75-2.29x and scatter 1.96-3.09x
    faster than torch indexing (docs/benchmarks.md, Kernels). n == 0 has nothing to move; the
    torch path returns an empty result without a kernel launch. Int32 offsets are not a limit: the kernels index
    rows in int64.
    """
    return n > 0


def _check_rows(op: str, table: torch.Tensor, idx: torch.Tensor, **others: torch.Tensor) -> None:
    if table.ndim != 2 or table.stride(1) != 1:
        raise ValueError(f"{op}: expected a row-major [T, H] tensor, got shape {tuple(table.shape)} "
                         f"strides {table.stride()}")
    if idx.ndim != 1 or idx.dtype not in (torch.int32, torch.int64) or idx.device != table.device:
        raise ValueError(f"{op}: idx must be 1-D int32/int64 on {table.device}, got shape "
                         f"{tuple(idx.shape)} {idx.dtype} on {idx.device}")
    rows = {"r": table.shape[0], "src": idx.numel()}
    for name, t in others.items():
        expected = (rows[name], table.shape[1])
        if tuple(t.shape) != expected or t.stride(1) != 1:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {expected} row-major")
        if t.dtype != table.dtype or t.device != table.device:
            raise ValueError(f"{op}: {name} is {t.dtype} on {t.device}, expected {table.dtype} on "
                             f"{table.device}")
