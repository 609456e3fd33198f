"""Set-ups that would silently break workflow routing are refused with the fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm.config import CUDAGraphMode

from iaa_vllm.model import refuse_unsupported


def vllm_config(pp=1, v2=False, graphs=CUDAGraphMode.NONE, sizes=()):
    return SimpleNamespace(
        parallel_config=SimpleNamespace(pipeline_parallel_size=pp),
        use_v2_model_runner=v2,
        compilation_config=SimpleNamespace(cudagraph_mode=graphs, cudagraph_capture_sizes=list(sizes)),
    )


def test_eager_v1_single_stage_is_accepted():
    refuse_unsupported(vllm_config())
    # The CPU backend keeps a graph mode but captures nothing: accepted.
    refuse_unsupported(vllm_config(graphs=CUDAGraphMode.FULL_AND_PIECEWISE, sizes=()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pp=2), "pipeline_parallel_size=2"),
        (dict(v2=True), "VLLM_USE_V2_MODEL_RUNNER=0"),
        (dict(graphs=CUDAGraphMode.FULL, sizes=(1, 2)), "--enforce-eager"),
    ],
)
def test_unsupported_setups_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        refuse_unsupported(vllm_config(**kwargs))
