"""Random checkpoints in the release layout (no vLLM engine).

Only `tiny` is ever written; `mid` and the real presets are checked through their plan.
"""

import json
import math
import os

import pytest

from iaa_vllm.engine.clip_defaults import CLIP_MEAN
import torch

from iaa_vllm import checkpoint as C
from iaa_vllm import cli
from iaa_vllm import tokenizer as T


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    info = C.write_checkpoint(path, preset="tiny", progress=False)
    return path, info, C.load_state_dict(path)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_tiny_names_and_shapes(tiny):
    _, info, state = tiny
    plan = dict(C.tensor_plan("tiny"))
    assert {k: tuple(v.shape) for k, v in state.items()} == plan
    assert info.num_tensors == len(plan) and all(v.dtype == torch.float32 for v in state.values())
    # Spot checks against the release's names (misspelling included).
    assert plan["model.layers.3.self_attn.k_proj.weight"] == (32, 64)  # 1 kv head of 32
    assert plan["lm_head_condtion.weight"] == plan["lm_head_condtion_grounding.weight"] == (128256, 64)
    assert plan["model.mm_projector.0.weight"] == plan["model.mm_projector_G.0.weight"] == (64, 32)
    assert plan["model.mm_projector.2.bias"] == (64,)
    assert "model.condition_layers.2.mlp.down_proj.weight" in plan
    assert "model.condition_layers_grounding.3.mlp.down_proj.weight" not in plan  # 3 depths
    clip = "model.vision_tower.vision_tower.vision_model."
    assert plan[clip + "embeddings.position_embedding.weight"] == (577, 32)  # 576 patches + CLS
    assert plan[clip + "embeddings.patch_embedding.weight"] == (32, 3, 14, 14)
    assert clip + "encoder.layers.2.mlp.fc2.weight" in plan and clip + "post_layernorm.bias" in plan


def test_tiny_index_and_shards(tiny):
    path, info, _ = tiny
    index = _read_json(path / C.INDEX_FILE)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 2 and files == sorted(info.shards)
    assert sorted(p for p in os.listdir(path) if p.endswith(".safetensors")) == files
    assert all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    assert index["metadata"]["total_size"] == info.num_bytes == 4 * info.num_params


def test_tiny_config(tiny):
    path, _, _ = tiny
    cfg = _read_json(path / "config.json")
    assert cfg["architectures"] == ["IAALlamaForCausalLM"] and cfg["model_type"] == "IAA"
    expected = {
        "vocab_size": 128256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float32", "dtype": "float32", "bos_token_id": 128000, "eos_token_id": 128009,
        "mm_vision_tower": "vision_tower", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32, "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "iaa_insertion_layers": [0, 1, 3], "image_token_index": 128049,
    }
    assert {k: cfg[k] for k in expected} == expected
    assert _read_json(path / "generation_config.json")["eos_token_id"] == [128001, 128009]


def test_tiny_vision_tower_and_tokenizer(tiny):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig

    path, _, _ = tiny
    vision = CLIPVisionConfig.from_pretrained(path / "vision_tower")
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (32, 3, 336, 14)
    assert vision.hidden_act == "quick_gelu"
    proc = CLIPImageProcessor.from_pretrained(path / "vision_tower")
    assert tuple(proc.image_mean) == CLIP_MEAN and proc.do_center_crop and proc.do_convert_rgb
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_tokens_to_ids(T.IMAGE_TOKEN) == 128049 and tok.chat_template == T.CHAT_TEMPLATE


def test_tiny_init_is_sane(tiny):
    _, _, state = tiny
    norm = state["model.norm_condition.weight"]
    assert (norm - 1).abs().max() < 0.1 and norm.std() > 0
    assert state["model.mm_projector.0.bias"].abs().max() < 0.1
    assert 0.015 < state["model.layers.0.mlp.up_proj.weight"].std() < 0.025


def test_workflow_tables_differ(tiny):
    _, _, state = tiny
    frozen = state["model.embed_tokens.weight"]
    mm = state["model.embed_tokens_condition.weight"]
    grounding = state["model.embed_tokens_condition_grounding.weight"]
    assert not torch.equal(frozen, mm) and not torch.equal(mm, grounding)
    # Adapter tables start from the frozen one, as in the paper.
    assert torch.corrcoef(torch.stack([frozen.flatten(), mm.flatten()]))[0, 1] > 0.5
    for a, b in [("lm_head.weight", "lm_head_condtion.weight"),
                 ("model.layers.0.self_attn.q_proj.weight", "model.condition_layers.0.self_attn.q_proj.weight"),
                 ("model.condition_layers.0.self_attn.q_proj.weight",
                  "model.condition_layers_grounding.0.self_attn.q_proj.weight")]:
        assert not torch.equal(state[a], state[b])


def test_same_seed_same_bytes(tiny, tmp_path):
    path, info, _ = tiny
    again = C.write_checkpoint(tmp_path / "again", preset="tiny", seed=0, progress=False)
    assert again.shards == info.shards
    for file in info.shards + [C.INDEX_FILE, "config.json", "tokenizer.json"]:
        assert (path / file).read_bytes() == (tmp_path / "again" / file).read_bytes(), file
    other = C.write_checkpoint(tmp_path / "other", preset="tiny", seed=1, dtype="bfloat16",
                               shard_size_mb=1000, progress=False)
    assert len(other.shards) == 1 and other.num_bytes == info.num_bytes // 2
    first = other.shards[0]
    assert (tmp_path / "other" / first).read_bytes() != (path / info.shards[0]).read_bytes()


def test_refuses_non_empty_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        C.write_checkpoint(tmp_path, progress=False)


def test_overwrite_removes_stale_shards(tmp_path):
    C.write_checkpoint(tmp_path, shard_size_mb=16, progress=False)
    info = C.write_checkpoint(tmp_path, overwrite=True, progress=False)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors")) == sorted(info.shards)


@pytest.mark.parametrize("kwargs, bad", [({"preset": "iaa-99"}, "iaa-99"), ({"dtype": "int8"}, "int8")])
def test_bad_arguments_name_the_choices(tmp_path, kwargs, bad):
    with pytest.raises(ValueError) as err:
        C.write_checkpoint(tmp_path, progress=False, **kwargs)
    choices = C.preset_names() if "preset" in kwargs else list(C.DTYPES)
    assert bad in str(err.value) and all(c in str(err.value) for c in choices)
    assert not os.listdir(tmp_path)  # validated before anything is written


def test_cli_init(tmp_path, capsys):
    assert cli.main(["init", str(tmp_path / "ckpt"), "--preset", "tiny", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "162 tensors" in out and "shards" in out
    assert _read_json(tmp_path / "ckpt" / "config.json")["iaa_insertion_layers"] == [0, 1, 3]


def test_cli_bad_preset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["init", str(tmp_path), "--preset", "huge"])
    err = capsys.readouterr().err
    assert "huge" in err and all(name in err for name in C.preset_names())


def _count(plan, prefix):
    return sum(math.prod(shape) for name, shape in plan if name.startswith(prefix))


@pytest.mark.parametrize("preset, depths", [("iaa-14", 14), ("iaa-8", 8)])
def test_real_preset_plans(preset, depths):
    plan = C.tensor_plan(preset)
    names = [n for n, _ in plan]
    assert len(names) == len(set(names))
    layers = {n.split(".")[2] for n in names if n.startswith("model.layers.")}
    assert len(layers) == 32
    for prefix in ("model.condition_layers.", "model.condition_layers_grounding."):
        assert len({n.split(".")[2] for n in names if n.startswith(prefix)}) == depths
    frozen = sum(_count(plan, p) for p in ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."))
    assert frozen == 8_030_261_248  # Llama-3-8B
    clip = _count(plan, C.CLIP_PREFIX)
    assert 303_000_000 < clip < 304_000_000  # CLIP ViT-L/14-336 vision tower
    assert dict(plan)["model.mm_projector.0.weight"] == (4096, 1024)
    assert dict(plan)["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    cfg = C.model_config(preset, "bfloat16")
    assert len(cfg["iaa_insertion_layers"]) == depths and cfg["mm_hidden_size"] == 1024
    assert cfg["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert C.PRESETS[preset].dtype == "bfloat16"


def test_mid_preset_plan():
    # The CPU benchmark size (benchmarks/compile_modes.py): the tiny preset's CLIP,
    # tokenizer and dtype around a hidden-512 Llama.
    plan = dict(C.tensor_plan("mid"))
    assert len({n.split(".")[2] for n in plan if n.startswith("model.layers.")}) == 8
    for prefix in ("model.condition_layers.", "model.condition_layers_grounding."):
        assert {n.split(".")[2] for n in plan if n.startswith(prefix)} == {"0", "1", "2", "3"}
    assert plan["model.layers.0.self_attn.q_proj.weight"] == (512, 512)
    assert plan["model.layers.0.self_attn.k_proj.weight"] == (128, 512)  # 2 kv heads of 64
    assert plan["model.condition_layers.3.mlp.gate_proj.weight"] == (1408, 512)
    assert plan["model.mm_projector.0.weight"] == (512, 32) and plan["lm_head_condtion.weight"] == (128256, 512)
    tiny, mid = C.PRESETS["tiny"], C.PRESETS["mid"]
    assert mid.clip == tiny.clip and mid.dtype == tiny.dtype == "float32"
    assert C.model_config("mid", "float32")["iaa_insertion_layers"] == [0, 1, 4, 5]


def test_release_depths():
    assert C.PRESETS["iaa-14"].insertion_layers == (0, 1, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26, 30, 31)


@pytest.mark.parametrize("preset", ["tiny", "mid", "iaa-14"])
def test_plan_matches_hf_modules(preset):
    # The plan is written out by hand; HF's own modules (on the meta device, no
    # memory) are the reference for the frozen Llama and CLIP names and shapes.
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    p = C.PRESETS[preset]
    plan = C.tensor_plan(preset)
    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(**p.llama))
        clip = CLIPVisionModel(CLIPVisionConfig(**p.clip))
    expected = {n: tuple(t.shape) for n, t in llama.named_parameters()}
    frozen = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
    assert {n: s for n, s in plan if n.startswith(frozen)} == expected
    expected = {C.CLIP_PREFIX + n.removeprefix("vision_model."): tuple(t.shape) for n, t in clip.named_parameters()}
    assert {n: s for n, s in plan if n.startswith(C.CLIP_PREFIX)} == expected
