"""Task results: decode `task.results`, download the archive, unpack it safely, and read what the app said.

A completed task carries `results` bytes such as `{"storage": "ipfs", "location": "/ipfs/<cid>"}`; the
archive at that location is a zip of the app's `/iexec_out` (files at the root, or under `iexec_out/`)
plus the worker's `stdout.txt` / `stderr.txt`. A task can be COMPLETED and still hold an error archive
(`error.txt`, or a `computed.json` carrying `error-message`), so `read_result` tells the two apart. A TEE
task run with result encryption stores `aes-key.rsa` + `iexec_out.zip.aes` instead: `fetch_result` opens it
with the requester's `iexec.tee.ResultKey` first.

Nothing here trusts the worker or the gateway: the location must have the form of an IPFS path (CIDv0,
CIDv1 base32, or the devnet gateway's sha256-hex id, which is also checked against the bytes), downloads
are capped while streaming, and `safe_unzip` refuses absolute paths, `..`, symlinks, too many files and
expansion bombs, counting the bytes it actually writes rather than what the zip headers claim.
This module must never follow a symlink out of its folder, never write outside `dest`, and never send a
request anywhere but the gateways it is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from iexec.errors import ResultDownloadError, ResultError, ResultLocationError, UnsafeArchive
from iexec.retry import RetryPolicy, retry_async
from iexec.tee import ResultKey, decrypt_if_encrypted

log = logging.getLogger(__name__)

__all__ = [
    "ResultLocation",
    "ResultLimits",
    "TaskResult",
    "decode_results",
    "download_result",
    "safe_unzip",
    "read_result",
    "fetch_result",
    "ResultError",
    "ResultLocationError",
    "ResultDownloadError",
    "UnsafeArchive",
]

_CID_V0 = re.compile(r"Qm[1-9A-HJ-NP-Za-km-z]{44}")
_CID_V1_BASE32 = re.compile(r"b[a-z2-7]{58,120}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_RESULTS_BYTES = 4096
_CHUNK = 64 * 1024
_TEXT_CAP = 64 * 1024


@dataclass(frozen=True)
class ResultLocation:
    """Where a task's result archive is stored: `storage` ("ipfs") and `location` ("/ipfs/<cid>")."""

    storage: str
    location: str

    @property
    def cid(self) -> str:
        """The content id part of the location."""
        return self.location.removeprefix("/ipfs/")


@dataclass(frozen=True)
class ResultLimits:
    """Caps applied to one result: download size, unpacked size, compression ratio, number of entries."""

    max_download: int = 50 * 1024 * 1024
    max_total: int = 200 * 1024 * 1024
    max_ratio: int = 200
    max_files: int = 64


@dataclass(frozen=True)
class TaskResult:
    """What the app left in its output folder.

    `ok` is true only for a real result: computed.json present, no error-message, no error.txt, and a
    deterministic output that exists inside the archive. Otherwise `error_message` says why.
    """

    ok: bool
    computed: dict[str, Any] = field(default_factory=dict)
    deterministic_output: Path | None = None
    error_message: str | None = None
    stdout: str = ""
    stderr: str = ""


def _check_location(location: str) -> None:
    if not isinstance(location, str) or not location.startswith("/ipfs/"):
        raise ResultLocationError(f"result location must look like /ipfs/<cid>, got {location[:80]!r}")
    cid = location.removeprefix("/ipfs/")
    if not (_CID_V0.fullmatch(cid) or _CID_V1_BASE32.fullmatch(cid) or _SHA256_HEX.fullmatch(cid)):
        raise ResultLocationError(f"result location has no valid content id: {location[:80]!r}")


def decode_results(raw: bytes | str) -> ResultLocation:
    """Decode a task's `results` bytes (as in viewTask or TaskFinalize) into a checked ResultLocation.

    Accepts the raw bytes, their UTF-8 text, or a 0x-hex string. Raises ResultLocationError when they are
    empty, not JSON, not an ipfs storage, or the location is not `/ipfs/<cid>`.
    """
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("0x"):
            try:
                raw = bytes.fromhex(text[2:])
            except ValueError:
                raise ResultLocationError("task results are neither hex nor JSON") from None
        else:
            raw = text.encode()
    if not raw:
        raise ResultLocationError("task results are empty: the task has no result to download")
    if len(raw) > _MAX_RESULTS_BYTES:
        raise ResultLocationError(f"task results are {len(raw)} bytes, more than a location needs")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ResultLocationError("task results are not a JSON storage/location object") from None
    if not isinstance(data, dict):
        raise ResultLocationError("task results are not a JSON object")
    storage, location = data.get("storage"), data.get("location")
    if storage != "ipfs":
        raise ResultLocationError(f"unsupported result storage {str(storage)[:40]!r} (only ipfs)")
    if not isinstance(location, str):
        raise ResultLocationError("task results carry no location")
    _check_location(location)
    return ResultLocation(storage=storage, location=location)


def _gateway_url(gateway: str, location: str) -> str:
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ResultDownloadError(f"gateway must be an http(s) URL, got scheme {parts.scheme!r}")
    return gateway.rstrip("/") + location


def _gateway_name(gateway: str) -> str:
    """The gateway without path or query, for logs and messages (they may carry keys)."""
    parts = urlsplit(gateway)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class _RoundFailed(Exception):
    """No gateway delivered in this round (the reasons are collected by the caller)."""


class _TooLarge(Exception):
    pass


async def _fetch_once(session: aiohttp.ClientSession, url: str, max_bytes: int, timeout: float) -> bytes:
    """One GET; raises _TooLarge, aiohttp errors, or ValueError('status N')."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with session.get(
        url, headers={"Accept": "application/zip"}, timeout=client_timeout, allow_redirects=False
    ) as resp:
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise _TooLarge(f"announces {resp.content_length} bytes")
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            buf += chunk
            if len(buf) > max_bytes:
                raise _TooLarge(f"more than {max_bytes} bytes")
        return bytes(buf)


async def download_result(
    location: ResultLocation | str,
    gateways: list[str],
    *,
    max_bytes: int = 50 << 20,
    session: aiohttp.ClientSession | None = None,
    timeout: float = 30.0,
    rounds: int = 3,
    backoff: float = 0.5,
) -> bytes:
    """Download the archive at `location`, trying each gateway in turn, for up to `rounds` rounds.

    A 404, a 5xx, a timeout or a connection error moves on to the next gateway; a round that failed
    everywhere waits `backoff` × 2^round, jittered (iexec.retry). A sha256-hex location is checked against
    the bytes. Raises ResultLocationError for a bad location, ResultDownloadError when the archive is larger than
    `max_bytes` or no gateway delivered it.
    """
    loc = location.location if isinstance(location, ResultLocation) else location
    _check_location(loc)
    if not gateways:
        raise ResultDownloadError("no IPFS gateway configured")
    urls = [(_gateway_name(g), _gateway_url(g, loc)) for g in gateways]
    own = session is None
    http = session or aiohttp.ClientSession()
    failures: list[str] = []

    async def one_round() -> bytes:
        for name, url in urls:
            try:
                body = await _fetch_once(http, url, max_bytes, timeout)
            except _TooLarge as exc:
                raise ResultDownloadError(f"result archive at {loc} is too large ({exc})") from None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                reason = str(exc) or type(exc).__name__
                failures.append(f"{name}: {reason}")
                log.info("event=result_download_failed gateway=%s location=%s reason=%s", name, loc, reason)
                continue
            cid = loc.removeprefix("/ipfs/")
            if _SHA256_HEX.fullmatch(cid) and hashlib.sha256(body).hexdigest() != cid:
                failures.append(f"{name}: content does not match its id")
                continue
            return body
        raise _RoundFailed

    def give_up(exc: BaseException, attempts: int, waited: float) -> ResultDownloadError:
        return ResultDownloadError(f"no gateway delivered {loc}: " + "; ".join(failures[-6:]))

    # a round that failed everywhere waits `backoff`, then twice as long each time (no wait after the last)
    policy = RetryPolicy(
        base_delay_s=backoff, max_delay_s=backoff * 2 ** max(0, rounds - 2), deadline_s=None, attempts=max(1, rounds)
    )
    try:
        return await retry_async(one_round, policy, retry_on=lambda exc: isinstance(exc, _RoundFailed), give_up=give_up)
    finally:
        if own:
            await http.close()


def _safe_member_path(name: str) -> PurePosixPath:
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeArchive(f"archive entry has an unsafe name: {name[:80]!r}")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchive(f"archive entry has an absolute path: {name[:80]!r}")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise UnsafeArchive(f"archive entry climbs out of its folder: {name[:80]!r}")
    return path


def _check_entry(info: zipfile.ZipInfo) -> PurePosixPath:
    path = _safe_member_path(info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchive(f"archive entry is a symlink: {info.filename[:80]!r}")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnsafeArchive(f"archive entry is not a plain file: {info.filename[:80]!r}")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"archive entry is encrypted: {info.filename[:80]!r}")
    return path


def _extract_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, max_ratio: int, zip_size: int
) -> int:
    """Stream one entry to `target`; returns the bytes written. Raises UnsafeArchive past the caps."""
    written = 0
    # The ratio is judged on what comes out, against the compressed size (never below 4 KiB, so that
    # tiny well-compressed text files pass).
    ratio_cap = max(min(info.compress_size, zip_size), 4096) * max_ratio
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise UnsafeArchive("archive expands beyond the size limit (bomb?)")
            if written > ratio_cap:
                raise UnsafeArchive(f"archive entry {info.filename[:80]!r} expands too much (bomb?)")
            out.write(chunk)
    return written


def safe_unzip(
    zip_bytes: bytes, dest: Path | str, *, max_total: int = 200 << 20, max_ratio: int = 200, max_files: int = 64
) -> list[Path]:
    """Unpack `zip_bytes` into `dest` (created; must be empty) and return the files written.

    Refuses absolute paths, `..`, backslashes, symlinks and special files, encrypted entries, duplicate
    names, more than `max_files` entries, more than `max_total` bytes written, and entries that expand
    more than `max_ratio` times their compressed size. Raises UnsafeArchive (and leaves `dest` empty).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise UnsafeArchive(f"unpack folder {dest} is not empty")
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UnsafeArchive(f"result is not a readable zip archive: {exc}") from None
    written_files: list[Path] = []
    try:
        with zf:
            infos = zf.infolist()
            if len(infos) > max_files:
                raise UnsafeArchive(f"archive has {len(infos)} entries, more than {max_files}")
            seen: set[PurePosixPath] = set()
            total = 0
            # Whatever the headers say, the whole archive may not expand past max_ratio × its size.
            cap = min(max_total, max_ratio * max(len(zip_bytes), 4096))
            root = dest.resolve()
            for info in infos:
                rel = _check_entry(info)
                if rel in seen:
                    raise UnsafeArchive(f"archive entry appears twice: {info.filename[:80]!r}")
                seen.add(rel)
                target = root.joinpath(*rel.parts)
                if root not in target.parents and target != root:
                    raise UnsafeArchive(f"archive entry escapes its folder: {info.filename[:80]!r}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.parent.resolve() != target.parent or target.exists():
                    raise UnsafeArchive(f"archive entry collides with another: {info.filename[:80]!r}")
                total += _extract_entry(zf, info, target, cap - total, max_ratio, len(zip_bytes))
                written_files.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError) as exc:
        _empty(dest)
        raise UnsafeArchive(f"result archive is corrupt or unsupported: {exc}") from None
    except UnsafeArchive:
        _empty(dest)
        raise
    return written_files


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _read_text(path: Path) -> str:
    """The last 64 KiB of a text file, or "" when absent; never follows a symlink."""
    if not path.is_file() or path.is_symlink():
        return ""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - _TEXT_CAP))
        return fh.read().decode("utf-8", errors="replace")


def _output_root(folder: Path) -> Path:
    nested = folder / "iexec_out"
    if not (folder / "computed.json").exists() and nested.is_dir():
        return nested
    return folder


def _deterministic_path(root: Path, declared: Any) -> Path | None:
    """Map computed.json's `/iexec_out/...` path into `root`; None when it is missing or escapes."""
    if not isinstance(declared, str) or not declared.startswith("/iexec_out"):
        return None
    rel = declared.removeprefix("/iexec_out").lstrip("/")
    try:
        rel_path = _safe_member_path(rel) if rel else PurePosixPath()
    except UnsafeArchive:
        return None
    target = root.joinpath(*rel_path.parts)
    if target.is_symlink() or not target.exists():
        return None
    resolved = target.resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        return None
    return target


def read_result(folder: Path | str) -> TaskResult:
    """Read an unpacked result folder and tell a real result from an error archive.

    Handles both layouts (output files at the root, or under `iexec_out/`). Never raises for an error
    archive: returns `ok=False` with `error_message`. Raises ResultError when `folder` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultError(f"result folder {folder} does not exist")
    root = _output_root(folder)
    stdout = _read_text(folder / "stdout.txt") or _read_text(root / "stdout.txt")
    stderr = _read_text(folder / "stderr.txt") or _read_text(root / "stderr.txt")

    def failed(message: str, computed: dict[str, Any] | None = None) -> TaskResult:
        return TaskResult(ok=False, computed=computed or {}, error_message=message[:2000], stdout=stdout, stderr=stderr)

    for candidate in (folder / "error.txt", root / "error.txt"):
        if candidate.is_file():
            return failed(_read_text(candidate).strip() or "the worker reported an error (error.txt)")
    computed_file = root / "computed.json"
    if not computed_file.is_file() or computed_file.is_symlink():
        return failed("the result has no computed.json: the app did not finish")
    try:
        computed = json.loads(_read_text(computed_file))
    except json.JSONDecodeError:
        return failed("computed.json is not valid JSON")
    if not isinstance(computed, dict):
        return failed("computed.json is not a JSON object")
    if computed.get("error-message"):
        return failed(str(computed["error-message"]), computed)
    output = _deterministic_path(root, computed.get("deterministic-output-path"))
    if output is None:
        return failed("computed.json names no deterministic output inside the archive", computed)
    return TaskResult(ok=True, computed=computed, deterministic_output=output, stdout=stdout, stderr=stderr)


async def fetch_result(
    results: bytes | str,
    gateways: list[str],
    dest: Path | str,
    *,
    limits: ResultLimits = ResultLimits(),
    session: aiohttp.ClientSession | None = None,
    result_key: ResultKey | None = None,
) -> TaskResult:
    """Decode, download, unpack and read a task's result in one call.

    An encrypted result (a TEE task with `iexec_result_encryption`: aes-key.rsa + iexec_out.zip.aes) is
    decrypted with `result_key` before anything else reads it. Raises ResultLocationError,
    ResultDownloadError or UnsafeArchive; DecryptionError (an UnsafeArchive) when the result does not
    decrypt, ResultKeyMissing (a DecryptionError) when it is encrypted and no key was given. An error
    archive is returned as a TaskResult with `ok=False`.
    """
    location = decode_results(results)
    body = await download_result(location, gateways, max_bytes=limits.max_download, session=session)
    body = decrypt_if_encrypted(body, result_key, max_size=limits.max_total)
    safe_unzip(body, dest, max_total=limits.max_total, max_ratio=limits.max_ratio, max_files=limits.max_files)
    return read_result(dest)
