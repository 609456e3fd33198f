"""The CLIP → Llama projector of one workflow (`mlp2x_gelu`)."""

from __future__ import annotations

import torch
from torch import nn
from vllm import envs
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)

from kernels.projector import projector_forward


class IAAProjector(nn.Module):
    """Linear(mm_hidden → hidden) → GELU (erf) → Linear(hidden → hidden), with biases.

    Checkpoint names `{projector}.0.*` / `{projector}.2.*` (an nn.Sequential in the
    release) map to `linear_1` / `linear_2`.
    """

    def __init__(self, mm_hidden_size: int, hidden_size: int, quant_config, prefix: str):
        super().__init__()
        self.linear_1 = ColumnParallelLinear(
            mm_hidden_size, hidden_size, bias=True, quant_config=quant_config,
            prefix=f"{prefix}.linear_1",
        )
        self.act = get_act_fn("gelu")
        self.linear_2 = RowParallelLinear(
            hidden_size, hidden_size, bias=True, quant_config=quant_config,
            prefix=f"{prefix}.linear_2",
        )
        # The fused kernel needs both whole weights in nn.Linear layout: TP > 1 shards
        # them (and needs RowParallel's all-reduce), quantization stores them otherwise,
        # and batch-invariant mode wants vLLM's own GEMM.
        self.fused = (
            self.linear_2.tp_size == 1
            and all(isinstance(lin.quant_method, UnquantizedLinearMethod)
                    for lin in (self.linear_1, self.linear_2))
            and not getattr(envs, "VLLM_BATCH_INVARIANT", False)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [n, mm_hidden] → [n, hidden]."""
        # CUDA only: vLLM's CPU backend repacks the weights for oneDNN and frees `weight`.
        if self.fused and features.is_cuda:
            l1, l2 = self.linear_1, self.linear_2
            return projector_forward(features, l1.weight, l1.bias, l2.weight, l2.bias)
        hidden, _ = self.linear_1(features)
        hidden, _ = self.linear_2(self.act(hidden))
        return hidden
