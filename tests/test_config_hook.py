"""IAA's engine settings come from vLLM's per-architecture hook, for IAA engines only.

Each case builds a real engine config (`EngineArgs.create_engine_config`, which
runs the hook) without starting an engine.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm.config import CompilationConfig, CUDAGraphMode
from vllm.engine.arg_utils import EngineArgs

from iaa_vllm.engine.config_hook import WORKFLOW_SLOTS, IAAEngineConfig, refuse_unsafe_graphs


def engine_config(model: str, **kwargs):
    return EngineArgs(model=model, max_model_len=2048, **kwargs).create_engine_config()


def test_iaa_engines_get_the_v1_workflow_feed_and_others_do_not(tiny_dir, stock_dir):
    assert engine_config(tiny_dir).model_config.logits_processors == [WORKFLOW_SLOTS]
    assert not engine_config(stock_dir).model_config.logits_processors


def test_a_users_own_logits_processors_are_kept(tiny_dir):
    theirs = "vllm.v1.sample.logits_processor.builtin:MinTokensLogitsProcessor"
    config = engine_config(tiny_dir, logits_processors=[theirs])
    assert config.model_config.logits_processors == [theirs, WORKFLOW_SLOTS]


def hook_input(mode=None, v2=False):
    """The parts of a VllmConfig the hook reads, around a real CompilationConfig."""
    compilation = CompilationConfig() if mode is None else CompilationConfig(cudagraph_mode=mode)
    return SimpleNamespace(
        compilation_config=compilation,
        parallel_config=SimpleNamespace(pipeline_parallel_size=1, enable_dbo=False),
        model_config=SimpleNamespace(enforce_eager=False, logits_processors=None),
        speculative_config=None,
        use_v2_model_runner=v2,
    )


def test_cuda_graphs_default_to_piecewise_and_user_choices_stay():
    # On the CPU backend vLLM later drops CUDA graphs whatever the mode; the
    # default the hook picks is what a GPU engine gets.
    config = hook_input()
    IAAEngineConfig.verify_and_update_config(config)
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE
    config = hook_input(CUDAGraphMode.NONE)
    IAAEngineConfig.verify_and_update_config(config)
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE


def test_model_runner_v2_gets_no_v1_logits_processor():
    config = hook_input(v2=True)
    IAAEngineConfig.verify_and_update_config(config)
    assert config.model_config.logits_processors is None


@pytest.mark.parametrize("mode", ["FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"])
def test_full_cuda_graphs_are_refused_naming_piecewise(tiny_dir, mode):
    with pytest.raises(ValueError, match=f"not {mode}: .*cudagraph_mode=PIECEWISE"):
        engine_config(tiny_dir, compilation_config={"cudagraph_mode": mode})
    # --enforce-eager wins over any graph mode, as for every vLLM model.
    config = engine_config(tiny_dir, compilation_config={"cudagraph_mode": mode}, enforce_eager=True)
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE


def test_pipeline_parallel_is_refused_with_what_works(tiny_dir):
    with pytest.raises(ValueError, match=r"pipeline_parallel_size=2.*tensor parallelism or replicas"):
        engine_config(tiny_dir, pipeline_parallel_size=2)


def test_speculative_decoding_is_refused_naming_the_method(tiny_dir):
    speculative = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    with pytest.raises(ValueError, match=r"speculative decoding \(speculative_config method='ngram'\).*without --speculative-config"):
        engine_config(tiny_dir, speculative_config=speculative)


def final_config(cudagraph_mode, compile_mode, enforce_eager=False):
    """The parts of an engine's final VllmConfig `refuse_unsafe_graphs` reads."""
    from vllm.config import CompilationMode

    return SimpleNamespace(
        compilation_config=SimpleNamespace(cudagraph_mode=cudagraph_mode, mode=CompilationMode[compile_mode]),
        model_config=SimpleNamespace(enforce_eager=enforce_eager),
    )


def test_breakable_cuda_graphs_are_refused_naming_the_switch(monkeypatch):
    # vLLM sets this (and compilation mode NONE) after the hook, for some shapes also
    # under VLLM_BATCH_INVARIANT=1; the model checks the final settings.
    monkeypatch.setenv("VLLM_USE_BREAKABLE_CUDAGRAPH", "1")
    with pytest.raises(ValueError, match="breakable CUDA graphs .*VLLM_USE_BREAKABLE_CUDAGRAPH=0"):
        refuse_unsafe_graphs(final_config(CUDAGraphMode.PIECEWISE, "NONE"))
    refuse_unsafe_graphs(final_config(CUDAGraphMode.NONE, "NONE"))  # no graphs: nothing captured
    refuse_unsafe_graphs(final_config(CUDAGraphMode.PIECEWISE, "NONE", enforce_eager=True))


def test_graphs_without_piecewise_compilation_are_refused(monkeypatch):
    monkeypatch.setenv("VLLM_USE_BREAKABLE_CUDAGRAPH", "0")
    with pytest.raises(ValueError, match="need compilation mode VLLM_COMPILE, not NONE.*-cc.cudagraph_mode=NONE"):
        refuse_unsafe_graphs(final_config(CUDAGraphMode.PIECEWISE, "NONE"))
    with pytest.raises(ValueError, match="not FULL_AND_PIECEWISE"):  # a mode vLLM chose after the hook
        refuse_unsafe_graphs(final_config(CUDAGraphMode.FULL_AND_PIECEWISE, "VLLM_COMPILE"))
    refuse_unsafe_graphs(final_config(CUDAGraphMode.PIECEWISE, "VLLM_COMPILE"))  # the IAA default
