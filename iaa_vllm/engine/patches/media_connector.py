"""`MediaConnector.fetch_image` / `fetch_image_async`: an image URL that cannot be fetched is a bad request.

An `image_url` the server has to download can fail upstream. vLLM 0.32 answers
500, with a traceback in the server log, when the host refuses the connection,
its name does not resolve, it never answers (after `VLLM_MEDIA_FETCH_MAX_RETRIES`
tries), it answers 5xx, or the URL is `file://` without
`--allowed-local-media-path`; a redirect loop gets 422 "HTTP 0 error". `install`
makes each a 400 "could not fetch image from URL: REASON"; the loop keeps vLLM's
422, now with the reason (offline too, where it was a 500). Registry:
`patches/__init__.py`.
"""

from __future__ import annotations

import functools
import socket

from vllm.exceptions import VLLMValidationError

from iaa_vllm.engine.patches.http_connection import DownloadTooLarge

_SHOWN_URL_CHARS = 200  # URLs echoed in error messages are cut to this


class ImageFetchError(VLLMValidationError, ValueError):
    """An `image_url` the server could not download: HTTP 400, ValueError offline."""


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

    guarded._iaa_patch = True
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

    guarded._iaa_patch = True
    return guarded


def install() -> None:
    """Wrap both fetches once (idempotent). Checked against vLLM 0.26-0.33 (`vllm/multimodal/media/connector.py`)."""
    from vllm.multimodal.media.connector import MediaConnector

    if not getattr(MediaConnector.fetch_image, "_iaa_patch", False):
        MediaConnector.fetch_image = _explain_fetch_failures(MediaConnector.fetch_image)
        MediaConnector.fetch_image_async = _explain_async_fetch_failures(MediaConnector.fetch_image_async)
