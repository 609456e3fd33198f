"""Property tests for the grounding parser and coordinate mapping (seeded, no engine)."""

from __future__ import annotations

import random

import pytest

from iaa_vllm import grounding
from iaa_vllm.engine.processing import expand_to_square
from iaa_vllm.local_server import noise_image

SIZES = [(640, 480), (480, 640), (1000, 37), (37, 1000), (333, 333), (1, 9), (9, 1)]


def random_pixel_box(rng: random.Random, width: int, height: int) -> grounding.Box:
    x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
    y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
    return (x1, y1, x2, y2)


@pytest.mark.parametrize("width, height", SIZES)
def test_pixel_to_normalised_to_pixel_round_trips(width, height):
    rng = random.Random(width * 7919 + height)
    for _ in range(200):
        box = random_pixel_box(rng, width, height)
        normalised = grounding.to_normalised(box, width, height)
        assert all(0.0 <= v <= 1.0 for v in normalised)
        assert grounding.to_pixels(normalised, width, height) == pytest.approx(box, abs=1e-9)


@pytest.mark.parametrize("width, height", SIZES)
def test_text_round_trip_within_the_printed_precision(width, height):
    rng = random.Random(width + height)
    boxes = [random_pixel_box(rng, width, height) for _ in range(3)]
    text = grounding.format_boxes([grounding.to_normalised(b, width, height) for b in boxes], digits=6)
    side = max(width, height)
    for got, want in zip(grounding.pixel_boxes(text, width, height), boxes):
        assert got == pytest.approx(want, abs=side * 1e-6)  # 6 printed digits of a 0-1 value


def test_mapping_agrees_with_the_padding_the_model_saw():
    image = noise_image(300, 120, 0)
    square = expand_to_square(image, (122, 116, 104))
    # The image's top-left pixel sits at the pad offset inside the square.
    pad_y = (300 - 120) // 2
    assert square.getpixel((0, pad_y)) == image.getpixel((0, 0))
    corner = grounding.to_normalised((0, 0, 300, 120), 300, 120)
    assert corner == pytest.approx((0.0, pad_y / 300, 1.0, (pad_y + 120) / 300))


def test_several_boxes_and_surrounding_text():
    text = "Sure: [0.1, 0.2, 0.3, 0.4]; [0, 0, 1, 1] and [.5,.5,.75,1.0]"
    assert grounding.parse_boxes(text) == [(0.1, 0.2, 0.3, 0.4), (0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 0.75, 1.0)]


@pytest.mark.parametrize(
    "text",
    ["", "no box here", "[0.1, 0.2, 0.3]", "[0.1, 0.2, 0.3, 0.4, 0.5]", "[a, b, c, d]",
     "[0.5, 0.2, 0.1, 0.4]", "[0.1, 0.2, 1.5, 0.4]", "[-0.1, 0.2, 0.3, 0.4]", "[nan, 0, 1, 1]",
     "[inf, 0, 1, 1]", "[[0.1, 0.2, 0.3, 0.4", "0.1, 0.2, 0.3, 0.4]", None],
)
def test_malformed_text_gives_no_box_and_no_exception(text):
    assert grounding.parse_boxes(text) == []


def test_random_garbage_never_raises():
    rng = random.Random(0)
    alphabet = "[]0123456789.,;- eE+abc\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for box in grounding.parse_boxes(text):
            assert all(0.0 <= v <= 1.0 for v in box)


def test_out_of_image_boxes_are_clipped_and_bad_sizes_named():
    assert grounding.to_pixels((0.0, 0.0, 1.0, 1.0), 300, 120) == (0.0, 0.0, 300, 120)
    with pytest.raises(ValueError, match="0x10"):
        grounding.to_pixels((0, 0, 1, 1), 0, 10)
    assert grounding.question("the red car").endswith("describes: the red car")
