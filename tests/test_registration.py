"""The plugin's entry points resolve, and registration is idempotent."""

from __future__ import annotations

from importlib.metadata import entry_points


def test_general_plugin_entry_point_registers_the_architecture():
    (plugin,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "iaa"]
    register = plugin.load()
    register()
    register()  # idempotent
    from vllm import ModelRegistry

    assert "IAALlamaForCausalLM" in ModelRegistry.get_supported_archs()
    from transformers import AutoConfig

    from iaa_vllm.config import IAAConfig

    assert AutoConfig.for_model("IAA").__class__ is IAAConfig


def test_router_entry_point_resolves():
    from iaa_vllm.routing import WorkflowRouter

    (router,) = [ep for ep in entry_points(group="vllm.logits_processors") if ep.name == "iaa_workflow_router"]
    assert router.load() is WorkflowRouter


def test_admission_is_installed_once():
    from vllm.v1.engine.input_processor import InputProcessor

    from iaa_vllm import register

    register()
    wrapped = InputProcessor.process_inputs
    register()
    assert InputProcessor.process_inputs is wrapped and wrapped._iaa_admission
