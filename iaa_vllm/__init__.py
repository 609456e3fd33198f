"""vLLM plugin for the IAA (Inner-Adaptor Architecture) multimodal model.

Two layers (docs/design.md §6):
- `iaa_vllm.engine`: what vLLM loads, the model, its routing and its hooks;
- the modules here: what people run, the CLI, checkpoint writer, demo, eval and
  client. They import from `engine`, never the other way round.
"""

from iaa_vllm.engine.names import ARCHITECTURE, EXTRA_ARGS_KEY, MODEL_TYPE

__all__ = ["ARCHITECTURE", "EXTRA_ARGS_KEY", "MODEL_TYPE"]
