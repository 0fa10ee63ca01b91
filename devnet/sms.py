"""A stand-in for iExec's Secret Management Service (SMS), for the devnet and the tests.

It speaks the real SMS's wire format (iexec-sms `Web2SecretController`, `AppComputeSecretController`) as the
JS SDK 9.0.1 calls it (`src/common/sms/push.js`, `check.js`):

    HEAD /secrets/web2?ownerAddress=<addr>&secretName=<name>      204 exists | 404 missing
    POST /secrets/web2?ownerAddress=..&secretName=..  body=value  204 | 413 > 4096 bytes | 401 | 409 exists
    PUT  /secrets/web2?ownerAddress=..&secretName=..  body=value  204 | 413 | 401 | 404 missing
    HEAD /requesters/<addr>/secrets/<name>                        204 | 404 | 400 bad name
    POST /requesters/<addr>/secrets/<name>            body=value  204 | 400 bad name or > 4096 bytes | 401
                                                                  | 409 exists (never updatable: no PUT, 405)
    GET  /up (text), /actuator/health ({"status": "UP"}), /version — liveness for the doctor

`Authorization` is an Ethereum personal_sign (65 bytes, hex) of keccak256(keccak256("IEXEC_SMS_DOMAIN") ‖
address ‖ keccak256(name) ‖ keccak256(value)); the signer must be the owner / requester in the URL.
Requester secret names are 1..64 characters of [0-9A-Za-z-_], as the real SMS; web2 names have no documented
rule there, so the stand-in takes 1..256 printable ASCII characters.

In-process reads (`requester_secret`, `web2_secret`) are the devnet workerpool's "attested enclave" path.
Secrets persist to `state_path` (mode 0600, written atomically) so a demo restart keeps them.
It binds loopback only, never logs a secret value, and never imports the client it stands in for (`iexec`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import is_address, keccak, to_checksum_address

from devnet.loopback import serve_loopback

log = logging.getLogger(__name__)

__all__ = ["SmsStandIn", "sms_challenge", "MAX_SECRET_BYTES", "VERSION"]

VERSION = "devnet-sms-standin-1.0.0"
DOMAIN = "IEXEC_SMS_DOMAIN"
MAX_SECRET_BYTES = 4096  # iexec-sms SecretUtils.SECRET_MAX_SIZE, counted in UTF-8 bytes
MAX_BODY = 64 * 1024  # read cap: a larger body is refused before it is read
REQUESTER_NAME = re.compile(r"[0-9A-Za-z_-]{1,64}")
WEB2_NAME = re.compile(r"[\x21-\x7e]{1,256}")
_STATE_VERSION = 1


def sms_challenge(address: str, name: str, value: str) -> bytes:
    """The 32-byte message the SDK personal_signs to push web2 and requester secrets."""
    return keccak(keccak(DOMAIN.encode()) + bytes.fromhex(address[2:]) + keccak(name.encode()) + keccak(value.encode()))


def _signed_by(authorization: str, challenge: bytes, address: str) -> bool:
    """True when `authorization` is a personal_sign of `challenge` by `address`."""
    try:
        signature = bytes.fromhex(authorization.strip().removeprefix("0x"))
        if len(signature) != 65:
            return False
        signer = Account.recover_message(encode_defunct(primitive=challenge), signature=signature)
    except Exception:  # noqa: BLE001 - any malformed signature is simply "not signed by them"
        return False
    return signer.lower() == address.lower()


class _Refused(Exception):
    """An answer other than success: HTTP status plus a message (the real SMS's `{"error": [...]}`)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status


class SmsStandIn:
    """The SMS stand-in: `await start(port=0)` returns the base URL; `await stop()`."""

    def __init__(self, *, state_path: Path | None = None, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the SMS stand-in binds loopback only")
        self.host = host
        self.state_path = Path(state_path) if state_path is not None else None
        self.base_url = ""
        self._web2: dict[str, str] = {}  # "<owner lower>|<name>" -> value
        self._requester: dict[str, str] = {}  # "<requester lower>|<name>" -> value
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._load()

    # -- in-process reads (the devnet's attested enclave) ----------------------------------------------

    def requester_secret(self, requester: str, name: str) -> str | None:
        """The requester secret `name` of `requester`, or None."""
        return self._requester.get(f"{requester.lower()}|{name}")

    def web2_secret(self, owner: str, name: str) -> str | None:
        """The web2 secret `name` of `owner` (e.g. the result encryption key), or None."""
        return self._web2.get(f"{owner.lower()}|{name}")

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        """Serve on the loopback `port` (0 = any free port); returns the base URL."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_get("/up", self._up)
        app.router.add_get("/actuator/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_route("HEAD", "/secrets/web2", self._web2_exists)
        app.router.add_post("/secrets/web2", self._web2_add)
        app.router.add_put("/secrets/web2", self._web2_update)
        app.router.add_route("HEAD", "/requesters/{address}/secrets/{name}", self._requester_exists)
        app.router.add_post("/requesters/{address}/secrets/{name}", self._requester_add)
        self._runner, self.base_url = await serve_loopback(app, port, host=self.host)
        log.info("event=sms_started url=%s web2=%d requester=%d", self.base_url, len(self._web2), len(self._requester))
        return self.base_url

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SmsStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- persistence ----------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{self.state_path}: unreadable SMS state ({exc}); restore it or remove it (its secrets are then lost)"
            ) from None
        if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
            raise ValueError(f"{self.state_path}: not an SMS state file of version {_STATE_VERSION}")
        self._web2 = dict(data.get("web2", {}))
        self._requester = dict(data.get("requester", {}))

    def _save(self) -> None:
        """Write the secrets atomically: a 0600 temp file, fsync, rename, fsync the folder."""
        if self.state_path is None:
            return
        folder = self.state_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {"version": _STATE_VERSION, "web2": self._web2, "requester": self._requester}, sort_keys=True
        ).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.state_path.name}.", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- plumbing -------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        event = f"sms_{request.method.lower()}"
        try:
            response = await handler(request)
        except _Refused as exc:
            log.info("event=%s path=%s status=%d reason=%r", event, request.path, exc.status, str(exc))
            body = {"error": [str(exc)]} if exc.status != 405 else {"error": ["method not allowed"]}
            return web.json_response(body, status=exc.status)
        except web.HTTPRequestEntityTooLarge:
            log.info("event=%s path=%s status=413 reason='body over %d bytes'", event, request.path, MAX_BODY)
            return web.Response(status=413)
        except web.HTTPException as exc:
            log.info("event=%s path=%s status=%d", event, request.path, exc.status)
            raise
        if request.path not in ("/up", "/actuator/health", "/version"):
            log.info("event=%s path=%s status=%d", event, request.path, response.status)
        return response

    @staticmethod
    async def _value(request: web.Request) -> str:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        raw = await request.read()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, "secret value must be UTF-8 text") from None
        if not value:
            raise _Refused(400, "Required request body is missing")
        return value

    @staticmethod
    def _address(text: str) -> str:
        if not is_address(text):
            raise _Refused(400, f"{text!r} is not an ethereum address")
        return to_checksum_address(text)

    def _web2_key(self, request: web.Request) -> tuple[str, str]:
        owner, name = request.query.get("ownerAddress"), request.query.get("secretName")
        if owner is None or name is None:
            raise _Refused(400, "ownerAddress and secretName are required")
        if not WEB2_NAME.fullmatch(name):
            raise _Refused(400, "secretName should contain 1 to 256 printable ASCII characters")
        return self._address(owner), name

    def _requester_key(self, request: web.Request) -> tuple[str, str]:
        name = request.match_info["name"]
        if not REQUESTER_NAME.fullmatch(name):
            raise _Refused(400, "Secret key should contain at most 64 characters from [0-9A-Za-z-_]")
        return self._address(request.match_info["address"]), name

    async def _store(self, book: dict[str, str], key: str, value: str, *, create: bool) -> None:
        async with self._lock:
            if create and key in book:
                raise _Refused(409, "Secret already exists")
            if not create and key not in book:
                raise _Refused(404, "Secret not found")
            previous = book.get(key)
            book[key] = value
            try:
                self._save()
            except OSError:
                if previous is None:
                    del book[key]
                else:
                    book[key] = previous
                raise

    # -- endpoints ------------------------------------------------------------------------------------

    async def _up(self, request: web.Request) -> web.Response:
        return web.Response(text=f"Up! ({datetime.now(UTC).isoformat(timespec='seconds')})")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "UP"})

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(text=VERSION)

    async def _web2_exists(self, request: web.Request) -> web.Response:
        owner, name = self._web2_key(request)
        return web.Response(status=204 if self.web2_secret(owner, name) is not None else 404)

    async def _web2_write(self, request: web.Request, *, create: bool) -> web.Response:
        owner, name = self._web2_key(request)
        value = await self._value(request)
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise _Refused(413, f"Secret size should not exceed {MAX_SECRET_BYTES} bytes")
        if not _signed_by(request.headers.get("Authorization", ""), sms_challenge(owner, name, value), owner):
            raise _Refused(401, "Invalid authorization")
        await self._store(self._web2, f"{owner.lower()}|{name}", value, create=create)
        log.info("event=sms_web2_%s owner=%s name=%s", "added" if create else "updated", owner, name)
        return web.Response(status=204)

    async def _web2_add(self, request: web.Request) -> web.Response:
        return await self._web2_write(request, create=True)

    async def _web2_update(self, request: web.Request) -> web.Response:
        return await self._web2_write(request, create=False)

    async def _requester_exists(self, request: web.Request) -> web.Response:
        requester, name = self._requester_key(request)
        if self.requester_secret(requester, name) is None:
            raise _Refused(404, "Secret not found")
        return web.Response(status=204)

    async def _requester_add(self, request: web.Request) -> web.Response:
        requester, name = self._requester_key(request)
        value = await self._value(request)
        if not _signed_by(request.headers.get("Authorization", ""), sms_challenge(requester, name, value), requester):
            raise _Refused(401, "Invalid authorization")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise _Refused(400, "Secret size should not exceed 4 Kb")
        await self._store(self._requester, f"{requester.lower()}|{name}", value, create=True)
        log.info("event=sms_requester_added requester=%s name=%s", requester, name)
        return web.Response(status=204)
