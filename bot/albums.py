"""Albums: several photos sent together (one Telegram `media_group_id`) become ONE job and one iExec task.

Telegram delivers an album as separate updates, one per photo, sharing a `media_group_id`, usually within a
second. `AlbumCollector` keeps the photos of each (chat, media group) until no new one came for
`album_quiet_s`, then hands them over at once (`take_album`), in message order:

- one photo only: it is an ordinary photo (the handler's own path, `single`); in a group, where privacy mode
  gives the bot only the album's photo whose caption mentions it, the user also reads that the other photos
  were not seen and how to have them all segmented (`ALBUM_GROUP_ONE_SEEN`);
- in a group, an album none of whose photos mentions the bot is not for the bot: dropped without a word (with
  privacy mode off every photo of every album arrives; one mention in the caption asks for the whole album);
- more than `ALBUM_MAX` (Telegram's own limit): refused with a clear message, nothing charged;
- otherwise: the user reads the album's price (one task plus a per-photo fee each, `Settings.album_price_nrlc`)
  in the "got it" message, and `Pipeline.start_album` downloads and checks every photo, then creates the job
  and reserves that price in one transaction.

Nothing is lost and nothing is made twice across a restart: every photo's update stays "not done" in the
books' inbox (`UpdateInbox.defer`) until its album's job exists or the user was told why not, so a restart in
the middle of collecting replays all of them and they are collected again. The job's id is the album's own
(`album_job_id`: chat and media group, not a message), so a replay, or a photo replayed alone after the job
was made, finds the job: a photo that is in it is done; one that is not (it came after the album was taken
in) goes on as an ordinary photo. The "got it" message is noted in the books (`album.ack:<job id>`) before
the job exists, so a restart in between reuses it instead of sending a second.

Never here: downloading, money or the job's state (the pipeline's), or waiting in a handler (the quiet
period runs in the collector's own task).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot import texts
from bot.results import ALBUM_MAX
from ledger import LedgerBusy

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^0-9A-Za-z_-]")


def album_job_id(chat: int, media_group_id: str) -> str:
    """An album job's id: one per chat and media group, so each of its photos' updates finds the same job."""
    return f"c{chat}g{_SAFE.sub('', media_group_id)[:64]}"


@dataclass
class Member:
    """One photo of an album as its update brought it."""

    update_id: int
    message_id: int
    user: int
    chat: int
    source: tuple[str, str]
    fingerprint: str
    reply: Callable[[str], Awaitable[Any]]  # answer this message (HTML), returns the sent Message
    single: Callable[[], Awaitable[None]]  # take this photo in as an ordinary photo
    group: bool = False  # sent in a group chat, where the bot works on request only
    asked: bool = True  # in a group: its caption mentions the bot


@dataclass
class _Group:
    members: dict[int, Member] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class AlbumCollector:
    """Collects the photos of each (chat, media group) until a quiet period passes, then calls `take`."""

    def __init__(self, quiet_s: float, take: Callable[[list[Member], str], Coroutine[Any, Any, None]]) -> None:
        self.quiet_s = quiet_s
        self._take = take
        self._groups: dict[tuple[int, str], _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def add(self, media_group_id: str, member: Member) -> None:
        """Keep `member` with its album's other photos (a replayed update replaces itself) and restart the
        album's quiet period."""
        if self._stopping:
            return  # its update stays not done: the next start replays it
        key = (member.chat, media_group_id)
        group = self._groups.setdefault(key, _Group())
        group.members[member.message_id] = member
        if group.timer is not None:
            group.timer.cancel()
        group.timer = asyncio.get_running_loop().call_later(self.quiet_s, self._close, key)
        log.info(
            "event=album_photo chat=%s group=%s message=%s photos=%d",
            member.chat,
            media_group_id,
            member.message_id,
            len(group.members),
        )

    def pending(self) -> int:
        """How many albums are being collected or taken in."""
        return len(self._groups) + len(self._tasks)

    def photos_collected(self) -> int:
        """How many photos wait in albums being collected (not handed over yet)."""
        return sum(len(group.members) for group in self._groups.values())

    def _close(self, key: tuple[int, str]) -> None:
        group = self._groups.pop(key, None)
        if group is None or self._stopping:
            return
        members = [group.members[m] for m in sorted(group.members)]
        task = asyncio.get_running_loop().create_task(self._take(members, key[1]), name=f"album-{key[0]}-{key[1]}")
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("event=album_intake_failed task=%s error=%r", task.get_name(), str(exc)[:300], exc_info=exc)

    async def stop(self) -> None:
        """Forget the albums being collected (their updates are not done: replayed at the next start) and
        end those being taken in."""
        self._stopping = True
        for group in self._groups.values():
            if group.timer is not None:
                group.timer.cancel()
        self._groups.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _finished(svc: Services, members: list[Member]) -> None:
    if svc.inbox is not None:
        for member in members:
            svc.inbox.finished(member.update_id)


async def take_album(svc: Services, members: list[Member], media_group_id: str) -> None:
    """What an album's photos become once collected (see the module docstring). Marks their updates done
    once the job exists or the user was told why not; leaves them for the next start otherwise."""
    first = members[0]
    job_id = album_job_id(first.chat, media_group_id)
    try:
        job = await svc.pipeline.when_free(svc.ledger.get_job, job_id)
    except LedgerBusy:
        log.warning("event=album_busy job=%s until=next_start", job_id)
        return
    if job is not None:  # replayed: the photos in the job are done, a late one is an ordinary photo
        taken = set(job.options.get("album", {}).get("messages", []))
        late = [m for m in members if m.message_id not in taken]
        _finished(svc, [m for m in members if m.message_id in taken])
        log.info("event=album_replayed job=%s photos=%d late=%d", job_id, len(members), len(late))
        for member in late:
            await member.single()
        return
    if first.group and not any(m.asked for m in members):  # a group's album that does not ask for the bot
        log.info("event=group_album_ignored chat=%s photos=%d", first.chat, len(members))
        _finished(svc, members)
        return
    if len(members) == 1:
        log.info("event=album_of_one chat=%s message=%s group=%s", first.chat, first.message_id, first.group)
        if first.group and not svc.pipeline.is_known(first.chat, first.message_id):
            await first.reply(texts.ALBUM_GROUP_ONE_SEEN)  # said once: a replayed update finds the job
        await first.single()
        return
    if len(members) > ALBUM_MAX:
        await first.reply(texts.ALBUM_TOO_LARGE.format(n=len(members), max=ALBUM_MAX))
        log.info("event=album_refused job=%s photos=%d reason=too_many", job_id, len(members))
        _finished(svc, members)
        return
    s = svc.settings
    n = len(members)
    refusal = svc.pipeline.refusal_before_download(first.user, price=s.album_price_nrlc(n))
    if refusal:
        await first.reply(refusal)
        _finished(svc, members)
        return
    ack_key = f"album.ack:{job_id}"
    stored = await svc.pipeline.when_free(svc.ledger.get_value, ack_key)
    if stored is not None and stored.isdigit():
        ack_id = int(stored)
        log.info("event=album_intake_resumed job=%s status_message=%s", job_id, ack_id)
    else:
        text = texts.ALBUM_ACK.format(
            n=n,
            price=texts.rlc(s.album_price_nrlc(n)),
            task=texts.rlc(s.max_price_nrlc),
            per_photo=texts.rlc(s.album_photo_fee_nrlc),
        )
        ack_id = (await first.reply(text)).message_id
        try:
            await svc.pipeline.when_free(svc.ledger.set_value, ack_key, str(ack_id))
        except LedgerBusy:
            log.warning("event=album_busy job=%s until=next_start", job_id)
            await svc.board.show_now(first.chat, ack_id, texts.INTAKE_BUSY)
            return
    svc.board.touch(first.chat)
    try:
        answered = await svc.pipeline.start_album(
            job_id,
            user=first.user,
            chat=first.chat,
            message_ids=[m.message_id for m in members],
            status_message_id=ack_id,
            sources=[m.source for m in members],
        )
    except LedgerBusy:
        log.warning("event=album_busy job=%s until=next_start", job_id)
        await svc.board.show_now(first.chat, ack_id, texts.INTAKE_BUSY)
        return
    if answered:
        _finished(svc, members)
    else:
        log.warning("event=album_intake_untold job=%s", job_id)


def collector_of(svc: Services) -> AlbumCollector:
    """The bot's album collector (made at the first album; the pipeline stops it with the bot)."""
    collector = svc.pipeline.albums
    if collector is None:

        async def take(members: list[Member], media_group_id: str) -> None:
            await take_album(svc, members, media_group_id)

        collector = svc.pipeline.albums = AlbumCollector(svc.settings.album_quiet_s, take)
    return collector


def collect(
    svc: Services,
    *,
    update_id: int,
    message: Any,
    user: int,
    source: tuple[str, str],
    fingerprint: str,
    single: Callable[[], Awaitable[None]],
    group: bool = False,
    asked: bool = True,
) -> None:
    """A photo with a `media_group_id`: keep it with its album (its update stays not done until the album's
    job exists or the user was told why not). `group`: sent in a group chat; `asked`: its caption mentions
    the bot (in a group, an album is taken only when one of its photos asks)."""
    if svc.inbox is not None:
        svc.inbox.defer(update_id)

    async def reply(text: str) -> Any:
        return await message.reply_html(text, do_quote=True)

    member = Member(
        update_id, message.message_id, user, message.chat_id, source, fingerprint, reply, single, group, asked
    )
    collector_of(svc).add(str(message.media_group_id), member)
