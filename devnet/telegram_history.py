"""The Telegram stand-in's memory across restarts: each bot's chats, their last messages and the files shown.

Telegram keeps a conversation forever; the stand-in keeps, per bot, in `<data>/telegram/bot{id}.history/`:

    history.json         chats and the last `max_messages` messages of each chat (deleted ones are dropped)
    files/<unique id>    the bytes of the files those messages show (photo sizes, documents, ...)

File bytes are capped at `max_file_bytes` per bot: the newest messages' files are kept first; an older
message past the cap comes back without its file (the page shows a placeholder, getFile says invalid).
Every write goes to a scratch file renamed into place, and files are written before the index that names
them, so a kill at any moment leaves the previous history or the new one, never a torn file.

It must never hold a bot token (neither in the index nor in a file name).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devnet.files import write_atomically
from devnet.telegram_model import Revision, SentMessage, StoredFile, TgChat

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_CHAT = 500
MAX_FILE_BYTES = 256 * 1024 * 1024  # per bot
_MEDIA_KEYS = ("document", "sticker", "voice", "video")


@dataclass
class Snapshot:
    """What a bot's chat history holds: chats by id, messages by chat and id, files by file_id."""

    chats: dict[int, TgChat] = field(default_factory=dict)
    messages: dict[int, dict[int, SentMessage]] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)


def message_file_ids(msg: SentMessage) -> list[str]:
    """Every file a message shows: each size of a photo, or its document/sticker/voice/video."""
    ids = [size["file_id"] for size in msg.api.get("photo", []) if isinstance(size, dict)]
    ids += [msg.api[key]["file_id"] for key in _MEDIA_KEYS if isinstance(msg.api.get(key), dict)]
    if msg.file_id is not None and msg.file_id not in ids:
        ids.append(msg.file_id)
    return ids


class History:
    """Saves and loads one bot's `Snapshot` in `folder` (see the module docstring for the layout)."""

    def __init__(
        self, folder: Path, *, max_messages: int = MAX_MESSAGES_PER_CHAT, max_file_bytes: int = MAX_FILE_BYTES
    ) -> None:
        self.folder = folder
        self.max_messages = max_messages
        self.max_file_bytes = max_file_bytes
        self.index = folder / "history.json"
        self.blobs = folder / "files"

    def load(self) -> Snapshot:
        """The saved history (empty when none was saved). A file whose bytes are gone is left out."""
        if not self.index.exists():
            return Snapshot()
        saved = json.loads(self.index.read_text(encoding="utf-8"))
        snap = Snapshot()
        for raw in saved["files"]:
            blob = self.blobs / raw["file_unique_id"]
            if not blob.exists():
                log.warning("history_file_missing file_unique_id=%s", raw["file_unique_id"])
                continue
            snap.files[raw["file_id"]] = StoredFile(data=blob.read_bytes(), **raw)
        for raw in saved["chats"]:
            chat = TgChat(**raw["chat"])
            snap.chats[chat.id] = chat
            snap.messages[chat.id] = {}
            for m in raw["messages"]:
                stored = snap.files.get(m["file_id"]) if m["file_id"] else None
                msg = SentMessage(
                    **{
                        **m,
                        "edits": tuple(Revision(*e) for e in m["edits"]),
                        "data": stored.data if stored is not None else None,
                    }
                )
                snap.messages[chat.id][msg.message_id] = msg
        return snap

    def save(self, snap: Snapshot) -> None:
        """Write the last messages of every chat and the files they show, then drop files no longer named."""
        kept = {
            chat_id: [m for _, m in sorted(found.items()) if not m.deleted][-self.max_messages :]
            for chat_id, found in snap.messages.items()
            if chat_id in snap.chats
        }
        files = self._files_within_cap(kept, snap.files)
        self.blobs.mkdir(parents=True, exist_ok=True)
        for stored in files.values():
            blob = self.blobs / stored.file_unique_id
            if not blob.exists():  # a file's bytes never change under its id
                write_atomically(blob, stored.data)
        index = {
            "files": [{k: v for k, v in dataclasses.asdict(f).items() if k != "data"} for f in files.values()],
            "chats": [
                {"chat": dataclasses.asdict(snap.chats[chat_id]), "messages": [_message_json(m) for m in msgs]}
                for chat_id, msgs in kept.items()
            ],
        }
        write_atomically(self.index, json.dumps(index, ensure_ascii=False).encode("utf-8"))
        names = {f.file_unique_id for f in files.values()}
        for blob in self.blobs.iterdir():
            if blob.name not in names:
                blob.unlink(missing_ok=True)

    def _files_within_cap(
        self, kept: dict[int, list[SentMessage]], known: dict[str, StoredFile]
    ) -> dict[str, StoredFile]:
        """The files of the kept messages, newest message first, until `max_file_bytes` is reached."""
        newest_first = sorted(
            (m for msgs in kept.values() for m in msgs), key=lambda m: (m.date, m.message_id), reverse=True
        )
        files: dict[str, StoredFile] = {}
        total = 0
        for msg in newest_first:
            wanted = [known[i] for i in message_file_ids(msg) if i in known and i not in files]
            size = sum(f.file_size for f in wanted)
            if total + size > self.max_file_bytes:
                continue  # this message comes back without its file; smaller newer ones may still fit
            total += size
            files.update((f.file_id, f) for f in wanted)
        return files


def _message_json(msg: SentMessage) -> dict[str, Any]:
    out = {k: v for k, v in dataclasses.asdict(msg).items() if k not in ("data", "edits")}
    out["edits"] = [[r.text, r.reply_markup, r.edit_date] for r in msg.edits]
    return out
