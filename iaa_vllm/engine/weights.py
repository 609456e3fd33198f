"""The release checkpoint's tensors as data: names, shapes, and load-time checks.

One table (`ADAPTERS`) serves four readers: the model's weight mapper
(`ADAPTER_RENAMES`, release names onto module paths), the loader (every tensor
present and of the right shape, else one error naming it), `iaa-vllm init` (what
to write), and the tests. Names are the release's, misspellings included (docs/design.md §2).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator

import torch

VISION_PREFIX = "model.vision_tower.vision_tower."
VISION_MODULE = "vision_tower."  # where the model keeps vLLM's CLIPVisionModel
# Per image workflow, its adapter: (embedding, insertion layers, final norm, LM head, projector).
ADAPTERS = {
    "mm": ("model.embed_tokens_condition", "model.condition_layers",
           "model.norm_condition", "lm_head_condtion", "model.mm_projector"),
    "grounding": ("model.embed_tokens_condition_grounding",
                  "model.condition_layers_grounding", "model.norm_condition_grounding",
                  "lm_head_condtion_grounding", "model.mm_projector_G"),
}


def _adapter_renames() -> dict[re.Pattern, str]:
    """Release name prefix -> the model's module path, per image workflow (model.py's
    `WeightsMapper`). The release's two LM heads and projector indices become named
    modules; the insertion layers of both workflows share one layer per depth."""
    renames = {}
    for wf, (embed, layers, norm, head, projector) in ADAPTERS.items():
        renames[rf"^{re.escape(layers)}\.(\d+)\."] = rf"insertion_layers.\1.workflow_layers.{wf}."
        renames[rf"^{re.escape(embed)}\."] = f"adapters.{wf}.embed_tokens."
        renames[rf"^{re.escape(norm)}\."] = f"model.norm.workflow_norms.{wf}."
        renames[rf"^{re.escape(head)}\."] = f"adapters.{wf}.lm_head."
        renames[rf"^{re.escape(projector)}\.0\."] = f"adapters.{wf}.projector.linear_1."
        renames[rf"^{re.escape(projector)}\.2\."] = f"adapters.{wf}.projector.linear_2."
    return {re.compile(k): v for k, v in renames.items()}


ADAPTER_RENAMES = _adapter_renames()

# Tensors a checkpoint may carry that no IAA module uses.
IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq",)


def decoder_layer_plan(prefix: str, c) -> dict[str, tuple[int, ...]]:
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv, h, i = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim, c.hidden_size, c.intermediate_size
    return {
        f"{prefix}.self_attn.q_proj.weight": (q, h),
        f"{prefix}.self_attn.k_proj.weight": (kv, h),
        f"{prefix}.self_attn.v_proj.weight": (kv, h),
        f"{prefix}.self_attn.o_proj.weight": (h, q),
        f"{prefix}.mlp.gate_proj.weight": (i, h),
        f"{prefix}.mlp.up_proj.weight": (i, h),
        f"{prefix}.mlp.down_proj.weight": (h, i),
        f"{prefix}.input_layernorm.weight": (h,),
        f"{prefix}.post_attention_layernorm.weight": (h,),
    }


def language_plan(c) -> dict[str, tuple[int, ...]]:
    """Every non-CLIP tensor of the release layout for config `c`, with its shape."""
    h, v = c.hidden_size, c.vocab_size
    plan = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(c.num_hidden_layers):
        plan.update(decoder_layer_plan(f"model.layers.{i}", c))
    for embed, layers, norm, head, projector in ADAPTERS.values():
        plan[f"{embed}.weight"] = (v, h)
        plan[f"{norm}.weight"] = (h,)
        plan[f"{head}.weight"] = (v, h)
        plan[f"{projector}.0.weight"] = (h, c.mm_hidden_size)
        plan[f"{projector}.0.bias"] = (h,)
        plan[f"{projector}.2.weight"] = (h, h)
        plan[f"{projector}.2.bias"] = (h,)
        for k in range(len(c.iaa_insertion_layers)):
            plan.update(decoder_layer_plan(f"{layers}.{k}", c))
    return plan


def vision_plan(vision_config, num_layers: int) -> tuple[dict, dict]:
    """(required, optional) CLIP tensors under VISION_PREFIX, from HF's CLIPVisionModel."""
    from transformers import CLIPVisionModel

    with torch.device("meta"):
        names = CLIPVisionModel(vision_config).state_dict()
    required, optional = {}, {}
    for name, tensor in names.items():
        # transformers 5 dropped the `vision_model.` level the release (4.x) has.
        name = name if name.startswith("vision_model.") else f"vision_model.{name}"
        parts = name.split(".")
        beyond = parts[2:3] == ["layers"] and int(parts[3]) >= num_layers
        unused = beyond or "post_layernorm" in name or name.endswith("position_ids")
        (optional if unused else required)[VISION_PREFIX + name] = tuple(tensor.shape)
    return required, optional


class CheckpointChecker:
    """Watches the tensors streaming into the model; names what is wrong, once."""

    def __init__(self, required: dict, optional: dict | None = None):
        self.required, self.optional = required, optional or {}
        self.seen: set[str] = set()

    def watch(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator:
        for name, tensor in weights:
            if name.endswith(IGNORABLE_SUFFIXES):
                continue
            shape = self.required.get(name, self.optional.get(name))
            if shape is None:
                if name.startswith(VISION_PREFIX):
                    continue  # CLIP extras (text tower, projections) are not ours to judge
                raise ValueError(f"unexpected tensor {name!r} in the IAA checkpoint")
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape} "
                    "from config.json"
                )
            self.seen.add(name)
            yield name, tensor

    def has_vision(self) -> bool:
        return any(n.startswith(VISION_PREFIX) for n in self.seen)

    def finish(self) -> None:
        missing = sorted(set(self.required) - self.seen)
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ValueError(f"IAA checkpoint is missing tensors: {missing[:5]}{more}")


def vision_tower_weights(folder: str | None, tower: str) -> Iterator[tuple[str, torch.Tensor]]:
    """CLIP weights from the `mm_vision_tower` folder, renamed into the release layout."""
    from safetensors.torch import safe_open

    files = sorted(glob.glob(os.path.join(folder or "", "*.safetensors")))
    if not files:
        raise ValueError(
            f"the checkpoint has no CLIP weights ({VISION_PREFIX}*) and "
            f"mm_vision_tower={tower!r} has no local *.safetensors to take them from"
        )
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if name.startswith("vision_model."):  # CLIPVisionModel or CLIPModel files
                    yield VISION_PREFIX + name, f.get_tensor(name)
