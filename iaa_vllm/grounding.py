"""Grounding answers as boxes users can draw: parse the model's text, map to pixels.

The grounding workflow answers with boxes `[x1, y1, x2, y2]` normalised to 0-1 on
the *padded square* image the model saw (docs/design.md §1), several separated by
"; ". A pixel coordinate on the original image is `v * side - pad`, where side =
max(w, h) and pad is where the image sits inside the square — the same offsets
`processing.expand_to_square` uses.
"""

from __future__ import annotations

import math
import re

Box = tuple[float, float, float, float]

PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FOUR_NUMBERS = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")


def question(expression: str) -> str:
    """The release's RefCOCO-style grounding question for a referring expression."""
    return PROMPT + expression


def parse_boxes(text: str) -> list[Box]:
    """Every well-formed normalised box in `text`; anything malformed is skipped.

    Well-formed: four numbers in brackets, each in [0, 1], with x1 <= x2, y1 <= y2.
    Never raises: model text is untrusted.
    """
    boxes = []
    for inner in _BRACKETS.findall(text or ""):
        match = _FOUR_NUMBERS.match(inner)
        if not match:
            continue
        x1, y1, x2, y2 = (float(v) for v in match.groups())
        if all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) and x1 <= x2 and y1 <= y2:
            boxes.append((x1, y1, x2, y2))
    return boxes


def format_boxes(boxes: list[Box], digits: int = 3) -> str:
    """The model's own answer format, e.g. `[0.1, 0.2, 0.5, 0.6]; [0, 0, 1, 1]`."""
    return "; ".join("[" + ", ".join(f"{v:.{digits}f}" for v in box) + "]" for box in boxes)


def _square(width: int, height: int) -> tuple[int, int, int]:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def to_pixels(box: Box, width: int, height: int) -> Box:
    """Normalised box on the padded square → pixel box on the original image, clipped."""
    side, pad_x, pad_y = _square(width, height)
    x1, y1, x2, y2 = box
    return (
        min(max(x1 * side - pad_x, 0.0), width),
        min(max(y1 * side - pad_y, 0.0), height),
        min(max(x2 * side - pad_x, 0.0), width),
        min(max(y2 * side - pad_y, 0.0), height),
    )


def to_normalised(box: Box, width: int, height: int) -> Box:
    """Pixel box on the original image → normalised box on the padded square."""
    side, pad_x, pad_y = _square(width, height)
    x1, y1, x2, y2 = box
    return ((x1 + pad_x) / side, (y1 + pad_y) / side, (x2 + pad_x) / side, (y2 + pad_y) / side)


def pixel_boxes(text: str, width: int, height: int) -> list[Box]:
    """The model's grounding answer → pixel boxes on the original `width` x `height` image."""
    return [to_pixels(box, width, height) for box in parse_boxes(text)]
