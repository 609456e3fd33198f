"""Checks of the pure-torch IAA reference (tests/reference.py) against transformers.

A tiny random model is built in memory: HF Llama + HF CLIP with seeded random weights, mapped
to the release tensor names, plus random mm / grounding adapter sets.
"""

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding)

from tests.reference import (
    CLIP_MEAN, CLIP_STD, PAD_COLOR, PARTS, VISION, IAAReference, clip_preprocess,
    load_checkpoint, pad_to_square)

LLAMA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
             num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0,
             rms_norm_eps=1e-5)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
            image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
DEPTHS = [0, 1, 3]
IMG = 128049  # the release's image token: outside the tiny vocab, never embedded
N_PATCH = 576


def _random_like(name, t, gen):
    # Norm weights near 1 (a swapped norm name still changes the result); the rest spread
    # enough that every layer moves the stream visibly.
    if "norm" in name and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(t.shape, generator=gen)
    return 0.1 * torch.randn(t.shape, generator=gen)


def _randomize(module, gen):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_random_like(name, p, gen))
    return module.eval()


@pytest.fixture(scope="module")
def tiny():
    gen = torch.Generator().manual_seed(0)
    llama_cfg = LlamaConfig(**LLAMA)
    llama = _randomize(LlamaForCausalLM(llama_cfg), gen)
    clip = _randomize(CLIPVisionModel(CLIPVisionConfig(**CLIP)), gen)
    sd = {k: v.clone() for k, v in llama.state_dict().items()}
    # transformers 5 names CLIPVisionModel tensors without the "vision_model." level.
    sd.update({VISION + k.removeprefix("vision_model."): v.clone()
               for k, v in clip.state_dict().items()})
    layer0 = {k[len("model.layers.0."):]: v for k, v in sd.items()
              if k.startswith("model.layers.0.")}
    H, V = LLAMA["hidden_size"], LLAMA["vocab_size"]
    for wf in ("mm", "grounding"):
        embed, layers, norm, head, proj = PARTS[wf]
        shapes = {f"{embed}.weight": (V, H), f"{norm}.weight": (H,), f"{head}.weight": (V, H),
                  f"{proj}.0.weight": (H, CLIP["hidden_size"]), f"{proj}.0.bias": (H,),
                  f"{proj}.2.weight": (H, H), f"{proj}.2.bias": (H,)}
        shapes.update({f"{layers}.{k}.{n}": t.shape for k in range(len(DEPTHS))
                       for n, t in layer0.items()})
        sd.update({n: _random_like(n, torch.empty(s), gen) for n, s in shapes.items()})
    config = {"architectures": ["IAALlamaForCausalLM"], "model_type": "IAA", **LLAMA,
              "mm_vision_tower": "vision_tower", "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
              "mm_hidden_size": CLIP["hidden_size"], "image_aspect_ratio": "pad",
              "iaa_insertion_layers": DEPTHS}
    ref = IAAReference(config, sd, vision_config=CLIP)
    pixels = torch.randn(2, 3, 336, 336, generator=gen)
    return types.SimpleNamespace(llama=llama, clip=clip, sd=sd, config=config, ref=ref,
                                 pixels=pixels, gen=gen)


def _ids(tiny, n, image_at=None):
    ids = torch.randint(0, LLAMA["vocab_size"], (n,), generator=tiny.gen).tolist()
    return ids if image_at is None else ids[:image_at] + [IMG] * N_PATCH + ids[image_at:]


# ---- 1. text workflow == HF Llama ---------------------------------------------------------

def test_text_matches_hf_llama(tiny):
    ids = _ids(tiny, 37)
    with torch.no_grad():
        want = tiny.llama(torch.tensor([ids])).logits[0]
    # fp32, same math in a different op order (SDPA vs explicit softmax): ~1e-6 apart.
    torch.testing.assert_close(tiny.ref.logits(ids, "text"), want, atol=1e-5, rtol=1e-5)


# ---- 2. vision features == HF CLIP hidden_states[-2] minus CLS ------------------------------

def test_vision_features_match_hf_clip(tiny):
    with torch.no_grad():
        want = tiny.clip(tiny.pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    got = tiny.ref.vision_features(tiny.pixels)
    assert got.shape == (2, N_PATCH, CLIP["hidden_size"])
    # fp32 residual stream of O(1) values through 2 layers; only op order differs.
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("workflow", ["mm", "grounding"])
def test_image_features_use_the_workflow_projector(tiny, workflow):
    proj = _hf_projector(tiny.sd, PARTS[workflow][4])
    with torch.no_grad():
        want = proj(tiny.clip(tiny.pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
    # fp32, as above plus two small matmuls.
    torch.testing.assert_close(tiny.ref.image_features(tiny.pixels, workflow), want,
                               atol=1e-5, rtol=1e-5)


# ---- 3. preprocessing ---------------------------------------------------------------------

def _noise_image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _hf_clip_processor():
    # transformers 5 made CLIPImageProcessor the torchvision backend, whose bicubic resize is
    # not PIL's; the release ran the PIL one, which v5 keeps as CLIPImageProcessorPil.
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    from transformers.image_utils import PILImageResampling
    return Processor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                     resample=PILImageResampling.BICUBIC, image_mean=list(CLIP_MEAN),
                     image_std=list(CLIP_STD), do_convert_rgb=True)


@pytest.mark.parametrize("size", [(400, 250), (251, 401), (200, 120), (336, 336)])
def test_preprocess_matches_hf_clip_processor(size):
    image = _noise_image(*size, seed=sum(size))
    square, _ = pad_to_square(image)
    want = _hf_clip_processor()(images=square, return_tensors="pt")["pixel_values"][0]
    got = IAAReference.preprocess(image)
    assert got.shape == (3, 336, 336) and got.dtype == torch.float32
    # Same PIL uint8 resize on both sides; only float rounding of the normalisation differs.
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The processor's own shortest-edge resize + centre crop on a non-square image too.
    want = _hf_clip_processor()(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(clip_preprocess(image), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("w, h", [(400, 251), (250, 400)])
def test_pad_to_square_geometry(w, h):
    image = _noise_image(w, h, seed=w)
    square, (left, top) = pad_to_square(image)
    s = max(w, h)
    assert square.size == (s, s) and (left, top) == ((s - w) // 2, (s - h) // 2)
    for corner in [(0, 0), (s - 1, 0), (0, s - 1), (s - 1, s - 1)]:
        assert square.getpixel(corner) == PAD_COLOR == (122, 116, 104)
    for x, y in [(s // 2, s // 2), (left, top), (left + w - 1, top + h - 1)]:
        assert square.getpixel((x, y)) == image.getpixel((x - left, y - top))
    assert np.array_equal(np.asarray(square)[top:top + h, left:left + w], np.asarray(image))


# ---- 4. insertion semantics ---------------------------------------------------------------

def test_workflows_differ(tiny):
    ids = _ids(tiny, 20)
    text, mm, gr = (tiny.ref.logits(ids, wf) for wf in ("text", "mm", "grounding"))
    for a, b in [(text, mm), (text, gr), (mm, gr)]:
        assert (a - b).abs().max() > 1e-2


def test_adapter_equal_to_frozen_gives_text(tiny):
    sd = {k: v for k, v in tiny.sd.items() if not k.startswith(PARTS["mm"][1] + ".")}
    embed, _, norm, head, _ = PARTS["mm"]
    sd[embed + ".weight"] = sd["model.embed_tokens.weight"]
    sd[norm + ".weight"] = sd["model.norm.weight"]
    sd[head + ".weight"] = sd["lm_head.weight"]
    config = {**tiny.config, "iaa_insertion_layers": []}
    sd = {k: v for k, v in sd.items() if not k.startswith(PARTS["grounding"][1] + ".")}
    ref = IAAReference(config, sd, vision_config=CLIP)
    ids = _ids(tiny, 25)
    # Same kernels on the same inputs: bit-identical.
    assert torch.equal(ref.logits(ids, "mm"), ref.logits(ids, "text"))


def _hf_projector(sd, prefix):
    H, M = LLAMA["hidden_size"], CLIP["hidden_size"]
    proj = torch.nn.Sequential(torch.nn.Linear(M, H), torch.nn.GELU(), torch.nn.Linear(H, H))
    proj.load_state_dict({k: sd[f"{prefix}.{k}"] for k in proj.state_dict()})
    return proj


def _hf_iaa_logits(tiny, ids, workflow, pixels):
    """IAA forward assembled by hand from HF modules: frozen layers from the HF Llama,
    insertion layers as fresh LlamaDecoderLayers loaded with the adapter weights."""
    sd, cfg = tiny.sd, tiny.llama.config
    embed, layers, norm, head, proj = PARTS[workflow]
    ids = torch.tensor(ids)
    is_image = ids == IMG
    feats = tiny.clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    x = torch.nn.functional.embedding(ids.masked_fill(is_image, 0), sd[embed + ".weight"])
    x[is_image] = _hf_projector(sd, proj)(feats).flatten(0, 1)
    x = x[None]
    n = x.shape[1]
    positions = torch.arange(n)[None]
    rope = LlamaRotaryEmbedding(cfg)(x, positions)
    mask = torch.full((n, n), torch.finfo(x.dtype).min).triu(1)[None, None]
    for i, frozen in enumerate(tiny.llama.model.layers):
        x = frozen(x, attention_mask=mask, position_ids=positions, position_embeddings=rope)
        if i in DEPTHS:
            k = DEPTHS.index(i)
            layer = LlamaDecoderLayer(cfg, layer_idx=100 + k).eval()
            layer.load_state_dict({name: sd[f"{layers}.{k}.{name}"]
                                   for name in layer.state_dict()})
            x = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=rope)
    final = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
    final.load_state_dict({"weight": sd[norm + ".weight"]})
    return torch.nn.functional.linear(final(x), sd[head + ".weight"])[0]


@pytest.mark.parametrize("workflow", ["mm", "grounding"])
def test_insertion_wiring_matches_hand_built_hf_forward(tiny, workflow):
    ids = _ids(tiny, 12, image_at=5)
    pixels = tiny.pixels[:1]
    with torch.no_grad():
        want = _hf_iaa_logits(tiny, ids, workflow, pixels)
    got = tiny.ref.logits(ids, workflow, pixels)
    assert got.shape == (len(ids), LLAMA["vocab_size"])
    # fp32 through CLIP, projector and 7 decoder layers on 588 tokens: ~4e-6 apart here.
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


# ---- 5. generate --------------------------------------------------------------------------

@pytest.mark.parametrize("workflow, with_image", [("text", False), ("mm", True)])
def test_generate_is_greedy(tiny, workflow, with_image):
    prompt = _ids(tiny, 9, image_at=3 if with_image else None)
    pixels = tiny.pixels[:1] if with_image else None
    out, logprobs = tiny.ref.generate(prompt, workflow, pixels, max_tokens=5, stop_ids=())
    assert len(out) == len(logprobs) == 5
    for i, (tok, lp) in enumerate(zip(out, logprobs)):
        last = tiny.ref.logits(prompt + out[:i], workflow, pixels)[-1]
        assert tok == int(last.argmax())
        assert lp <= 0 and lp == pytest.approx(float(last.log_softmax(-1)[tok]), abs=1e-6)
    stop = out[2]
    first = out.index(stop)
    stopped, lps = tiny.ref.generate(prompt, workflow, pixels, max_tokens=5, stop_ids=(stop,))
    assert stopped == out[:first + 1] and lps == logprobs[:first + 1]


# ---- 6. errors ----------------------------------------------------------------------------

def test_errors(tiny):
    ref, ids = tiny.ref, _ids(tiny, 6)
    with pytest.raises(ValueError, match=r"'vision'.*'text', 'mm', 'grounding'"):
        ref.logits(ids, "vision")
    with pytest.raises(ValueError, match="unknown workflow"):
        ref.generate(ids, "Text")
    one_image = _ids(tiny, 6, image_at=2)
    with pytest.raises(ValueError, match="575 image tokens .* but 576 image features"):
        ref.logits(one_image[:-7] + one_image[-6:], "mm", tiny.pixels[:1])  # 575 tokens
    with pytest.raises(ValueError, match="image tokens"):
        ref.logits(one_image, "mm", tiny.pixels)  # 2 images, 576 tokens
    with pytest.raises(ValueError, match="image tokens"):
        ref.logits(one_image, "grounding")  # no image
    with pytest.raises(ValueError, match="'text' takes no image"):
        ref.logits(ids, "text", tiny.pixels[:1])
    with pytest.raises(ValueError, match="iaa_insertion_layers"):
        IAAReference({**tiny.config, "iaa_insertion_layers": [0, 1]}, tiny.sd, vision_config=CLIP)


# ---- loading ------------------------------------------------------------------------------

@pytest.mark.parametrize("sharded", [True, False])
def test_from_pretrained_round_trip(tiny, tmp_path, sharded):
    (tmp_path / "config.json").write_text(json.dumps(tiny.config))
    (tmp_path / "vision_tower").mkdir()
    if sharded:  # CLIP inside the checkpoint, only its config in vision_tower/
        (tmp_path / "vision_tower" / "config.json").write_text(json.dumps(CLIP))
        names = sorted(tiny.sd)
        shards = {"model-00001-of-00002.safetensors": names[::2],
                  "model-00002-of-00002.safetensors": names[1::2]}
        for file, keys in shards.items():
            save_file({k: tiny.sd[k].to(torch.bfloat16) for k in keys}, str(tmp_path / file))
        weight_map = {k: f for f, keys in shards.items() for k in keys}
        (tmp_path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:  # CLIP absent from the checkpoint: config and weights from vision_tower/
        tiny.clip.save_pretrained(tmp_path / "vision_tower")
        save_file({k: v.to(torch.bfloat16) for k, v in tiny.sd.items()
                   if not k.startswith(VISION)}, str(tmp_path / "model.safetensors"))
    config, sd = load_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert config == tiny.config and sd["lm_head.weight"].dtype == torch.bfloat16
    loaded = IAAReference.from_pretrained(tmp_path)
    assert loaded.vision_config["num_hidden_layers"] == CLIP["num_hidden_layers"]
    # The in-memory twin gets the same bf16-rounded weights, so results must be identical
    # (CLIP saved by save_pretrained stays fp32).
    rounded = {k: v if k.startswith(VISION) and not sharded else v.to(torch.bfloat16).float()
               for k, v in tiny.sd.items()}
    twin = IAAReference(tiny.config, rounded, vision_config=CLIP)
    ids = _ids(tiny, 5, image_at=2)
    assert torch.equal(loaded.logits(ids, "grounding", tiny.pixels[:1]),
                       twin.logits(ids, "grounding", tiny.pixels[:1]))
