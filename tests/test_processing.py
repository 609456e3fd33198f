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
