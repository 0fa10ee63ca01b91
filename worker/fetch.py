"""Downloads: the task's image URL (small, bounded in size and time) and the COCO weights file
(`python -m worker fetch-weights`: once, into a cache, with a progress bar, sha256 check and atomic rename).

It must never follow a redirect to a scheme other than http/https, never read more than the limit it was
given, and never download the weights during a task on its own initiative.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import IO

from worker import limits
from worker.errors import DownloadError

WEIGHTS_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
WEIGHTS_FILENAME = "mask_rcnn_coco.h5"
_CHUNK = 1 << 16


def cache_dir() -> str:
    """Where fetch-weights puts the weights: $SEGBOT_CACHE, else ~/.cache/segbot."""
    return os.environ.get("SEGBOT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "segbot")


def cached_weights_path() -> str:
    """The path fetch-weights writes by default."""
    return os.path.join(cache_dir(), WEIGHTS_FILENAME)


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = limits.URL_MAX_REDIRECTS

    def __init__(self, check: Callable[[str], None]) -> None:
        self._check = check

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        self._check(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _checker(block_private: bool) -> Callable[[str], None]:
    def check(url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError("Only http:// and https:// image URLs are accepted.")
        if parts.username or parts.password:
            raise DownloadError("Image URLs with a user name or password are not accepted.")
        if block_private:
            _refuse_private(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    return check


def _refuse_private(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise DownloadError(f"The image host {host} could not be resolved.") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global or addr.is_multicast:
            raise DownloadError(f"The image host {host} is a private or local address; it is refused.")


def _open(url: str, timeout: float, block_private: bool) -> http.client.HTTPResponse:
    check = _checker(block_private)
    check(url)
    opener = urllib.request.build_opener(_Redirects(check))
    opener.addheaders = [("User-Agent", "segbot-worker/0.1"), ("Accept", "image/*")]
    try:
        return opener.open(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise DownloadError(
                "The image URL redirects where it may not go (only http:// and https://, "
                f"at most {limits.URL_MAX_REDIRECTS} redirects)."
            ) from None
        raise DownloadError(f"The image URL answered HTTP {exc.code} ({exc.reason}).") from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else getattr(exc.reason, "strerror", None)
        raise DownloadError(f"The image URL could not be reached ({reason or exc.reason}).") from None
    except TimeoutError:
        raise DownloadError("The image URL did not answer in time.") from None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"The image URL could not be fetched ({type(exc).__name__}).") from None


def download_image(
    url: str,
    *,
    max_bytes: int = limits.MAX_IMAGE_BYTES,
    timeout: float = limits.URL_TIMEOUT_S,
    block_private: bool = False,
) -> bytes:
    """Fetch an image URL into memory. Raises DownloadError when it fails or exceeds size or time limits."""
    deadline = time.monotonic() + timeout
    resp = _open(url, min(timeout, limits.URL_CONNECT_TIMEOUT_S * 2), block_private)
    too_big = DownloadError(f"The image at the URL is larger than {max_bytes // 1_000_000} MB.")
    with resp:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise DownloadError(f"The image download took longer than {timeout:g} s.")
            try:
                chunk = resp.read(_CHUNK)
            except (OSError, ValueError):
                raise DownloadError("The image download was interrupted.") from None
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise too_big
            chunks.append(chunk)
    return b"".join(chunks)


def _progress(out: IO[str], done: int, total: int | None, started: float) -> None:
    mb = done / 1e6
    rate = mb / max(time.monotonic() - started, 1e-6)
    if total:
        filled = int(30 * done / total)
        out.write(
            f"\r[{'#' * filled}{' ' * (30 - filled)}] {100 * done // total:3d}% "
            f"{mb:7.1f}/{total / 1e6:.1f} MB {rate:5.1f} MB/s"
        )
    else:
        out.write(f"\r{mb:7.1f} MB {rate:5.1f} MB/s")
    out.flush()


def sha256_file(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(
    url: str = WEIGHTS_URL,
    dest: str | None = None,
    sha256: str | None = None,
    *,
    force: bool = False,
    progress: IO[str] | None = sys.stderr,
    timeout: float = 60.0,
) -> str:
    """Download the weights file once into `dest` (default: the cache). Returns its path.

    The file is written to a temporary name beside `dest`, checked against `sha256` when given, then
    renamed: an interrupted download never leaves a half file under the final name.
    Raises DownloadError (network, HTTP, checksum).
    """
    dest = dest or cached_weights_path()
    expected = sha256.lower() if sha256 else None
    if os.path.exists(dest) and not force and (expected is None or sha256_file(dest) == expected):
        if progress:
            progress.write(f"weights already present: {dest}\n")
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    resp = _open(url, timeout, block_private=False)
    total_text = resp.headers.get("Content-Length")
    total = int(total_text) if total_text and total_text.isdigit() else None
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".weights-", suffix=".part", dir=os.path.dirname(os.path.abspath(dest)))
    started, done = time.monotonic(), 0
    try:
        with resp, os.fdopen(fd, "wb") as fh:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    _progress(progress, done, total, started)
        if progress:
            progress.write("\n")
        if total is not None and done != total:
            raise DownloadError(f"The weights download stopped early ({done} of {total} bytes).")
        if expected and digest.hexdigest() != expected:
            raise DownloadError(f"The weights file has sha256 {digest.hexdigest()}, expected {expected}.")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if progress:
        progress.write(f"weights saved: {dest} sha256={digest.hexdigest()}\n")
    return dest
