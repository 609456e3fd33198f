"""Model shapes for the serving benchmarks, and the arithmetic on them: FLOPs per
MME-shaped request, weight bytes and KV bytes per token.

IAA runs every token of an image request through the 32 frozen layers AND its N
insertion layers (design.md section 1), so its decoder cost is (32 + N) layers of
Llama-3-8B. LLaVA runs its own decoder once. Both encode one 336 px image with CLIP
ViT-L/14 up to layer -2 (23 of 24 layers; vLLM skips the last) and project its 576
patch tokens with a 2-layer MLP. Counted: matmul FLOPs (2 per multiply-add) of the
projections, MLPs, attention scores and values, the patch embedding and the LM-head
rows that are computed (one per generated token). Norms, rotary and softmax are
left out (well under 1 %).
"""

from __future__ import annotations

import dataclasses

from iaa_vllm import checkpoint
from iaa_vllm.engine import clip_defaults

IMAGE_TOKENS = 576


@dataclasses.dataclass(frozen=True)
class Decoder:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_params(self) -> int:
        kv = 2 * self.kv_heads * self.head_dim
        return self.hidden * (self.hidden + kv) + self.hidden**2 + 3 * self.hidden * self.intermediate

    def prefill_flops(self, tokens: int, layers: int) -> float:
        """`layers` decoder layers over a causal prompt of `tokens` tokens."""
        linear = 2 * self.layer_params() * tokens
        attention = 2 * 2 * self.hidden * tokens * (tokens + 1) / 2  # QK^T and AV, causal
        return layers * (linear + attention)

    def decode_flops(self, context: int, layers: int) -> float:
        return layers * (2 * self.layer_params() + 2 * 2 * self.hidden * context)

    def head_flops(self) -> float:
        return 2 * self.hidden * self.vocab


@dataclasses.dataclass(frozen=True)
class Vision:
    hidden: int
    intermediate: int
    layers_used: int
    patch: int
    tokens: int  # patches + CLS

    def flops(self) -> float:
        layer = 2 * (4 * self.hidden**2 + 2 * self.hidden * self.intermediate) * self.tokens
        attention = 2 * 2 * self.hidden * self.tokens**2
        patch_embed = 2 * (self.tokens - 1) * self.hidden * 3 * self.patch**2
        return self.layers_used * (layer + attention) + patch_embed

    def params(self, layers: int) -> int:
        h, i = self.hidden, self.intermediate
        return layers * (4 * h * h + 2 * h * i) + (self.tokens + 3 * self.patch**2) * h


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    kind: str  # "iaa" | "llava" | "llama"
    decoder: Decoder
    vision: Vision | None
    insertion_layers: int = 0  # IAA: insertion depths (one expert per workflow at each)

    def request_flops(self, prompt_tokens: int, output_tokens: int) -> float:
        """One image request: CLIP, projector, prefill, then output_tokens - 1 decode steps."""
        d = self.decoder
        layers = d.layers + self.insertion_layers
        total = d.prefill_flops(prompt_tokens, layers) + output_tokens * d.head_flops()
        total += sum(d.decode_flops(prompt_tokens + i, layers) for i in range(1, output_tokens))
        if self.vision:
            total += self.vision.flops() + 2 * IMAGE_TOKENS * (self.vision.hidden * d.hidden + d.hidden**2)
        return total

    def weight_params(self) -> int:
        """Every parameter the engine holds (CLIP counted to its last used layer)."""
        d = self.decoder
        frozen = d.layers * d.layer_params() + 2 * d.vocab * d.hidden
        if self.kind == "llama":
            return frozen
        v = self.vision
        projector = v.hidden * d.hidden + d.hidden**2
        if self.kind == "llava":
            return frozen + v.params(v.layers_used) + projector
        per_set = self.insertion_layers * d.layer_params() + 2 * d.vocab * d.hidden + projector
        return frozen + 2 * per_set + v.params(v.layers_used)

    def kv_layers(self) -> int:
        # IAA: one paged-KV slot per insertion depth, shared by mm and grounding.
        return self.decoder.layers + self.insertion_layers

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        d = self.decoder
        return self.kv_layers() * 2 * d.kv_heads * d.head_dim * dtype_bytes


def _clip(config: dict) -> Vision:
    return Vision(config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"] - 1,
                  config["patch_size"], (config["image_size"] // config["patch_size"]) ** 2 + 1)


def _decoder(llama: dict) -> Decoder:
    return Decoder(llama["hidden_size"], llama["intermediate_size"], llama["num_hidden_layers"],
                   llama["num_attention_heads"], llama["num_key_value_heads"], llama["vocab_size"])


def iaa(preset: str) -> Model:
    p = checkpoint.get_preset(preset)
    return Model(preset, "iaa", _decoder(p.llama), _clip(p.clip), len(p.insertion_layers))


def llama(preset: str) -> Model:
    """The frozen Llama of an IAA preset, as stock vLLM serves it."""
    return Model(f"llama ({preset})", "llama", _decoder(checkpoint.get_preset(preset).llama), None)


_CLIP_L = _clip(clip_defaults.CLIP_L_336_CONFIG)
# LLaVA decoders at their real shapes. The 1.5 models' Llama-2 vocabulary (32,064) is
# replaced by Llama-3's 128,256: the only tokenizer available offline here. That adds
# 0.8 B (7B) / 1.0 B (13B) embedding + head parameters and one larger LM-head row per
# output token, 0.3 % of an MME request's FLOPs.
LLAVA_DECODERS = {
    "llava-1.5-7b": Decoder(4096, 11008, 32, 32, 32, 128256),
    "llava-llama3-8b": _decoder(checkpoint.get_preset("iaa-8").llama),
    "llava-1.5-13b": Decoder(5120, 13824, 40, 40, 40, 128256),
}


def llava(name: str) -> Model:
    if name == "tiny":  # the tiny IAA's frozen Llama and CLIP, as a LLaVA
        p = checkpoint.get_preset("tiny")
        return Model("llava (tiny)", "llava", _decoder(p.llama), _clip(p.clip))
    return Model(name, "llava", LLAVA_DECODERS[name], _CLIP_L)
