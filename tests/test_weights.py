"""The release tensor table, and the load-time checks that name what is wrong."""

from __future__ import annotations

import json
import os

import pytest
import torch

from iaa_vllm.engine import config as iaa_config
from iaa_vllm.engine import weights


@pytest.fixture(scope="module")
def plans(tiny_dir):
    config = iaa_config.load_config(tiny_dir)
    vision = iaa_config.vision_config(config)
    required, optional = weights.vision_plan(vision, iaa_config.num_vision_layers(config, vision))
    return {**weights.language_plan(config), **required}, optional


@pytest.fixture(scope="module")
def checkpoint_shapes(tiny_dir) -> dict[str, tuple]:
    from safetensors import safe_open

    index = json.load(open(os.path.join(tiny_dir, "model.safetensors.index.json")))
    shapes = {}
    for shard in set(index["weight_map"].values()):
        with safe_open(os.path.join(tiny_dir, shard), framework="pt") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def test_plan_matches_the_written_release_layout(plans, checkpoint_shapes):
    required, optional = plans
    assert {n: s for n, s in checkpoint_shapes.items() if n in required} == required
    # Everything else the writer emits is CLIP that IAA does not run (post-norm, last layer).
    assert set(checkpoint_shapes) - set(required) <= set(optional)


def test_release_names_include_the_misspelled_heads(plans):
    required, _ = plans
    assert "lm_head_condtion.weight" in required
    assert "lm_head_condtion_grounding.weight" in required
    assert "model.condition_layers_grounding.2.mlp.down_proj.weight" in required


def fake_weights(plan):
    return [(name, torch.zeros(shape)) for name, shape in plan.items()]


def test_checker_passes_a_complete_checkpoint(plans):
    required, optional = plans
    checker = weights.CheckpointChecker(required, optional)
    assert len(list(checker.watch(fake_weights(required)))) == len(required)
    checker.finish()
    assert checker.has_vision()


def test_missing_tensor_is_named(plans):
    required, optional = plans
    partial = {n: s for n, s in required.items() if n != "model.norm_condition.weight"}
    checker = weights.CheckpointChecker(required, optional)
    list(checker.watch(fake_weights(partial)))
    with pytest.raises(ValueError, match=r"missing tensors: \['model.norm_condition.weight'\]"):
        checker.finish()


def test_misshaped_tensor_is_named_with_both_shapes(plans):
    required, _ = plans
    bad = dict(required)
    bad["model.mm_projector.0.weight"] = (3, 3)
    checker = weights.CheckpointChecker(required)
    with pytest.raises(ValueError, match=r"'model.mm_projector.0.weight' has shape \(3, 3\), expected"):
        list(checker.watch(fake_weights(bad)))


def test_unexpected_tensor_is_named(plans):
    required, _ = plans
    checker = weights.CheckpointChecker(required)
    with pytest.raises(ValueError, match="unexpected tensor 'model.condition_layers.9.mlp.up_proj.weight'"):
        list(checker.watch([("model.condition_layers.9.mlp.up_proj.weight", torch.zeros(1))]))


def test_clip_from_the_tower_folder_when_absent_from_the_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"vision_model.pre_layrnorm.weight": torch.ones(4), "text_model.x": torch.ones(1)},
              str(tmp_path / "model.safetensors"))
    got = dict(weights.vision_tower_weights(str(tmp_path), "tower"))
    assert list(got) == [weights.VISION_PREFIX + "vision_model.pre_layrnorm.weight"]
    with pytest.raises(ValueError, match="mm_vision_tower='elsewhere' has no local"):
        list(weights.vision_tower_weights(str(tmp_path / "none"), "elsewhere"))
