"""The bot's webhook endpoint: Telegram POSTs each update here (settings.mode == "webhook").

PTB's own webhook server reads the whole body before it looks at the secret, so anyone can make the bot
buffer large posts. This one decides from the headers first:

- a missing or wrong `X-Telegram-Bot-Api-Secret-Token` (compared in constant time) gets 403 and the
  connection is closed without reading the body;
- a body over `MAX_UPDATE_BYTES` (declared or as it streams in) gets 413;
- a good update is stored in the books' inbox, then handed to the application, then answered 200: once
  Telegram has its 200 it never sends the update again, so it must be kept first;
- a body with the right secret that is not an update we can use is answered 200, never 4xx: Telegram
  retries a failed delivery and may hold the updates after it back, so a 4xx would stop the bot's intake
  for good. With an int `update_id` (PTB cannot parse it, or its JSON is too long for the inbox) its id is
  stored as handled and it is logged (`event=update_set_aside`); without one (not JSON, no int id) it is
  only logged (`event=webhook_not_an_update`): only Telegram knows the secret, and it has no other copy;
- busy books answer 503: Telegram delivers the update again later.

It must never log the secret, and never listen anywhere the settings did not name.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from aiohttp import web
from telegram import Update

from bot.inbox import UpdateInbox
from ledger import LedgerBusy

log = logging.getLogger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024  # a Telegram update is a few KB (a message of 4096 characters and its entities)


def _refuse(status: int, reason: str) -> web.Response:
    response = web.Response(status=status, text=reason)
    response.force_close()  # do not read (or drain) what the client still sends
    return response


class WebhookServer:
    """An aiohttp server on (listen, port) that takes Telegram's POSTs at `path`."""

    def __init__(
        self,
        app: Any,
        inbox: UpdateInbox | None,
        secret: str,
        *,
        listen: str,
        port: int,
        path: str = "/telegram",
        max_bytes: int = MAX_UPDATE_BYTES,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a secret token")
        self.app = app
        self.inbox = inbox
        self._secret = secret.encode()
        self.listen = listen
        self.port = port
        self.path = path
        self.max_bytes = max_bytes
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen; returns the local URL (e.g. http://127.0.0.1:8443/telegram)."""
        server = web.Application(client_max_size=self.max_bytes)
        server.router.add_post(self.path, self._receive)
        self._runner = web.AppRunner(server, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("event=webhook_listening listen=%s port=%s path=%s", self.listen, self.port, self.path)
        return f"http://{self.listen}:{self.port}{self.path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._secret):
            log.warning("event=webhook_refused reason=secret peer=%s", request.remote)
            return _refuse(403, "Forbidden")
        if request.content_length is not None and request.content_length > self.max_bytes:
            log.warning("event=webhook_refused reason=too_large bytes=%s", request.content_length)
            return _refuse(413, "Request Entity Too Large")
        try:
            body = await request.read()  # client_max_size stops a chunked body at max_bytes
        except web.HTTPRequestEntityTooLarge:
            log.warning("event=webhook_refused reason=too_large bytes=chunked")
            return _refuse(413, "Request Entity Too Large")
        error: Exception | None = None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # also bytes that are not UTF-8, nesting too deep
            data, error = None, exc
        if (
            not isinstance(data, dict)
            or isinstance(data.get("update_id"), bool)
            or not isinstance(data.get("update_id"), int)
        ):
            if data is not None:
                error = ValueError("no int update_id")
            log.warning("event=webhook_not_an_update bytes=%d error=%r", len(body), str(error)[:100])
            return web.Response(status=200)
        update_id = data["update_id"]
        try:
            update = Update.de_json(data, self.app.bot)
        except Exception as exc:  # noqa: BLE001 - PTB's parsers raise AttributeError, KeyError, TypeError...
            update, error = None, exc
        try:
            if update is None:
                if self.inbox is not None and self.inbox.ledger.inbox.problem(update_id, "{}") is None:
                    self.inbox.ledger.inbox.set_aside(update_id)
                log.error(
                    "event=update_set_aside update=%s reason=%r",
                    update_id,
                    f"not an update PTB can read: {error!s:.100}",
                )
                return web.Response(status=200)
            if self.inbox is None:
                fresh, aside = [update.update_id], list[int]()
            else:
                fresh, aside = self.inbox.store([update])
        except LedgerBusy as exc:
            log.warning("event=webhook_busy update=%s error=%r", update_id, str(exc)[:200])
            return web.Response(status=503, text="Service Unavailable")
        if fresh:  # a repeated POST of a stored update is in the queue already (or replayed at start)
            await self.app.update_queue.put(update)
        elif not aside:
            log.info("event=duplicate_update update=%s", update.update_id)
        return web.Response(status=200)
