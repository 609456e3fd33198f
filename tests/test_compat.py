"""compat.py gives the installed vLLM the form of each interface it expects."""

from __future__ import annotations

import inspect

import vllm
from vllm.multimodal.processing import BaseMultiModalProcessor

from iaa_vllm.engine import compat
from iaa_vllm.engine.processing import IAAMultiModalProcessor

# The versions compat.py's table was checked on -> whether the processor tokenizes.
CHECKED = {"0.26": True, "0.32": False}


def test_processor_overrides_the_installed_signature():
    base = inspect.signature(BaseMultiModalProcessor._call_hf_processor).parameters
    ours = inspect.signature(IAAMultiModalProcessor._call_hf_processor).parameters
    assert list(ours) == list(base)


def test_checked_versions_take_their_known_form():
    minor = ".".join(vllm.__version__.split(".")[:2])
    if minor in CHECKED:
        assert compat.PROCESSOR_TOKENIZES_PROMPT is CHECKED[minor]


# The versions compat.py's table was checked on -> whether vLLM caps a media download itself.
DOWNLOADS_CAPPED = {"0.26": False, "0.32": True}


def test_media_download_cap_and_launcher_match_the_installed_vllm():
    import importlib

    minor = ".".join(vllm.__version__.split(".")[:2])
    if minor in DOWNLOADS_CAPPED:
        assert compat.MEDIA_DOWNLOADS_CAPPED is DOWNLOADS_CAPPED[minor]
    launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)
    assert list(inspect.signature(inspect.unwrap(launcher.terminate_if_errored)).parameters) == ["server", "engine"]
