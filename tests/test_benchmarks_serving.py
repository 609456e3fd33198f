"""benchmarks/serving.py and its arithmetic (benchmarks/shapes.py).

The arithmetic is checked by hand and against the checkpoint writer's tensor table;
the benchmark itself runs once in its CPU smoke mode (three real engines: IAA tiny,
the stock Llama cut out of it, and a tiny LLaVA in the llava-hf layout; the first two
are compile_modes.py's eager pair, shared by benchmarks/smoke.py). No timing is
asserted: what must hold is that every engine answered every request and that the
IAA text path gave the stock Llama's tokens.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from benchmarks import shapes
from iaa_vllm import checkpoint


def test_decoder_flops_by_hand():
    d = shapes.Decoder(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, vocab=10)
    # q 8x8, k and v 8x4 each, o 8x8, gate/up/down 3 x 8x16
    assert d.layer_params() == 8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16
    tokens = 3
    per_layer = 2 * d.layer_params() * tokens + 2 * 2 * 8 * (1 + 2 + 3)  # causal: 1+2+3 scores/values
    assert d.prefill_flops(tokens, layers=2) == 2 * per_layer
    assert d.decode_flops(context=4, layers=1) == 2 * d.layer_params() + 2 * 2 * 8 * 4


@pytest.mark.parametrize("preset", ["tiny", "mid", "iaa-8", "iaa-14"])
def test_iaa_weights_match_the_checkpoint_table(preset):
    """shapes counts matrices and embeddings; the writer's table has every tensor. Apart
    from the unused last CLIP layer, norms and biases (under 0.1 %), they agree."""
    clip = checkpoint.get_preset(preset).clip
    last_layer = f"encoder.layers.{clip['num_hidden_layers'] - 1}."
    written = sum(math.prod(shape) for name, shape in checkpoint.tensor_plan(preset)
                  if last_layer not in name and "post_layernorm" not in name)
    counted = shapes.iaa(preset).weight_params()
    assert counted <= written and (written - counted) / written < 1e-3


def test_iaa_14_is_about_33_gb_bf16():
    assert 32 < shapes.iaa("iaa-14").weight_params() * 2 / 1e9 < 34


def test_kv_layers_share_one_slot_per_depth():
    assert shapes.iaa("iaa-14").kv_layers() == 32 + 14
    assert shapes.iaa("iaa-14").kv_bytes_per_token(2) == 46 * 2 * 8 * 128 * 2


def test_iaa_14_vs_llava_13b_flop_ratio():
    """The design card's reference point: 0.103 s vs 0.124 s (0.83). The FLOPs say 0.80."""
    ratio = shapes.iaa("iaa-14").request_flops(640, 3) / shapes.llava("llava-1.5-13b").request_flops(640, 3)
    assert 0.78 < ratio < 0.82


@pytest.mark.slow
def test_cpu_smoke_run(benchmark_smoke):
    out = pathlib.Path(benchmark_smoke)
    with open(out / "serving_tiny_quick.json", encoding="utf-8") as f:
        report = json.load(f)
    assert (out / "serving_tiny_quick.png").stat().st_size > 0
    iaa, llava = report["models"]["IAA tiny"], report["models"]["LLaVA tiny"]
    for model in (iaa, llava):
        assert model["mme_batch1"]["requests"] == 2 and model["mme_concurrent"]["requests"] == 2
        # the image was expanded to 576 tokens in both engines
        assert model["mme_batch1"]["prompt_tokens"] > shapes.IMAGE_TOKENS
    assert iaa["mme_batch1"]["prompt_tokens"] == llava["mme_batch1"]["prompt_tokens"]
    assert report["text_path"]["tiny"]["identical_outputs"] is True
    assert {r["llava"] for r in report["ratios"]} == {"LLaVA tiny"}
    assert set(report["mixed"]["tiny"]) == {"mixed", "text_alone", "mm_alone", "grounding_alone"}
    # one KV slot per frozen layer and per insertion depth: 4 vs 4 + 3 layers of KV
    assert report["models"]["stock Llama"]["kv_tokens"] / iaa["kv_tokens"] == pytest.approx(7 / 4, rel=0.01)
