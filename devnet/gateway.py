"""The devnet's result gateway: a tiny content-addressed store served like an IPFS gateway.

The workerpool `put`s each task's result archive here and writes `/ipfs/<id>` into the task's `results` on
chain; the bot downloads `GET {gateway}/ipfs/<id>` exactly as it would from iExec's IPFS gateway. The id is
the archive's sha256 in hex (the devnet form that `iexec.results` accepts and checks against the bytes).

Uploads come in as they do to iExec's IPFS upload node (the SDK's `ipfsNodeURL`, a kubo RPC): `POST
/api/v0/add` with a multipart body whose file part is named "file" (kubo-rpc-client's `add`; "file-1",
... for more), answered with one JSON line per file `{"Name", "Hash", "Size"}`. The Hash is a CIDv1 (raw
codec, sha2-256, base32 "b..."), so kubo clients parse it; the content is then served at `/ipfs/<Hash>` (and
at `/ipfs/<sha256 hex>`, the devnet's own id of the same bytes). Bodies past `max_upload_bytes` get 413.

Fault modes, per id or for every id, let tests see what a lost or failing gateway does to the bot: `lose`
answers 404 as if the content was never pinned, `500` answers an internal error. Control them on the
object or over HTTP (`POST /control/faults`), so tests in other processes can too.

With `store_dir` the content is also kept on disk (one file per id), so that a restarted devnet still serves
what was added before, as an IPFS node keeps its pins: a task taken up again after a restart finds its inputs.

This server binds 127.0.0.1 only and must never fetch anything itself: it serves what it was given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from devnet.files import write_atomically
from devnet.loopback import serve_loopback

log = logging.getLogger(__name__)

__all__ = ["GatewayError", "GatewayFault", "ResultGateway", "cid_v1", "content_id"]

_ID = re.compile(r"[0-9a-f]{64}")
_CID = re.compile(r"b[a-z2-7]{58}")  # CIDv1 raw sha2-256 in base32: 36 bytes -> 58 characters
_FAULTS = ("lose", "500")
_MAX_BODY = 64 * 1024 * 1024


class GatewayError(ValueError):
    """A bad request to the gateway's Python API (unknown fault, malformed id, oversized archive)."""


@dataclass(frozen=True)
class GatewayFault:
    """One fault rule: `mode` ("lose" or "500") for `cid`, or for every id when `cid` is None."""

    mode: str
    cid: str | None = None


def content_id(data: bytes) -> str:
    """The id the gateway gives `data`: its sha256 in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def cid_v1(data: bytes) -> str:
    """The CIDv1 (raw codec 0x55, sha2-256 multihash) of `data` in multibase base32 ("b" + lowercase)."""
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _cid_to_id(cid: str) -> str | None:
    """The sha256 hex id behind a CIDv1 of ours, None when it is not one."""
    if not _CID.fullmatch(cid):
        return None
    text = cid[1:].upper()
    raw = base64.b32decode(text + "=" * (-len(text) % 8))
    return raw[4:].hex() if raw[:4] == bytes([0x01, 0x55, 0x12, 0x20]) else None


class ResultGateway:
    """Content-addressed store (in memory; also on disk with `store_dir`) served at `GET /ipfs/<id>`."""

    def __init__(self, *, max_upload_bytes: int = _MAX_BODY, store_dir: Path | None = None) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.store_dir = Path(store_dir) if store_dir is not None else None
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        self.uploads = 0
        self._blobs: dict[str, bytes] = {}
        self._faults: dict[str | None, str] = {}
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self.requests = 0

    # ------------------------------------------------------------------------------------------ store

    def put(self, data: bytes) -> str:
        """Store `data` and return its id (sha256 hex). Raises GatewayError beyond 64 MiB."""
        if not isinstance(data, (bytes, bytearray)):
            raise GatewayError(f"the gateway stores bytes, got {type(data).__name__}")
        if len(data) > _MAX_BODY:
            raise GatewayError(f"archive of {len(data)} bytes is larger than the gateway's 64 MiB limit")
        cid = content_id(bytes(data))
        self._blobs[cid] = bytes(data)
        if self.store_dir is not None and not (self.store_dir / cid).exists():
            write_atomically(self.store_dir / cid, data)  # a reader never sees half a file
        return cid

    def get(self, cid: str) -> bytes | None:
        """The stored bytes for `cid` (ignores faults), or None."""
        found = self._blobs.get(cid)
        if found is None and self.store_dir is not None and _ID.fullmatch(cid):
            try:
                found = self._blobs[cid] = (self.store_dir / cid).read_bytes()
            except FileNotFoundError:
                return None
        return found

    def location(self, cid: str) -> str:
        """The `/ipfs/<id>` path a task's results carry."""
        return f"/ipfs/{cid}"

    # ------------------------------------------------------------------------------------------ faults

    def set_fault(self, mode: str | None, cid: str | None = None) -> None:
        """Make `cid` (or every id when None) answer 404 ("lose") or 500 ("500"); mode None clears it.

        Raises GatewayError for an unknown mode or a malformed id.
        """
        if cid is not None and not _ID.fullmatch(cid):
            raise GatewayError(f"not a gateway id (sha256 hex): {cid[:80]!r}")
        if mode is None:
            self._faults.pop(cid, None)
            return
        if mode not in _FAULTS:
            raise GatewayError(f"unknown gateway fault {mode!r}; use one of {', '.join(_FAULTS)}")
        self._faults[cid] = mode

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._faults.clear()

    def faults(self) -> list[GatewayFault]:
        """The fault rules in force."""
        return [GatewayFault(mode=m, cid=c) for c, m in self._faults.items()]

    def _fault_for(self, cid: str) -> str | None:
        return self._faults.get(cid) or self._faults.get(None)

    # ------------------------------------------------------------------------------------------ server

    async def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:`port` (0 = any free port); returns the base URL (no trailing slash)."""
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/ipfs/{cid}", self._handle_get)
        app.router.add_post("/api/v0/add", self._handle_add)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/control/faults", self._handle_faults_get)
        app.router.add_post("/control/faults", self._handle_faults_post)
        self._runner, self.url = await serve_loopback(app, port)
        log.info("gateway_started url=%s", self.url)
        return self.url

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle_get(self, request: web.Request) -> web.Response:
        self.requests += 1
        cid = request.match_info["cid"]
        cid = _cid_to_id(cid) or cid
        if not _ID.fullmatch(cid):
            return web.Response(status=400, text=f"invalid content id {cid[:80]!r}\n")
        fault = self._fault_for(cid)
        if fault == "500":
            return web.Response(status=500, text="gateway internal error (devnet fault)\n")
        data = self.get(cid)
        if data is None or fault == "lose":
            return web.Response(status=404, text="content not found\n")
        return web.Response(body=data, content_type="application/zip")

    async def _handle_add(self, request: web.Request) -> web.StreamResponse:
        """kubo's `add`: each "file" part stored; one JSON line per file ({"Name","Hash","Size"})."""
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return web.json_response(
                {"Message": "expected a multipart/form-data body", "Code": 0, "Type": "error"}, status=400
            )
        lines: list[str] = []
        total = 0
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or not (part.name or "").split("?")[0].startswith("file"):
                continue  # directories and other fields: nothing to store
            buf = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                total += len(chunk)
                if total > self.max_upload_bytes:
                    log.info("event=gateway_upload_refused bytes_over=%d", self.max_upload_bytes)
                    return web.json_response(
                        {"Message": f"upload larger than {self.max_upload_bytes} bytes", "Code": 0, "Type": "error"},
                        status=413,
                    )
                buf += chunk
            data = bytes(buf)
            self.put(data)
            cid = cid_v1(data)
            self.uploads += 1
            log.info("event=gateway_upload cid=%s bytes=%d", cid, len(data))
            lines.append(json.dumps({"Name": part.filename or cid, "Hash": cid, "Size": str(len(data))}))
        if not lines:
            return web.json_response({"Message": "no file part in the body", "Code": 0, "Type": "error"}, status=400)
        return web.Response(text="\n".join(lines) + "\n", content_type="application/json")

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "stored": len(self._blobs)})

    async def _handle_faults_get(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "faults": [f.__dict__ for f in self.faults()]})

    async def _handle_faults_post(self, request: web.Request) -> web.Response:
        """Body: {"mode": "lose"|"500"|null, "cid": "<id>"|null} or {"clear": true}."""
        try:
            body: Any = await request.json()
            if not isinstance(body, dict):
                raise GatewayError("body must be a JSON object")
            if body.get("clear"):
                self.clear_faults()
            else:
                self.set_fault(body.get("mode"), body.get("cid"))
        except (ValueError, GatewayError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "faults": [f.__dict__ for f in self.faults()]})
