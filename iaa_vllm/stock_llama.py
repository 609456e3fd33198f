"""A stock `LlamaForCausalLM` checkpoint cut out of an IAA checkpoint.

IAA's frozen decoder is a plain Llama (docs/design.md §1), so its tensors alone
(`model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`) plus the Llama
fields of the config make a checkpoint that stock vLLM serves: the like-for-like
baseline. Benchmarks compare against it; tests check the `text` workflow is
bit-identical to it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

from safetensors import safe_open
from safetensors.torch import save_file

from iaa_vllm.checkpoint import INDEX_FILE, weight_map

FROZEN_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "generation_config.json")


def is_frozen(name: str) -> bool:
    return name.startswith(FROZEN_PREFIXES)


def llama_config(iaa_config: dict) -> dict:
    """The Llama fields of an IAA config.json, as a `LlamaForCausalLM` config."""
    from transformers import LlamaConfig

    fields = set(LlamaConfig().to_dict()) | {"rope_theta", "rope_scaling", "torch_dtype"}
    config = {k: v for k, v in iaa_config.items() if k in fields}
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    return config


def write_stock_llama(iaa_dir: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Write the frozen Llama of the IAA checkpoint `iaa_dir` to `out_dir`; returns `out_dir`.

    One output shard per input shard that holds frozen tensors, so a real-size
    checkpoint never sits in memory whole. Existing files in `out_dir` are replaced.
    """
    iaa_dir, out_dir = os.fspath(iaa_dir), os.fspath(out_dir)
    with open(os.path.join(iaa_dir, "config.json"), encoding="utf-8") as f:
        iaa_config = json.load(f)
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map(iaa_dir).items():
        if is_frozen(name):
            by_file.setdefault(file, []).append(name)
    if not by_file:
        raise ValueError(f"no frozen Llama tensors ({', '.join(FROZEN_PREFIXES)}) in {iaa_dir!r}")

    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "model*.safetensors")):
        os.remove(stale)  # an earlier, differently sharded copy would confuse loaders
    written, total = {}, 0
    for i, file in enumerate(sorted(by_file)):
        out_file = f"model-{i + 1:05d}-of-{len(by_file):05d}.safetensors"
        with safe_open(os.path.join(iaa_dir, file), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in by_file[file]}
        save_file(tensors, os.path.join(out_dir, out_file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        written.update(dict.fromkeys(tensors, out_file))

    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": written}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(llama_config(iaa_config), f, indent=2)
    for name in COPIED_FILES:
        if os.path.isfile(os.path.join(iaa_dir, name)):
            shutil.copyfile(os.path.join(iaa_dir, name), os.path.join(out_dir, name))
    return out_dir
