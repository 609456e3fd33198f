"""`HTTPConnection.get_bytes` / `async_get_bytes` on vLLM 0.26-0.28: a media download stops at a cap.

vLLM 0.29 and later stop a download at `VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB` while it
streams; 0.26-0.28 read the whole body into memory, whatever its size. On those,
`install` adds the same cap, under the same setting and default, so one setting
bounds downloads on every supported version (`compat.MEDIA_DOWNLOADS_CAPPED`).
Registry: `patches/__init__.py`.
"""

from __future__ import annotations

import os

# vLLM 0.29+'s own cap on a media download, by its name and default.
MAX_DOWNLOAD_ENV = "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"
DEFAULT_MAX_DOWNLOAD_MB = 256
_READ_CHUNK = 64 * 1024


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
    """`get_bytes` that stops reading at the cap.

    Without 0.29+'s `max_bytes` argument: only 0.26-0.28 get it, whose callers pass
    none, and `compat.MEDIA_DOWNLOADS_CAPPED` reads that argument's absence.
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
    """`async_get_bytes` that stops reading at the cap."""
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


def install() -> None:
    """Replace both reads once where vLLM has no cap (idempotent; a no-op on 0.29+).

    Checked against vLLM 0.26-0.33 (`vllm/connections.py`).
    """
    from vllm.connections import HTTPConnection, _async_retry, _sync_retry

    from iaa_vllm.engine import compat

    if not compat.MEDIA_DOWNLOADS_CAPPED and not getattr(HTTPConnection.get_bytes, "_iaa_patch", False):
        # vLLM's own retry loop around each, as on the originals
        HTTPConnection.get_bytes = _sync_retry(_capped_get_bytes)
        HTTPConnection.async_get_bytes = _async_retry(_capped_async_get_bytes)
        HTTPConnection.get_bytes._iaa_patch = True
