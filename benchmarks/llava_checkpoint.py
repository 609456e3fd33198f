"""LLaVA checkpoints in the llava-hf layout, for stock vLLM's `LlavaForConditionalGeneration`.

The baselines of the latency benchmark. `tiny` is the tiny IAA's frozen Llama and CLIP
with random weights written out (transformers >= 4.52 names: `model.language_model.*`,
`model.vision_tower.*`, `model.multi_modal_projector.linear_{1,2}`, `lm_head`), so the
layout itself is exercised. The real shapes (`shapes.LLAVA_DECODERS`) get config,
tokenizer and processor only, and the engine runs with `load_format="dummy"`: vLLM
fills the weights itself, so no 14–26 GB of random bytes are written.

All use the Llama-3 tokenizer and IAA's image token (`<|reserved_special_token_44|>`),
so IAA and LLaVA see the same prompt text; LLaVA expands the token to 576 features.
"""

from __future__ import annotations

import json
import os

import transformers

from benchmarks import shapes
from iaa_vllm.stock_llama import is_frozen
from iaa_vllm import checkpoint, tokenizer
from iaa_vllm.engine import clip_defaults


def config(name: str, dtype: str) -> dict:
    """config.json of a LlavaForConditionalGeneration at `name`'s shapes."""
    model = shapes.llava(name)
    d = model.decoder
    clip = checkpoint.get_preset("tiny").clip if name == "tiny" else clip_defaults.CLIP_L_336_CONFIG
    text = {
        "model_type": "llama", "vocab_size": d.vocab, "hidden_size": d.hidden,
        "intermediate_size": d.intermediate, "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads,
        "max_position_embeddings": 2048 if name == "tiny" else 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": tokenizer.BOS_TOKEN_ID, "eos_token_id": tokenizer.EOT_TOKEN_ID,
    }
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": text, "vision_config": {"model_type": "clip_vision_model", **clip},
        "image_token_index": tokenizer.IMAGE_TOKEN_ID, "image_seq_length": shapes.IMAGE_TOKENS,
        "projector_hidden_act": "gelu", "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "multimodal_projector_bias": True,
        "tie_word_embeddings": False, "torch_dtype": dtype, "dtype": dtype,
        # Without it, transformers >= 5 takes the Llama-3 tokenizer for an old Mistral one.
        "transformers_version": transformers.__version__,
    }


def tensor_plan() -> list[tuple[str, tuple[int, ...]]]:
    """The tiny LLaVA's tensors: the tiny IAA's frozen Llama and CLIP, renamed."""
    plan = []
    for name, shape in checkpoint.tensor_plan("tiny"):
        if is_frozen(name):
            plan.append((name if name.startswith("lm_head.") else "model.language_model." + name[6:], shape))
        elif name.startswith(checkpoint.CLIP_PREFIX):
            plan.append(("model.vision_tower.vision_model." + name[len(checkpoint.CLIP_PREFIX):], shape))
    p = checkpoint.get_preset("tiny")
    hidden, mm_hidden = p.llama["hidden_size"], p.clip["hidden_size"]
    for i, shape in ((1, (hidden, mm_hidden)), (2, (hidden, hidden))):
        plan += [(f"model.multi_modal_projector.linear_{i}.weight", shape),
                 (f"model.multi_modal_projector.linear_{i}.bias", shape[:1])]
    return plan


def write_llava(dirpath: str, name: str = "tiny", dtype: str | None = None, seed: int = 0) -> str:
    """Write a LLaVA checkpoint for `name` ("tiny" or a key of shapes.LLAVA_DECODERS)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    if name != "tiny" and name not in shapes.LLAVA_DECODERS:
        raise ValueError(f"unknown LLaVA {name!r}; valid: tiny, {', '.join(shapes.LLAVA_DECODERS)}")
    dtype = dtype or ("float32" if name == "tiny" else "bfloat16")
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config(name, dtype), f, indent=2)
    tokenizer.save_tokenizer(dirpath)
    side = config(name, dtype)["vision_config"]["image_size"]
    image_processor = CLIPImageProcessor(**{
        **clip_defaults.CLIP_L_336_PREPROCESSOR, "size": {"shortest_edge": side},
        "crop_size": {"height": side, "width": side}})
    LlavaProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(dirpath),
                   patch_size=14, vision_feature_select_strategy="default",
                   image_token=tokenizer.IMAGE_TOKEN, num_additional_image_tokens=1).save_pretrained(dirpath)
    if name == "tiny":
        torch_dtype = checkpoint.DTYPES[dtype]
        tensors = {n: checkpoint.make_tensor(n, s, seed).to(torch_dtype) for n, s in tensor_plan()}
        save_file(tensors, os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})
    return dirpath
