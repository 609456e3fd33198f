"""IAA's engine settings, applied to IAA engines only through vLLM's per-architecture hook.

vLLM calls `MODELS_CONFIG_MAP[architecture].verify_and_update_config` while it
builds an engine's config, for that architecture alone. IAA uses it to:

- attach the V1 runner adapter (`runner_v1.WorkflowSlots`) as the engine's own
  logits processor, on the V1 runner only (Model Runner V2 refuses V1-style
  logits processors; there the model's own `ModelState` feeds the workflows);
- default to PIECEWISE CUDA graphs when the user chose no mode, and refuse a
  FULL mode: a full graph would freeze the per-request row choice of one batch;
- refuse what the layer interleaving cannot serve, before the engine starts
  (`refuse_unsupported`; `refuse_unsafe_graphs`, which the model calls on the final
  settings, for the graph modes vLLM picks after this hook).

Checked against vLLM 0.26-0.33 (`vllm/model_executor/models/config.py`,
`VllmConfig.try_verify_and_update_config`).
"""

from __future__ import annotations

from vllm.config import CUDAGraphMode
from vllm.model_executor.models.config import VerifyAndUpdateConfig

from iaa_vllm.engine.names import ARCHITECTURE

WORKFLOW_SLOTS = "iaa_vllm.engine.runner_v1:WorkflowSlots"


class IAAEngineConfig(VerifyAndUpdateConfig):
    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        refuse_unsupported(vllm_config)
        compilation = vllm_config.compilation_config
        if compilation.cudagraph_mode is None:
            compilation.cudagraph_mode = CUDAGraphMode.PIECEWISE
        if not vllm_config.use_v2_model_runner:
            model_config = vllm_config.model_config
            processors = list(model_config.logits_processors or [])
            if WORKFLOW_SLOTS not in processors:
                model_config.logits_processors = [*processors, WORKFLOW_SLOTS]


def refuse_unsupported(vllm_config) -> None:
    """Raise ValueError, with the value and what works instead, for set-ups IAA cannot serve."""
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        raise ValueError(
            "IAA does not support pipeline parallelism "
            f"(pipeline_parallel_size={parallel.pipeline_parallel_size}): an insertion layer "
            "runs right after its frozen layer; use tensor parallelism or replicas"
        )
    if getattr(parallel, "enable_dbo", False):
        raise ValueError(
            "IAA does not support dual-batch overlap (enable_dbo=True): the insertion "
            "layers route one batch's rows; start the engine without --enable-dbo"
        )
    speculative = vllm_config.speculative_config
    if speculative is not None:
        raise ValueError(
            "IAA does not support speculative decoding "
            f"(speculative_config method={getattr(speculative, 'method', None)!r}): a draft "
            "reads the target's hidden states, which carry IAA's workflow column, and "
            "drafts would skip the insertion layers; start the engine without "
            "--speculative-config"
        )
    _refuse_full_graphs(vllm_config)


def _refuse_full_graphs(vllm_config) -> None:
    mode = vllm_config.compilation_config.cudagraph_mode
    if mode is not None and mode.has_full_cudagraphs() and not vllm_config.model_config.enforce_eager:
        raise ValueError(
            f"IAA supports cudagraph_mode PIECEWISE or NONE, not {mode.name}: a full CUDA "
            "graph would replay one batch's workflow rows for every batch. Use "
            "-cc.cudagraph_mode=PIECEWISE (the IAA default), or --enforce-eager"
        )


def refuse_unsafe_graphs(vllm_config) -> None:
    """Raise ValueError where the engine's final settings would capture IAA's routing.

    Called by the model, which sees the config after vLLM's later passes: vLLM turns
    on breakable CUDA graphs (`VLLM_USE_BREAKABLE_CUDAGRAPH`, also set for some
    shapes by `VLLM_BATCH_INVARIANT`) after this hook has run, and with them sets
    compilation mode NONE. IAA's ops are only kept out of the graphs as splitting
    ops of vLLM's piecewise compilation (mode VLLM_COMPILE).
    """
    from vllm.compilation.breakable_cudagraph import is_breakable_cudagraph_enabled
    from vllm.config import CompilationMode

    compilation = vllm_config.compilation_config
    mode = compilation.cudagraph_mode
    if vllm_config.model_config.enforce_eager or mode is None or mode == CUDAGraphMode.NONE:
        return
    _refuse_full_graphs(vllm_config)
    if is_breakable_cudagraph_enabled():
        raise ValueError(
            "IAA does not support breakable CUDA graphs (VLLM_USE_BREAKABLE_CUDAGRAPH=1; "
            "VLLM_BATCH_INVARIANT=1 turns them on for some shapes): they capture the "
            "forward with compilation mode NONE, IAA's per-request rows included. Set "
            "VLLM_USE_BREAKABLE_CUDAGRAPH=0 (PIECEWISE graphs, the IAA default), or --enforce-eager"
        )
    if compilation.mode != CompilationMode.VLLM_COMPILE:
        name = getattr(compilation.mode, "name", compilation.mode)
        raise ValueError(
            f"IAA's CUDA graphs (cudagraph_mode={mode.name}) need compilation mode "
            f"VLLM_COMPILE, not {name}: the graphs are cut at IAA's ops by vLLM's piecewise "
            "compilation. Use -cc.mode=VLLM_COMPILE (the default), or -cc.cudagraph_mode=NONE"
        )


def install() -> None:
    """Register the hook for IAA's architecture (idempotent; other architectures untouched)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, IAAEngineConfig)
