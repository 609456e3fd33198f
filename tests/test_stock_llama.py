"""iaa_vllm/stock_llama.py: the frozen Llama cut out of an IAA checkpoint (no engine).

That the cut checkpoint serves in stock vLLM, bit-identical to IAA's `text`
workflow, is what test_model.py checks through the `stock_dir` fixture.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig

from iaa_vllm import checkpoint
from iaa_vllm.stock_llama import is_frozen, write_stock_llama


@pytest.fixture(scope="module")
def iaa(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("iaa")
    checkpoint.write_checkpoint(path, preset="tiny", dtype="float32", shard_size_mb=1, progress=False)
    return str(path)


def test_keeps_exactly_the_frozen_tensors(iaa, tmp_path):
    out = write_stock_llama(iaa, tmp_path / "llama")
    full, stock = checkpoint.load_state_dict(iaa), checkpoint.load_state_dict(out)
    frozen = set(filter(is_frozen, full))
    assert set(stock) == frozen
    assert all(torch.equal(stock[name], full[name]) for name in frozen)
    # everything IAA adds is left out: insertion layers, workflow tables and heads, CLIP
    assert len(frozen) < len(full)


def test_config_is_a_llama_with_the_frozen_shapes(iaa, tmp_path):
    out = write_stock_llama(iaa, tmp_path / "llama")
    config = AutoConfig.from_pretrained(out)  # what vLLM reads
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    with open(os.path.join(iaa, "config.json"), encoding="utf-8") as f:
        iaa_config = json.load(f)
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        written = json.load(f)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "rope_theta"):
        assert written[key] == iaa_config[key], key
    assert not set(written) & {"iaa_insertion_layers", "mm_vision_tower", "image_token_index"}  # no IAA fields
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    assert os.path.isfile(os.path.join(out, "generation_config.json"))


def test_index_matches_the_shards_and_stale_shards_go(iaa, tmp_path):
    out = tmp_path / "llama"
    out.mkdir()
    (out / "model-00001-of-00099.safetensors").write_bytes(b"stale")
    write_stock_llama(iaa, out)
    with open(out / checkpoint.INDEX_FILE, encoding="utf-8") as f:
        index = json.load(f)
    on_disk = sorted(p for p in os.listdir(out) if p.endswith(".safetensors"))
    assert on_disk == sorted(set(index["weight_map"].values()))
    assert len(on_disk) > 1  # one output shard per input shard holding frozen tensors


def test_reads_a_single_file_checkpoint(iaa, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    full = checkpoint.load_state_dict(iaa)
    save_file(full, single / checkpoint.SINGLE_FILE)  # no index: one file, as small checkpoints ship
    shutil.copyfile(os.path.join(iaa, "config.json"), single / "config.json")
    out = write_stock_llama(single, tmp_path / "llama")
    assert set(checkpoint.load_state_dict(out)) == set(filter(is_frozen, full))


def test_a_checkpoint_without_a_llama_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    save_file({"vision_tower.x": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"no frozen Llama tensors \(model.embed_tokens., .*\) in"):
        write_stock_llama(tmp_path, tmp_path / "out")
