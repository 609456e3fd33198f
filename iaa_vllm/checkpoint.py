"""Random-weight IAA checkpoints in the release layout (docs/design.md §2).

Same config keys, tensor names (misspelled `lm_head_condtion` included) and HF
safetensors shards + index as the public release, so loaders can be tested
without its 33 GB. Weights are seeded per tensor: a seed gives identical bytes.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from types import SimpleNamespace

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from iaa_vllm import ARCHITECTURE, MODEL_TYPE, tokenizer
from iaa_vllm.engine import clip_defaults, weights
from iaa_vllm.engine.config import RELEASE_INSERTION_LAYERS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STD = 0.02  # matrices and embeddings, as Llama's initializer_range
SMALL = 0.01  # biases and the noise around 1 in norm weights
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"  # an unsharded checkpoint, which has no index
CLIP_PREFIX = weights.VISION_PREFIX + "vision_model."
VISION_DIR = "vision_tower"


@dataclasses.dataclass(frozen=True)
class Preset:
    llama: dict
    insertion_layers: tuple[int, ...]
    clip: dict
    mm_vision_tower: str  # "vision_tower" means: write that folder into the checkpoint
    dtype: str
    shard_size_mb: int


_LLAMA_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
    rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
)


def _real(depths: tuple[int, ...]) -> Preset:
    """Llama-3-8B + CLIP ViT-L/14-336; CLIP's configs come from its hub name."""
    return Preset(_LLAMA_8B, depths, clip_defaults.CLIP_L_336_CONFIG, clip_defaults.CLIP_L_336, "bfloat16", 5000)


# A small CLIP for the CPU presets; 336/14 keeps the real 576 patch tokens per image.
_SMALL_CLIP = {**clip_defaults.CLIP_L_336_CONFIG, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 3, "num_attention_heads": 2, "projection_dim": 32}

PRESETS = {
    # head_dim 32: the vLLM CPU attention rejects smaller heads.
    "tiny": Preset(
        llama={**_LLAMA_8B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
               "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048},
        insertion_layers=(0, 1, 3), clip=_SMALL_CLIP, mm_vision_tower=VISION_DIR, dtype="float32",
        shard_size_mb=64,
    ),
    # For CPU benchmarks: at hidden 64 a step is all Python and launch overhead, so
    # eager vs compiled and IAA vs stock need a width (>= 512) where the matmuls
    # count. Llama-3's shape ratios: head_dim 64, 4 query heads per KV head,
    # intermediate ~2.75x hidden; insertion pairs as in the release. ~1.8 GB fp32.
    "mid": Preset(
        llama={**_LLAMA_8B, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
               "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 2048},
        insertion_layers=(0, 1, 4, 5), clip=_SMALL_CLIP, mm_vision_tower=VISION_DIR, dtype="float32",
        shard_size_mb=64,
    ),
    "iaa-14": _real(tuple(RELEASE_INSERTION_LAYERS)),
    # The release only ships IAA-14, so these depths for the 8-layer variant are our
    # choice (pairs every 10 layers); a checkpoint's `iaa_insertion_layers` overrides them.
    "iaa-8": _real((0, 1, 10, 11, 20, 21, 30, 31)),
}


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:  # what write_checkpoint wrote
    path: str
    preset: str
    dtype: str
    num_tensors: int
    num_params: int
    num_bytes: int
    shards: list[str]


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _weight_bias(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.weight", shape), (f"{name}.bias", shape[:1])]


def _clip_plan(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    # HF CLIPVisionModel's parameters, written out: importing that class costs ~8 s,
    # more than writing the whole tiny checkpoint. A test checks the two agree.
    h, i, p = c["hidden_size"], c["intermediate_size"], c["patch_size"]
    plan = [("embeddings.class_embedding", (h,)), ("embeddings.patch_embedding.weight", (h, 3, p, p)),
            ("embeddings.position_embedding.weight", ((c["image_size"] // p) ** 2 + 1, h)),
            *_weight_bias("pre_layrnorm", (h,))]
    for j in range(c["num_hidden_layers"]):
        for name, shape in [("self_attn.k_proj", (h, h)), ("self_attn.v_proj", (h, h)),
                            ("self_attn.q_proj", (h, h)), ("self_attn.out_proj", (h, h)), ("layer_norm1", (h,)),
                            ("mlp.fc1", (i, h)), ("mlp.fc2", (h, i)), ("layer_norm2", (h,))]:
            plan += _weight_bias(f"encoder.layers.{j}.{name}", shape)
    plan += _weight_bias("post_layernorm", (h,))
    return [(CLIP_PREFIX + name, shape) for name, shape in plan]


def tensor_plan(preset: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint as (name, shape), in file order."""
    p = get_preset(preset)
    language = SimpleNamespace(
        **p.llama, mm_hidden_size=p.clip["hidden_size"], iaa_insertion_layers=p.insertion_layers
    )
    return list(weights.language_plan(language).items()) + _clip_plan(p.clip)


def _randn(shape: tuple[int, ...], seed: int, name: str) -> torch.Tensor:
    # One generator per tensor, seeded from its name: order-independent, and the
    # frozen embedding can be regenerated when an adapter table is derived from it.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def make_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The float32 value of one tensor (norms ~1, biases ~0, the rest N(0, 0.02))."""
    parts = name.split(".")
    if parts[-1] == "weight" and "norm" in parts[-2]:
        return 1.0 + SMALL * _randn(shape, seed, name)
    if parts[-1] == "bias":
        return SMALL * _randn(shape, seed, name)
    if name.startswith("model.embed_tokens_condition"):
        # The paper initialises the adapter tables from the frozen one; the noise
        # keeps text / mm / grounding outputs apart in a random model.
        return STD * _randn(shape, seed, "model.embed_tokens.weight") + STD * _randn(shape, seed, name)
    return STD * _randn(shape, seed, name)


def _plan_shards(plan, itemsize: int, limit: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split the plan HF-style: fill shards in order up to `limit` bytes."""
    shards, size = [[]], 0
    for name, shape in plan:
        nbytes = itemsize * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > limit:  # a tensor above the limit gets a shard alone
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def model_config(preset: str, dtype: str) -> dict:
    """Contents of config.json, release keys plus our two optional ones."""
    p = get_preset(preset)
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, **p.llama,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "initializer_range": STD, "pretraining_tp": 1, "rope_scaling": None, "use_cache": True,
        "torch_dtype": dtype, "dtype": dtype,
        # Without it, transformers >= 5 takes our tokenizer for an old Mistral one
        # and warns that its regex is wrong.
        "transformers_version": transformers.__version__,
        "bos_token_id": tokenizer.BOS_TOKEN_ID, "eos_token_id": tokenizer.EOT_TOKEN_ID,
        "mm_vision_tower": p.mm_vision_tower, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": p.clip["hidden_size"],
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
        "iaa_insertion_layers": list(p.insertion_layers), "image_token_index": tokenizer.IMAGE_TOKEN_ID,
    }


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _write_vision_tower(dirpath: str, clip: dict) -> None:
    """CLIP's config.json (a CLIPVisionConfig) and CLIPImageProcessor settings."""
    os.makedirs(dirpath, exist_ok=True)
    _write_json(os.path.join(dirpath, "config.json"), {
        "model_type": "clip_vision_model", **clip, "num_channels": 3, "attention_dropout": 0.0,
        "initializer_range": STD, "initializer_factor": 1.0, "transformers_version": transformers.__version__,
    })
    side = clip["image_size"]
    _write_json(os.path.join(dirpath, "preprocessor_config.json"), {
        **clip_defaults.CLIP_L_336_PREPROCESSOR, "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side},
    })


def write_checkpoint(dirpath: str | os.PathLike, preset: str = "tiny", dtype: str | None = None,
                     seed: int = 0, shard_size_mb: int | None = None, overwrite: bool = False,
                     progress: bool = True, config_only: bool = False) -> CheckpointInfo:
    """Write a random checkpoint of `preset` (dtype / shard size default to the preset's).

    Tensors are generated one at a time and written shard by shard, so the real
    presets (~33 GB in bf16) never sit in memory whole. `config_only` writes
    everything but the tensors, for engines started with `load_format="dummy"`
    (vLLM fills the weights itself; benchmarks at real shapes).
    """
    p = get_preset(preset)
    dtype = dtype or p.dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    dirpath = os.fspath(dirpath)
    if os.path.isdir(dirpath) and os.listdir(dirpath) and not overwrite:
        raise FileExistsError(f"{dirpath!r} is not empty; pass overwrite=True (--overwrite) to replace it")
    os.makedirs(dirpath, exist_ok=True)
    for stale in glob.glob(os.path.join(dirpath, "model-*-of-*.safetensors")):
        os.remove(stale)  # an older checkpoint's extra shards would confuse loaders

    torch_dtype = DTYPES[dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    plan = tensor_plan(preset)
    shards = _plan_shards(plan, itemsize, (shard_size_mb or p.shard_size_mb) * 2**20)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    bar = tqdm(total=len(plan), desc=f"writing {preset}", unit="tensor", disable=not progress or config_only)
    for shard, file in zip(shards, [] if config_only else files):
        tensors = {}  # one shard at a time in memory
        for name, shape in shard:
            tensors[name] = make_tensor(name, shape, seed).to(torch_dtype)
            bar.update()
        save_file(tensors, os.path.join(dirpath, file), metadata={"format": "pt"})
    bar.close()

    num_params = sum(torch.Size(shape).numel() for _, shape in plan)
    num_bytes = num_params * itemsize
    weight_map = {name: file for shard, file in zip(shards, files) for name, _ in shard}
    index = {"metadata": {"total_size": num_bytes}, "weight_map": weight_map}
    if not config_only:
        _write_json(os.path.join(dirpath, INDEX_FILE), index)
    _write_json(os.path.join(dirpath, "config.json"), model_config(preset, dtype))
    _write_json(os.path.join(dirpath, "generation_config.json"), {
        "bos_token_id": tokenizer.BOS_TOKEN_ID, "eos_token_id": [128001, tokenizer.EOT_TOKEN_ID],
    })
    tokenizer.save_tokenizer(dirpath)
    if p.mm_vision_tower == VISION_DIR:
        _write_vision_tower(os.path.join(dirpath, VISION_DIR), p.clip)
    return CheckpointInfo(dirpath, preset, dtype, len(plan), num_params, num_bytes, [] if config_only else files)


def weight_map(dirpath: str | os.PathLike) -> dict[str, str]:
    """Tensor name -> the safetensors file holding it: from the index of a sharded
    checkpoint, else from the keys of a lone `model.safetensors`."""
    index = os.path.join(dirpath, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return json.load(f)["weight_map"]
    with safe_open(os.path.join(dirpath, SINGLE_FILE), framework="pt") as f:
        return dict.fromkeys(f.keys(), SINGLE_FILE)


def load_state_dict(dirpath: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint (reads its weight map, then each file once)."""
    state = {}
    for file in sorted(set(weight_map(dirpath).values())):
        state.update(load_file(os.path.join(dirpath, file)))
    return state
