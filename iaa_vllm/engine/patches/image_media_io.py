"""`ImageMediaIO.load_bytes` / `load_base64`: an unreadable image is a bad request (400), not a crash.

Pillow refuses an image declaring more than `2 * PIL.Image.MAX_IMAGE_PIXELS`
pixels from its header alone, but raises `DecompressionBombError`, which vLLM
does not catch, so the server answered 500. `install` turns it into the
ValueError (HTTP 400) vLLM gives for every other undecodable image, and names
bad base64 in a data URL as such (vLLM passes on binascii's bare "Non-base64
digit found"). Registry: `patches/__init__.py`.
"""

from __future__ import annotations

import functools


def _reject_bombs(load_bytes):
    """Wrap `load_bytes`: a decompression bomb is a bad image, not a crash."""
    from PIL import Image

    @functools.wraps(load_bytes)
    def guarded(self, data: bytes):
        try:
            return load_bytes(self, data)
        except Image.DecompressionBombError as error:  # raised before any pixel is decoded
            raise ValueError(f"Failed to load image: {error}") from None

    guarded._iaa_patch = True
    return guarded


def _name_bad_base64(load_base64):
    """Wrap `load_base64`: say which part of the request was malformed."""
    import binascii

    @functools.wraps(load_base64)
    def guarded(self, media_type: str, data: str):
        try:
            return load_base64(self, media_type, data)
        except binascii.Error as error:
            raise ValueError(f"Failed to load image: the data URL is not valid base64 ({error})") from None

    guarded._iaa_patch = True
    return guarded


def install() -> None:
    """Wrap both loaders once (idempotent). Checked against vLLM 0.26-0.33 (`vllm/multimodal/media/image.py`)."""
    from vllm.multimodal.media.image import ImageMediaIO

    if not getattr(ImageMediaIO.load_bytes, "_iaa_patch", False):
        ImageMediaIO.load_bytes = _reject_bombs(ImageMediaIO.load_bytes)
        ImageMediaIO.load_base64 = _name_bad_base64(ImageMediaIO.load_base64)
