"""iaa_vllm/engine/projector.py: each workflow's projector, built from vLLM's layers, against
the pure-torch reference on the tiny checkpoint's weights, at awkward token counts.

The projector is built as the engine builds it (inside a VllmConfig, tensor parallel
group of one), loaded through its parameters' own `weight_loader`s and finished with
`process_weights_after_loading`, where vLLM's CPU backend may repack the weights.
"""

from __future__ import annotations

import pytest
import torch

from iaa_vllm.engine.weights import ADAPTERS
from tests.reference import project, read_safetensors

# Single tokens, one image (576 + a text token), and counts that are no multiple of
# any GEMM block: what a step's placeholder rows add up to.
TOKEN_COUNTS = (1, 7, 577, 769, 5125)
# The tiny checkpoint's weights have std 0.02, so unit features would keep the GELU
# input near 0, where erf and tanh GELU agree to 1e-6; CLIP features are O(10).
FEATURE_SCALE = 20.0
TOLERANCES = {
    # Same math, another GEMM (oneDNN vs ATen): summation order over K + H terms only.
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    # bf16 inputs and outputs with fp32 accumulation on both sides; the reference
    # runs in fp32 on the same bf16 weights: one bf16 rounding of each output, plus
    # the rounded intermediate on vLLM's side (8 bits of mantissa: 2^-8 relative).
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


@pytest.fixture(scope="module")
def vllm_context():
    """A VllmConfig and a one-process tensor-parallel group, torn down afterwards."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm.utils.network_utils import get_open_port

    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, backend="gloo",
            distributed_init_method=f"tcp://127.0.0.1:{get_open_port()}",
        )
        initialize_model_parallel(1, 1)
        yield
        destroy_model_parallel()
        destroy_distributed_environment()


def build_projector(sd: dict, prefix: str, dtype: torch.dtype):
    """IAAProjector loaded with the checkpoint tensors `{prefix}.0.*` / `{prefix}.2.*`."""
    from iaa_vllm.engine.projector import IAAProjector

    mm_hidden, hidden = sd[f"{prefix}.0.weight"].shape[1], sd[f"{prefix}.0.weight"].shape[0]
    torch.set_default_dtype(dtype)
    try:
        projector = IAAProjector(mm_hidden, hidden, quant_config=None, prefix=prefix)
    finally:
        torch.set_default_dtype(torch.float32)
    for name, param in projector.named_parameters():
        linear, kind = name.split(".")  # linear_1.weight
        source = f"{prefix}.{0 if linear == 'linear_1' else 2}.{kind}"
        param.weight_loader(param, sd[source].to(dtype))
    for module in projector.modules():
        method = getattr(module, "quant_method", None)
        if method is not None:
            method.process_weights_after_loading(module)
    return projector


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("workflow", list(ADAPTERS))
def test_projector_matches_reference(vllm_context, tiny_dir, workflow, dtype):
    sd = read_safetensors(tiny_dir, dtype)
    prefix = ADAPTERS[workflow][-1]
    projector = build_projector(sd, prefix, dtype)
    generator = torch.Generator().manual_seed(0)
    for tokens in TOKEN_COUNTS:
        features = torch.randn(tokens, sd[f"{prefix}.0.weight"].shape[1], generator=generator)
        features = (features * FEATURE_SCALE).to(dtype)
        with torch.inference_mode():
            got = projector(features)
        fp32 = {k: v.float() for k, v in sd.items() if k.startswith(prefix)}
        want = project(features.float(), fp32, prefix)
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got.float(), want, **TOLERANCES[dtype],
                                   msg=lambda m: f"{workflow} {dtype} at {tokens} tokens: {m}")


def test_workflows_have_their_own_projector(vllm_context, tiny_dir):
    """mm and grounding load different tensors, so their outputs differ on one input."""
    sd = read_safetensors(tiny_dir)
    features = torch.randn(3, sd[f"{ADAPTERS['mm'][-1]}.0.weight"].shape[1]) * FEATURE_SCALE
    with torch.inference_mode():
        mm, grounding = (build_projector(sd, ADAPTERS[wf][-1], torch.float32)(features) for wf in ("mm", "grounding"))
    assert not torch.allclose(mm, grounding)
