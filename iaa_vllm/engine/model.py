"""IAA (Inner-Adaptor Architecture) on vLLM: one frozen Llama, three workflows, one batch.

Class ladder as in vLLM's llava.py: workflow adapter set -> IAALlamaForCausalLM,
with processing in `processing.py`. The frozen Llama is vLLM's own compiled
`LlamaModel` and `ParallelLMHead` (`custom_ops.py` adds IAA's two steps to it as
opaque ops); CLIP is vLLM's `CLIPVisionModel`. What IAA adds:

- per image workflow (`mm`, `grounding`): embedding table, LM head and projector
  (`IAAAdapter`), final norm (`custom_ops.IAAFinalNorm`) and insertion layers
  (`insertion.py`);
- per-request workflows (`routing.py`): text rows run exactly the stock Llama
  path; image rows get their workflow's embedding, insertion layers, norm, head.

The forward itself stays eager and small: it expands the batch's workflows to
tokens, swaps image rows' embeddings in place in the runner's `inputs_embeds`
buffer (so a replayed graph reads them), runs the compiled Llama, and tags each
output row with its workflow for `compute_logits`.

CLIP features travel from `embed_multimodal` to `forward` unprojected, packed into
the first `mm_hidden_size` columns of their placeholder rows: the projector
depends on the workflow, which only the forward knows, and the encoder cache
then holds one workflow-free entry per image (mm and grounding never collide).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import CompilationMode, VllmConfig
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

from iaa_vllm.engine import config as iaa_config
from iaa_vllm.engine import config_hook, custom_ops, routing, weights
from iaa_vllm.engine.insertion import IAAInsertionLayer
from iaa_vllm.engine.processing import (
    IAADummyInputsBuilder,
    IAAImagePixelInputs,
    IAAMultiModalProcessor,
    IAAProcessingInfo,
)
from iaa_vllm.engine.projector import IAAProjector


class IAAAdapter(nn.Module):
    """One image workflow's own embedding, LM head and projector (its norm: `custom_ops.IAAFinalNorm`)."""

    def __init__(self, config, quant_config, prefix: str):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=f"{prefix}.embed_tokens",
        )
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, quant_config=quant_config,
            prefix=f"{prefix}.lm_head",
        )
        self.projector = IAAProjector(
            config.mm_hidden_size, config.hidden_size, quant_config, f"{prefix}.projector"
        )


@MULTIMODAL_REGISTRY.register_processor(
    IAAMultiModalProcessor, info=IAAProcessingInfo, dummy_inputs=IAADummyInputsBuilder
)
class IAALlamaForCausalLM(nn.Module, SupportsMultiModal):
    # Release names → module names (weights.py); frozen Llama names are already vLLM's.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_regex=weights.ADAPTER_RENAMES,
        orig_to_new_stacked=LlamaModel.hf_to_vllm_mapper.orig_to_new_stacked,
        orig_to_new_prefix={weights.VISION_PREFIX: weights.VISION_MODULE},
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
            return iaa_config.IMAGE_TOKEN
        raise ValueError(f"IAA takes images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        iaa_config.validate(config)
        quant_config = vllm_config.quant_config
        self.config = config
        self.vision_config = iaa_config.vision_config(config)
        self.num_vision_layers = iaa_config.num_vision_layers(config, self.vision_config)
        config_hook.refuse_unsafe_graphs(vllm_config)
        compilation = vllm_config.compilation_config
        if compilation.mode == CompilationMode.VLLM_COMPILE:
            # Before LlamaModel's compile wrapper exists: cut the graph at IAA's ops.
            ops = list(compilation.splitting_ops or [])
            compilation.splitting_ops = ops + [op for op in custom_ops.SPLITTING_OPS if op not in ops]

        # Per-request workflows, fed by a runner adapter (routing.py), read by the ops.
        self.workflows = routing.WorkflowState(
            vllm_config.scheduler_config.max_num_seqs, config.image_token_index
        )
        custom_ops.register_layer(vllm_config, maybe_prefix(prefix, "workflows"), self.workflows)
        insertion_names = {
            depth: maybe_prefix(prefix, f"insertion_layers.{k}")
            for k, depth in enumerate(config.iaa_insertion_layers)
        }

        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = CLIPVisionModel(
                self.vision_config, quant_config,
                num_hidden_layers_override=self.num_vision_layers,
                require_post_norm=False, prefix=maybe_prefix(prefix, "vision_tower"),
            )
        with self._mark_language_model(vllm_config):
            self.model = LlamaModel(
                vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"),
                layer_type=functools.partial(custom_ops.IAADecoderLayer, insertion_names=insertion_names),
            )
            norm_name = maybe_prefix(prefix, "model.norm")
            self.model.norm = custom_ops.IAAFinalNorm(
                config.hidden_size, config.rms_norm_eps, self.workflows, norm_name
            )
            custom_ops.register_layer(vllm_config, norm_name, self.model.norm)
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.hidden_size, quant_config=quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            self.insertion_layers = nn.ModuleList(
                IAAInsertionLayer(config, vllm_config.cache_config, quant_config, name, self.workflows)
                for name in insertion_names.values()
            )
            for name, layer in zip(insertion_names.values(), self.insertion_layers):
                custom_ops.register_layer(vllm_config, name, layer)
            self.adapters = nn.ModuleDict(
                {
                    wf: IAAAdapter(config, quant_config, maybe_prefix(prefix, f"adapters.{wf}"))
                    for wf in routing.IMAGE_WORKFLOWS
                }
            )
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def get_model_state_cls(self):
        """Model Runner V2: the state that feeds this model's workflows (runner_v2.py)."""
        from iaa_vllm.engine.runner_v2 import IAAModelState

        return IAAModelState

    # ---- vision -------------------------------------------------------------
    def embed_multimodal(self, **kwargs) -> list[torch.Tensor]:
        """pixel_values [n, 3, S, S] → n CLIP feature maps [576, mm_hidden] (unprojected)."""
        if kwargs.get("pixel_values") is None:
            return []
        image_input = IAAImagePixelInputs(pixel_values=kwargs["pixel_values"],
                                          resolve_bindings={"s": self.vision_config.image_size})
        pixel_values = image_input.pixel_values
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
        packed = embeds.new_zeros(features.shape[0], embeds.shape[-1])
        packed[:, : features.shape[-1]] = features.to(embeds.dtype)
        # masked_scatter_, as vLLM's own merge: boolean-mask assignment would read the
        # mask's count back to the host.
        embeds.masked_scatter_(is_multimodal.unsqueeze(-1), packed)
        self.workflows.features_pending = True  # the coming forward has placeholder rows
        return embeds

    # ---- language -----------------------------------------------------------
    def _embed_image_rows_(self, embeds, input_ids, step: routing.Step) -> None:
        """Image rows of embeds [T, H], in place: their workflow's embedding, and
        projected CLIP features at placeholders (read from the rows' first columns).

        The projector runs on all of a workflow's rows of a step that carries features
        and `where` keeps it at placeholders: selecting the placeholder rows would read
        their count back to the host.
        """
        mm_hidden = self.config.mm_hidden_size
        for wf, idx in step.rows.items():
            adapter = self.adapters[wf]
            new = adapter.embed_tokens(input_ids[idx])
            if step.has_features:
                projected = adapter.projector(embeds[idx, :mm_hidden]).to(new.dtype)
                new = torch.where(step.image_rows[idx].unsqueeze(1), projected, new)
            embeds[idx] = new

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        """-> [T, hidden + 1]: final hidden states, and each row's workflow id (routing.tag_rows).

        The compiled Llama always reads the runner's own buffers (`input_ids`, or its
        `inputs_embeds` with image rows swapped in place), never a tensor made here: a
        replayed CUDA graph reads the addresses it was captured with.
        """
        step = self.workflows.begin_step(input_ids, positions)
        if inputs_embeds is None:
            if step is not None:  # image requests come with the runner's embeddings buffer
                raise RuntimeError("IAA image rows reached a forward without the runner's inputs_embeds")
            hidden = self.model(input_ids, positions, intermediate_tensors, None)
            return routing.tag_rows(hidden, None)
        if step is not None:
            self._embed_image_rows_(inputs_embeds, input_ids, step)
        hidden = self.model(None, positions, intermediate_tensors, inputs_embeds)
        return routing.tag_rows(hidden, step)

    def compute_logits(self, tagged: torch.Tensor) -> torch.Tensor | None:
        hidden, row_workflow = routing.untag_rows(tagged)
        if self.workflows.step is None:  # the forward these rows come from had no image row
            return self.logits_processor(self.lm_head, hidden)
        rows = self.workflows.take_sampled_rows(hidden.shape[0])
        if rows is None:  # prompt logprobs' slices: route by the tags (reads them back)
            rows = {wf_id: (row_workflow == wf_id).nonzero().squeeze(1) for wf_id in range(len(routing.WORKFLOWS))}
            rows = {wf_id: idx for wf_id, idx in rows.items() if idx.numel()}
        elif hidden.device.type == "cpu":  # free to check here: the host's rows are the tags'
            expected = torch.empty_like(row_workflow)
            for wf_id, idx in rows.items():
                expected[idx] = wf_id
            if not torch.equal(expected, row_workflow):
                raise RuntimeError(f"sampled rows' workflows {row_workflow.tolist()} != the step's {expected.tolist()}")
        # Each row through its own workflow's head: selected, never blended. Every rank
        # calls the same heads (the logits gather is a collective): all hold one batch.
        heads = [self.lm_head] + [self.adapters[wf].lm_head for wf in routing.IMAGE_WORKFLOWS]
        logits, gathered_here = None, True
        for workflow_id, idx in rows.items():
            part = self.logits_processor(heads[workflow_id], hidden[idx])
            if part is None:  # not the rank that receives the gathered logits
                gathered_here = False
                continue
            if logits is None:
                logits = part.new_empty(hidden.shape[0], part.shape[-1])
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
