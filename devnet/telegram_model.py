"""Value types, errors and small rules of the Telegram Bot API stand-in.

What lives here: the stand-in's exception tree, the users/chats/messages/files a test talks about, the
coercion of Bot API form fields (ints, bools and JSON arrive as strings), Telegram's HTML parse-mode check,
the photo-size maker and the flood-control limiter. The HTTP side is in `devnet.telegram`.

It must never open a network connection, and never guess a field's type from its content alone: a text
field that reads "123" or "null" stays a string, as Telegram keeps it.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

# StandInError                 anything the stand-in refuses (tests see these)
#  +-- UnknownBot              a token that was never registered with add_bot
#  +-- UnknownFile             a file_id the stand-in never stored
#  +-- UnknownMessage          a message id that does not exist in that chat
#  +-- BadInjection            a test asked to inject something Telegram would never send
#  +-- StandInTimeout          wait_for / wait_calls ran out of time (also a TimeoutError)
#  +-- ApiError                a Bot API error answer (HTTP status + Telegram's description)


class StandInError(Exception):
    """Base of every error raised by the Telegram stand-in."""


class UnknownBot(StandInError):
    """The token was not registered with `TelegramStandIn.add_bot`."""


class UnknownFile(StandInError):
    """No file with this file_id was stored by the stand-in."""


class UnknownMessage(StandInError):
    """The chat has no message with this id."""


class BadInjection(StandInError):
    """A test asked to inject an update that Telegram could not produce (e.g. a photo that is no image)."""


class StandInTimeout(StandInError, TimeoutError):
    """A wait on the stand-in's state did not succeed in time."""


class ApiError(StandInError):
    """A Bot API error answer: `{"ok": false, "error_code": status, "description": ...}`."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {description}")
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        """The JSON body Telegram answers with."""
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def bad_request(what: str) -> ApiError:
    """A 400 with Telegram's "Bad Request: " prefix."""
    return ApiError(400, f"Bad Request: {what}")


# --- people and chats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TgUser:
    """A Telegram user who talks to the bot."""

    id: int
    first_name: str = "Alice"
    username: str | None = None
    last_name: str | None = None
    language_code: str | None = "en"
    is_bot: bool = False

    def to_api(self) -> dict[str, Any]:
        """The Bot API `User` object."""
        out: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        for key in ("last_name", "username", "language_code"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class TgChat:
    """A chat: private (id = the user's id), group or supergroup (negative ids)."""

    id: int
    type: str = "private"
    title: str | None = None
    first_name: str | None = None
    username: str | None = None

    @classmethod
    def private(cls, user: TgUser) -> TgChat:
        """The private chat between `user` and the bot."""
        return cls(id=user.id, type="private", first_name=user.first_name, username=user.username)

    def to_api(self) -> dict[str, Any]:
        """The Bot API `Chat` object."""
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        for key in ("title", "first_name", "username"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# --- what is stored ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """One file Telegram holds: its ids, its path for getFile, and its bytes."""

    file_id: str
    file_unique_id: str
    kind: str  # photo, document, sticker, voice, video
    file_path: str
    data: bytes
    mime_type: str | None = None
    file_name: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def file_size(self) -> int:
        return len(self.data)

    def photo_size(self) -> dict[str, Any]:
        """The Bot API `PhotoSize` object."""
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "width": self.width,
            "height": self.height,
            "file_size": self.file_size,
        }

    def document(self) -> dict[str, Any]:
        """The Bot API `Document` object."""
        out: dict[str, Any] = {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.file_size,
        }
        if self.file_name is not None:
            out["file_name"] = self.file_name
        if self.mime_type is not None:
            out["mime_type"] = self.mime_type
        return out


@dataclass(frozen=True)
class Revision:
    """A former version of a bot message, kept when the bot edits it."""

    text: str | None
    reply_markup: dict[str, Any] | None
    edit_date: int


@dataclass(frozen=True)
class SentMessage:
    """A message in a chat as the user sees it now (bot messages carry their edit history)."""

    message_id: int
    chat_id: int
    kind: str  # text, photo, document, sticker, voice, video
    from_bot: bool
    text: str | None  # the text, or the caption of a photo/document, rendered (HTML tags removed)
    raw_text: str | None  # as the bot sent it, before parse_mode rendering
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    date: int
    file_id: str | None = None  # for a photo: the largest size
    data: bytes | None = None  # the file's bytes, for photo/document messages
    file_name: str | None = None
    mime_type: str | None = None
    edits: tuple[Revision, ...] = ()
    deleted: bool = False
    reply_to: int | None = None
    api: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def caption(self) -> str | None:
        return self.text if self.kind != "text" else None

    def buttons(self) -> list[tuple[str, str | None]]:
        """The inline keyboard as (label, callback_data) pairs, row by row."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [(b.get("text", ""), b.get("callback_data")) for row in rows for b in row]


@dataclass(frozen=True)
class ApiCall:
    """One Bot API request the bot made, with its decoded parameters and the answer's status."""

    method: str
    params: dict[str, Any]
    status: int
    at: float
    description: str | None = None


# --- form field coercion ------------------------------------------------------------------------------

INT_FIELDS = frozenset(
    {
        "chat_id",
        "message_id",
        "offset",
        "limit",
        "timeout",
        "reply_to_message_id",
        "cache_time",
        "max_connections",
        "from_chat_id",
        "message_thread_id",
        "duration",
        "width",
        "height",
    }
)
BOOL_FIELDS = frozenset(
    {
        "disable_notification",
        "protect_content",
        "show_alert",
        "drop_pending_updates",
        "disable_web_page_preview",
        "allow_sending_without_reply",
        "has_spoiler",
        "show_caption_above_media",
        "disable_content_type_detection",
        "allow_paid_broadcast",
    }
)
JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "commands",
        "scope",
        "allowed_updates",
        "entities",
        "caption_entities",
        "reply_parameters",
        "link_preview_options",
    }
)


def coerce_param(name: str, value: Any) -> Any:
    """Decode one Bot API parameter: typed fields from their JSON text, every other field untouched.

    Raises ApiError (400) when a typed field does not decode.
    """
    if not isinstance(value, str):
        return value
    if name in INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            if name == "chat_id" and value.startswith("@"):
                return value
            raise bad_request(f"invalid {name} specified") from None
    if name in BOOL_FIELDS:
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0", ""):
            return False
        raise bad_request(f"invalid {name} specified")
    if name in JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {name} JSON object") from None
    return value


# --- parse_mode ------------------------------------------------------------------------------------

_HTML_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
    }
)


class _TelegramHtml(HTMLParser):
    """Checks a text against Telegram's HTML subset and collects its plain text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            raise bad_request(f'can\'t parse entities: Unsupported start tag "{tag}"')
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise bad_request(f'can\'t parse entities: Unexpected end tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def render_text(text: str, parse_mode: str | None) -> str:
    """The text a user sees: HTML is checked like Telegram does and its tags removed.

    Markdown and MarkdownV2 are accepted as they are (their entities are not rendered).
    Raises ApiError (400 "can't parse entities") for HTML Telegram would refuse.
    """
    if parse_mode is None or parse_mode == "":
        return text
    mode = parse_mode.lower()
    if mode in ("markdown", "markdownv2"):
        return text
    if mode != "html":
        raise bad_request(f"unsupported parse_mode {parse_mode}")
    parser = _TelegramHtml()
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise bad_request(f"can't parse entities: Can't find end tag corresponding to start tag \"{parser.stack[-1]}\"")
    return "".join(parser.parts)


def command_entities(text: str) -> list[dict[str, Any]]:
    """The `bot_command` entity Telegram adds when a message starts with "/" (offsets in UTF-16 units)."""
    if not text.startswith("/") or len(text) < 2:
        return []
    word = text.split(maxsplit=1)[0]
    return [{"type": "bot_command", "offset": 0, "length": len(word.encode("utf-16-le")) // 2}]


# --- photos --------------------------------------------------------------------------------------------

PHOTO_BOXES = (90, 320, 800, 1280)  # Telegram's thumbnail sizes (longest side)
PHOTO_MAX_SIDE = 2560  # Telegram keeps photos up to this longest side


@dataclass(frozen=True)
class PhotoVersion:
    """One size of a photo: dimensions and the bytes served for it."""

    width: int
    height: int
    data: bytes


def photo_versions(data: bytes) -> list[PhotoVersion]:
    """The sizes Telegram keeps for a photo, smallest first, largest last.

    The largest size is the original bytes unless its longest side exceeds 2560 pixels (then a
    downscaled JPEG); smaller sizes are JPEG thumbnails of 90/320/800/1280 pixels on the longest side.
    Sizes are those of the upright picture (EXIF Orientation applied, as Telegram shows it).
    Raises ApiError (400 IMAGE_PROCESS_FAILED) when the bytes are no image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)  # sized and shown as the camera was held (EXIF Orientation)
            width, height = upright.size
            rgb = upright.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise bad_request("IMAGE_PROCESS_FAILED") from None
    versions = [_downscaled(rgb, box) for box in PHOTO_BOXES if box < max(width, height)]
    if max(width, height) > PHOTO_MAX_SIDE:
        versions.append(_downscaled(rgb, PHOTO_MAX_SIDE))
    else:
        versions.append(PhotoVersion(width, height, data))
    return versions


def _downscaled(img: Image.Image, box: int) -> PhotoVersion:
    copy = img.copy()
    copy.thumbnail((box, box))
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=85)
    return PhotoVersion(copy.width, copy.height, buf.getvalue())


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of an image, read from its header. Raises ApiError 400 when it is no image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise bad_request("IMAGE_PROCESS_FAILED") from None


# --- flood control -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimits:
    """Telegram's flood limits for one bot. `enabled=False` lets everything through (still counted)."""

    enabled: bool = True
    overall_per_second: int = 30
    private_per_second: float = 1.0
    private_burst: int = 3
    group_per_minute: int = 20

    @classmethod
    def off(cls) -> RateLimits:
        return cls(enabled=False)


class FloodControl:
    """Decides whether a message to a chat may go now; else how many whole seconds to wait.

    Overall and per-group limits are sliding windows; a private chat is a token bucket of
    `private_burst` messages refilled at `private_per_second`. A refused message consumes nothing.
    """

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._overall: deque[float] = deque()
        self._groups: dict[int, deque[float]] = {}
        self._buckets: dict[int, tuple[float, float]] = {}  # chat id -> (tokens, at)

    def admit(self, chat_id: int) -> int | None:
        """None if the message may go now (and it is counted), else the retry_after in seconds."""
        if not self.limits.enabled:
            return None
        now = self._clock()
        waits = [self._window_wait(self._overall, self.limits.overall_per_second, 1.0, now)]
        if chat_id < 0:
            window = self._groups.setdefault(chat_id, deque())
            waits.append(self._window_wait(window, self.limits.group_per_minute, 60.0, now))
        else:
            waits.append(self._bucket_wait(chat_id, now))
        wait = max(waits)
        if wait > 0:
            return max(1, math.ceil(wait))
        self._overall.append(now)
        if chat_id < 0:
            self._groups[chat_id].append(now)
        else:
            tokens, _ = self._buckets[chat_id]
            self._buckets[chat_id] = (tokens - 1.0, now)
        return None

    @staticmethod
    def _window_wait(window: deque[float], limit: int, period: float, now: float) -> float:
        while window and window[0] <= now - period:
            window.popleft()
        if len(window) < limit:
            return 0.0
        return window[0] + period - now

    def _bucket_wait(self, chat_id: int, now: float) -> float:
        burst = float(self.limits.private_burst)
        tokens, at = self._buckets.get(chat_id, (burst, now))
        tokens = min(burst, tokens + (now - at) * self.limits.private_per_second)
        self._buckets[chat_id] = (tokens, now)
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.limits.private_per_second
