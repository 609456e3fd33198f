"""engine/patches/: the registry names every patch file, and each vLLM object it lists
is changed where, and only where, the registry says (a fresh process each, no engine)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

from iaa_vllm.engine import patches

PATCHES_DIR = pathlib.Path(patches.__file__).parent
ROOT = pathlib.Path(__file__).resolve().parent.parent

# What each step leaves patched: vLLM object -> `_iaa_patch` set on it.
_PROBE = """
import importlib, json, sys
from vllm.connections import HTTPConnection
from vllm.multimodal.media.connector import MediaConnector
from vllm.multimodal.media.image import ImageMediaIO
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.input_processor import InputProcessor
from iaa_vllm.engine import compat

launcher = importlib.import_module(compat.API_LAUNCHER_MODULE)
objects = {
    "InputProcessor.process_inputs": lambda: InputProcessor.process_inputs,
    "ImageMediaIO.load_bytes": lambda: ImageMediaIO.load_bytes,
    "ImageMediaIO.load_base64": lambda: ImageMediaIO.load_base64,
    "MediaConnector.fetch_image": lambda: MediaConnector.fetch_image,
    "MediaConnector.fetch_image_async": lambda: MediaConnector.fetch_image_async,
    "HTTPConnection.get_bytes": lambda: HTTPConnection.get_bytes,
    "AsyncLLM.shutdown": lambda: AsyncLLM.shutdown,
    "terminate_if_errored": lambda: launcher.terminate_if_errored,
}
def patched():
    return sorted(name for name, get in objects.items() if getattr(get(), "_iaa_patch", False))
steps = {"imported": patched()}
from iaa_vllm.engine import patches, register
register()
steps["register"] = patched()
patches.watch_engine_death()
steps["watch_engine_death"] = patched()
steps["downloads_capped"] = compat.MEDIA_DOWNLOADS_CAPPED
print(json.dumps(steps))
"""

EVERY_PROCESS = ["ImageMediaIO.load_base64", "ImageMediaIO.load_bytes", "InputProcessor.process_inputs",
                 "MediaConnector.fetch_image", "MediaConnector.fetch_image_async"]
SERVE_ONLY = ["AsyncLLM.shutdown", "terminate_if_errored"]


def test_each_object_is_patched_by_the_step_the_registry_names():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "VLLM_PLUGINS": ""})  # the probe calls register itself
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads(done.stdout.splitlines()[-1])
    assert steps["imported"] == []  # importing vLLM and the plugin changes nothing
    # vLLM 0.29+ caps downloads itself: HTTPConnection is patched on 0.26-0.28 only
    download_cap = [] if steps["downloads_capped"] else ["HTTPConnection.get_bytes"]
    assert steps["register"] == sorted(EVERY_PROCESS + download_cap)
    assert steps["watch_engine_death"] == sorted(EVERY_PROCESS + download_cap + SERVE_ONLY)


def test_the_registry_lists_every_patch_file():
    listed = set(re.findall(r"\(`(\w+\.py)`\)", patches.__doc__))
    files = {p.name for p in PATCHES_DIR.glob("*.py")} - {"__init__.py"}
    assert listed == files
