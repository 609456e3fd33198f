"""The insertion layer at one depth: a Llama decoder layer with one set of weights per workflow.

Each image workflow (`mm`, `grounding`) has its own decoder-layer weights at
each insertion depth, but a request only ever uses one workflow, so both share
one `Attention` module and hence one paged-KV slot per depth: 32 + N layers of
KV instead of 32 + 2N (docs/design.md §3).

The attention op runs over the whole batch because vLLM's attention metadata
(slot mapping, query_start_loc) describes every token; text rows feed zeros and
their output is discarded. Projections, norms and MLP run on the image rows only.
Rows move in and out through iaa_kernels/routing.py (Triton on CUDA, measured 1.75-3.1x
faster than torch indexing on an H100; torch indexing elsewhere, bit for bit the same).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.models.llama import LlamaMLP
from vllm.distributed import get_tensor_model_parallel_world_size

from iaa_vllm.engine.names import IMAGE_WORKFLOWS
from iaa_kernels.routing import gather_add, scatter_rows_


class IAAAttentionProjections(nn.Module):
    """q/k/v and output projections of one workflow's layer (checkpoint: `self_attn.*`)."""

    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.q_size = config.num_attention_heads // tp * self.head_dim
        self.kv_size = max(1, config.num_key_value_heads // tp) * self.head_dim
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads,
            config.num_key_value_heads, bias=False, quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim, config.hidden_size, bias=False,
            quant_config=quant_config, prefix=f"{prefix}.o_proj",
        )


class IAAWorkflowLayer(nn.Module):
    """One workflow's weights of an insertion layer; names follow the checkpoint."""

    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = IAAAttentionProjections(config, quant_config, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act,
            quant_config=quant_config, prefix=f"{prefix}.mlp",
        )


class IAAInsertionLayer(nn.Module):
    """Runs as the `iaa::insertion_layer` op (custom_ops.py) after its frozen layer.

    workflows: the model's routing.WorkflowState, whose current step names the rows.
    """

    def __init__(self, config, cache_config, quant_config, prefix: str, workflows):
        super().__init__()
        self.workflows = workflows
        self.workflow_layers = nn.ModuleDict(
            {
                wf: IAAWorkflowLayer(config, quant_config, f"{prefix}.workflow_layers.{wf}")
                for wf in IMAGE_WORKFLOWS
            }
        )
        proj = self.workflow_layers["mm"].self_attn
        self.q_size, self.kv_size = proj.q_size, proj.kv_size
        tp = get_tensor_model_parallel_world_size()
        self.rotary_emb = get_rope(
            proj.head_dim,
            max_position=getattr(config, "max_position_embeddings", 8192),
            rope_parameters=getattr(config, "rope_parameters", None),
            is_neox_style=True,
        )
        self.attn = Attention(
            config.num_attention_heads // tp,
            proj.head_dim,
            proj.head_dim**-0.5,
            num_kv_heads=max(1, config.num_key_value_heads // tp),
            cache_config=cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor,
        rows: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the stream of the image rows by this layer's output, in place.

        hidden_states, residual: [T, H], the frozen layer's output in vLLM's split
        form (stream = hidden_states + residual). rows: workflow -> row indices
        [n_wf] (only image workflows with at least one row). Text rows are
        returned untouched, bit for bit.
        """
        num_tokens = hidden_states.shape[0]
        q = hidden_states.new_zeros(num_tokens, self.q_size)
        k = hidden_states.new_zeros(num_tokens, self.kv_size)
        v = hidden_states.new_zeros(num_tokens, self.kv_size)
        streams = {}
        for wf, idx in rows.items():
            layer = self.workflow_layers[wf]
            stream = gather_add(hidden_states, residual, idx)  # = hidden_states[idx] + residual[idx]
            qkv, _ = layer.self_attn.qkv_proj(layer.input_layernorm(stream))
            q_wf, k_wf, v_wf = qkv.split([self.q_size, self.kv_size, self.kv_size], -1)
            q_wf, k_wf = self.rotary_emb(positions[idx], q_wf, k_wf)
            for dst, src in ((q, q_wf), (k, k_wf), (v, v_wf)):
                scatter_rows_(dst, idx, src)  # dst[idx] = src
            streams[wf] = stream
        attn_out = self.attn(q, k, v)

        # In place, as vLLM's own layers treat their inputs (fused_add_rms_norm): every
        # read of these rows happened above, and workflows own disjoint rows.
        for wf, idx in rows.items():
            layer = self.workflow_layers[wf]
            out, _ = layer.self_attn.o_proj(attn_out[idx])
            out, res = layer.post_attention_layernorm(out, streams[wf])
            scatter_rows_(hidden_states, idx, layer.mlp(out))
            scatter_rows_(residual, idx, res)
        return hidden_states, residual

