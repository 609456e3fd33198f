"""iaa_vllm/engine/clip_defaults.py: the built-in CLIP ViT-L/14-336 values agree with
transformers, with the independent reference, and with what `iaa-vllm init` writes."""

from __future__ import annotations

import ast
import inspect
import json

import pytest
import torch

from iaa_vllm.engine import clip_defaults
from iaa_vllm.engine import config as iaa_config
from iaa_vllm.engine.processing import clip_image_processor, pixel_values
from iaa_vllm.local_server import noise_image
from tests import reference


def test_the_vision_config_matches_the_reference_and_is_all_clip_fields():
    from transformers import CLIPVisionConfig

    config = clip_defaults.CLIP_L_336_CONFIG
    assert {k: config[k] for k in reference.CLIP_L336} == reference.CLIP_L336
    built = CLIPVisionConfig(**config)
    # Every key is a CLIPVisionConfig field (a misspelt one would be kept as a stray attribute).
    assert set(config) <= set(CLIPVisionConfig().to_dict())
    assert all(getattr(built, k) == v for k, v in config.items())
    assert (built.image_size // built.patch_size) ** 2 == 576


def test_mean_and_std_are_openai_clips():
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    assert clip_defaults.CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) == reference.CLIP_MEAN
    assert clip_defaults.CLIP_STD == tuple(OPENAI_CLIP_STD) == reference.CLIP_STD
    pre = clip_defaults.CLIP_L_336_PREPROCESSOR
    assert (pre["image_mean"], pre["image_std"]) == (list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD))


@pytest.mark.parametrize("size", [(300, 200), (1, 9), (337, 335)])
def test_the_builtin_preprocessor_equals_the_release_preprocessing(size):
    """A release checkpoint with no tower folder preprocesses exactly as the reference."""
    config = iaa_config.IAAConfig()  # mm_vision_tower: openai/clip-vit-large-patch14-336
    assert iaa_config.preprocessor_config(config) == clip_defaults.CLIP_L_336_PREPROCESSOR
    image = noise_image(*size, seed=7)
    ours = pixel_values(clip_image_processor(config), [image])[0]
    # Same PIL bicubic resize; 1e-5 absorbs float32 rescale/normalise order.
    torch.testing.assert_close(ours, reference.IAAReference.preprocess(image), atol=1e-5, rtol=0)


def test_init_writes_the_defaults(tiny_dir):
    """The tiny tower's files are the defaults with the tiny CLIP's widths (checkpoint.py)."""
    with open(f"{tiny_dir}/vision_tower/preprocessor_config.json") as f:
        written = json.load(f)
    assert written.pop("image_processor_type") == "CLIPImageProcessor"
    assert written == clip_defaults.CLIP_L_336_PREPROCESSOR
    with open(f"{tiny_dir}/vision_tower/config.json") as f:
        vision = json.load(f)
    same = ("image_size", "patch_size", "hidden_act", "layer_norm_eps")
    assert {k: vision[k] for k in same} == {k: clip_defaults.CLIP_L_336_CONFIG[k] for k in same}
    assert iaa_config.preprocessor_config(iaa_config.load_config(tiny_dir)) == {
        **written, "image_processor_type": "CLIPImageProcessor"}


def test_it_imports_nothing():
    """`iaa-vllm init` reads it without paying for transformers (its docstring's promise)."""
    tree = ast.parse(inspect.getsource(clip_defaults))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
