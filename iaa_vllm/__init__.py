"""vLLM plugin for the IAA (Inner-Adaptor Architecture) multimodal model."""

ARCHITECTURE = "IAALlamaForCausalLM"
MODEL_TYPE = "IAA"
# Where a request names its workflow: `SamplingParams.extra_args` offline, `vllm_xargs`
# in an OpenAI request. Here, not in routing.py, so the client needs no vLLM import.
EXTRA_ARGS_KEY = "iaa_workflow"


def register() -> None:
    """vLLM `general_plugins` entry point: runs in every vLLM process.

    Lazy and idempotent: only string references and light imports here.
    """
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "iaa_vllm.model:IAALlamaForCausalLM")

    from iaa_vllm import admission, config_hook
    from iaa_vllm.config import register_config

    register_config()
    config_hook.install()
    admission.install()
