"""iaa_kernels/projector.py: the fused Triton projector against its pure-torch reference.

No GPU here, so the kernel runs under Triton's interpreter. Triton's @jit reads
TRITON_INTERPRET when a kernel is decorated, i.e. when iaa_kernels.projector is imported,
and this pytest process has usually imported it already (iaa_vllm.engine.projector does).
So one child process, started with TRITON_INTERPRET=1, runs the kernel over CASES and
saves the outputs; the comparisons with the reference run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from iaa_kernels import projector
from iaa_kernels.projector import projector_forward, projector_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY, REAL = (32, 64), (1024, 4096)  # (K = mm_hidden, H = hidden): tiny test model, IAA
# No multiple of any tile, and several row and column tiles with a partial launch group
# (tiny and real shapes at few tokens each have one row or one column of tiles).
ODD = (96, 320)
# (N tokens, K, H, dtype). Under the interpreter a real-shape call takes ~2 s (Python per
# loop step), so real shapes run at 1 and 7 tokens only; 576 / 769 tokens there take minutes.
CASES = [
    *[(n, *TINY, dtype) for n in (1, 7, 576, 769, 5125)
      for dtype in (torch.float32, torch.bfloat16, torch.float16)],
    *[(n, *REAL, dtype) for n in (1, 7) for dtype in (torch.float32, torch.bfloat16)],
    *[(1153, *ODD, dtype) for dtype in (torch.float32, torch.bfloat16)],
]
TOLERANCES = {
    # Same math, another summation order over K + H terms of O(1): ~sqrt(K) * 2^-24 ≈ 1e-6.
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    # The kernel rounds once; the reference also rounds Linear1's and GELU's outputs
    # (one bf16 ulp is at most 2^-7 relative): allow two ulps of an O(1) output.
    torch.bfloat16: dict(rtol=2**-6, atol=2**-6),
    # The same argument at fp16's 2^-10 ulp.
    torch.float16: dict(rtol=2**-9, atol=2**-9),
}


def case_id(case) -> str:
    n, k, h, dtype = case
    return f"n{n}-{k}x{h}-{str(dtype).removeprefix('torch.')}"


def make_inputs(n: int, k: int, h: int, dtype: torch.dtype):
    """x [n, k], w1 [h, k], b1 [h], w2 [h, h], b2 [h], scaled like nn.Linear so activations are O(1)."""
    g = torch.Generator().manual_seed(n * 31 + k)
    x = torch.randn(n, k, generator=g)
    w1, b1 = torch.randn(h, k, generator=g) / k**0.5, torch.randn(h, generator=g) / k**0.5
    w2, b2 = torch.randn(h, h, generator=g) / h**0.5, torch.randn(h, generator=g) / h**0.5
    return [t.to(dtype) for t in (x, w1, b1, w2, b2)]


def strided_inputs():
    """x as a strided view (a column slice of wider hidden states): row stride > K."""
    x, *weights = make_inputs(7, *TINY, torch.float32)
    wide = torch.cat([x, torch.full_like(x, float("nan"))], dim=1)  # nan: reads past K would show
    return [wide[:, : TINY[0]], *weights]


def run_kernel_cases(path: str) -> None:
    """Child process: the interpreted kernel on every case, saved to `path`."""
    assert projector._INTERPRET, "run with TRITON_INTERPRET=1"

    def no_fallback(*args):
        raise AssertionError("projector_forward took the torch path under the interpreter")

    projector.projector_reference = no_fallback  # a silent fallback must not pass the tests
    outputs = {}
    for case in CASES:
        start = time.perf_counter()
        outputs[case_id(case)] = projector_forward(*make_inputs(*case))
        print(f"{case_id(case)}: {time.perf_counter() - start:.2f} s", flush=True)
    outputs["strided"] = projector_forward(*strided_inputs())
    torch.save(outputs, path)


@pytest.fixture(scope="module")
def kernel_outputs(tmp_path_factory) -> dict:
    path = str(tmp_path_factory.mktemp("kernels") / "projector.pt")
    # One BLAS thread: the interpreter's thousands of small numpy dots are many times
    # slower with threaded BLAS on 2 cores.
    env = {**os.environ, "TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_kernels_projector", path], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreter child failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr[-4000:]}")
    return torch.load(path)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_reference(kernel_outputs, case):
    n, k, h, dtype = case
    expected = projector_reference(*make_inputs(*case))
    got = kernel_outputs[case_id(case)]
    assert got.shape == (n, h) and got.dtype == dtype
    torch.testing.assert_close(got, expected, **TOLERANCES[dtype])


def test_kernel_reads_strided_features(kernel_outputs):
    inputs = strided_inputs()
    torch.testing.assert_close(kernel_outputs["strided"], projector_reference(*inputs),
                               **TOLERANCES[torch.float32])


@pytest.mark.parametrize("shape", [TINY, REAL], ids=["tiny", "real"])
def test_cpu_without_interpreter_is_the_reference(monkeypatch, shape):
    monkeypatch.setattr(projector, "_INTERPRET", False)
    monkeypatch.setattr(projector, "_linear", None)  # the Triton path would fail loudly
    inputs = make_inputs(7, *shape, torch.float32)
    assert torch.equal(projector_forward(*inputs), projector_reference(*inputs))


def test_no_tokens():
    x, *weights = make_inputs(1, *TINY, torch.float32)
    assert projector_forward(x[:0], *weights).shape == (0, TINY[1])


@pytest.mark.parametrize("name, bad_shape", [
    ("w1", (64, 31)), ("b1", (63,)), ("w2", (64, 32)), ("b2", (1, 64)),
])
def test_wrong_shape_names_the_tensor(name, bad_shape):
    inputs = dict(zip(("x", "w1", "b1", "w2", "b2"), make_inputs(7, *TINY, torch.float32)))
    inputs[name] = torch.zeros(bad_shape)
    with pytest.raises(ValueError, match=re.escape(f"{name} has shape {bad_shape}, expected")):
        projector_forward(**inputs)


def test_x_must_be_2d():
    x, *weights = make_inputs(7, *TINY, torch.float32)
    with pytest.raises(ValueError, match=r"x must be \[N, K\], got shape \(1, 7, 32\)"):
        projector_forward(x[None], *weights)


def test_unsupported_dtype():
    inputs = make_inputs(7, *TINY, torch.float64)
    with pytest.raises(ValueError, match=r"x has dtype torch.float64; supported: .*torch.bfloat16"):
        projector_forward(*inputs)


def test_mixed_dtypes_name_the_tensor():
    x, w1, b1, w2, b2 = make_inputs(7, *TINY, torch.float32)
    with pytest.raises(ValueError, match=r"w2 has dtype torch.bfloat16, expected x's dtype torch.float32"):
        projector_forward(x, w1, b1, w2.bfloat16(), b2)


@pytest.mark.skipif(projector._INTERPRET, reason="compiles the real kernel, not the interpreted one")
@pytest.mark.parametrize("tokens", [7, 4608], ids=["few-tokens", "8-images"])
def test_kernel_compiles_for_h100(tokens):
    """CI has no GPU: compile the bf16 kernel for sm_90 ahead of time with the CUDA tiles
    (Triton ships ptxas), catching what the interpreter accepts and the compiler does not."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    config = projector._block_config(tokens)
    options = {key: config.pop(key) for key in ("num_warps", "num_stages")}
    constexprs = {"APPLY_GELU": True, "DOT_IN_FP32": False, **config}
    signature = {name: "constexpr" if name in constexprs else "*bf16" if name.endswith("_ptr") else "i32"
                 for name in projector._linear_kernel.arg_names}
    kernel = compile(ASTSource(projector._linear_kernel, signature, constexprs),
                     target=GPUTarget("cuda", 90, 32), options=options)
    # Tensor cores: Hopper's wgmma for 128-row tiles, mma.sync for the small-M tiles.
    assert ("wgmma" if config["BLOCK_M"] >= 64 else "mma.sync") in kernel.asm["ptx"]


def test_reference_gelu_is_vllms():
    """The kernel and its reference compute the model's GELU, vLLM's get_act_fn("gelu"): exact erf."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.activation import get_act_fn

    with set_current_vllm_config(VllmConfig()):
        act = get_act_fn("gelu")
    x = torch.linspace(-8, 8, 4097)
    assert torch.equal(act(x), F.gelu(x, approximate="none"))
    assert not torch.equal(act(x), F.gelu(x, approximate="tanh"))


if __name__ == "__main__":
    run_kernel_cases(sys.argv[1])
