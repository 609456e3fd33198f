"""IAA (Inner-Adaptor Architecture) on vLLM: one frozen Llama, three workflows, one batch.

Class ladder as in vLLM's llava.py: workflow adapter set → IAALlamaForCausalLM,
with processing in `processing.py`. The frozen Llama is vLLM's own `LlamaModel`
and `ParallelLMHead`; CLIP is vLLM's `CLIPVisionModel`. What IAA adds:

- per image workflow (`mm`, `grounding`): embedding table, final norm, LM head,
  projector (`IAAWorkflowSet`) and insertion layers (`insertion.py`);
- per-token routing (`routing.py`): text rows run exactly the stock Llama path,
  image rows swap in their workflow's embedding, insertion layers, norm and head.

CLIP features travel from `embed_multimodal` to `forward` unprojected, packed into
the first `mm_hidden_size` columns of their placeholder rows: the projector
depends on the workflow, which only the forward knows, and the encoder cache
then holds one workflow-free entry per image (mm and grounding never collide).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import CUDAGraphMode, VllmConfig
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaModel
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from iaa_vllm import config as iaa_config
from iaa_vllm import routing, weights
from iaa_vllm.insertion import IAAInsertionLayer
from iaa_vllm.processing import (
    IAADummyInputsBuilder,
    IAAMultiModalProcessor,
    IAAProcessingInfo,
)
from iaa_vllm.projector import IAAProjector


class IAAWorkflowSet(nn.Module):
    """One image workflow's own embedding, final norm, LM head and projector."""

    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=f"{prefix}.embed_tokens",
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=f"{prefix}.lm_head",
        )
        self.projector = IAAProjector(
            config.mm_hidden_size, config.hidden_size, quant_config, f"{prefix}.projector"
        )


def _set_renames() -> dict[str, str]:
    renames = {}
    for wf, (embed, layers, norm, head, projector) in weights.SETS.items():
        renames[rf"^{re.escape(layers)}\.(\d+)\."] = rf"insertion_layers.\1.experts.{wf}."
        renames[rf"^{re.escape(embed)}\."] = f"sets.{wf}.embed_tokens."
        renames[rf"^{re.escape(norm)}\."] = f"sets.{wf}.norm."
        renames[rf"^{re.escape(head)}\."] = f"sets.{wf}.lm_head."
        renames[rf"^{re.escape(projector)}\.0\."] = f"sets.{wf}.projector.linear_1."
        renames[rf"^{re.escape(projector)}\.2\."] = f"sets.{wf}.projector.linear_2."
    return {re.compile(k): v for k, v in renames.items()}


def refuse_unsupported(vllm_config: VllmConfig) -> None:
    """Refuse, with the fix in the message, set-ups that would break routing.

    Model Runner V2 does not drive the logits-processor hook routing relies on; a
    CUDA graph captured on a dummy (all-text) batch would replay the text path for
    every batch, silently skipping the image workflows; the layer loop interleaves
    insertion layers with every frozen layer, so all layers must be local (no PP).
    """
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise ValueError(
            "IAA does not support pipeline parallelism "
            f"(pipeline_parallel_size={vllm_config.parallel_config.pipeline_parallel_size}); "
            "use tensor parallelism or replicas"
        )
    if getattr(vllm_config, "use_v2_model_runner", False):
        raise ValueError(
            "IAA routes workflows through the V1 model runner; set "
            "VLLM_USE_V2_MODEL_RUNNER=0 (this vLLM version defaults to Model Runner V2)"
        )
    compilation = vllm_config.compilation_config
    if compilation.cudagraph_mode != CUDAGraphMode.NONE and compilation.cudagraph_capture_sizes:
        raise ValueError(
            "IAA routes workflows per token with data-dependent indexing, which CUDA "
            f"graphs cannot capture (cudagraph_mode={compilation.cudagraph_mode.name}); "
            "start the engine with --enforce-eager (LLM(..., enforce_eager=True))"
        )


@MULTIMODAL_REGISTRY.register_processor(
    IAAMultiModalProcessor, info=IAAProcessingInfo, dummy_inputs=IAADummyInputsBuilder
)
class IAALlamaForCausalLM(nn.Module, SupportsMultiModal):
    # Release names → module names; frozen Llama names are already vLLM's.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_regex=_set_renames(),
        orig_to_new_stacked=LlamaModel.hf_to_vllm_mapper.orig_to_new_stacked,
        orig_to_new_prefix={weights.VISION_PREFIX: "vision_tower."},
    )
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    # The forward needs token ids to route rows (image positions, adapter tables).
    requires_raw_input_tokens = True

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            from iaa_vllm.tokenizer import IMAGE_TOKEN

            return IMAGE_TOKEN
        raise ValueError(f"IAA takes images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        iaa_config.validate(config)
        refuse_unsupported(vllm_config)
        quant_config = vllm_config.quant_config
        self.config, self.vllm_config = config, vllm_config
        self.vision_config = iaa_config.vision_config(config)
        self.num_vision_layers = iaa_config.num_vision_layers(config, self.vision_config)
        # Frozen layer index -> insertion layer index.
        self.insertion_after = {d: k for k, d in enumerate(config.iaa_insertion_layers)}

        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = CLIPVisionModel(
                self.vision_config, quant_config,
                num_hidden_layers_override=self.num_vision_layers,
                require_post_norm=False, prefix=maybe_prefix(prefix, "vision_tower"),
            )
        with self._mark_language_model(vllm_config):
            self.model = LlamaModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.hidden_size, quant_config=quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            self.insertion_layers = nn.ModuleList(
                IAAInsertionLayer(
                    config, vllm_config.cache_config, quant_config,
                    prefix=maybe_prefix(prefix, f"insertion_layers.{k}"),
                )
                for k in range(len(config.iaa_insertion_layers))
            )
            self.sets = nn.ModuleDict(
                {
                    wf: IAAWorkflowSet(config, quant_config, maybe_prefix(prefix, f"sets.{wf}"))
                    for wf in routing.IMAGE_WORKFLOWS
                }
            )
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        self._last_routes = None  # (per-token workflow, forward output) of the last forward

    # ---- vision -------------------------------------------------------------
    def embed_multimodal(self, **kwargs) -> list[torch.Tensor]:
        """pixel_values [n, 3, S, S] → n CLIP feature maps [576, mm_hidden] (unprojected)."""
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        features = self.vision_tower(
            pixel_values.to(self.vision_tower.vision_model.dtype),
            feature_select_strategy="default",  # drop CLS: `mm_vision_select_feature: patch`
        )
        return list(features)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        """Frozen embeddings; placeholder rows carry their CLIP feature, zero-padded."""
        embeds = self.model.embed_input_ids(input_ids)
        if multimodal_embeddings is None or is_multimodal is None or not len(multimodal_embeddings):
            return embeds
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in multimodal_embeddings])
        carrier = embeds.new_zeros(features.shape[0], embeds.shape[-1])
        carrier[:, : features.shape[-1]] = features.to(embeds.dtype)
        embeds[is_multimodal] = carrier
        return embeds

    # ---- language -----------------------------------------------------------
    def _routes(self, input_ids, positions, num_tokens):
        """Per-token workflow ids and the rows of each image workflow, or None."""
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):  # micro-batching: one dict per micro-batch
            raise NotImplementedError("IAA does not support micro-batching (DBO)")
        if not metadata:  # profiling and dummy runs carry no requests
            return None
        query_start_loc = next(iter(metadata.values())).query_start_loc
        router = routing.router_for(self.vllm_config)
        routed = routing.token_workflows(router, query_start_loc, num_tokens)
        if routed is None:
            return None
        workflow, prompt_len = (t.to(input_ids.device) for t in routed)
        is_image = (
            (workflow != routing.TEXT)
            & (input_ids == self.config.image_token_index)
            & (positions < prompt_len)
        )
        rows = {}
        for wf in routing.IMAGE_WORKFLOWS:
            idx = (workflow == routing.WORKFLOWS.index(wf)).nonzero().squeeze(1)
            if idx.numel():
                rows[wf] = idx
        return workflow, rows, is_image

    def _embed_image_rows(self, hidden, input_ids, rows, is_image):
        """Swap in each workflow's embedding, and projected CLIP features at placeholders."""
        hidden = hidden.clone()
        mm_hidden = self.config.mm_hidden_size
        for wf, idx in rows.items():
            wf_set = self.sets[wf]
            embeds = wf_set.embed_tokens(input_ids[idx])
            image_rows = is_image[idx]
            if image_rows.any():
                features = hidden[idx[image_rows], :mm_hidden]
                embeds[image_rows] = wf_set.projector(features).to(embeds.dtype)
            hidden[idx] = embeds
        return hidden

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        num_tokens = positions.shape[-1]
        routes = self._routes(input_ids, positions, num_tokens) if input_ids is not None else None
        hidden = inputs_embeds if inputs_embeds is not None else self.model.embed_input_ids(input_ids)
        if routes is not None:
            _, rows, is_image = routes
            hidden = self._embed_image_rows(hidden, input_ids, rows, is_image)
        residual = None
        for i, layer in enumerate(self.model.layers):
            hidden, residual = layer(positions, hidden, residual)
            k = self.insertion_after.get(i)
            if routes is not None and k is not None:
                hidden, residual = self.insertion_layers[k](positions, hidden, residual, rows)
        if routes is None:
            self._last_routes = None
            out, _ = self.model.norm(hidden, residual)
            return out
        stream = hidden + residual
        out, _ = self.model.norm(hidden, residual)
        for wf, idx in rows.items():
            out[idx] = self.sets[wf].norm(stream[idx])
        self._last_routes = (routes[0], out)
        return out

    def _logit_row_workflows(self, hidden_states):
        """Workflow id per row handed to compute_logits, or None if all text.

        Sampling passes one gathered row per request, in batch-slot order; prompt
        logprobs pass a slice (a view) of the last forward's output.
        """
        if self._last_routes is None:
            return None
        token_workflow, out = self._last_routes
        if hidden_states.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
            start = (hidden_states.data_ptr() - out.data_ptr()) // (out.stride(0) * out.element_size())
            return token_workflow[start : start + hidden_states.shape[0]]
        router = routing.router_for(self.vllm_config)
        return torch.from_numpy(router.workflow[: hidden_states.shape[0]]).to(hidden_states.device)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        row_workflow = self._logit_row_workflows(hidden_states)
        if row_workflow is None or not bool((row_workflow != routing.TEXT).any()):
            return self.logits_processor(self.lm_head, hidden_states)
        # Each row through its own workflow's head: selected, never blended. Every
        # rank calls every head: the logits gather is a collective.
        heads = [self.lm_head] + [self.sets[wf].lm_head for wf in routing.IMAGE_WORKFLOWS]
        logits, gathered_here = None, True
        for workflow_id, head in enumerate(heads):
            idx = (row_workflow == workflow_id).nonzero().squeeze(1)
            if not idx.numel():
                continue
            part = self.logits_processor(head, hidden_states[idx])
            if part is None:  # not the rank that receives the gathered logits
                gathered_here = False
                continue
            if logits is None:
                logits = part.new_empty(hidden_states.shape[0], part.shape[-1])
            logits[idx] = part
        return logits if gathered_here else None

    # ---- weights ------------------------------------------------------------
    def load_weights(self, weights_in: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        required, optional = weights.vision_plan(self.vision_config, self.num_vision_layers)
        checker = weights.CheckpointChecker({**weights.language_plan(self.config), **required}, optional)
        loader = AutoWeightsLoader(self)
        loaded = loader.load_weights(checker.watch(weights_in), mapper=self.hf_to_vllm_mapper)
        if not checker.has_vision():
            tower = self.config.mm_vision_tower
            clip = weights.vision_tower_weights(iaa_config.vision_tower_dir(self.config), tower)
            loaded |= loader.load_weights(checker.watch(clip), mapper=self.hf_to_vllm_mapper)
        checker.finish()
        return loaded
