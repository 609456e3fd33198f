"""The CLIP → Llama projector of one workflow (`mlp2x_gelu`)."""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear


class IAAProjector(nn.Module):
    """Linear(mm_hidden → hidden) → GELU (erf) → Linear(hidden → hidden), with biases.

    Checkpoint names `{projector}.0.*` / `{projector}.2.*` (an nn.Sequential in the
    release) map to `linear_1` / `linear_2`. vLLM's parallel linear layers carry
    tensor parallelism and quantization; the Triton projector in `iaa_kernels/projector.py`
    is not used here, because cuBLAS beat it at every measured shape (its docstring).
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

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [n, mm_hidden] → [n, hidden]."""
        hidden, _ = self.linear_1(features)
        hidden, _ = self.linear_2(self.act(hidden))
        return hidden
