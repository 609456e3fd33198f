"""Config loading and validation: every bad value is named with the valid choices."""

from __future__ import annotations

import json
import shutil

import pytest

from iaa_vllm.engine import config as iaa_config


def test_release_defaults():
    config = iaa_config.IAAConfig(vocab_size=128256, num_hidden_layers=32)
    assert config.iaa_insertion_layers == [0, 1, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26, 30, 31]
    assert config.image_token_index == 128049
    iaa_config.validate(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"iaa_insertion_layers": [0, 32]}, r"iaa_insertion_layers has \[32\].*\[0, 31\]"),
        ({"iaa_insertion_layers": [5, 1]}, "strictly increasing"),
        ({"mm_projector_type": "linear"}, r"mm_projector_type='linear' is not supported; valid: \['mlp2x_gelu'\]"),
        ({"mm_vision_select_feature": "cls_patch"}, r"valid: \['patch'\]"),
        ({"image_aspect_ratio": "anyres"}, r"valid: \['pad'\]"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"image_token_index": 10**6}, "outside the vocabulary"),
        ({"mm_hidden_size": 8192}, r"mm_hidden_size=8192 is larger than hidden_size=4096; .*<= hidden_size"),
    ],
)
def test_invalid_values_are_named(overrides, message):
    config = iaa_config.IAAConfig(vocab_size=128256, num_hidden_layers=32, **overrides)
    with pytest.raises(ValueError, match=message):
        iaa_config.validate(config)


def test_tower_folder_relative_to_the_model_folder(tiny_dir):
    config = iaa_config.load_config(tiny_dir)
    assert config.mm_vision_tower == "vision_tower"
    vision = iaa_config.vision_config(config)
    assert (vision.hidden_size, vision.image_size, vision.patch_size) == (32, 336, 14)
    assert iaa_config.num_vision_layers(config, vision) == vision.num_hidden_layers - 1
    assert iaa_config.preprocessor_config(config)["crop_size"] in ({"height": 336, "width": 336}, 336)


def test_tower_folder_given_as_absolute_path(tiny_dir, tmp_path):
    tower = tmp_path / "clip"
    shutil.copytree(f"{tiny_dir}/vision_tower", tower)
    config = iaa_config.IAAConfig(mm_vision_tower=str(tower))
    assert iaa_config.vision_config(config).hidden_size == 32


def test_builtin_clip_l_336_needs_no_download():
    config = iaa_config.IAAConfig()  # mm_vision_tower: openai/clip-vit-large-patch14-336
    vision = iaa_config.vision_config(config)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (1024, 24, 336)
    assert iaa_config.num_vision_layers(config, vision) == 23  # hidden_states[-2]
    assert iaa_config.preprocessor_config(config)["size"] == {"shortest_edge": 336}


def test_unknown_tower_is_an_error_naming_it():
    config = iaa_config.IAAConfig(mm_vision_tower="someone/unknown-clip")
    with pytest.raises(ValueError, match="mm_vision_tower='someone/unknown-clip'"):
        iaa_config.vision_config(config)


def test_select_layer_out_of_range():
    config = iaa_config.IAAConfig(mm_vision_select_layer=-30)
    with pytest.raises(ValueError, match=r"mm_vision_select_layer=-30 .* valid: -24..-1 or 1..24"):
        iaa_config.num_vision_layers(config, iaa_config.vision_config(config))


def test_release_config_json_loads_as_iaa(tiny_dir):
    raw = json.load(open(f"{tiny_dir}/config.json"))
    assert raw["model_type"] == "IAA" and raw["architectures"] == ["IAALlamaForCausalLM"]
    config = iaa_config.load_config(tiny_dir)
    assert isinstance(config, iaa_config.IAAConfig)
    assert config.iaa_insertion_layers == raw["iaa_insertion_layers"]
