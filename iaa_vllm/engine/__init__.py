"""What vLLM loads: the IAA model, its workflow routing and its vLLM hooks.

Every vLLM object the plugin registers or patches is listed in `patches/__init__.py`.

Nothing in this package imports from the rest of `iaa_vllm`; the tools (CLI,
checkpoint writer, demo, eval, client) sit above it and import from it.
docs/design.md §6 maps the modules.
"""

from iaa_vllm.engine.names import ARCHITECTURE, EXTRA_ARGS_KEY, MODEL_TYPE

__all__ = ["ARCHITECTURE", "EXTRA_ARGS_KEY", "MODEL_TYPE", "register"]


def register() -> None:
    """vLLM `general_plugins` entry point: runs in every vLLM process.

    Lazy and idempotent: only string references and light imports here.
    """
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "iaa_vllm.engine.model:IAALlamaForCausalLM")

    from iaa_vllm.engine import config_hook, patches
    from iaa_vllm.engine.config import register_config

    register_config()
    config_hook.install()
    patches.install()
