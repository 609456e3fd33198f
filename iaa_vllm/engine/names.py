"""The names a checkpoint, the engine and a client must agree on.

Kept free of imports so that a client can read them without vLLM or torch.
"""

ARCHITECTURE = "IAALlamaForCausalLM"  # config.json "architectures"
MODEL_TYPE = "IAA"  # config.json "model_type"
# Where a request names its workflow: `SamplingParams.extra_args` offline, `vllm_xargs`
# in an OpenAI request.
EXTRA_ARGS_KEY = "iaa_workflow"
# The workflows a request can name; a workflow's id in the engine is its index here.
WORKFLOWS = ("text", "mm", "grounding")
IMAGE_WORKFLOWS = ("mm", "grounding")
