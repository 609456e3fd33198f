"""Image processing for IAA requests: pad to square, CLIP preprocessing, 576 placeholders.

There is no HF processor for IAA; the release preprocesses like LLaVA-1.5 with
`image_aspect_ratio: "pad"` (docs/design.md §1), which this reproduces with
transformers' CLIPImageProcessor. vLLM tokenizes the prompt (on vLLM 0.26 through
`compat.ImageProcessorBase`); we only turn images into `pixel_values` and expand
the one image token of the prompt into one placeholder per CLIP patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Annotated

import torch
from PIL import Image
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.utils.tensor_schema import TensorSchema, TensorShape

from iaa_vllm.engine import config as iaa_config
from iaa_vllm.engine.compat import ImageProcessorBase

try:  # transformers >= 5: the PIL path the release used; the default one is torchvision's
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL path
    from transformers import CLIPImageProcessor


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Centre `image` on a square canvas of side max(w, h) filled with `background`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def clip_image_processor(hf_config: iaa_config.IAAConfig) -> CLIPImageProcessor:
    """The tower's CLIP image processor (its preprocessor_config.json, else CLIP-L/336)."""
    kwargs = iaa_config.preprocessor_config(hf_config)
    kwargs.pop("image_processor_type", None)
    kwargs.pop("processor_class", None)
    return CLIPImageProcessor(**kwargs)


def pixel_values(processor: CLIPImageProcessor, images: Sequence[Image.Image]):
    """[n, 3, S, S] float tensor: pad to square in the CLIP mean colour, then CLIP."""
    background = tuple(int(255 * m) for m in processor.image_mean)
    squares = [expand_to_square(im.convert("RGB"), background) for im in images]
    return processor(images=squares, return_tensors="pt")["pixel_values"]


class IAAImagePixelInputs(TensorSchema):
    """The model's image input, as `IAAMultiModalProcessor` makes it (`model.embed_multimodal`).

    Dimensions:
        - bn: images in the batch
        - s: the CLIP tower's image side (`vision_config.image_size`; 336 in the release)

    vLLM's schema checks the shape; the dtype is checked here: CLIP takes normalised
    floats, and integer pixels (0-255) would run as numbers 100x too large.
    """

    pixel_values: Annotated[torch.Tensor, TensorShape("bn", 3, "s", "s")]

    def validate(self) -> None:
        super().validate()
        images = self.pixel_values if isinstance(self.pixel_values, (list, tuple)) else [self.pixel_values]
        wrong = sorted({str(image.dtype) for image in images if not image.is_floating_point()})
        if wrong:
            raise ValueError(f"pixel_values must be a floating-point tensor (CLIP-normalised pixels), "
                             f"not {', '.join(wrong)}")


class IAAProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> iaa_config.IAAConfig:
        return self.ctx.get_hf_config(iaa_config.IAAConfig)

    @cached_property
    def vision_config(self):
        return iaa_config.vision_config(self.get_hf_config())

    @cached_property
    def image_processor(self) -> CLIPImageProcessor:
        return clip_image_processor(self.get_hf_config())

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1}  # the release is trained on one image per conversation

    def get_num_image_tokens(self) -> int:
        patches = self.vision_config.image_size // self.vision_config.patch_size
        return patches * patches  # CLS dropped (`mm_vision_select_feature: patch`)

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts) -> Mapping[str, int]:
        return {"image": self.get_num_image_tokens()}



class IAADummyInputsBuilder(BaseDummyInputsBuilder[IAAProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return iaa_config.IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options=None):
        side = self.info.vision_config.image_size
        return {
            "image": self._get_dummy_images(
                width=side,
                height=side,
                num_images=mm_counts.get("image", 0),
                overrides=(mm_options or {}).get("image"),
            )
        }


class IAAMultiModalProcessor(ImageProcessorBase[IAAProcessingInfo]):
    def process_images(self, images: Sequence[Image.Image]) -> BatchFeature:
        return BatchFeature({"pixel_values": pixel_values(self.info.image_processor, images)})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        return dict(pixel_values=MultiModalFieldConfig.batched("image"))

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        image_token = self.info.get_hf_config().image_token_index
        return [
            PromptReplacement(
                modality="image",
                target=[image_token],
                replacement=[image_token] * self.info.get_num_image_tokens(),
            )
        ]
