"""What users do in the Telegram stand-in: the updates a test (or the local chat page) injects.

Each function stores the user's message in the chat, as Telegram would show it, and queues the update the
bot receives (by getUpdates or webhook). The shapes follow the Bot API: a command carries its
`bot_command` entity, a photo its sizes (largest last), a callback query the bot's message as it is now.

It must never inject what Telegram could not send: pressing a button that is not on the message, editing
another person's message, or a "photo" that is no image raise BadInjection.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import struct
import wave
from typing import Any

from devnet.telegram_bot import BotState
from devnet.telegram_model import (
    ApiError,
    BadInjection,
    Revision,
    SentMessage,
    TgChat,
    TgUser,
    UnknownMessage,
    command_entities,
)


def _chat_for(state: BotState, user: TgUser, chat: TgChat | None) -> TgChat:
    chat = chat or TgChat.private(user)
    if chat.type == "private" and chat.id != user.id:
        raise BadInjection(f"a private chat has the id of its user ({user.id}), not {chat.id}")
    state.register_chat(chat)
    state.blocked.discard(user.id)  # writing to a bot unblocks it, as in Telegram's apps
    return chat


def _user_message(
    state: BotState, user: TgUser, chat: TgChat, kind: str, text: str | None, api: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    msg = SentMessage(
        message_id=state.next_message_id(chat.id),
        chat_id=chat.id,
        kind=kind,
        from_bot=False,
        text=text,
        raw_text=text,
        parse_mode=None,
        reply_markup=None,
        date=state.now(),
        api={"from": user.to_api(), **api},
        **extra,
    )
    state.store(msg)
    message = state.message_api(msg)
    state.push_update("message", message)
    return message


def text(
    state: BotState, user: TgUser, body: str, chat: TgChat | None = None, *, reply_to: int | None = None
) -> dict[str, Any]:
    """The user types `body` (a command when it starts with "/"), as a reply to message `reply_to` of the
    chat when given. Returns the Message the bot gets."""
    if not body:
        raise BadInjection("Telegram does not send empty text messages")
    chat = _chat_for(state, user, chat)
    if reply_to is not None and reply_to not in state.messages.get(chat.id, {}):
        raise BadInjection(f"there is no message {reply_to} in chat {chat.id} to reply to")
    entities = command_entities(body)
    return _user_message(state, user, chat, "text", body, {"entities": entities} if entities else {}, reply_to=reply_to)


def photo(
    state: BotState,
    user: TgUser,
    data: bytes,
    caption: str | None = None,
    chat: TgChat | None = None,
    *,
    media_group_id: str | None = None,
) -> dict[str, Any]:
    """The user sends a photo (compressed by Telegram into sizes; the largest keeps `data` as given); with
    `media_group_id`, as one picture of an album (see `album`)."""
    chat = _chat_for(state, user, chat)
    try:
        sizes = state.store_photo(data)
    except ApiError as err:
        raise BadInjection(f"Telegram clients send only images as photos: {err.description}") from None
    largest = sizes[-1]
    return _user_message(
        state,
        user,
        chat,
        "photo",
        caption,
        {"photo": [s.photo_size() for s in sizes], **({"media_group_id": media_group_id} if media_group_id else {})},
        file_id=largest.file_id,
        data=largest.data,
        mime_type="image/jpeg",
    )


#: Telegram's apps send at most 10 pictures in one album.
ALBUM_MAX = 10


def new_media_group_id() -> str:
    """A media group id as Telegram writes it: a long decimal string."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


def album(
    state: BotState,
    user: TgUser,
    pictures: list[bytes],
    caption: str | None = None,
    chat: TgChat | None = None,
    *,
    media_group_id: str | None = None,
) -> list[dict[str, Any]]:
    """The user sends several photos at once: as Telegram does, each is its own message and its own update,
    all sharing one `media_group_id`; the caption (if any) is on the first. Returns the Messages in order."""
    if not 2 <= len(pictures) <= ALBUM_MAX:
        raise BadInjection(f"a Telegram album holds 2 to {ALBUM_MAX} pictures, not {len(pictures)}")
    group = media_group_id or new_media_group_id()
    return [
        photo(state, user, data, caption if i == 0 else None, chat, media_group_id=group)
        for i, data in enumerate(pictures)
    ]


def document(
    state: BotState,
    user: TgUser,
    data: bytes,
    file_name: str,
    mime_type: str = "application/octet-stream",
    caption: str | None = None,
    chat: TgChat | None = None,
) -> dict[str, Any]:
    """The user sends a file (e.g. an uncompressed image) with its name and MIME type."""
    chat = _chat_for(state, user, chat)
    stored = state.store_file("document", data, mime_type=mime_type, file_name=file_name)
    return _user_message(
        state,
        user,
        chat,
        "document",
        caption,
        {"document": stored.document()},
        file_id=stored.file_id,
        data=data,
        file_name=file_name,
        mime_type=mime_type,
    )


def sticker(state: BotState, user: TgUser, chat: TgChat | None = None, emoji: str = "\U0001f600") -> dict[str, Any]:
    """The user sends a (static, 512x512 webp) sticker."""
    chat = _chat_for(state, user, chat)
    stored = state.store_file("sticker", b"RIFF\x00\x00\x00\x00WEBP", mime_type="image/webp", size=(512, 512))
    api = {
        "sticker": {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
            "file_size": stored.file_size,
        }
    }
    return _user_message(state, user, chat, "sticker", None, api, file_id=stored.file_id)


def voice(state: BotState, user: TgUser, seconds: int = 1, chat: TgChat | None = None) -> dict[str, Any]:
    """The user sends a voice note of `seconds` seconds."""
    chat = _chat_for(state, user, chat)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(struct.pack("<h", 0) * 8000 * seconds)
    stored = state.store_file("voice", buf.getvalue(), mime_type="audio/ogg")
    api = {
        "voice": {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "duration": seconds,
            "mime_type": "audio/ogg",
            "file_size": stored.file_size,
        }
    }
    return _user_message(state, user, chat, "voice", None, api, file_id=stored.file_id)


def video(
    state: BotState,
    user: TgUser,
    data: bytes = b"\x00\x00\x00\x18ftypmp42",
    caption: str | None = None,
    chat: TgChat | None = None,
) -> dict[str, Any]:
    """The user sends a video (the bytes are stored as given)."""
    chat = _chat_for(state, user, chat)
    stored = state.store_file("video", data, mime_type="video/mp4", size=(640, 360))
    api = {
        "video": {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "width": 640,
            "height": 360,
            "duration": 1,
            "mime_type": "video/mp4",
            "file_size": stored.file_size,
        }
    }
    return _user_message(state, user, chat, "video", caption, api, file_id=stored.file_id)


def edit(state: BotState, user: TgUser, message_id: int, new_text: str, chat: TgChat | None = None) -> dict[str, Any]:
    """The user edits their own earlier text message: the bot gets an `edited_message` update."""
    chat = _chat_for(state, user, chat)
    msg = state.messages[chat.id].get(message_id)
    if msg is None or msg.deleted:
        raise UnknownMessage(f"chat {chat.id} has no message {message_id}")
    if msg.from_bot or msg.api.get("from", {}).get("id") != user.id or msg.kind != "text":
        raise BadInjection("a user can edit only the text messages they sent")
    when = state.now()
    entities = command_entities(new_text)
    api = {"from": user.to_api(), **({"entities": entities} if entities else {})}
    edited = dataclasses.replace(
        msg, text=new_text, raw_text=new_text, api=api, edits=(*msg.edits, Revision(msg.text, None, when))
    )
    state.store(edited)
    message = state.message_api(edited, edit_date=when)
    state.push_update("edited_message", message)
    return message


def press(
    state: BotState, user: TgUser, message_id: int, data: str, chat: TgChat | None = None, *, must_exist: bool = True
) -> str:
    """The user presses an inline button (callback_data `data`) under a bot message. Returns the query id.

    With `must_exist=False` a forged callback_data may be sent (a hostile client can do that).
    """
    chat = _chat_for(state, user, chat)
    msg = state.messages[chat.id].get(message_id)
    if msg is None or msg.deleted or not msg.from_bot:
        raise UnknownMessage(f"chat {chat.id} has no bot message {message_id}")
    if must_exist and data not in [d for _, d in msg.buttons()]:
        raise BadInjection(f"message {message_id} has no button with callback_data {data!r}")
    query_id = str(secrets.randbits(63))
    state.callback_answers[query_id] = None
    state.push_update(
        "callback_query",
        {
            "id": query_id,
            "from": user.to_api(),
            "message": state.message_api(msg),
            "chat_instance": str(abs(hash((state.user.id, chat.id)))),
            "data": data,
        },
    )
    return query_id
