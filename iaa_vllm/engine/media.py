"""Images that cannot be read or fetched are bad requests (HTTP 400), not crashes.

Pillow refuses an image declaring more than `2 * PIL.Image.MAX_IMAGE_PIXELS`
pixels from its header alone, but raises `DecompressionBombError`, which vLLM
0.32 does not catch, so the server answered 500. `install` turns it into the
ValueError (HTTP 400) vLLM gives for every other undecodable image, and names
bad base64 in a data URL as such (vLLM passes on binascii's bare "Non-base64
digit found").

An `image_url` the server has to download can fail upstream. vLLM 0.32 answers
500, with a traceback in the server log, when the host refuses the connection,
its name does not resolve, it never answers (after `VLLM_MEDIA_FETCH_MAX_RETRIES`
tries), it answers 5xx, or the URL is `file://` without
`--allowed-local-media-path`; a redirect loop gets 422 "HTTP 0 error". `install`
makes each a 400 "could not fetch image from URL: REASON"; the loop keeps vLLM's
422, now with the reason (offline too, where it was a 500). vLLM 0.26 also reads
a download whole, whatever its size; there `install` caps it while it streams,
as 0.32 does (`MAX_DOWNLOAD_ENV`).
"""

from __future__ import annotations

import functools
import os
import socket

from vllm.exceptions import VLLMValidationError

# vLLM 0.32's own cap on a media download, by its name and default, so one setting
# bounds downloads on either version (0.26 has none; `install` adds it there).
MAX_DOWNLOAD_ENV = "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"
DEFAULT_MAX_DOWNLOAD_MB = 256
_READ_CHUNK = 64 * 1024
_SHOWN_URL_CHARS = 200  # URLs echoed in error messages are cut to this


def _reject_bombs(load_bytes):
    """Wrap `ImageMediaIO.load_bytes`: a decompression bomb is a bad image, not a crash."""
    from PIL import Image

    @functools.wraps(load_bytes)
    def guarded(self, data: bytes):
        try:
            return load_bytes(self, data)
        except Image.DecompressionBombError as error:  # raised before any pixel is decoded
            raise ValueError(f"Failed to load image: {error}") from None

    guarded._iaa_media = True
    return guarded


def _name_bad_base64(load_base64):
    """Wrap `ImageMediaIO.load_base64`: say which part of the request was malformed."""
    import binascii

    @functools.wraps(load_base64)
    def guarded(self, media_type: str, data: str):
        try:
            return load_base64(self, media_type, data)
        except binascii.Error as error:
            raise ValueError(f"Failed to load image: the data URL is not valid base64 ({error})") from None

    guarded._iaa_media = True
    return guarded


class ImageFetchError(VLLMValidationError, ValueError):
    """An `image_url` the server could not download: HTTP 400, ValueError offline."""


class DownloadTooLarge(ValueError):
    """A media download over `MAX_DOWNLOAD_ENV`; a ValueError, so vLLM's retry loop stops at once."""


def max_download_bytes() -> int | None:
    """The download cap from `MAX_DOWNLOAD_ENV` (MiB; 0 or below: none), read per download as vLLM does."""
    raw = os.environ.get(MAX_DOWNLOAD_ENV, str(DEFAULT_MAX_DOWNLOAD_MB))
    try:
        mib = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_DOWNLOAD_ENV}={raw!r} is not a whole number of MiB; "
                         f"use e.g. {DEFAULT_MAX_DOWNLOAD_MB}, or 0 for no limit") from None
    return mib * 2**20 if mib > 0 else None


def _check_size(size: int, limit: int | None, what: str) -> None:
    if limit is not None and size > limit:
        raise DownloadTooLarge(f"the download exceeds {MAX_DOWNLOAD_ENV}={limit // 2**20} ({what} {size} bytes)")


def _check_declared(length, limit: int | None) -> None:
    """A declared size over the cap is refused before any of the body is read."""
    try:
        declared = int(length or 0)
    except (TypeError, ValueError):
        return  # a malformed header: the count while reading still holds
    _check_size(declared, limit, "declared")


def _capped_get_bytes(self, url: str, *, timeout=None, allow_redirects: bool = True) -> bytes:
    """`HTTPConnection.get_bytes` that stops reading at the cap (vLLM 0.26 reads the whole body).

    Without 0.32's `max_bytes` argument: only 0.26 gets it, whose callers pass none,
    and `compat.MEDIA_DOWNLOADS_CAPPED` reads that argument's absence.
    """
    limit = max_download_bytes()
    with self.get_response(url, stream=True, timeout=timeout, allow_redirects=allow_redirects) as response:
        response.raise_for_status()
        _check_declared(response.headers.get("Content-Length"), limit)
        chunks, received = [], 0
        for chunk in response.iter_content(_READ_CHUNK):
            received += len(chunk)
            _check_size(received, limit, "received at least")
            chunks.append(chunk)
        return b"".join(chunks)


async def _capped_async_get_bytes(self, url: str, *, timeout=None, allow_redirects: bool = True) -> bytes:
    """`HTTPConnection.async_get_bytes` that stops reading at the cap."""
    limit = max_download_bytes()
    async with await self.get_async_response(url, timeout=timeout, allow_redirects=allow_redirects) as response:
        response.raise_for_status()
        _check_declared(response.content_length, limit)
        chunks, received = [], 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            received += len(chunk)
            _check_size(received, limit, "received at least")
            chunks.append(chunk)
        return b"".join(chunks)


def _caused_by(error: BaseException, kinds, depth: int = 6) -> BaseException | None:
    """The first exception of `kinds` in `error`'s chain: aiohttp, requests and urllib3 each wrap the OS error."""
    if error is None or depth == 0:
        return None
    if isinstance(error, kinds):
        return error
    inner = [error.__cause__, error.__context__, getattr(error, "os_error", None), getattr(error, "reason", None)]
    inner += [arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException)]
    for nested in inner:
        if isinstance(nested, BaseException) and (found := _caused_by(nested, kinds, depth - 1)):
            return found
    return None


def _fetch_failure(error: BaseException) -> str | None:
    """Why a download failed, in words; None for errors vLLM already answers clearly."""
    import aiohttp
    import requests
    import vllm.envs as envs

    if isinstance(error, (aiohttp.TooManyRedirects, requests.TooManyRedirects)):
        return "too many redirects (a redirect loop?)"
    if isinstance(error, DownloadTooLarge):
        return str(error)
    if isinstance(error, (TimeoutError, requests.Timeout)):  # aiohttp's timeouts are TimeoutErrors
        tries = max(envs.VLLM_MEDIA_FETCH_MAX_RETRIES, 1)
        return (f"no answer in time (VLLM_IMAGE_FETCH_TIMEOUT={envs.VLLM_IMAGE_FETCH_TIMEOUT} s, "
                f"{tries} tries, each waiting 4x longer than the last)")
    status = getattr(error, "status", None) or getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, (aiohttp.ClientResponseError, requests.HTTPError)) and status is not None:
        # vLLM answers the other 4xx itself (422); these it retries, then answers 500
        return f"the host answered HTTP {status}" if status >= 500 or status in (408, 429) else None
    if isinstance(error, getattr(aiohttp, "ClientConnectorDNSError", ())) or _caused_by(error, socket.gaierror):
        return "the host name does not resolve"
    if _caused_by(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (aiohttp.ClientError, requests.RequestException, OSError)):
        return f"the download failed ({type(error).__name__}: {error})"
    return None


def _clear_fetch_error(url: str, error: Exception) -> Exception | None:
    """The error to raise for a failed image download, or None to let vLLM's own through."""
    import aiohttp
    import requests
    from vllm.exceptions import VLLMUnprocessableEntityError

    # vLLM answers 422 for a URL it deems bad (keeping the cause), a redirect loop
    # among them on the server path: that status stays, with the reason named.
    unprocessable = isinstance(error, VLLMUnprocessableEntityError)
    cause = error.__cause__ if unprocessable else error
    reason = _fetch_failure(cause) if cause is not None else None
    if reason is None:
        return None
    shown = url if len(url) <= _SHOWN_URL_CHARS else url[:_SHOWN_URL_CHARS] + "..."
    message = f"could not fetch image from {shown}: {reason}"
    if unprocessable or isinstance(cause, (aiohttp.TooManyRedirects, requests.TooManyRedirects)):
        return VLLMUnprocessableEntityError(message)
    return ImageFetchError(message)


def _raise_clear_fetch_error(url: str, error: Exception) -> None:
    """Raise the clear error for a failed image download; return to let vLLM's own through."""
    clear = _clear_fetch_error(url, error)
    if clear is not None:
        raise clear from None


def _refuse_local_files(connector, url: str) -> None:
    # vLLM raises a RuntimeError here (a 500); the URL is the client's to fix
    if url.partition(":")[0].lower() == "file" and connector.allowed_local_media_path is None:
        raise ImageFetchError(f"could not fetch image from {url[:_SHOWN_URL_CHARS]}: file:// URLs are off; "
                              "serve with --allowed-local-media-path DIR to allow files under DIR")


def _explain_fetch_failures(fetch_image):
    """Wrap `MediaConnector.fetch_image`: a failed download is a bad request, not a crash."""

    @functools.wraps(fetch_image)
    def guarded(self, image_url: str, *args, **kwargs):
        _refuse_local_files(self, image_url)
        try:
            return fetch_image(self, image_url, *args, **kwargs)
        except Exception as error:
            _raise_clear_fetch_error(image_url, error)
            raise

    guarded._iaa_media = True
    return guarded


def _explain_async_fetch_failures(fetch_image_async):
    """Wrap `MediaConnector.fetch_image_async` (the server's path) like `fetch_image`."""

    @functools.wraps(fetch_image_async)
    async def guarded(self, image_url: str, *args, **kwargs):
        _refuse_local_files(self, image_url)
        try:
            return await fetch_image_async(self, image_url, *args, **kwargs)
        except Exception as error:
            _raise_clear_fetch_error(image_url, error)
            raise

    guarded._iaa_media = True
    return guarded


def install() -> None:
    """Wrap `ImageMediaIO`'s loaders and `MediaConnector`'s image fetches once; on 0.26 cap downloads.

    Idempotent. Checked against vLLM 0.26 and 0.32 (`vllm/multimodal/media/image.py`,
    `vllm/multimodal/media/connector.py`, `vllm/connections.py`).
    These apply to every model in the process: a media loader and a `MediaConnector`
    are built from the request's media options alone (`--media-io-kwargs`,
    `--allowed-local-media-path`, `--allowed-media-domains`), without the model's
    config, and the plugin is loaded into every vLLM process, so they cannot tell an
    IAA engine from a stock one. They only turn what would be a 500 (an uncaught
    Pillow error, a failed download) into the 400 vLLM gives every other bad image,
    name bad base64 and the download's failure as such, and on vLLM 0.26, which has
    no download cap, add 0.32's (`compat.MEDIA_DOWNLOADS_CAPPED`).
    """
    from vllm.connections import HTTPConnection, _async_retry, _sync_retry
    from vllm.multimodal.media.connector import MediaConnector
    from vllm.multimodal.media.image import ImageMediaIO

    from iaa_vllm.engine import compat

    if not getattr(ImageMediaIO.load_bytes, "_iaa_media", False):
        ImageMediaIO.load_bytes = _reject_bombs(ImageMediaIO.load_bytes)
        ImageMediaIO.load_base64 = _name_bad_base64(ImageMediaIO.load_base64)

    if not getattr(MediaConnector.fetch_image, "_iaa_media", False):
        MediaConnector.fetch_image = _explain_fetch_failures(MediaConnector.fetch_image)
        MediaConnector.fetch_image_async = _explain_async_fetch_failures(MediaConnector.fetch_image_async)

    if not compat.MEDIA_DOWNLOADS_CAPPED and not getattr(HTTPConnection.get_bytes, "_iaa_media", False):
        # vLLM's own retry loop around each, as on the originals
        HTTPConnection.get_bytes = _sync_retry(_capped_get_bytes)
        HTTPConnection.async_get_bytes = _async_retry(_capped_async_get_bytes)
        HTTPConnection.get_bytes._iaa_media = True
