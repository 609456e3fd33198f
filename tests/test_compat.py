"""compat.py gives the installed vLLM the form of each interface it expects."""

from __future__ import annotations

import inspect

import vllm
from vllm.multimodal.processing import BaseMultiModalProcessor

from iaa_vllm.engine import compat
from iaa_vllm.engine.processing import IAAMultiModalProcessor

# The versions compat.py's table was checked on -> where vLLM calls the HF processor.
CHECKED = {"0.26": "prompt", "0.27": "prompt", "0.28": "prompt", "0.29": "apply_main",
           "0.30": "apply_main", "0.31": "hf_data", "0.32": "hf_data"}
OVERRIDDEN = {"prompt": "_call_hf_processor", "hf_data": "_call_hf_processor",
              "apply_main": "_apply_hf_processor_main"}


def test_processor_overrides_the_installed_signature():
    name = OVERRIDDEN[compat.HF_PROCESSOR_FORM]
    base = inspect.signature(getattr(BaseMultiModalProcessor, name)).parameters
    ours = inspect.signature(getattr(IAAMultiModalProcessor, name)).parameters
    assert list(ours) == list(base)
    assert getattr(IAAMultiModalProcessor, name) is not getattr(BaseMultiModalProcessor, name)


def test_checked_versions_take_their_known_form():
    minor = ".".join(vllm.__version__.split(".")[:2])
    if minor in CHECKED:
        assert compat.HF_PROCESSOR_FORM == CHECKED[minor]


# The versions compat.py's table was checked on -> whether vLLM caps a media download itself.
DOWNLOADS_CAPPED = {"0.26": False, "0.27": False, "0.28": False, "0.29": True, "0.30": True,
                    "0.31": True, "0.32": True}


def test_media_download_cap_and_launcher_match_the_installed_vllm():
    import importlib

    minor = ".".join(vllm.__version__.split(".")[:2])
    if minor in DOWNLOADS_CAPPED:
        assert compat.MEDIA_DOWNLOADS_CAPPED is DOWNLOADS_CAPPED[minor]
    launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)
    assert list(inspect.signature(inspect.unwrap(launcher.terminate_if_errored)).parameters) == ["server", "engine"]
