"""Input publishing: serve each job's input image at an unguessable, expiring URL that the worker fetches.

What it is for: on iExec without TEE a request order's params are public on chain, so the input URL is
public while the task runs. `InputServer.publish(job_id, data, ttl)` therefore returns
`<base>/in/<token>/<name>` with a fresh 256-bit token, and the file stops being served at `ttl` or when the
pipeline calls `revoke(job_id)` (task over) or `forget(user_id)` (/forget).

Files live on disk in the data dir, named by the SHA-256 of their token, each with a small JSON index entry,
so that a restarted bot serves the inputs of its unfinished jobs again (`restore()`). The token itself is
never written anywhere by this module: whoever holds the URL (the signed order) holds the token.

Serving: aiohttp on 127.0.0.1 by default; behind a reverse proxy on a real network, set the public base URL.
Unknown, expired, revoked or malformed paths all get the same 404; nothing is ever listed.

What it must never do: log a token or a full input URL (aiohttp's access log is off; our own lines name the
job), serve a file past its expiry, or keep a file after revoke/forget.

In TEE mode the pipeline publishes only the encrypted photo: here, or on an IPFS node (`upload_to_ipfs`, the
kubo API the network's upload node speaks), where it is content-addressed, public and cannot be revoked;
only the enclave that gets the key from the SMS can read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.errors import InputsError, UploadFailed
from bot.settings import Settings
from iexec.bodies import read_capped

log = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): 256 bits
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
MAX_TTL_S = 30 * 24 * 3600


_CID_RE = re.compile(r"[A-Za-z0-9]{20,128}")
UPLOAD_ANSWER_MAX = 64 * 1024


async def upload_to_ipfs(
    api_url: str, data: bytes, gateway: str, *, timeout: float = 120.0, session: aiohttp.ClientSession | None = None
) -> str:
    """Add `data` to the IPFS node at `api_url` (kubo `POST /api/v0/add`, multipart field `file`) and return
    `<gateway>/ipfs/<Hash>`. Content-addressed: the same bytes give the same URL, so a retry is harmless.
    Raises UploadFailed; the answer body is read with a cap."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename="input", content_type="application/octet-stream")
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    where = api_url.rstrip("/")
    try:
        async with http.post(f"{where}/api/v0/add", data=form) as resp:
            body = await read_capped(resp, UPLOAD_ANSWER_MAX, "IPFS upload answer")
            if resp.status != 200:
                raise UploadFailed(f"the IPFS node answered HTTP {resp.status} to the upload")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UploadFailed(f"the IPFS node does not answer: {type(exc).__name__}") from None
    finally:
        if own:
            await http.close()
    try:
        cid = json.loads(body.decode("utf-8").strip().splitlines()[-1])["Hash"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise UploadFailed("the IPFS node's answer has no Hash") from None
    if not isinstance(cid, str) or not _CID_RE.fullmatch(cid):
        raise UploadFailed("the IPFS node's answer has no valid Hash")
    return f"{gateway.rstrip('/')}/ipfs/{cid}"


@dataclass(frozen=True)
class PublishedInput:
    """One published input as indexed on disk; `key` is the SHA-256 of the URL's token."""

    key: str
    job_id: str
    user_id: int | None
    name: str
    content_type: str
    size: int
    expires_at: float


def _key_of(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class InputServer:
    """Publishes job inputs over HTTP. Use `async with InputServer(dir) as server:` or start()/stop()."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str = "",
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 60.0,
    ) -> None:
        self._dir = Path(data_dir)
        self._host, self._port = host, port
        self._public_url = public_url.rstrip("/")
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._entries: dict[str, PublishedInput] = {}
        self._runner: web.AppRunner | None = None
        self._bound_url = ""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.restore()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> InputServer:
        """A server configured from the bot settings (`data_dir`, `inputs_listen`, `inputs_port`,
        `inputs_public_url`), its files in `<data_dir>/inputs`."""
        return cls(
            Path(getattr(settings, "data_dir", "data")) / "inputs",
            host=getattr(settings, "inputs_listen", "127.0.0.1") or "127.0.0.1",
            port=int(getattr(settings, "inputs_port", 0) or 0),
            public_url=getattr(settings, "inputs_public_url", "") or "",
            **kwargs,
        )

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving (the index was restored from disk when the server was made). Raises InputsError
        if the address cannot be bound."""
        app = web.Application()
        app.router.add_get("/in/{token}/{name}", self._serve)
        app.cleanup_ctx.append(self._sweeper)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InputsError(f"cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._bound_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("event=inputs_started url=%s files=%d", self._bound_url, len(self._entries))

    async def stop(self) -> None:
        """Stop serving; the files stay on disk for the next start."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("event=inputs_stopped")

    async def __aenter__(self) -> InputServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The URL prefix workers use: the public URL if one is set, else the address we listen on."""
        if self._public_url:
            return self._public_url
        if not self._bound_url:
            raise InputsError("the inputs server is not started and has no public URL")
        return self._bound_url

    async def _sweeper(self, app: web.Application) -> Any:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(self._sweep_interval)
                self.purge_expired()

        task = asyncio.create_task(sweep())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --- publishing --------------------------------------------------------------------------------------

    def publish(
        self,
        job_id: str | int,
        data: bytes,
        ttl: float,
        *,
        user_id: int | None = None,
        name: str = "input.jpg",
        content_type: str | None = None,
    ) -> str:
        """Store `data` and return the URL that serves it for `ttl` seconds. A job published again gets a
        new URL and its previous one stops working. Raises InputsError for a bad name, ttl or disk error."""
        if not _NAME_RE.fullmatch(name) or name in (".", ".."):
            raise InputsError(f"bad input name {name!r}: use letters, digits, '.', '_' or '-'")
        if not 0 < ttl <= MAX_TTL_S:
            raise InputsError(f"ttl must be between 0 and {MAX_TTL_S} seconds")
        if not data:
            raise InputsError("refusing to publish an empty input")
        ctype = content_type or _TYPES.get(Path(name).suffix.lower(), "application/octet-stream")
        base = self.base_url
        job = str(job_id)
        self.revoke(job)
        token = secrets.token_urlsafe(32)
        entry = PublishedInput(_key_of(token), job, user_id, name, ctype, len(data), self._clock() + float(ttl))
        try:
            _write_atomic(self._dir / f"{entry.key}.bin", data)
            _write_atomic(self._dir / f"{entry.key}.json", json.dumps(asdict(entry)).encode())
        except OSError as exc:
            self._delete_files(entry.key)
            raise InputsError(f"cannot store the input of job {job}: {exc.strerror}") from None
        self._entries[entry.key] = entry
        log.info("event=input_published job=%s bytes=%d ttl=%ds", job, len(data), int(ttl))
        return f"{base}/in/{token}/{name}"

    def revoke(self, job_id: str | int) -> bool:
        """Stop serving the job's input and delete its file. True if there was one."""
        job = str(job_id)
        keys = [k for k, e in self._entries.items() if e.job_id == job]
        for key in keys:
            self._drop(key)
        if keys:
            log.info("event=input_revoked job=%s", job)
        return bool(keys)

    def forget(self, user_id: int) -> int:
        """Delete every input of this user (the /forget command). Returns how many were deleted."""
        keys = [k for k, e in self._entries.items() if e.user_id == user_id]
        for key in keys:
            self._drop(key)
        log.info("event=inputs_forgotten user=%s files=%d", user_id, len(keys))
        return len(keys)

    def published(self, job_id: str | int) -> PublishedInput | None:
        """The live entry of a job (no token in it), or None."""
        job = str(job_id)
        now = self._clock()
        return next((e for e in self._entries.values() if e.job_id == job and e.expires_at > now), None)

    def purge_expired(self) -> int:
        """Delete the files whose time is over. Returns how many."""
        now = self._clock()
        keys = [k for k, e in self._entries.items() if e.expires_at <= now]
        for key in keys:
            log.info("event=input_expired job=%s", self._entries[key].job_id)
            self._drop(key)
        return len(keys)

    def restore(self) -> int:
        """Load the index from the data dir, dropping expired entries and stray files. Returns the number
        of inputs served again."""
        self._entries.clear()
        for path in list(self._dir.iterdir()):
            if path.name.endswith(".tmp"):  # a publish interrupted by a crash
                path.unlink(missing_ok=True)
            elif path.suffix == ".json" and _KEY_RE.fullmatch(path.stem):
                key = path.stem
                entry = _read_entry(path)
                if entry is None or entry.key != key or not (self._dir / f"{key}.bin").exists():
                    self._delete_files(key)
                else:
                    self._entries[key] = entry
        for path in self._dir.glob("*.bin"):
            if path.stem not in self._entries:
                path.unlink(missing_ok=True)
        self.purge_expired()
        return len(self._entries)

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)
        self._delete_files(key)

    def _delete_files(self, key: str) -> None:
        for suffix in (".json", ".bin"):
            (self._dir / f"{key}{suffix}").unlink(missing_ok=True)

    # --- serving -----------------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        token, name = request.match_info["token"], request.match_info["name"]
        if not _TOKEN_RE.fullmatch(token):
            raise web.HTTPNotFound()
        key = _key_of(token)
        entry = self._entries.get(key)
        if entry is None or entry.name != name:
            raise web.HTTPNotFound()
        if entry.expires_at <= self._clock():
            log.info("event=input_expired job=%s", entry.job_id)
            self._drop(key)
            raise web.HTTPNotFound()
        path = self._dir / f"{key}.bin"
        if not path.exists():
            raise web.HTTPNotFound()
        log.info("event=input_served job=%s bytes=%d method=%s", entry.job_id, entry.size, request.method)
        return web.FileResponse(
            path,
            headers={
                "Content-Type": entry.content_type,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_entry(path: Path) -> PublishedInput | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return PublishedInput(
            key=str(raw["key"]),
            job_id=str(raw["job_id"]),
            user_id=None if raw.get("user_id") is None else int(raw["user_id"]),
            name=str(raw["name"]),
            content_type=str(raw["content_type"]),
            size=int(raw["size"]),
            expires_at=float(raw["expires_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("event=inputs_index_unreadable file=%s", path.name)
        return None
