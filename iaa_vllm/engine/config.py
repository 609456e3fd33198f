"""The IAA checkpoint config (`model_type: "IAA"`) and its CLIP tower config.

The release's config.json is a Llama config plus LLaVA-style `mm_*` keys; two
optional keys are ours: `iaa_insertion_layers` and `image_token_index`
(docs/design.md §2). Everything a user can get wrong fails here, at load, with the
key, the bad value and what would be valid.
"""

from __future__ import annotations

import os

from transformers import CLIPVisionConfig, LlamaConfig

from iaa_vllm.engine.names import MODEL_TYPE
from iaa_vllm.engine.clip_defaults import CLIP_L_336, CLIP_L_336_CONFIG, CLIP_L_336_PREPROCESSOR

RELEASE_INSERTION_LAYERS = [0, 1, 5, 6, 10, 11, 15, 16, 20, 21, 25, 26, 30, 31]
# The image placeholder: one reserved Llama-3 special token, expanded to the CLIP
# patch count by processing.py. tokenizer.py builds prompts with it.
IMAGE_TOKEN = "<|reserved_special_token_44|>"
IMAGE_TOKEN_ID = 128049
PROJECTOR_TYPES = ("mlp2x_gelu",)
SELECT_FEATURES = ("patch",)
ASPECT_RATIOS = ("pad",)


class IAAConfig(LlamaConfig):
    """Llama config + the IAA keys. Unknown `mm_*` keys pass through as attributes."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        iaa_insertion_layers: list[int] | None = None,
        image_token_index: int = IMAGE_TOKEN_ID,
        mm_vision_tower: str = CLIP_L_336,
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        mm_projector_type: str = "mlp2x_gelu",
        mm_hidden_size: int = 1024,
        image_aspect_ratio: str = "pad",
        mm_use_im_start_end: bool = False,
        **kwargs,
    ):
        if iaa_insertion_layers is None:
            iaa_insertion_layers = list(RELEASE_INSERTION_LAYERS)
        self.iaa_insertion_layers = list(iaa_insertion_layers)
        self.image_token_index = image_token_index
        self.mm_vision_tower = mm_vision_tower
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        self.mm_projector_type = mm_projector_type
        self.mm_hidden_size = mm_hidden_size
        self.image_aspect_ratio = image_aspect_ratio
        self.mm_use_im_start_end = mm_use_im_start_end
        super().__init__(**kwargs)


def validate(config: IAAConfig) -> None:
    """Raise ValueError naming the first key whose value IAA cannot serve."""
    n = config.num_hidden_layers
    depths = config.iaa_insertion_layers
    bad = [d for d in depths if not isinstance(d, int) or not 0 <= d < n]
    if bad:
        raise ValueError(
            f"iaa_insertion_layers has {bad}: each depth must be a frozen-layer "
            f"index in [0, {n - 1}]"
        )
    if sorted(set(depths)) != list(depths):
        raise ValueError(
            f"iaa_insertion_layers must be strictly increasing, got {depths}"
        )
    choices = {
        "mm_projector_type": PROJECTOR_TYPES,
        "mm_vision_select_feature": SELECT_FEATURES,
        "image_aspect_ratio": ASPECT_RATIOS,
    }
    for key, valid in choices.items():
        if getattr(config, key) not in valid:
            raise ValueError(
                f"{key}={getattr(config, key)!r} is not supported; valid: {list(valid)}"
            )
    if config.mm_use_im_start_end:
        raise ValueError("mm_use_im_start_end=true is not supported; valid: [false]")
    if config.mm_hidden_size > config.hidden_size:
        # CLIP features reach the forward packed into their placeholders' embedding rows.
        raise ValueError(
            f"mm_hidden_size={config.mm_hidden_size} is larger than hidden_size="
            f"{config.hidden_size}; IAA needs mm_hidden_size <= hidden_size"
        )
    if not 0 <= config.image_token_index < config.vocab_size:
        raise ValueError(
            f"image_token_index={config.image_token_index} is outside the "
            f"vocabulary [0, {config.vocab_size - 1}]"
        )


def vision_tower_dir(config: IAAConfig) -> str | None:
    """The local folder holding the CLIP config (and maybe weights), if any.

    `mm_vision_tower` may be an absolute folder, a folder relative to the model
    folder, or a hub id already in the local HF cache. Never downloads.
    """
    tower = config.mm_vision_tower
    model_dir = getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "") or ""
    for candidate in (tower, os.path.join(model_dir, tower)):
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(tower, "config.json")
    except Exception:  # not a valid repo id: there is no cache entry to find
        cached = None
    return os.path.dirname(cached) if isinstance(cached, str) else None


def vision_config(config: IAAConfig) -> CLIPVisionConfig:
    folder = vision_tower_dir(config)
    if folder is not None and os.path.exists(os.path.join(folder, "config.json")):
        return CLIPVisionConfig.from_pretrained(folder)
    if config.mm_vision_tower == CLIP_L_336:
        return CLIPVisionConfig(**CLIP_L_336_CONFIG)
    raise ValueError(
        f"mm_vision_tower={config.mm_vision_tower!r}: no such local folder (absolute "
        f"or relative to the model folder) and not in the HF cache; only "
        f"{CLIP_L_336!r} has built-in defaults"
    )


def preprocessor_config(config: IAAConfig) -> dict:
    """CLIPImageProcessor kwargs: the tower folder's preprocessor_config.json or defaults."""
    import json

    folder = vision_tower_dir(config)
    path = os.path.join(folder, "preprocessor_config.json") if folder else ""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return dict(CLIP_L_336_PREPROCESSOR)


def num_vision_layers(config: IAAConfig, vision: CLIPVisionConfig) -> int:
    """How many CLIP encoder layers to build: up to `mm_vision_select_layer`."""
    total = vision.num_hidden_layers
    select = config.mm_vision_select_layer
    layers = total + select + 1 if select < 0 else select
    if not 1 <= layers <= total:
        raise ValueError(
            f"mm_vision_select_layer={select} is out of range for a CLIP tower "
            f"with {total} layers; valid: {-total}..-1 or 1..{total}"
        )
    return layers


def register_config() -> None:
    """Make `model_type: "IAA"` resolve to IAAConfig in transformers and vLLM."""
    from transformers import AutoConfig
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    AutoConfig.register(MODEL_TYPE, IAAConfig, exist_ok=True)
    _CONFIG_REGISTRY[MODEL_TYPE] = IAAConfig


def load_config(model_dir: str) -> IAAConfig:
    """IAAConfig of a checkpoint folder, remembering the folder for relative paths."""
    config = IAAConfig.from_pretrained(model_dir)
    config.name_or_path = str(model_dir)
    return config
