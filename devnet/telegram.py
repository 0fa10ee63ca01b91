"""A local stand-in for the Telegram Bot API, spoken over HTTP so the real python-telegram-bot can drive it.

Bot side (what a bot calls, Telegram's wire format): `/bot{token}/{method}` (any verb; form, multipart or
JSON bodies) and `GET /file/bot{token}/{file_path}`; webhooks are POSTed with the
`X-Telegram-Bot-Api-Secret-Token` header and retried until the bot accepts them. Test side: Python
methods (`inject_*`, `press_button`, `sent`, `wait_calls`, ...) and JSON endpoints under `/_chat/` for
the local chat page (see `devnet.telegram_chat`).

Use it like this (PTB 22):

    async with TelegramStandIn() as tg:
        tg.add_bot(TOKEN, "segbot")
        app = ApplicationBuilder().token(TOKEN).base_url(tg.bot_base_url)
              .base_file_url(tg.file_base_url).build()

It must never listen on anything but 127.0.0.1, never send a packet to another address (webhooks go to
loopback URLs only), and never log a request line: bot tokens are in every URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from devnet import telegram_inject as inject
from devnet.loopback import serve_loopback
from devnet.telegram_bot import BotState, Upload, Webhook
from devnet.telegram_model import (
    ApiCall,
    ApiError,
    RateLimits,
    SentMessage,
    StandInError,
    StandInTimeout,
    TgChat,
    TgUser,
    UnknownBot,
    UnknownFile,
    coerce_param,
)

__all__ = [
    "TelegramStandIn",
    "TgUser",
    "TgChat",
    "RateLimits",
    "SentMessage",
    "ApiCall",
    "StandInError",
    "StandInTimeout",
    "UnknownBot",
    "UnknownFile",
]

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 60 * 1024 * 1024  # above Telegram's 50 MB upload limit, so that limit answers


class TelegramStandIn:
    """The Bot API stand-in: register bots, start it, point PTB at `bot_base_url`, drive users from tests."""

    def __init__(
        self,
        *,
        rate_limits: RateLimits | None = None,
        webhook_retry_delay: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        data_dir: Path | None = None,
    ) -> None:
        """`rate_limits=None` means Telegram's limits (30/s per bot, 1/s burst 3 per chat, 20/min per group).
        `data_dir`: where each bot's update and message numbers and its chat history (the last messages of
        each chat and their files, see devnet.telegram_history) are kept, so that a restarted stand-in never
        hands out an id twice and shows the earlier conversation (as Telegram); None keeps them in memory
        (a fresh Telegram)."""
        self.data_dir = data_dir
        self.rate_limits = rate_limits if rate_limits is not None else RateLimits()
        self.webhook_retry_delay = webhook_retry_delay
        self.request_urls: list[str] = []
        self._clock = clock
        self._bots: dict[str, BotState] = {}
        self._changed = asyncio.Event()
        self.changes = 0  # bumped on every change of any bot's state (the chat page polls on it)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._url: str | None = None

    # --- life cycle --------------------------------------------------------------------------------------

    def add_bot(self, token: str, username: str) -> None:
        """Make `token` valid (any other token gets 401 Unauthorized). `username` without "@"."""
        if not token or "/" in token or token in self._bots:
            raise StandInError("a bot token must be non-empty, without '/', and registered once")
        state = BotState(
            token, username.lstrip("@"), self.rate_limits, self._notify, self._clock, counters_dir=self.data_dir
        )
        state.webhook_changed = lambda: self._webhook_changed(state)
        self._bots[token] = state

    async def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1:`port` (0 = any free port). Returns the base URL `http://127.0.0.1:P`."""
        from devnet.telegram_chat import add_chat_routes

        for state in self._bots.values():
            state.closing = False
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        add_chat_routes(app, self)
        self._runner, self._url = await serve_loopback(app, port, shutdown_timeout=1.0, handler_cancellation=True)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._url

    async def stop(self) -> None:
        """Wake pending long polls, stop webhook deliveries and close the server."""
        for state in self._bots.values():
            state.closing = True
            state.update_event.set()
        for task in self._deliveries.values():
            task.cancel()
        await asyncio.gather(*self._deliveries.values(), return_exceptions=True)
        self._deliveries.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for state in self._bots.values():
            state.save_history()  # what the last changes did is on disk before the process ends

    async def __aenter__(self) -> TelegramStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise StandInError("the stand-in is not started")
        return self._url

    @property
    def bot_base_url(self) -> str:
        """For `ApplicationBuilder().base_url(...)`."""
        return f"{self.url}/bot"

    @property
    def file_base_url(self) -> str:
        """For `ApplicationBuilder().base_file_url(...)`."""
        return f"{self.url}/file/bot"

    def bot(self, token: str | None = None) -> BotState:
        """The state of bot `token` (or of the only bot registered). Raises UnknownBot."""
        if token is None:
            if len(self._bots) != 1:
                raise UnknownBot(f"{len(self._bots)} bots are registered: name the token")
            return next(iter(self._bots.values()))
        try:
            return self._bots[token]
        except KeyError:
            raise UnknownBot("this token was not registered with add_bot") from None

    def bot_by_username(self, username: str) -> BotState:
        """The bot whose username is `username` (for the chat page, which never sees tokens)."""
        for state in self._bots.values():
            if state.user.username == username.lstrip("@"):
                return state
        raise UnknownBot(f"no bot named @{username.lstrip('@')}")

    def bots(self) -> list[BotState]:
        return list(self._bots.values())

    def _notify(self) -> int:
        """Count a change of any bot's state and wake the waiters; returns the new count."""
        self.changes += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return self.changes

    # --- bot side over HTTP ------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        self.request_urls.append(str(request.url))
        state = self._bots.get(request.match_info["token"])
        if state is None:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        try:
            params, uploads = await _read_params(request)
            result = await state.call(request.match_info["method"], params, uploads)
        except ApiError as err:
            return web.json_response(err.payload(), status=err.status)
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        self.request_urls.append(str(request.url))
        state = self._bots.get(request.match_info["token"])
        if state is None:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        stored = state.paths.get(request.match_info["path"])
        if stored is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        return web.Response(body=stored.data, content_type=stored.mime_type or "application/octet-stream")

    # --- webhooks ------------------------------------------------------------------------------------------

    def _webhook_changed(self, state: BotState) -> None:
        task = self._deliveries.get(state.token)
        if state.webhook is not None and (task is None or task.done()):
            self._deliveries[state.token] = asyncio.get_running_loop().create_task(self._deliver(state))

    async def _deliver(self, state: BotState) -> None:
        """Push queued updates one by one to the webhook; a refused or failed POST is retried."""
        delay = self.webhook_retry_delay
        while state.webhook is not None and not state.closing:
            if not state.updates:
                state.update_event.clear()
                await state.update_event.wait()
                continue
            hook, update = state.webhook, state.updates[0]
            failure = await self._post_update(hook, update)
            if failure is None:
                if state.updates and state.updates[0] is update:
                    state.updates.pop(0)
                state.webhook_error = None
                delay = self.webhook_retry_delay
                self._notify()
                continue
            state.webhook_error = (int(time.time()), failure)
            log.info(
                "webhook_failed bot=@%s update_id=%s error=%r retry_in=%.2fs",
                state.user.username,
                update["update_id"],
                failure,
                delay,
            )
            self._notify()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _post_update(self, hook: Webhook, update: dict[str, Any]) -> str | None:
        """POST one update; None when the bot answered 2xx, else Telegram's last_error_message."""
        assert self._session is not None
        headers = {"X-Telegram-Bot-Api-Secret-Token": hook.secret_token} if hook.secret_token else {}
        try:
            async with self._session.post(hook.url, json=update, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"Wrong response from the webhook: {resp.status} {resp.reason}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"Connection failed: {type(exc).__name__}"

    # --- test side: users act ----------------------------------------------------------------------------

    def add_chat(self, chat: TgChat, token: str | None = None) -> None:
        """Make a chat known to the bot (a group it was added to, or a user who pressed Start)."""
        self.bot(token).register_chat(chat)

    def block(self, user: TgUser | int, token: str | None = None) -> None:
        """The user blocks the bot: sends to their private chat answer 403."""
        self.bot(token).blocked.add(user if isinstance(user, int) else user.id)

    def unblock(self, user: TgUser | int, token: str | None = None) -> None:
        self.bot(token).blocked.discard(user if isinstance(user, int) else user.id)

    def inject_text(
        self, user: TgUser, text: str, *, chat: TgChat | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """The user sends `text`; returns the Message object the bot receives."""
        return inject.text(self.bot(token), user, text, chat)

    def inject_command(
        self,
        user: TgUser,
        command: str,
        args: str = "",
        *,
        chat: TgChat | None = None,
        token: str | None = None,
        reply_to: int | None = None,
    ) -> dict[str, Any]:
        """The user sends `/command args` (as a reply to message `reply_to` of the chat when given)."""
        body = f"/{command.lstrip('/')}" + (f" {args}" if args else "")
        return inject.text(self.bot(token), user, body, chat, reply_to=reply_to)

    def inject_photo(
        self,
        user: TgUser,
        data: bytes,
        *,
        caption: str | None = None,
        chat: TgChat | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The user sends a photo; raises BadInjection when `data` is no image."""
        return inject.photo(self.bot(token), user, data, caption, chat)

    def inject_document(
        self,
        user: TgUser,
        data: bytes,
        file_name: str,
        mime_type: str = "application/octet-stream",
        *,
        caption: str | None = None,
        chat: TgChat | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The user sends a file."""
        return inject.document(self.bot(token), user, data, file_name, mime_type, caption, chat)

    def inject_sticker(self, user: TgUser, *, chat: TgChat | None = None, token: str | None = None) -> dict[str, Any]:
        return inject.sticker(self.bot(token), user, chat)

    def inject_voice(
        self, user: TgUser, seconds: int = 1, *, chat: TgChat | None = None, token: str | None = None
    ) -> dict[str, Any]:
        return inject.voice(self.bot(token), user, seconds, chat)

    def inject_video(
        self, user: TgUser, *, caption: str | None = None, chat: TgChat | None = None, token: str | None = None
    ) -> dict[str, Any]:
        return inject.video(self.bot(token), user, caption=caption, chat=chat)

    def inject_edit(
        self, user: TgUser, message_id: int, new_text: str, *, chat: TgChat | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """The user edits their earlier text message `message_id`."""
        return inject.edit(self.bot(token), user, message_id, new_text, chat)

    def press_button(
        self,
        user: TgUser,
        message_id: int,
        data: str,
        *,
        chat: TgChat | None = None,
        must_exist: bool = True,
        token: str | None = None,
    ) -> str:
        """The user presses the inline button with callback_data `data`; returns the callback query id."""
        return inject.press(self.bot(token), user, message_id, data, chat, must_exist=must_exist)

    # --- test side: what the bot did ---------------------------------------------------------------------

    def sent(self, chat_id: int, *, include_deleted: bool = False, token: str | None = None) -> list[SentMessage]:
        """The bot's messages in a chat, oldest first, as they are now (edits applied, history in `.edits`)."""
        return [m for m in self.conversation(chat_id, include_deleted=include_deleted, token=token) if m.from_bot]

    def conversation(
        self, chat_id: int, *, include_deleted: bool = False, token: str | None = None
    ) -> list[SentMessage]:
        """Every message of a chat (the user's and the bot's), oldest first."""
        messages = self.bot(token).messages.get(chat_id, {})
        return [messages[k] for k in sorted(messages) if include_deleted or not messages[k].deleted]

    def calls(self, method: str | None = None, *, token: str | None = None) -> list[ApiCall]:
        """The bot's Bot API calls (all, or of one method), with decoded params and answer status."""
        return [c for c in self.bot(token).calls if method is None or c.method.lower() == method.lower()]

    def callback_answer(self, query_id: str, *, token: str | None = None) -> dict[str, Any] | None:
        """What the bot answered to a callback query (text, show_alert, url), None while unanswered."""
        return self.bot(token).callback_answers.get(query_id)

    def get_file_bytes(self, file_id: str, *, token: str | None = None) -> bytes:
        """The bytes of a stored file. Raises UnknownFile."""
        stored = self.bot(token).files.get(file_id)
        if stored is None:
            raise UnknownFile(f"no file with id {file_id[:16]}...")
        return stored.data

    def commands(self, *, token: str | None = None) -> list[dict[str, Any]]:
        """The default-scope command list the bot set with setMyCommands."""
        return self.bot(token).commands.get("default/", [])

    def webhook(self, *, token: str | None = None) -> Webhook | None:
        return self.bot(token).webhook

    def pending_updates(self, *, token: str | None = None) -> int:
        """Updates not yet confirmed by getUpdates' offset or accepted by the webhook."""
        return len(self.bot(token).updates)

    @property
    def rate_limited(self) -> int:
        """How many 429 Too Many Requests answers were given, over all bots."""
        return sum(state.rate_limited for state in self._bots.values())

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return as soon as `predicate()` is true. Raises StandInTimeout.

        It is checked on every change of the stand-in, and every 20 ms for predicates on other state.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StandInTimeout(f"condition not met within {timeout} s")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.02))
            except TimeoutError:
                continue

    async def wait_calls(
        self, method: str, n: int = 1, timeout: float = 5.0, *, ok_only: bool = True, token: str | None = None
    ) -> list[ApiCall]:
        """Wait until the bot made `n` calls of `method` (successful ones unless ok_only=False)."""

        def matching() -> list[ApiCall]:
            return [c for c in self.calls(method, token=token) if c.status == 200 or not ok_only]

        try:
            await self.wait_for(lambda: len(matching()) >= n, timeout)
        except StandInTimeout:
            raise StandInTimeout(f"{len(matching())} of {n} {method} calls within {timeout} s") from None
        return matching()

    async def wait_sent(
        self, chat_id: int, n: int = 1, timeout: float = 5.0, *, token: str | None = None
    ) -> list[SentMessage]:
        """Wait until the bot has `n` messages in the chat; returns them."""
        try:
            await self.wait_for(lambda: len(self.sent(chat_id, token=token)) >= n, timeout)
        except StandInTimeout:
            got = len(self.sent(chat_id, token=token))
            raise StandInTimeout(f"{got} of {n} bot messages in chat {chat_id} within {timeout} s") from None
        return self.sent(chat_id, token=token)


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    """Bot API parameters from the query string and a form, multipart or JSON body, typed per field."""
    raw: dict[str, Any] = dict(request.query)
    uploads: dict[str, Upload] = {}
    if request.content_type == "application/json" and request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "Bad Request: can't parse JSON body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Bad Request: the JSON body must be an object")
        raw.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, "Request Entity Too Large") from None
        for key, value in form.items():
            if isinstance(value, web.FileField):
                uploads[key] = Upload(value.file.read(), value.filename, value.content_type)
            else:
                raw[key] = value if isinstance(value, str) else bytes(value).decode()
    return {key: coerce_param(key, value) for key, value in raw.items()}, uploads
