"""One bot's world inside the Telegram stand-in: its chats, messages, files, updates and Bot API methods.

`BotState` answers the Bot API methods the project uses with Telegram's own result shapes and error
descriptions (see /work/shared/reference/telegram.md). It holds no sockets: `devnet.telegram` parses
the HTTP requests, calls `BotState.call`, and delivers webhooks.

It must never fetch a URL it is given (a photo "URL" or a webhook address outside loopback is refused),
and never put the bot token into an answer, a file path or a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devnet.telegram_history import History, Snapshot
from devnet.telegram_model import (
    ApiCall,
    ApiError,
    FloodControl,
    RateLimits,
    Revision,
    SentMessage,
    StoredFile,
    TgChat,
    TgUser,
    bad_request,
    image_size,
    photo_versions,
    render_text,
)

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a content and reply markup of the current message"
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
HISTORY_SAVE_DELAY = 0.3  # seconds: a burst of changes (a progress message being edited) is one write
log = logging.getLogger(__name__)
_FILE_DIRS = {
    "photo": ("photos", "jpg"),
    "document": ("documents", "bin"),
    "sticker": ("stickers", "webp"),
    "voice": ("voice", "oga"),
    "video": ("videos", "mp4"),
}


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Webhook:
    """Where and how updates are pushed while a webhook is set."""

    url: str
    secret_token: str | None
    max_connections: int = 40


Handler = Callable[[dict[str, Any], dict[str, Upload]], Awaitable[Any]]


MAX_CALLBACK_DATA = 64  # bytes, UTF-8


def check_markup(markup: Any) -> dict[str, Any] | None:
    """A reply_markup as Telegram accepts it: an object whose inline buttons carry 1-64 bytes of
    callback_data. Raises ApiError 400 ("BUTTON_DATA_INVALID" for callback data out of bounds)."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    for row in markup.get("inline_keyboard") or []:
        for button in row if isinstance(row, list) else []:
            data = button.get("callback_data") if isinstance(button, dict) else None
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
                raise bad_request("BUTTON_DATA_INVALID")
    return markup


class Counters:
    """Update ids, message ids (per chat) and file numbers: Telegram never hands one out twice, even after
    the stand-in restarts, so with a `path` they are kept in that JSON file (written on every change)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.update_id = 0
        self.files = 0
        self.messages: dict[int, int] = {}
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            self.update_id, self.files = int(saved["update_id"]), int(saved["files"])
            self.messages = {int(chat): int(n) for chat, n in saved["messages"].items()}

    def next_update_id(self) -> int:
        self.update_id += 1
        self._save()
        return self.update_id

    def next_message_id(self, chat_id: int) -> int:
        self.messages[chat_id] = self.messages.get(chat_id, 0) + 1
        self._save()
        return self.messages[chat_id]

    def next_file_number(self) -> int:
        self.files += 1
        self._save()
        return self.files

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(
            json.dumps(
                {
                    "update_id": self.update_id,
                    "files": self.files,
                    "messages": {str(c): n for c, n in self.messages.items()},
                }
            )
        )
        os.replace(scratch, self.path)  # a kill mid-write leaves the old numbers, never a torn file


class BotState:
    """Everything Telegram knows about one bot; the Bot API methods act on it."""

    def __init__(
        self,
        token: str,
        username: str,
        limits: RateLimits,
        notify: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        counters_dir: Path | None = None,
    ) -> None:
        """`counters_dir`: where the ids handed out and the chat history are kept across restarts
        (None: in memory only, a fresh Telegram each start)."""
        bot_id = token.split(":", 1)[0]
        self.token = token
        known_id = re.fullmatch(r"[0-9]{1,15}", bot_id)  # ASCII digits: isdigit() would take "²"
        self.user = TgUser(
            id=int(bot_id) if known_id else 1_000_000 + len(username),
            first_name=username,
            username=username,
            is_bot=True,
            language_code=None,
        )
        self.flood = FloodControl(limits, clock)
        self.clock = clock
        self.chats: dict[int, TgChat] = {}
        self.messages: dict[int, dict[int, SentMessage]] = {}
        #: per chat, per message: the stand-in's change counter when the message was last stored (sent, edited,
        #: deleted); what the chat page's `/messages?after=C` uses to answer only what changed after C
        self.stamps: dict[int, dict[int, int]] = {}
        self.files: dict[str, StoredFile] = {}
        self.photo_sets: dict[str, tuple[StoredFile, ...]] = {}
        self.paths: dict[str, StoredFile] = {}
        self.updates: list[dict[str, Any]] = []
        self.webhook: Webhook | None = None
        self.webhook_error: tuple[int, str] | None = None
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.blocked: set[int] = set()
        #: Telegram's group privacy mode (on by default, /setprivacy at BotFather): in groups the bot gets only
        #: commands (not those addressed to another bot), messages mentioning it and replies to its messages
        self.privacy_mode = True
        self.callback_answers: dict[str, dict[str, Any] | None] = {}
        self.calls: list[ApiCall] = []
        self.rate_limited = 0
        self.closing = False
        self.update_event = asyncio.Event()
        self._notify = notify
        self._poll_generation = 0
        self.counters = Counters(counters_dir / f"bot{self.user.id}.counters.json" if counters_dir else None)
        self.history = History(counters_dir / f"bot{self.user.id}.history") if counters_dir else None
        self._history_save: asyncio.TimerHandle | None = None
        if self.history is not None:
            self._restore(self.history.load())
        self.webhook_changed: Callable[[], None] = lambda: None
        self.methods: dict[str, Handler] = {
            name.lower(): getattr(self, f"api_{name}")
            for name in (
                "getMe",
                "getUpdates",
                "setWebhook",
                "deleteWebhook",
                "getWebhookInfo",
                "setMyCommands",
                "getMyCommands",
                "deleteMyCommands",
                "sendChatAction",
                "answerCallbackQuery",
                "sendMessage",
                "editMessageText",
                "editMessageCaption",
                "editMessageReplyMarkup",
                "deleteMessage",
                "sendPhoto",
                "sendDocument",
                "sendMediaGroup",
                "getFile",
                "logOut",
                "close",
            )
        }

    # --- history across restarts -----------------------------------------------------------------------

    def _restore(self, snap: Snapshot) -> None:
        """Take back the saved chats, messages and files; ids go on after the highest one seen."""
        self.chats.update(snap.chats)
        self.messages.update(snap.messages)
        for stored in snap.files.values():
            self.files[stored.file_id] = stored
            self.paths[stored.file_path] = stored
        for chat_id, found in snap.messages.items():
            if found:
                self.counters.messages[chat_id] = max(self.counters.messages.get(chat_id, 0), max(found))
            for msg in found.values():
                ids = [size["file_id"] for size in msg.api.get("photo", [])]
                if ids and all(i in self.files for i in ids):
                    sizes = tuple(self.files[i] for i in ids)
                    self.photo_sets.update((i, sizes) for i in ids)

    def _history_changed(self) -> None:
        """Save the history soon (one write for a burst of changes), or now when no event loop runs."""
        if self.history is None or self._history_save is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save_history()
            return
        self._history_save = loop.call_later(HISTORY_SAVE_DELAY, self.save_history)

    def save_history(self) -> None:
        """Write the chat history to the data folder now (a no-op without one). A failed write is logged."""
        if self._history_save is not None:
            self._history_save.cancel()
            self._history_save = None
        if self.history is None:
            return
        try:
            self.history.save(Snapshot(self.chats, self.messages, self.files))
        except OSError as exc:
            log.warning("event=history_save_failed bot=@%s error=%s", self.user.username, type(exc).__name__)

    # --- plumbing -------------------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        """Run one Bot API method and log it. Raises ApiError with Telegram's status and description."""
        handler = self.methods.get(method.lower())
        logged = {k: v for k, v in params.items()}
        logged.update({k: f"<upload {u.filename or k} {len(u.data)} bytes>" for k, u in uploads.items()})
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            result = await handler(params, uploads)
        except ApiError as err:
            self.calls.append(ApiCall(method, logged, err.status, self.clock(), err.description))
            self._notify()
            raise
        self.calls.append(ApiCall(method, logged, 200, self.clock()))
        self._notify()
        return result

    def now(self) -> int:
        return int(time.time())

    def next_message_id(self, chat_id: int) -> int:
        return self.counters.next_message_id(chat_id)

    def push_update(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates or the webhook and wake whoever waits for it (in a group with
        privacy mode on, a message not meant for the bot is not given to it: see `meant_for_bot`)."""
        if kind in ("message", "edited_message") and not self.meant_for_bot(payload):
            return {kind: payload}  # Telegram shows it to the group's members only
        update = {"update_id": self.counters.next_update_id(), kind: payload}
        self.updates.append(update)
        self.update_event.set()
        self._notify()
        return update

    def meant_for_bot(self, message: dict[str, Any]) -> bool:
        """Whether Telegram gives this message to the bot: always in private chats and with privacy mode off;
        in a group with privacy mode on, only a command (one addressed to another bot, `/cmd@other`, is not),
        a message whose text or caption mentions @bot, or a reply to one of the bot's messages."""
        if not self.privacy_mode or message.get("chat", {}).get("type") not in ("group", "supergroup"):
            return True
        body = message.get("text") or message.get("caption") or ""
        me = (self.user.username or "").lower()
        if body.startswith("/"):
            _, at, addressee = body.split(maxsplit=1)[0].partition("@")
            return not at or addressee.lower() == me
        if me and re.search(rf"@{re.escape(me)}(?![a-z0-9_])", body.lower()):
            return True
        replied = message.get("reply_to_message") or {}
        return bool(replied.get("from", {}).get("id") == self.user.id)

    def register_chat(self, chat: TgChat) -> None:
        if self.chats.get(chat.id) != chat:
            self.chats[chat.id] = chat
            self._history_changed()
        self.messages.setdefault(chat.id, {})

    def store(self, message: SentMessage) -> SentMessage:
        self.messages.setdefault(message.chat_id, {})[message.message_id] = message
        self.stamps.setdefault(message.chat_id, {})[message.message_id] = self._notify()
        self._history_changed()
        return message

    def store_file(
        self,
        kind: str,
        data: bytes,
        *,
        mime_type: str | None = None,
        file_name: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> StoredFile:
        """Keep a file's bytes under new ids and a getFile path that is not a file on this machine."""
        number = self.counters.next_file_number()
        folder, ext = _FILE_DIRS[kind]
        if kind == "document" and file_name and "." in file_name:
            ext = file_name.rsplit(".", 1)[1][:8] or ext
        path = f"{folder}/file_{number}.{ext}"
        while os.path.exists(path):  # PTB would read a local file instead of downloading it
            path = f"tg_{path}"
        stored = StoredFile(
            file_id=f"{kind[:2].upper()}{number}x{secrets.token_urlsafe(24)}",
            file_unique_id=f"U{number}{secrets.token_hex(4)}",
            kind=kind,
            file_path=path,
            data=data,
            mime_type=mime_type,
            file_name=file_name,
            width=size[0] if size else None,
            height=size[1] if size else None,
        )
        self.files[stored.file_id] = stored
        self.paths[path] = stored
        return stored

    def store_photo(self, data: bytes) -> tuple[StoredFile, ...]:
        """Store a photo the way Telegram does: several sizes, largest last."""
        sizes = tuple(
            self.store_file("photo", v.data, mime_type="image/jpeg", size=(v.width, v.height))
            for v in photo_versions(data)
        )
        for size in sizes:
            self.photo_sets[size.file_id] = sizes
        return sizes

    def _chat(self, params: dict[str, Any]) -> TgChat:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise bad_request("chat_id is empty")
        chat = (
            self.chats.get(chat_id)
            if isinstance(chat_id, int)
            else next((c for c in self.chats.values() if c.username and f"@{c.username}" == chat_id), None)
        )
        if chat is None:
            raise bad_request("chat not found")
        if chat.type == "private" and chat.id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _flood(self, chat: TgChat) -> None:
        wait = self.flood.admit(chat.id)
        if wait is not None:
            self.rate_limited += 1
            raise ApiError(429, f"Too Many Requests: retry after {wait}", retry_after=wait)

    def message_api(self, msg: SentMessage, *, edit_date: int | None = None, nested: bool = False) -> dict[str, Any]:
        """The Bot API `Message` object of a stored message. As on Telegram, the `reply_to_message` it
        carries has no `reply_to_message` of its own (`nested`)."""
        sender = self.user if msg.from_bot else None
        out: dict[str, Any] = {
            "message_id": msg.message_id,
            "date": msg.date,
            "chat": self.chats[msg.chat_id].to_api(),
            **msg.api,
        }
        if sender is not None:
            out["from"] = sender.to_api()
        if msg.text is not None:
            out["text" if msg.kind == "text" else "caption"] = msg.text
        if msg.reply_markup and "inline_keyboard" in msg.reply_markup:
            out["reply_markup"] = msg.reply_markup
        if msg.reply_to is not None and not nested:
            replied = self.messages[msg.chat_id].get(msg.reply_to)
            if replied is not None and not replied.deleted:
                out["reply_to_message"] = self.message_api(replied, nested=True)
        if edit_date is not None:
            out["edit_date"] = edit_date
        return out

    # --- identity, updates, webhooks --------------------------------------------------------------------

    async def api_getMe(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        return {
            **self.user.to_api(),
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def api_logOut(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        return True

    async def api_close(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        return True

    def _confirm(self, offset: int | None) -> None:
        if offset is None or offset == 0:
            return
        if offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        else:
            self.updates = self.updates[offset:]

    async def api_getUpdates(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        self._confirm(params.get("offset"))
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = max(int(params.get("timeout") or 0), 0)
        self._poll_generation += 1
        generation = self._poll_generation
        self.update_event.set()  # an older long poll of this bot ends with 409, as on Telegram
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.updates and not self.closing and loop.time() < deadline:
            self.update_event.clear()
            try:
                await asyncio.wait_for(self.update_event.wait(), deadline - loop.time())
            except TimeoutError:
                break
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                )
            if self.webhook is not None:
                return []
        return self.updates[:limit]

    async def api_setWebhook(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        url = str(params.get("url") or "")
        if not url:
            return await self.api_deleteWebhook(params, uploads)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or (parts.hostname or "") not in _LOOPBACK_HOSTS:
            raise bad_request("bad webhook: the stand-in delivers webhooks to loopback http(s) URLs only")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_RE.match(str(secret)):
            raise bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = Webhook(url, secret, int(params.get("max_connections") or 40))
        self.webhook_error = None
        self.update_event.set()  # a waiting getUpdates returns
        self.webhook_changed()
        return True

    async def api_deleteWebhook(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        if params.get("drop_pending_updates"):
            self.updates.clear()
        self.webhook = None
        self.update_event.set()  # the webhook delivery loop ends
        self.webhook_changed()
        return True

    async def api_getWebhookInfo(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook.url if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook is not None:
            info["max_connections"] = self.webhook.max_connections
        if self.webhook_error is not None:
            info["last_error_date"], info["last_error_message"] = self.webhook_error
        return info

    # --- commands, actions, callback answers -------------------------------------------------------------

    @staticmethod
    def _scope_key(params: dict[str, Any]) -> str:
        scope = params.get("scope") or {"type": "default"}
        return f"{scope.get('type', 'default')}/{params.get('language_code') or ''}"

    async def api_setMyCommands(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be a list of at most 100 BotCommand")
        for cmd in commands:
            if not isinstance(cmd, dict) or not _COMMAND_RE.match(str(cmd.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(cmd.get("description", ""))) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands[self._scope_key(params)] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def api_getMyCommands(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        return self.commands.get(self._scope_key(params), [])

    async def api_deleteMyCommands(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        self.commands.pop(self._scope_key(params), None)
        return True

    async def api_sendChatAction(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        self._chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    async def api_answerCallbackQuery(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self.callback_answers or self.callback_answers[query_id] is not None:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        if len(str(params.get("text") or "")) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = {k: params.get(k) for k in ("text", "show_alert", "url")}
        return True

    # --- sending -------------------------------------------------------------------------------------

    def _reply_to(self, chat: TgChat, params: dict[str, Any]) -> int | None:
        target = params.get("reply_to_message_id")
        reply = params.get("reply_parameters")
        lenient = bool(params.get("allow_sending_without_reply"))
        if isinstance(reply, dict):
            target = reply.get("message_id")
            lenient = lenient or bool(reply.get("allow_sending_without_reply"))
        if target is None:
            return None
        replied = self.messages.get(chat.id, {}).get(int(target))
        if replied is None or replied.deleted:
            if lenient:
                return None
            raise bad_request("message to be replied not found")
        return int(target)

    def _new_bot_message(
        self, chat: TgChat, params: dict[str, Any], kind: str, text: str | None, **extra: Any
    ) -> SentMessage:
        rendered = render_text(text, params.get("parse_mode")) if text else None
        limit = MAX_TEXT if kind == "text" else MAX_CAPTION
        if rendered is not None and len(rendered) > limit:
            raise bad_request("message is too long" if kind == "text" else "message caption is too long")
        markup = check_markup(params.get("reply_markup"))
        return SentMessage(
            message_id=self.next_message_id(chat.id),
            chat_id=chat.id,
            kind=kind,
            from_bot=True,
            text=rendered or None,
            raw_text=text,
            parse_mode=params.get("parse_mode"),
            reply_markup=markup,
            date=self.now(),
            reply_to=self._reply_to(chat, params),
            **extra,
        )

    async def api_sendMessage(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        text = params.get("text")
        if text is None or str(text).strip() == "":
            raise bad_request("message text is empty")
        chat = self._chat(params)
        self._flood(chat)
        msg = self.store(self._new_bot_message(chat, params, "text", str(text)))
        return self.message_api(msg)

    def _file_param(self, name: str, params: dict[str, Any], uploads: dict[str, Upload]) -> Upload | str:
        """The upload a media parameter names, or the existing file_id it carries."""
        if name in uploads:
            return uploads[name]
        value = params.get(name)
        if not isinstance(value, str) or not value:
            raise bad_request(f"there is no {name} in the request")
        if value.startswith("attach://"):
            part = uploads.get(value[len("attach://") :])
            if part is None:
                raise bad_request(f"wrong remote file identifier specified: {value} is not in the request")
            return part
        if "://" in value:
            raise bad_request("wrong file identifier/HTTP URL specified (the stand-in fetches no URL)")
        return value

    async def api_sendPhoto(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        source = self._file_param("photo", params, uploads)
        chat = self._chat(params)
        if isinstance(source, str):
            sizes = self.photo_sets.get(source)
            if sizes is None:
                raise bad_request("wrong file identifier/HTTP URL specified")
        else:
            if len(source.data) > MAX_PHOTO_BYTES:
                raise bad_request("file is too big")
            width, height = image_size(source.data)
            if width + height > 10000 or max(width, height) > 20 * min(width, height):
                raise bad_request("PHOTO_INVALID_DIMENSIONS")
        self._flood(chat)
        if not isinstance(source, str):
            sizes = self.store_photo(source.data)
        largest = sizes[-1]
        msg = self._new_bot_message(
            chat,
            params,
            "photo",
            params.get("caption"),
            file_id=largest.file_id,
            data=largest.data,
            mime_type="image/jpeg",
            api={"photo": [s.photo_size() for s in sizes]},
        )
        return self.message_api(self.store(msg))

    async def api_sendDocument(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        source = self._file_param("document", params, uploads)
        chat = self._chat(params)
        if isinstance(source, str):
            doc = self.files.get(source)
            if doc is None:
                raise bad_request("wrong file identifier/HTTP URL specified")
            if doc.kind != "document":
                raise bad_request(f"can't use file of type {doc.kind.capitalize()} as Document")
        elif len(source.data) > MAX_UPLOAD_BYTES:
            raise ApiError(413, "Request Entity Too Large")
        self._flood(chat)
        if not isinstance(source, str):
            name = source.filename or "file"
            mime = (
                source.content_type
                if source.content_type not in (None, "application/octet-stream")
                else (mimetypes.guess_type(name)[0] or "application/octet-stream")
            )
            doc = self.store_file("document", source.data, mime_type=mime, file_name=name)
        msg = self._new_bot_message(
            chat,
            params,
            "document",
            params.get("caption"),
            file_id=doc.file_id,
            data=doc.data,
            file_name=doc.file_name,
            mime_type=doc.mime_type,
            api={"document": doc.document()},
        )
        return self.message_api(self.store(msg))

    async def api_sendMediaGroup(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        """An album: `media` is a JSON array of 2-10 InputMediaPhoto / InputMediaDocument (photos and documents
        are not mixed), each naming an upload (attach://name) or an existing file_id; the answer is an array of
        Messages sharing one media_group_id, each with its own caption. No reply_markup, as on Telegram."""
        media = params.get("media")
        if isinstance(media, str):
            try:
                media = json.loads(media)
            except ValueError:
                raise bad_request("can't parse media JSON object") from None
        if not isinstance(media, list) or not all(isinstance(m, dict) for m in media):
            raise bad_request("can't parse media JSON object")
        if not 2 <= len(media) <= 10:
            raise bad_request("wrong number of media specified" if media else "media is empty")
        kinds = {m.get("type") for m in media}
        if not kinds <= {"photo", "document"} or len(kinds) != 1:
            raise bad_request(
                "wrong media type specified"
                if not kinds <= {"photo", "document"}
                else "documents can't be mixed with other media types"
            )
        chat = self._chat(params)
        prepared: list[tuple[str, Any, dict[str, Any]]] = []
        for index, item in enumerate(media):
            kind = item["type"]
            source = self._file_param("media", {"media": item.get("media")}, uploads)
            caption = item.get("caption")
            if caption is not None and len(render_text(str(caption), item.get("parse_mode"))) > MAX_CAPTION:
                raise bad_request("message caption is too long")
            if isinstance(source, str):
                known = self.photo_sets.get(source) if kind == "photo" else self.files.get(source)
                if known is None:
                    raise bad_request(f"wrong file identifier/HTTP URL specified (media #{index + 1})")
            elif kind == "photo":
                if len(source.data) > MAX_PHOTO_BYTES:
                    raise bad_request("file is too big")
                width, height = image_size(source.data)
                if width + height > 10000 or max(width, height) > 20 * min(width, height):
                    raise bad_request("PHOTO_INVALID_DIMENSIONS")
            elif len(source.data) > MAX_UPLOAD_BYTES:
                raise ApiError(413, "Request Entity Too Large")
            prepared.append((kind, source, item))
        self._flood(chat)
        group = str(10**17 + secrets.randbelow(9 * 10**17))
        answers = []
        for kind, source, item in prepared:
            one = {
                k: v
                for k, v in params.items()
                if k in ("chat_id", "reply_to_message_id", "reply_parameters", "allow_sending_without_reply")
            }
            one.update(caption=item.get("caption"), parse_mode=item.get("parse_mode"))
            if kind == "photo":
                sizes = self.photo_sets[source] if isinstance(source, str) else self.store_photo(source.data)
                largest = sizes[-1]
                extra: dict[str, Any] = dict(
                    file_id=largest.file_id,
                    data=largest.data,
                    mime_type="image/jpeg",
                    api={"photo": [s.photo_size() for s in sizes], "media_group_id": group},
                )
            else:
                if isinstance(source, str):
                    doc = self.files[source]
                else:
                    name = source.filename or "file"
                    doc = self.store_file(
                        "document",
                        source.data,
                        mime_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                        file_name=name,
                    )
                extra = dict(
                    file_id=doc.file_id,
                    data=doc.data,
                    file_name=doc.file_name,
                    mime_type=doc.mime_type,
                    api={"document": doc.document(), "media_group_id": group},
                )
            msg = self._new_bot_message(chat, one, kind, one.get("caption"), **extra)
            answers.append(self.message_api(self.store(msg)))
        return answers

    async def api_getFile(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        stored = self.files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        if stored.file_size > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    # --- editing and deleting ----------------------------------------------------------------------------

    def _editable(self, params: dict[str, Any]) -> tuple[TgChat, SentMessage]:
        if params.get("inline_message_id"):
            raise bad_request("inline messages are not supported by the stand-in")
        chat = self._chat(params)
        msg = self.messages.get(chat.id, {}).get(params.get("message_id") or 0)
        if msg is None or msg.deleted:
            raise bad_request("message to edit not found")
        if not msg.from_bot:
            raise bad_request("message can't be edited")
        return chat, msg

    def _apply_edit(
        self, chat: TgChat, msg: SentMessage, *, text: str | None, raw: str | None, params: dict[str, Any]
    ) -> Any:
        markup = check_markup(params.get("reply_markup"))
        if text == msg.text and markup == msg.reply_markup:
            raise bad_request(NOT_MODIFIED)
        self._flood(chat)
        when = self.now()
        edited = dataclasses.replace(
            msg,
            text=text,
            raw_text=raw,
            parse_mode=params.get("parse_mode"),
            reply_markup=markup,
            edits=(*msg.edits, Revision(msg.text, msg.reply_markup, when)),
        )
        return self.message_api(self.store(edited), edit_date=when)

    async def api_editMessageText(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        raw = params.get("text")
        if raw is None or str(raw).strip() == "":
            raise bad_request("message text is empty")
        chat, msg = self._editable(params)
        if msg.kind != "text":
            raise bad_request("there is no text in the message to edit")
        text = render_text(str(raw), params.get("parse_mode"))
        if len(text) > MAX_TEXT:
            raise bad_request("MESSAGE_TOO_LONG")
        return self._apply_edit(chat, msg, text=text, raw=str(raw), params=params)

    async def api_editMessageCaption(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        chat, msg = self._editable(params)
        if msg.kind == "text":
            raise bad_request("there is no caption in the message to edit")
        raw = params.get("caption")
        text = render_text(str(raw), params.get("parse_mode")) if raw else None
        if text is not None and len(text) > MAX_CAPTION:
            raise bad_request("MEDIA_CAPTION_TOO_LONG")
        return self._apply_edit(chat, msg, text=text or None, raw=raw, params=params)

    async def api_editMessageReplyMarkup(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        chat, msg = self._editable(params)
        return self._apply_edit(
            chat, msg, text=msg.text, raw=msg.raw_text, params={**params, "parse_mode": msg.parse_mode}
        )

    async def api_deleteMessage(self, params: dict[str, Any], uploads: dict[str, Upload]) -> Any:
        chat = self._chat(params)
        msg = self.messages.get(chat.id, {}).get(params.get("message_id") or 0)
        if msg is None or msg.deleted:
            raise bad_request("message to delete not found")
        self.store(dataclasses.replace(msg, deleted=True))
        return True
