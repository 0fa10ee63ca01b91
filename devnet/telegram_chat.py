"""JSON endpoints of the Telegram stand-in for a local chat page (a person chats with the bot in a browser).

All under `/_chat/{bot_username}/...`, beside the Bot API on the same 127.0.0.1 server:

    GET  /_chat/                                       the chat page (telegram_chat.html)
    GET  /_chat/bots                                   the registered bots (never their tokens)
    POST /_chat/{bot}/send      {"user": {...}, "text": "...", "chat": {...}?}      a text or /command
    POST /_chat/{bot}/upload    multipart: user_id, first_name, username?, kind=photo|document,
                                caption? (the message's caption, as Telegram's), file  a photo or a file;
                                2-10 `file` parts with kind=photo: an album (one media_group_id, one
                                update per photo, the caption on the first), answered with `messages`
    POST /_chat/{bot}/press     {"user": {...}, "message_id": N, "data": "..."}    an inline button
    POST /_chat/{bot}/edit      {"user": {...}, "message_id": N, "text": "..."}    edit own message
    GET  /_chat/{bot}/messages?chat_id=N&after=C&wait=S  the messages of the chat sent, edited or
                                                         deleted after change C (the `changes` of an
                                                         earlier answer), long-polled until there is
                                                         one (at most S seconds); without `after` (or
                                                         -1, or a C this stand-in never reached: it was
                                                         restarted) the whole conversation, with
                                                         `"full": true`; a reply's `reply_to` quotes the
                                                         message it answers (id, snippet, thumb_file_id)
    GET  /_chat/{bot}/file/{file_id}                   a stored file's bytes (no token in this URL)
    GET  /_chat/{bot}/stats                            calls per method, 429s, pending updates

A user is `{"id": int, "first_name": str, "username": str?}`. Errors answer `{"error": "..."}` with 400
(bad input) or 404 (unknown bot, message or file). These endpoints must never reveal a bot token.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devnet import telegram_inject as inject
from devnet.telegram_bot import BotState
from devnet.telegram_model import (
    BadInjection,
    SentMessage,
    StandInError,
    TgChat,
    TgUser,
    UnknownBot,
    UnknownFile,
    UnknownMessage,
)

if TYPE_CHECKING:
    from devnet.telegram import TelegramStandIn

MAX_WAIT_SECONDS = 30.0


def add_chat_routes(app: web.Application, standin: TelegramStandIn) -> None:
    """Mount the chat page's JSON endpoints on the stand-in's aiohttp application."""
    routes = _ChatRoutes(standin)
    app.router.add_get("/_chat/", routes.page)
    app.router.add_get("/_chat", routes.page)
    app.router.add_get("/_chat/bots", routes.bots)
    app.router.add_post("/_chat/{bot}/send", routes.send)
    app.router.add_post("/_chat/{bot}/upload", routes.upload)
    app.router.add_post("/_chat/{bot}/press", routes.press)
    app.router.add_post("/_chat/{bot}/edit", routes.edit)
    app.router.add_get("/_chat/{bot}/messages", routes.messages)
    app.router.add_get("/_chat/{bot}/file/{file_id}", routes.file)
    app.router.add_get("/_chat/{bot}/stats", routes.stats)


SNIPPET_CHARS = 80


def message_json(msg: SentMessage, state: BotState) -> dict[str, Any]:
    """A message as the chat page shows it; `reply_to` quotes the message it answers (None if none)."""
    rows = (msg.reply_markup or {}).get("inline_keyboard", [])
    stored = state.files.get(msg.file_id) if msg.file_id else None
    return {
        "message_id": msg.message_id,
        "from_bot": msg.from_bot,
        "kind": msg.kind,
        "text": msg.text,
        "date": msg.date,
        "file_id": msg.file_id if stored is not None else None,
        "file_name": msg.file_name,
        "mime_type": msg.mime_type,
        "buttons": [
            [{"text": b.get("text"), "data": b.get("callback_data"), "url": b.get("url")} for b in row] for row in rows
        ],
        "edits": len(msg.edits),
        "deleted": msg.deleted,
        "reply_to": _quote(msg, state),
        "media_group_id": msg.api.get("media_group_id"),
    }


def _quote(msg: SentMessage, state: BotState) -> dict[str, Any] | None:
    """What a reply shows of the message it answers: who wrote it, a snippet, a photo's smallest size."""
    if msg.reply_to is None:
        return None
    replied = state.messages.get(msg.chat_id, {}).get(msg.reply_to)
    if replied is None or replied.deleted:
        return {
            "message_id": msg.reply_to,
            "from_bot": None,
            "kind": None,
            "text": "Deleted message",
            "thumb_file_id": None,
        }
    sizes = [s.get("file_id") for s in replied.api.get("photo", []) if isinstance(s, dict)]
    thumb = next((i for i in sizes if i in state.files), None)
    text = replied.text or (replied.file_name if replied.kind == "document" else None) or replied.kind.capitalize()
    if len(text) > SNIPPET_CHARS:
        text = text[: SNIPPET_CHARS - 1] + "\u2026"
    return {
        "message_id": replied.message_id,
        "from_bot": replied.from_bot,
        "kind": replied.kind,
        "text": text,
        "thumb_file_id": thumb,
    }


def _user(raw: Any) -> TgUser:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), int) or raw["id"] <= 0:
        raise BadInjection("user must be an object with a positive integer id")
    return TgUser(id=raw["id"], first_name=str(raw.get("first_name") or "User"), username=raw.get("username") or None)


def _chat(raw: Any) -> TgChat | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), int):
        raise BadInjection("chat must be an object with an integer id")
    return TgChat(id=raw["id"], type=str(raw.get("type") or "private"), title=raw.get("title"))


class _ChatRoutes:
    """Handlers of the chat page endpoints; each maps stand-in errors to a JSON error answer."""

    def __init__(self, standin: TelegramStandIn) -> None:
        self.standin = standin

    def _state(self, request: web.Request) -> BotState:
        return self.standin.bot_by_username(request.match_info["bot"])

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadInjection("the body must be JSON") from None
        if not isinstance(body, dict):
            raise BadInjection("the body must be a JSON object")
        return body

    @staticmethod
    def _error(err: StandInError) -> web.Response:
        status = 404 if isinstance(err, (UnknownBot, UnknownFile, UnknownMessage)) else 400
        return web.json_response({"error": str(err)}, status=status)

    async def page(self, request: web.Request) -> web.Response:
        """The chat page itself (static HTML + JS that uses only the endpoints below)."""
        html = resources.files("devnet").joinpath("telegram_chat.html").read_text(encoding="utf-8")
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
            },
        )

    async def bots(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"username": s.user.username, "id": s.user.id, "first_name": s.user.first_name}
                for s in self.standin.bots()
            ]
        )

    async def send(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            message = inject.text(
                self._state(request), _user(body.get("user")), str(body.get("text") or ""), _chat(body.get("chat"))
            )
        except StandInError as err:
            return self._error(err)
        return web.json_response({"message": message})

    async def upload(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
            parts = form.getall("file", [])
            part = parts[0] if parts else None
            if not isinstance(part, web.FileField) or not all(isinstance(p, web.FileField) for p in parts):
                raise BadInjection("the form needs a file part named 'file'")
            user = _user(
                {
                    "id": int(str(form.get("user_id", "0"))),
                    "first_name": form.get("first_name"),
                    "username": form.get("username"),
                }
            )
            caption = str(form.get("caption") or "") or None
            data, state = part.file.read(), self._state(request)
            if len(parts) > 1:  # several photos at once: an album, as Telegram's apps send it
                if form.get("kind") != "photo":
                    raise BadInjection("only photos are sent as an album here")
                pictures = [data] + [p.file.read() for p in parts[1:] if isinstance(p, web.FileField)]
                messages = inject.album(state, user, pictures, caption)
                return web.json_response({"message": messages[0], "messages": messages})
            if form.get("kind") == "photo":
                message = inject.photo(state, user, data, caption)
            else:
                message = inject.document(
                    state, user, data, part.filename or "file", part.content_type or "application/octet-stream", caption
                )
        except ValueError:
            return web.json_response({"error": "user_id must be an integer"}, status=400)
        except StandInError as err:
            return self._error(err)
        return web.json_response({"message": message})

    async def press(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            query_id = inject.press(
                self._state(request),
                _user(body.get("user")),
                int(body.get("message_id") or 0),
                str(body.get("data") or ""),
                _chat(body.get("chat")),
            )
        except StandInError as err:
            return self._error(err)
        return web.json_response({"callback_query_id": query_id})

    async def edit(self, request: web.Request) -> web.Response:
        try:
            body = await self._json(request)
            message = inject.edit(
                self._state(request),
                _user(body.get("user")),
                int(body.get("message_id") or 0),
                str(body.get("text") or ""),
                _chat(body.get("chat")),
            )
        except StandInError as err:
            return self._error(err)
        return web.json_response({"message": message})

    async def messages(self, request: web.Request) -> web.Response:
        try:
            state = self._state(request)
            chat_id = int(request.query["chat_id"])
            after = int(request.query.get("after", "-1"))
            wait = min(float(request.query.get("wait", "0")), MAX_WAIT_SECONDS)
        except (KeyError, ValueError):
            return web.json_response({"error": "chat_id (int), after (int) and wait (s) expected"}, status=400)
        except StandInError as err:
            return self._error(err)
        # a change count this stand-in never reached was counted by an earlier run of it: all of it again
        full = after < 0 or after > self.standin.changes
        if wait > 0 and not full:
            with contextlib.suppress(StandInError):  # nothing changed in this chat: answer with no message
                await self.standin.wait_for(
                    lambda: any(c > after for c in state.stamps.get(chat_id, {}).values()), wait
                )
        found, stamps = state.messages.get(chat_id, {}), state.stamps.get(chat_id, {})
        # a message kept from an earlier run of the stand-in has no stamp: it is in the whole conversation only
        changed = sorted(found) if full else sorted(k for k in found if stamps.get(k, 0) > after)
        return web.json_response(
            {
                "changes": self.standin.changes,
                "full": full,
                "messages": [message_json(found[k], state) for k in changed],
            }
        )

    async def file(self, request: web.Request) -> web.Response:
        try:
            stored = self._state(request).files.get(request.match_info["file_id"])
            if stored is None:
                raise UnknownFile("no such file")
        except StandInError as err:
            return self._error(err)
        return web.Response(body=stored.data, content_type=stored.mime_type or "application/octet-stream")

    async def stats(self, request: web.Request) -> web.Response:
        try:
            state = self._state(request)
        except StandInError as err:
            return self._error(err)
        return web.json_response(
            {
                "calls": dict(Counter(c.method for c in state.calls)),
                "rate_limited": state.rate_limited,
                "pending_updates": len(state.updates),
                "webhook": state.webhook.url if state.webhook else "",
            }
        )
