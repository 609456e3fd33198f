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


def _module_path(name: str) -> str:
    """A release tensor name as the model's WeightsMapper renames it (regex stage)."""
    for pattern, replacement in weights.ADAPTER_RENAMES.items():
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name


@pytest.mark.parametrize("release, module", [
    ("model.condition_layers.3.mlp.up_proj.weight", "insertion_layers.3.workflow_layers.mm.mlp.up_proj.weight"),
    ("model.condition_layers_grounding.0.self_attn.q_proj.weight",
     "insertion_layers.0.workflow_layers.grounding.self_attn.q_proj.weight"),
    ("model.embed_tokens_condition.weight", "adapters.mm.embed_tokens.weight"),
    ("model.embed_tokens_condition_grounding.weight", "adapters.grounding.embed_tokens.weight"),
    ("model.norm_condition_grounding.weight", "model.norm.workflow_norms.grounding.weight"),
    ("lm_head_condtion.weight", "adapters.mm.lm_head.weight"),
    ("model.mm_projector_G.2.bias", "adapters.grounding.projector.linear_2.bias"),
    ("model.mm_projector.0.weight", "adapters.mm.projector.linear_1.weight"),
    ("model.layers.5.mlp.up_proj.weight", "model.layers.5.mlp.up_proj.weight"),  # frozen: vLLM's names
])
def test_release_names_map_to_module_paths(release, module):
    # The mm and grounding prefixes overlap ("model.condition_layers" is a prefix of
    # "model.condition_layers_grounding"): each must land on its own workflow.
    assert _module_path(release) == module


def test_every_adapter_tensor_is_renamed(plans):
    plan, _ = plans
    frozen = ("model.layers.", "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
              weights.VISION_PREFIX)  # vLLM's own names, or the CLIP prefix mapping
    adapter_names = [n for n in plan if not n.startswith(frozen)]
    assert adapter_names and all(_module_path(n) != n for n in adapter_names)
