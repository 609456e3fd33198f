"""iaa_kernels/routing.py: the gather-add and row-scatter kernels against torch indexing.

As in test_kernels_projector.py, one child process started with TRITON_INTERPRET=1 runs the
kernels over CASES (Triton's @jit reads the variable at import) and saves the results;
the comparisons run here. On an H100 benchmarks/routing.py checks them bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from iaa_kernels import routing
from iaa_kernels.routing import gather_add, scatter_rows_

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (T rows, width, n routed rows): the tiny model's width, a width that is no multiple
# of the kernels' 1024-column block, and Llama-3-8B's 4096; 1, 7, 576 and 769 rows.
SHAPES = [(8, 64, 1), (40, 64, 7), (700, 64, 576), (900, 1100, 769), (20, 4096, 7)]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = [(*shape, dtype) for shape in SHAPES for dtype in DTYPES]


def case_id(case) -> str:
    t, width, n, dtype = case
    return f"T{t}-H{width}-n{n}-{str(dtype).removeprefix('torch.')}"


def make_case(t: int, width: int, n: int, dtype: torch.dtype):
    """h, r [T, width]; idx: n distinct rows in a scattered order; src [n, width]."""
    g = torch.Generator().manual_seed(t * 7 + width + n)
    h, r = torch.randn(t, width, generator=g), torch.randn(t, width, generator=g)
    idx = torch.randperm(t, generator=g)[:n]
    src = torch.randn(n, width, generator=g)
    return h.to(dtype), r.to(dtype), idx, src.to(dtype)


def run_kernel_cases(path: str) -> None:
    """Child process: the interpreted kernels on every case, saved to `path`."""
    assert routing._INTERPRET, "run with TRITON_INTERPRET=1"

    def no_fallback(*args):
        raise AssertionError("a launcher took the torch path under the interpreter")

    routing.gather_add_reference = routing.scatter_rows_reference = no_fallback
    outputs = {}
    for case in CASES:
        h, r, idx, src = make_case(*case)
        outputs[case_id(case)] = (gather_add(h, r, idx), scatter_rows_(h.clone(), idx, src))
    torch.save(outputs, path)


@pytest.fixture(scope="module")
def kernel_outputs(tmp_path_factory) -> dict:
    path = str(tmp_path_factory.mktemp("kernels") / "routing.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_kernels_routing", path], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreter child failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return torch.load(path)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernels_match_indexing(kernel_outputs, case):
    h, r, idx, src = make_case(*case)
    gathered, scattered = kernel_outputs[case_id(case)]
    expected = h[idx] + r[idx]
    # A copy is exact. The sum: fp32 and fp16 kernels round the fp32 sum correctly, as
    # torch does. bf16 under the interpreter only: its float32 -> bf16 store truncates
    # (numpy has no bf16; measured 2718 of 10500 elements one ulp off), so allow one
    # bf16 ulp (2^-7 relative); on an H100 benchmarks/routing.py found them bit-equal.
    if case[-1] == torch.bfloat16:
        torch.testing.assert_close(gathered, expected, rtol=2**-7, atol=0)
    else:
        assert torch.equal(gathered, expected)
    reference = h.clone()
    reference[idx] = src
    assert torch.equal(scattered, reference)


@pytest.mark.skipif(routing._INTERPRET, reason="checks the torch path")
def test_cpu_without_interpreter_is_indexing():
    h, r, idx, src = make_case(700, 64, 576, torch.bfloat16)
    assert torch.equal(gather_add(h, r, idx), h[idx] + r[idx])
    expected = h.clone()
    expected[idx] = src
    assert torch.equal(scatter_rows_(h.clone(), idx, src), expected)


def test_no_rows():
    h, r, idx, src = make_case(8, 64, 1, torch.float32)
    assert gather_add(h, r, idx[:0]).shape == (0, 64)
    assert torch.equal(scatter_rows_(h.clone(), idx[:0], src[:0]), h)


@pytest.mark.parametrize("bad, message", [
    (lambda h, r, idx, src: gather_add(h, r[:, :32], idx), "r has shape"),
    (lambda h, r, idx, src: gather_add(h, r.double(), idx), "r is torch.float64"),
    (lambda h, r, idx, src: gather_add(h, r, idx.float()), "idx must be 1-D int32/int64"),
    (lambda h, r, idx, src: gather_add(h.t(), r, idx), "row-major"),
    (lambda h, r, idx, src: scatter_rows_(h, idx, src[:, :8]), "src has shape"),
])
def test_bad_inputs_name_the_tensor(bad, message):
    with pytest.raises(ValueError, match=message):
        bad(*make_case(40, 64, 7, torch.float32))


@pytest.mark.skipif(routing._INTERPRET, reason="compiles the real kernels, not the interpreted ones")
@pytest.mark.parametrize("kernel", ["_gather_add_kernel", "_scatter_rows_kernel"])
def test_kernels_compile_for_h100(kernel):
    """CI has no GPU: compile both kernels for sm_90 ahead of time (Triton ships ptxas)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    fn = getattr(routing, kernel)
    signature = {name: "constexpr" if name == "BLOCK" else "*i64" if name == "idx_ptr"
                 else "*bf16" if name.endswith("_ptr") else "i32" for name in fn.arg_names}
    compiled = compile(ASTSource(fn, signature, {"BLOCK": routing.BLOCK_H}), target=GPUTarget("cuda", 90, 32))
    assert "st.global" in compiled.asm["ptx"]


if __name__ == "__main__":
    run_kernel_cases(sys.argv[1])
