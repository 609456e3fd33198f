"""The plugin's entry points resolve, and registration is idempotent."""

from __future__ import annotations

from importlib.metadata import distribution, entry_points


def test_general_plugin_entry_point_registers_the_architecture():
    (plugin,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "iaa"]
    register = plugin.load()
    register()
    register()  # idempotent
    from vllm import ModelRegistry

    assert "IAALlamaForCausalLM" in ModelRegistry.get_supported_archs()
    from transformers import AutoConfig

    from iaa_vllm.engine.config import IAAConfig

    assert AutoConfig.for_model("IAA").__class__ is IAAConfig


def test_the_plugin_registers_nothing_other_engines_load():
    """Only `vllm.general_plugins` (registration) and the console script: no logits
    processor, which vLLM would load into every engine (Model Runner V2 refuses them)."""
    ours = [(ep.group, ep.name) for ep in distribution("iaa-vllm").entry_points]
    assert sorted(ours) == [("console_scripts", "iaa-vllm"), ("vllm.general_plugins", "iaa")]


def test_config_hook_is_registered_for_iaa_only():
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from iaa_vllm.engine import register
    from iaa_vllm.engine.config_hook import IAAEngineConfig

    register()
    ours = {arch for arch, hook in MODELS_CONFIG_MAP.items() if hook.__module__.startswith("iaa_vllm")}
    assert ours == {"IAALlamaForCausalLM"}
    assert MODELS_CONFIG_MAP["IAALlamaForCausalLM"] is IAAEngineConfig


def test_admission_is_installed_once():
    from vllm.v1.engine.input_processor import InputProcessor

    from iaa_vllm.engine import register

    register()
    wrapped = InputProcessor.process_inputs
    register()
    assert InputProcessor.process_inputs is wrapped and wrapped._iaa_patch
