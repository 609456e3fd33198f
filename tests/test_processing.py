"""Image preprocessing equals the release's (pad to square, then CLIP), via the reference."""

from __future__ import annotations

import pytest
import torch

from iaa_vllm.engine import config as iaa_config
from iaa_vllm.engine.processing import clip_image_processor, expand_to_square, pixel_values
from iaa_vllm.local_server import noise_image


def test_expand_to_square_centres_the_image():
    image = noise_image(30, 10, 0)
    square = expand_to_square(image, (122, 116, 104))
    assert square.size == (30, 30)
    assert square.getpixel((0, 0)) == (122, 116, 104)
    assert square.getpixel((5, 10 + 5)) == image.getpixel((5, 5))  # offset (0, 10)
    assert expand_to_square(noise_image(7, 7, 0), (0, 0, 0)).size == (7, 7)


@pytest.mark.parametrize("size", [(300, 200), (180, 260), (336, 336), (1, 9), (1000, 40)])
def test_pixel_values_equal_the_reference(tiny_dir, reference, size):
    image = noise_image(*size, seed=sum(size))
    ours = pixel_values(clip_image_processor(iaa_config.load_config(tiny_dir)), [image])
    expected = reference.preprocess(image)
    assert ours.shape == (1, 3, 336, 336)
    # Same PIL bicubic resize on both sides; 1e-5 absorbs float32 rescale/normalise order.
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=0)


def _schema(pixel_values, side=336):
    from iaa_vllm.engine.processing import IAAImagePixelInputs

    return IAAImagePixelInputs(pixel_values=pixel_values, resolve_bindings={"s": side})


def test_the_image_input_schema_takes_what_the_processor_makes(tiny_dir):
    processor = clip_image_processor(iaa_config.load_config(tiny_dir))
    side = processor.crop_size["height"]
    made = pixel_values(processor, [noise_image(40, 30, 0), noise_image(30, 40, 1)])
    assert _schema(made, side).pixel_values is made
    assert _schema(list(made), side).pixel_values[1] is not None  # vLLM may hand a list per image


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, 224, 224), r"pixel_values dim\[2\] expected 336, got 224"),
    (torch.zeros(2, 4, 336, 336), r"pixel_values dim\[1\] expected 3, got 4"),
    (torch.zeros(3, 336, 336), r"pixel_values has rank 3 but expected 4"),
    (torch.zeros(1, 3, 336, 336, dtype=torch.uint8), "pixel_values must be a floating-point tensor .* not torch.uint8"),
])
def test_a_wrong_image_input_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        _schema(bad)
