"""Verified, resumable HTTP downloads.

A download streams into ``<dest>.part`` next to its destination, resumes that partial file with an HTTP ``Range``
request after a dropped connection (or in a later run), retries with exponential back-off (a busy server's 429 or 503
after the ``Retry-After`` it asks for), checks size and MD5, and only then renames the file into place. A failed
download never leaves a file at ``dest``. Every request asks for the bytes as stored (``Accept-Encoding: identity``):
a compressed response would be decoded on the fly, and the decoded length is not the offset a ``Range`` resumes at.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from tqdm import tqdm

from embedlab.core.errors import UserError
from embedlab.core.files import durable_replace, md5sum

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # a dropped connection loses at most one chunk of progress
MAX_RETRY_AFTER = 120.0  # seconds: a longer Retry-After is capped (the attempts stay bounded in time)
BUSY = (429, 503)  # "too many requests", "unavailable": the server says try again later


class DownloadError(UserError):
    """The file could not be fetched (network, HTTP status, or an incomplete body after all retries)."""


class ChecksumError(DownloadError):
    """The fetched bytes do not match the expected MD5."""


class _Busy(Exception):
    """The server answered 429 or 503: try again after ``wait`` seconds (its Retry-After), if it said."""

    def __init__(self, status: int, wait: float | None) -> None:
        super().__init__(f"HTTP {status}" + (f", retry after {wait:g}s" if wait is not None else ""))
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``part``, appending when the server honours our Range request."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and have:
            return  # we already hold every byte; the checksum decides.
        if response.status_code in BUSY:
            raise _Busy(response.status_code, _retry_after(response.headers.get("Retry-After")))
        if response.status_code not in (200, 206):
            response.raise_for_status()
            raise DownloadError(f"unexpected HTTP {response.status_code} from {url}")
        resumed = response.status_code == 206 and have > 0
        if resumed:
            start = int(response.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != have:
                raise DownloadError(f"server resumed at byte {start}, expected {have}")
        elif have:
            log.info("server ignored the Range request; restarting %s from byte 0", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=expected,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=None if progress else True,  # None: shown on a terminal, not in a log
                leave=False,
            ) as bar,
        ):
            for block in response.iter_content(CHUNK):
                out.write(block)
                bar.update(len(block))
        if expected is not None and part.stat().st_size < expected:
            raise requests.ConnectionError(f"connection closed at byte {part.stat().st_size} of {expected}")


def download(
    url: str,
    dest: str | Path,
    md5: str,
    *,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return it; a file already at ``dest`` with the right MD5 is reused."""
    dest = Path(dest)
    if dest.exists() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Busy) as err:
            if attempt == retries:
                raise DownloadError(f"could not download {url} after {retries + 1} attempts: {err}") from err
            asked = err.wait if isinstance(err, _Busy) else None
            wait = min(asked, MAX_RETRY_AFTER) if asked is not None else backoff * 2**attempt
            log.warning("download interrupted (%s); retrying in %.1fs", err, wait)
            time.sleep(wait)
        except requests.HTTPError as err:
            raise DownloadError(f"could not download {url}: {err}") from err
    actual = md5sum(part)
    if actual != md5:
        part.unlink()
        raise ChecksumError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}")
    durable_replace(part, dest)
    return dest
