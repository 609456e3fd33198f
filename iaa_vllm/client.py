"""Asking a served IAA model through the OpenAI API: images in, answers and pixel boxes out.

A thin layer over the `openai` client for `iaa-vllm serve` (or `vllm serve`):
images go as base64 data URLs, the workflow as `vllm_xargs.iaa_workflow`
(docs/design.md §5), and grounding answers come back as pixel boxes on the caller's
image via `iaa_vllm.grounding`. Greedy by default, so answers are reproducible.

    from openai import OpenAI
    from iaa_vllm import client
    api = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")
    result = client.ground(api, "photo.jpg", "the dog on the left")
    result.boxes  # [(x1, y1, x2, y2), ...] in pixels of photo.jpg
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass

from PIL import Image

from iaa_vllm import EXTRA_ARGS_KEY, grounding

ImageLike = str | os.PathLike | Image.Image


@dataclass
class Grounded:
    answer: str  # the model's text, e.g. "[0.1, 0.2, 0.5, 0.6]"
    boxes: list[grounding.Box]  # pixel boxes on the original image; [] if the text has none
    size: tuple[int, int]  # (width, height) of the image the boxes refer to


def data_url(image: ImageLike) -> str:
    """A base64 data URL: an image file's bytes as they are, a PIL image as PNG."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    else:
        with open(image, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as opened:  # reads the header only
            mime = Image.MIME.get(opened.format, "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_size(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as opened:
        return opened.size


def served_model(api) -> str:
    """The first (for `vllm serve`, the only) model the server lists."""
    return api.models.list().data[0].id


def chat(api, question: str, image: ImageLike | None = None, *, workflow: str | None = None,
         model: str | None = None, max_tokens: int = 64, **create_kwargs) -> str:
    """One user turn (image first, as the release was trained) → the assistant's answer.

    `workflow` None lets the server pick (`mm` with an image, else `text`).
    Extra keyword arguments go to `chat.completions.create`.
    """
    content = question
    if image is not None:
        content = [{"type": "image_url", "image_url": {"url": data_url(image)}},
                   {"type": "text", "text": question}]
    extra_body = dict(create_kwargs.pop("extra_body", None) or {})
    if workflow is not None:
        extra_body["vllm_xargs"] = {**extra_body.get("vllm_xargs", {}), EXTRA_ARGS_KEY: workflow}
    create_kwargs.setdefault("temperature", 0)
    response = api.chat.completions.create(
        model=model or served_model(api), max_tokens=max_tokens,
        messages=[{"role": "user", "content": content}], extra_body=extra_body or None,
        **create_kwargs)
    return response.choices[0].message.content


def ground(api, image: ImageLike, expression: str, *, model: str | None = None,
           max_tokens: int = 64) -> Grounded:
    """Referring expression → pixel boxes on `image`, via the `grounding` workflow."""
    answer = chat(api, grounding.question(expression), image, workflow="grounding",
                  model=model, max_tokens=max_tokens)
    width, height = image_size(image)
    return Grounded(answer, grounding.pixel_boxes(answer, width, height), (width, height))
