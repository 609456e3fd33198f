"""Pure-torch reference forward pass of IAA (Inner-Adaptor Architecture, arXiv 2408.12902).

Written from the release semantics (docs/design.md §1-2), independent of vLLM, to be read top to
bottom: weights stay in a flat ``{name: tensor}`` dict in the release layout and every layer
is a function over it. No KV cache: ``generate`` recomputes the whole sequence per token.

Workflows: ``text`` is the frozen Llama alone. ``mm`` / ``grounding`` embed with their own
table, put projected CLIP patch features at the image-token positions, run an insertion
layer (a full Llama decoder layer whose output replaces the stream) right after each frozen
layer listed in ``iaa_insertion_layers``, then apply their own final norm and LM head.
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

WORKFLOWS = ("text", "mm", "grounding")
RELEASE_DEPTHS = [0, 1, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26, 30, 31]
IMAGE_TOKEN_INDEX = 128049
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104), as the release pads
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, image_size=336, patch_size=14,
                 hidden_act="quick_gelu", layer_norm_eps=1e-5)
VISION = "model.vision_tower.vision_tower.vision_model."
# Per workflow: (embedding, insertion-layer prefix, final norm, LM head, projector).
PARTS = {
    "text": ("model.embed_tokens", None, "model.norm", "lm_head", None),
    "mm": ("model.embed_tokens_condition", "model.condition_layers", "model.norm_condition",
           "lm_head_condtion", "model.mm_projector"),
    "grounding": ("model.embed_tokens_condition_grounding", "model.condition_layers_grounding",
                  "model.norm_condition_grounding", "lm_head_condtion_grounding",
                  "model.mm_projector_G"),
}
ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "gelu": F.gelu,
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def read_safetensors(dirpath, dtype=torch.float32):
    """All tensors of a sharded (``model.safetensors.index.json``) or single-file checkpoint."""
    index = os.path.join(dirpath, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = {}
    for name in files:
        sd.update(load_file(os.path.join(dirpath, name)))
    return {k: v.to(dtype) for k, v in sd.items()}


def load_checkpoint(dirpath, dtype=torch.float32):
    """(config dict, state dict cast to ``dtype``) of a release-layout checkpoint."""
    with open(os.path.join(dirpath, "config.json")) as f:
        config = json.load(f)
    return config, read_safetensors(dirpath, dtype)


def linear(x, sd, name):
    """x @ W^T (+ b when the checkpoint has a bias)."""
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


# ---- Llama ----------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """RMSNorm computed in float32, as HF Llama does. x: [n, d]."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope_cos_sin(n, head_dim, theta, dtype):
    """cos, sin: [n, head_dim] for positions 0..n-1 (neox / rotate-half layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
    freqs = torch.arange(n, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x: [heads, n, head_dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention(q, k, v, causal):
    """Softmax attention in float32. q: [H, n, hd]; k, v: [H, m, hd] -> [n, H*hd]."""
    scores = (q.float() @ k.float().transpose(1, 2)) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1).to(v.dtype) @ v
    return out.transpose(0, 1).reshape(q.shape[1], -1)


def llama_layer(x, sd, p, cfg, cos, sin):
    """One Llama decoder layer ``p`` (pre-norm attention + SwiGLU MLP). x: [n, hidden]."""
    n, eps = x.shape[0], cfg["rms_norm_eps"]
    heads, kv_heads, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    h = rms_norm(x, sd[f"{p}.input_layernorm.weight"], eps)
    q = linear(h, sd, f"{p}.self_attn.q_proj").view(n, heads, hd).transpose(0, 1)
    k = linear(h, sd, f"{p}.self_attn.k_proj").view(n, kv_heads, hd).transpose(0, 1)
    v = linear(h, sd, f"{p}.self_attn.v_proj").view(n, kv_heads, hd).transpose(0, 1)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = (t.repeat_interleave(heads // kv_heads, dim=0) for t in (k, v))  # GQA
    x = x + linear(attention(q, k, v, causal=True), sd, f"{p}.self_attn.o_proj")
    h = rms_norm(x, sd[f"{p}.post_attention_layernorm.weight"], eps)
    gate, up = linear(h, sd, f"{p}.mlp.gate_proj"), linear(h, sd, f"{p}.mlp.up_proj")
    return x + linear(F.silu(gate) * up, sd, f"{p}.mlp.down_proj")


# ---- CLIP vision tower and projector ----------------------------------------------------

def clip_layer(x, sd, p, vcfg):
    """One CLIP encoder layer (pre-LayerNorm MHA with biases, then MLP). x: [B, m, d]."""
    B, m, d = x.shape
    heads, eps = vcfg["num_attention_heads"], vcfg["layer_norm_eps"]
    h = F.layer_norm(x, (d,), sd[f"{p}.layer_norm1.weight"], sd[f"{p}.layer_norm1.bias"], eps)
    q, k, v = (linear(h, sd, f"{p}.self_attn.{t}_proj").view(B, m, heads, -1).transpose(1, 2)
               for t in "qkv")
    out = torch.stack([attention(q[b], k[b], v[b], causal=False) for b in range(B)])
    x = x + linear(out, sd, f"{p}.self_attn.out_proj")
    h = F.layer_norm(x, (d,), sd[f"{p}.layer_norm2.weight"], sd[f"{p}.layer_norm2.bias"], eps)
    act = ACTIVATIONS[vcfg["hidden_act"]]
    return x + linear(act(linear(h, sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")


def clip_hidden_state(pixel_values, sd, vcfg, select_layer=-2):
    """CLIP ``hidden_states[select_layer]`` (HF convention: index 0 = embeddings after
    pre_layrnorm, index i = output of encoder layer i-1). pixel_values: [B, 3, H, W] ->
    [B, 1 + patches, d] (CLS first)."""
    n_layers = vcfg["num_hidden_layers"]
    run = select_layer % (n_layers + 1)
    patches = F.conv2d(pixel_values.to(sd[VISION + "embeddings.patch_embedding.weight"].dtype),
                       sd[VISION + "embeddings.patch_embedding.weight"],
                       stride=vcfg["patch_size"])  # no bias
    patches = patches.flatten(2).transpose(1, 2)  # [B, patches, d]
    cls = sd[VISION + "embeddings.class_embedding"].expand(patches.shape[0], 1, -1)
    x = torch.cat([cls, patches], dim=1) + sd[VISION + "embeddings.position_embedding.weight"]
    x = F.layer_norm(x, x.shape[-1:], sd[VISION + "pre_layrnorm.weight"],
                     sd[VISION + "pre_layrnorm.bias"], vcfg["layer_norm_eps"])
    for i in range(run):
        x = clip_layer(x, sd, f"{VISION}encoder.layers.{i}", vcfg)
    return x


def project(features, sd, p):
    """mlp2x_gelu projector: Linear -> GELU (erf) -> Linear. [..., mm_hidden] -> [..., hidden]."""
    return linear(F.gelu(linear(features, sd, f"{p}.0")), sd, f"{p}.2")


# ---- Image preprocessing ("pad" aspect ratio + CLIP processor) ------------------------------

def pad_to_square(image, color=PAD_COLOR):
    """RGB image centred on a square of ``color``; returns (square, (left, top) offset)."""
    image = image.convert("RGB")
    w, h = image.size
    s = max(w, h)
    offset = ((s - w) // 2, (s - h) // 2)
    square = Image.new("RGB", (s, s), color)
    square.paste(image, offset)
    return square, offset


def clip_preprocess(image, size=336):
    """CLIP processor: shortest edge -> size (PIL bicubic), centre crop, rescale, normalise.
    Returns float32 [3, size, size]."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    long = int(size * long / short)  # HF truncates, it doesn't round
    new_w, new_h = (size, long) if w <= h else (long, size)
    image = image.resize((new_w, new_h), resample=Image.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def load_vision_tower(config, model_dir, sd, vision_config=None):
    """CLIP config for ``mm_vision_tower`` (a local directory: absolute, relative to the
    model, or in the HF cache; else built-in ViT-L/14-336 values). Adds the tower's weights
    to ``sd`` when the checkpoint lacks them. Never downloads."""
    tower = config.get("mm_vision_tower", "openai/clip-vit-large-patch14-336")
    found = [d for d in (tower, os.path.join(model_dir or "", tower))
             if os.path.isfile(os.path.join(d, "config.json"))]
    if not found:
        try:
            from huggingface_hub import snapshot_download
            found = [snapshot_download(tower, local_files_only=True)]
        except Exception:  # not cached
            return {**CLIP_L336, **(vision_config or {})}
    if vision_config is None:
        with open(os.path.join(found[0], "config.json")) as f:
            vision_config = json.load(f)
        vision_config = vision_config.get("vision_config", vision_config)
    if not any(k.startswith(VISION) for k in sd):
        for k, v in read_safetensors(found[0], sd["model.embed_tokens.weight"].dtype).items():
            k = k.removeprefix("vision_model.")  # a CLIPModel save, or transformers 4
            if k.split(".")[0] in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"):
                sd[VISION + k] = v
    return {**CLIP_L336, **vision_config}


# ---- The model ---------------------------------------------------------------------------

class IAAReference:
    """The three IAA workflows over one flat release-layout state dict."""

    def __init__(self, config, state_dict, model_dir=None, vision_config=None):
        self.config = cfg = dict(config)
        self.sd = dict(state_dict)
        cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
        # transformers 5 writes rope_parameters; the release config.json has rope_theta.
        self.rope_theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
        scaling = cfg.get("rope_scaling") or {}
        if scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"rope_scaling {scaling} is not supported; Llama-3 uses none")
        if "lm_head.weight" not in self.sd and cfg.get("tie_word_embeddings"):
            self.sd["lm_head.weight"] = self.sd["model.embed_tokens.weight"]
        self.depths = list(cfg.get("iaa_insertion_layers", RELEASE_DEPTHS))
        self.image_token_index = cfg.get("image_token_index", IMAGE_TOKEN_INDEX)
        for wf in ("mm", "grounding"):
            prefix = PARTS[wf][1] + "."
            n = len({k[len(prefix):].split(".")[0] for k in self.sd if k.startswith(prefix)})
            too_deep = any(d >= cfg["num_hidden_layers"] for d in self.depths)
            if n and n != len(self.depths) or too_deep:
                raise ValueError(f"{n} {prefix}* layers and {cfg['num_hidden_layers']} frozen "
                                 f"layers do not fit iaa_insertion_layers={self.depths}")
        self.vision_config = load_vision_tower(cfg, model_dir, self.sd, vision_config)

    @classmethod
    def from_pretrained(cls, dirpath, dtype=torch.float32):
        config, sd = load_checkpoint(dirpath, dtype)
        return cls(config, sd, model_dir=dirpath)

    @staticmethod
    def preprocess(image, size=336):
        """PIL image -> [3, size, size] float32, release "pad" preprocessing. Instance callers
        with a non-336 CLIP pass ``size=ref.vision_config["image_size"]``."""
        return clip_preprocess(pad_to_square(image)[0], size)

    def vision_features(self, pixel_values):
        """CLIP patch features of the selected layer. [B, 3, H, W] -> [B, patches, mm_hidden]."""
        select = self.config.get("mm_vision_select_layer", -2)
        x = clip_hidden_state(pixel_values, self.sd, self.vision_config, select)
        return x[:, 1:] if self.config.get("mm_vision_select_feature", "patch") == "patch" else x

    def image_features(self, pixel_values, workflow):
        """CLIP + that workflow's projector. [B, 3, H, W] -> [B, patches, hidden]."""
        if _check_workflow(workflow) == "text":
            raise ValueError("workflow 'text' takes no image; use 'mm' or 'grounding'")
        return project(self.vision_features(pixel_values), self.sd, PARTS[workflow][4])

    def _image_embeds(self, workflow, pixel_values):
        """All images' projected features in order, [images * patches, hidden], or None."""
        _check_workflow(workflow)
        if pixel_values is None:
            return None
        return self.image_features(pixel_values, workflow).flatten(0, 1)

    def _embed(self, ids, workflow, image_embeds):
        """Token embeddings [n, hidden], image positions replaced by ``image_embeds``."""
        ids = torch.tensor(ids, dtype=torch.long)
        if workflow == "text":  # the frozen Llama: the image token is an ordinary token
            return self.sd["model.embed_tokens.weight"][ids]
        is_image = ids == self.image_token_index
        n_feat = 0 if image_embeds is None else image_embeds.shape[0]
        if int(is_image.sum()) != n_feat:
            raise ValueError(f"{int(is_image.sum())} image tokens ({self.image_token_index}) "
                             f"in the prompt but {n_feat} image features were given")
        # The image token id need not be inside the vocab: those rows are overwritten.
        x = self.sd[PARTS[workflow][0] + ".weight"][ids.masked_fill(is_image, 0)]
        if n_feat:
            x[is_image] = image_embeds.to(x.dtype)
        return x

    def _forward(self, x, workflow):
        """Decoder stack + final norm + LM head. x: [n, hidden] -> float32 logits [n, vocab]."""
        cfg = self.config
        _, inserted, norm, head, _ = PARTS[workflow]
        cos, sin = rope_cos_sin(x.shape[0], cfg["head_dim"], self.rope_theta, x.dtype)
        for i in range(cfg["num_hidden_layers"]):
            x = llama_layer(x, self.sd, f"model.layers.{i}", cfg, cos, sin)
            if inserted is not None and i in self.depths:  # replaces the stream, no gate
                x = llama_layer(x, self.sd, f"{inserted}.{self.depths.index(i)}", cfg, cos, sin)
        x = rms_norm(x, self.sd[norm + ".weight"], cfg["rms_norm_eps"])
        return linear(x, self.sd, head).float()

    @torch.no_grad()
    def logits(self, token_ids, workflow, pixel_values=None):
        """Float32 logits [n, vocab] for every position of ``token_ids``."""
        embeds = self._image_embeds(workflow, pixel_values)
        return self._forward(self._embed(list(token_ids), workflow, embeds), workflow)

    @torch.no_grad()
    def generate(self, token_ids, workflow, pixel_values=None, max_tokens=8, stop_ids=(128009,)):
        """Greedy decoding, full recompute per token. Returns (generated ids, logprob of each);
        a generated stop id is included, as in vLLM's output token_ids."""
        embeds = self._image_embeds(workflow, pixel_values)  # CLIP once, not per step
        ids, out, logprobs = list(token_ids), [], []
        for _ in range(max_tokens):
            last = self._forward(self._embed(ids, workflow, embeds), workflow)[-1]
            tok = int(last.argmax())
            out.append(tok)
            logprobs.append(float(torch.log_softmax(last, -1)[tok]))
            ids.append(tok)
            if tok in stop_ids:
                break
        return out, logprobs


def _check_workflow(workflow):
    if workflow not in WORKFLOWS:
        raise ValueError(f"unknown workflow {workflow!r}; choose one of {WORKFLOWS}")
    return workflow
