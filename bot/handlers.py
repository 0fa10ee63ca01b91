"""Telegram handlers for users: commands, photos, image files and links.

Handlers answer at once and hand any long work to the pipeline (`Pipeline.start_job` runs as a background task):
PTB processes updates concurrently, but a handler that waits on the chain would still hold a user's reply.
Edited messages are ignored on purpose: an edit must never start a second job or a second charge.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import time

from telegram import Chat, Document, InlineKeyboardButton, InlineKeyboardMarkup, Message, PhotoSize, Update
from telegram.constants import ParseMode
from telegram.ext import ContextTypes

from bot import albums, texts
from bot.errors import UpdateLacks
from bot.pipeline import job_id_of
from bot.services import Services, services_of
from bot.updates import chat_of, message_of, query_of, user_of
from ledger import LedgerBusy

log = logging.getLogger(__name__)
URL_RE = re.compile(r"\bhttps?://\S+", re.IGNORECASE)
IMAGE_MIME_PREFIX = "image/"


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot does, what it costs, the user's balance and the privacy notice."""
    svc = services_of(context)
    user = user_of(update).id
    bal = svc.ledger.balance(user)
    await message_of(update).reply_html(
        texts.START.format(
            price=texts.rlc(svc.settings.max_price_nrlc),
            fee=texts.rlc(svc.settings.fee_nrlc),
            available=texts.rlc(bal.available),
            demo=texts.DEMO_RANDOM if svc.settings.demo_random_weights else "",
            privacy=texts.privacy(svc.settings.tee, simulated=svc.settings.resolved_network.name == "devnet"),
        )
    )


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List the commands (admins also see theirs)."""
    svc = services_of(context)
    extra = texts.ADMIN_HELP if svc.is_admin(user_of(update).id) else ""
    if svc.linking is not None:  # users fund themselves (bot.funding)
        extra = texts.FUNDING_HELP + (extra + texts.ADMIN_FUNDING_HELP if extra else "")
    await message_of(update).reply_html(texts.HELP + texts.HELP_GROUPS + extra)


async def balance(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Available and reserved credit; linked addresses and deposits not final yet."""
    svc = services_of(context)
    user = user_of(update).id
    bal = svc.ledger.balance(user)
    body = texts.BALANCE.format(available=texts.rlc(bal.available), pending=texts.rlc(bal.pending))
    if svc.deposits is not None:
        body += "".join("\n" + html.escape(line) for line in svc.deposits.balance_lines(user))
    await message_of(update).reply_html(body)


def _status_text(svc: Services, user: int) -> str:
    active = svc.pipeline.active_jobs(user)
    if not active:
        return texts.NO_ACTIVE
    now = time.time()
    lines = []
    for job in active:
        position = svc.pipeline.queue_position(job.id)
        stage = (
            texts.STAGE_QUEUED.format(position=texts.ordinal(position))
            if position is not None
            else texts.STAGE_NAMES.get(job.state.value, job.state.value)
        )
        lines.append(
            texts.STATUS_LINE.format(short=job.id[-8:], stage=stage, elapsed=texts.elapsed(now - job.created_at / 1000))
        )
    return "\n".join(lines)


NOT_FOR_YOU = "This button is not for you."


def _refresh(user: int, chat: int) -> InlineKeyboardMarkup:
    """The refresh button of one user's /status; in a group, where others see it, it names its owner."""
    data = "status" if user == chat else f"status:{user}"
    return InlineKeyboardMarkup([[InlineKeyboardButton("🔄 Refresh", callback_data=data)]])


async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Jobs in progress, with a refresh button."""
    user = user_of(update).id
    await message_of(update).reply_html(
        _status_text(services_of(context), user), reply_markup=_refresh(user, chat_of(update).id)
    )


async def status_refresh(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The refresh button of /status: only its owner may press it (a button without an owner is one of a
    private chat, whose only user is its owner)."""
    query = query_of(update)
    presser = user_of(update).id
    owner_text = (query.data or "").partition(":")[2]
    chat = query.message.chat if query.message else None
    owner = (
        int(owner_text)
        if re.fullmatch(r"[0-9]{1,16}", owner_text)
        else (chat.id if chat is not None and chat.type == "private" else None)
    )
    if owner != presser:
        log.info("event=button_refused user=%s data=%r", presser, (query.data or "")[:64])
        await query.answer(NOT_FOR_YOU, show_alert=True)
        return
    await query.answer()
    text = _status_text(services_of(context), presser)
    if text != (query.message.text_html if isinstance(query.message, Message) else None):
        await query.edit_message_text(
            text, parse_mode=ParseMode.HTML, reply_markup=_refresh(presser, chat.id if chat else presser)
        )


async def jobs(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Recent jobs and how they ended."""
    svc = services_of(context)
    recent = svc.ledger.user_jobs(user_of(update).id, limit=10)
    if not recent:
        await message_of(update).reply_html(texts.NO_JOBS)
        return
    lines = [texts.job_line(job) for job in recent]
    await message_of(update).reply_html("<b>Recent jobs</b>\n" + "\n".join(lines))


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Cancel the user's jobs that are not bought on iExec yet."""
    svc = services_of(context)
    cancelled = await svc.pipeline.cancel(user_of(update).id)
    if not cancelled:
        await message_of(update).reply_html(texts.CANCEL_NONE)
        return
    for job_id, amount in cancelled:
        await message_of(update).reply_html(texts.CANCELLED.format(short=job_id[-8:], amount=texts.rlc(amount)))


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/forget: ask, with buttons that only the asker may press, before deleting anything."""
    user = user_of(update).id
    n = services_of(context).pipeline.stored_count(user)
    if not n:
        await message_of(update).reply_html(texts.FORGET_NOTHING)
        return
    buttons = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("🗑 Delete", callback_data=f"forget:yes:{user}"),
                InlineKeyboardButton("✖ Keep them", callback_data=f"forget:no:{user}"),
            ]
        ]
    )
    await message_of(update).reply_html(texts.FORGET_ASK.format(n=n), reply_markup=buttons)


async def forget_pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A button of /forget: only the user who asked may press it; deleting twice deletes nothing more."""
    query = query_of(update)
    presser = user_of(update).id
    _, answer, owner = [*(query.data or "").split(":"), "", "", ""][:3]
    if answer not in ("yes", "no") or not re.fullmatch(r"[0-9]{1,16}", owner) or int(owner) != presser:
        log.info("event=button_refused user=%s data=%r", presser, (query.data or "")[:64])
        await query.answer(NOT_FOR_YOU, show_alert=True)
        return
    await query.answer()
    if answer == "no":
        await query.edit_message_text(texts.FORGET_KEPT, parse_mode=ParseMode.HTML)
        return
    n = await services_of(context).pipeline.forget(presser)
    log.info("event=forget user=%s deleted=%d", presser, n)
    await query.edit_message_text(texts.FORGET_DONE.format(n=n), parse_mode=ParseMode.HTML)


async def detections(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The "detections.json" button under a result."""
    query = query_of(update)
    svc = services_of(context)
    job_id = (query.data or "").partition(":")[2]
    job = svc.ledger.get_job(job_id) if 0 < len(job_id) <= 64 else None
    if job is None or job.user_id != user_of(update).id:
        log.info("event=button_refused job=%s user=%s", job_id[:64], user_of(update).id)
        await query.answer(NOT_FOR_YOU, show_alert=True)
        return
    await query.answer()
    await svc.pipeline.send_detections(user_of(update).id, job_id)


REUSED_MESSAGE_ID = (
    "⚠️ I could not take this picture: Telegram gave it the number of an earlier message "
    "of this chat, which already has job <code>{short}</code>. Nothing was charged; "
    "please send the picture again."
)


def _fingerprint(kind: str, ref: str) -> str:
    """What identifies a message's picture across deliveries (Telegram's file_unique_id, or the link)."""
    return hashlib.sha256(f"{kind}:{ref}".encode()).hexdigest()[:32]


def _intake_record(svc: Services, job_id: str) -> tuple[str, int | None] | None:
    """(picture fingerprint, id of the "got it" message) noted when the message was first taken, or None."""
    stored = svc.ledger.get_value(f"intake.source:{job_id}")
    if stored is None:
        return None
    fingerprint, _, ack = stored.partition(":")
    return fingerprint, int(ack) if re.fullmatch(r"[0-9]{1,12}", ack) else None


def _same_message(svc: Services, message: Message, job_id: str, fingerprint: str) -> bool:
    """True when a message that maps to an existing job is that job's own message delivered again."""
    record = _intake_record(svc, job_id)
    if record is not None:
        return record[0] == fingerprint
    job = svc.ledger.get_job(job_id)  # a job from before fingerprints: a later message is another one
    return job is None or message.date.timestamp() <= job.created_at / 1000 + 1


async def _begin(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    source: tuple[str, str],
    fingerprint: str,
    *,
    target: Message | None = None,
) -> None:
    """Acknowledge at once, then let the pipeline check the input and start the job in the background.

    A message whose job exists already is a redelivery (nothing happens) unless it carries another picture:
    then the user is told, never left without an answer. A message taken before a crash but without its
    job yet (replayed from the inbox) goes on with the "got it" message it already has.

    `target`: the message holding the picture when it is not the update's own (a /segment reply): the job is
    that message's, its replies answer it, and the credit used is the asker's (the update's sender).
    """
    svc = services_of(context)
    asker = message_of(update)
    message = target or asker
    job_id = job_id_of(message.chat_id, message.message_id)
    if svc.pipeline.is_known(message.chat_id, message.message_id):
        if target is not None:  # somebody (maybe the asker) asked for this picture before
            await asker.reply_html(texts.SEGMENT_ALREADY.format(short=job_id[-8:]))
            return
        if _same_message(svc, message, job_id, fingerprint):
            log.info("event=replayed_update job=%s chat=%s message=%s", job_id, message.chat_id, message.message_id)
            return
        log.warning(
            "event=message_id_reused job=%s chat=%s message=%s update=%s",
            job_id,
            message.chat_id,
            message.message_id,
            update.update_id,
        )
        await message.reply_html(REUSED_MESSAGE_ID.format(short=job_id[-8:]))
        return
    record = _intake_record(svc, job_id)
    earlier_ack = record[1] if record is not None and record[0] == fingerprint else None
    refusal = svc.pipeline.refusal_before_download(user_of(update).id)
    if refusal:
        if earlier_ack is not None:
            await svc.board.show_now(message.chat_id, earlier_ack, refusal)
        else:
            await asker.reply_html(refusal)
        return
    inbox = svc.inbox
    if earlier_ack is not None:
        ack_id = earlier_ack
        log.info("event=intake_resumed job=%s status_message=%s", job_id, ack_id)
    else:
        ack_id = (await message.reply_html(texts.ACK, do_quote=True)).message_id
        if inbox is not None:  # from here on, the update is done only once the intake has ended
            inbox.defer(update.update_id)
        try:  # a busy database is waited for (without holding the event loop), not answered with an error
            await svc.pipeline.when_free(svc.ledger.set_value, f"intake.source:{job_id}", f"{fingerprint}:{ack_id}")
        except LedgerBusy:
            await _left_for_later(svc, job_id, message.chat_id, ack_id, update.update_id)
            return
    svc.board.touch(message.chat_id)
    svc.pipeline.crash_point("after_ack")

    async def take_in() -> None:
        try:
            answered = await svc.pipeline.start_job(
                user=user_of(update).id,
                chat=message.chat_id,
                message_id=message.message_id,
                status_message_id=ack_id,
                source=source,
            )
        except LedgerBusy:  # still busy after INTAKE_BUSY_LIMIT_S: the update stays for the next start
            await _left_for_later(svc, job_id, message.chat_id, ack_id, update.update_id)
            return
        except Exception:
            if inbox is not None:  # the error handler tells the user: replaying would fail the same way
                inbox.finished(update.update_id)
            raise
        if not answered:  # Telegram did not take the refusal: the update is handled again at the next start
            log.warning("event=intake_untold job=%s update=%s", job_id, update.update_id)
        elif inbox is not None:  # the job exists, or the user was told why not
            inbox.finished(update.update_id)

    if inbox is not None:
        inbox.defer(update.update_id)
    context.application.create_task(take_in(), update=update, name=f"intake-{message.chat_id}-{message.message_id}")


async def _left_for_later(svc: Services, job_id: str, chat: int, ack_id: int, update_id: int) -> None:
    """The books stayed busy: the update is left not done (the inbox hands it over again at the next start,
    and taking it in is idempotent), and the user reads that their picture waits instead of "Got it"."""
    log.warning("event=intake_busy job=%s update=%s until=next_start", job_id, update_id)
    await svc.board.show_now(chat, ack_id, texts.INTAKE_BUSY)


def in_group(update: Update) -> bool:
    """True in a group or supergroup, where the bot works on request only (see `segment`)."""
    return chat_of(update).type in (Chat.GROUP, Chat.SUPERGROUP)


def _asked_in_group(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """In a group: whether this picture's caption mentions the bot (@name), i.e. asks for it. Anything else
    a group member sends is not for the bot and is ignored without a word."""
    name = (context.bot.username or "").lower()
    caption = (message_of(update).caption or "").lower()
    asked = bool(name) and re.search(rf"@{re.escape(name)}(?![a-z0-9_])", caption) is not None
    if not asked:
        log.debug("event=group_message_ignored chat=%s", chat_of(update).id)
    return asked


def _largest(photo: tuple[PhotoSize, ...]) -> PhotoSize:
    return max(photo, key=lambda p: (p.width * p.height, p.file_size or 0))


def _is_image_file(doc: Document) -> bool:
    mime = (doc.mime_type or "").lower()
    return mime.startswith(IMAGE_MIME_PREFIX) and mime != "image/svg+xml"


async def segment(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/segment (or /segment@bot) in reply to a photo or an image file: segment that picture, paid with the
    asker's credit (not the sender's of the picture); the result answers the picture. This is how the bot
    is used in a group, where privacy mode shows it only commands, mentions and replies to it."""
    asker = message_of(update)
    target = asker.reply_to_message
    if target is not None and target.photo:
        largest = _largest(target.photo)
        source, fingerprint = ("telegram", largest.file_id), _fingerprint("file", largest.file_unique_id)
    elif target is not None and target.document is not None and _is_image_file(target.document):
        doc = target.document
        source, fingerprint = ("telegram", doc.file_id), _fingerprint("file", doc.file_unique_id)
    else:
        await asker.reply_html(texts.SEGMENT_HOW)
        return
    log.info("event=segment_asked chat=%s user=%s message=%s", asker.chat_id, user_of(update).id, target.message_id)
    await _begin(update, context, source, fingerprint, target=target)


async def admin_elsewhere(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An admin command outside a private chat. An admin reads where to use it (amounts, user ids and
    confirmation buttons never show in a group); anyone else gets the same answer as in a private chat,
    so a group learns nothing about the admin commands."""
    if services_of(context).is_admin(user_of(update).id):
        await message_of(update).reply_html(texts.ADMIN_PRIVATE_ONLY)
    else:
        await unknown_command(update, context)


async def personal_elsewhere(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/balance, /jobs, /forget, /link or /unlink in a group: said in private only (a group would read the
    balance, the jobs or the linked addresses); the answer names the bot to write to, and tells nothing else."""
    me = context.bot.username or "me"
    await message_of(update).reply_html(texts.PERSONAL_PRIVATE_ONLY.format(bot=html.escape(me)))


async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo: take its largest size (in a group only when its caption mentions the bot, or when it is in an
    album one of whose photos does: bot.albums decides once the album is collected)."""
    message = message_of(update)
    group = in_group(update)
    asked = not group or _asked_in_group(update, context)
    if not asked and not message.media_group_id:
        return
    largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
    source, fingerprint = ("telegram", largest.file_id), _fingerprint("file", largest.file_unique_id)
    if message.media_group_id:  # one photo of an album: the album becomes one job (bot.albums)
        albums.collect(
            services_of(context),
            update_id=update.update_id,
            message=message,
            user=user_of(update).id,
            source=source,
            fingerprint=fingerprint,
            single=lambda: _begin(update, context, source, fingerprint),
            group=group,
            asked=asked,
        )
        return
    await _begin(update, context, source, fingerprint)


async def document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A file: only images go further (the content is checked again after download)."""
    doc = message_of(update).document
    if doc is None:  # registered for filters.Document.ALL: a document is there
        raise UpdateLacks(f"update {update.update_id} has no document")
    if in_group(update) and not (_is_image_file(doc) and _asked_in_group(update, context)):
        return
    mime = (doc.mime_type or "").lower()
    if not mime.startswith(IMAGE_MIME_PREFIX) or mime == "image/svg+xml":
        what = f"A {mime or 'file'} file" if mime else "This file"
        await message_of(update).reply_html(texts.UNSUPPORTED.format(what=what))
        return
    await _begin(update, context, ("telegram", doc.file_id), _fingerprint("file", doc.file_unique_id))


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A text: an image link starts a job; anything else gets a hint (in a group: ignored)."""
    if in_group(update):
        return
    body = message_of(update).text or ""
    match = URL_RE.search(body)
    if match is None:
        if re.search(r"\b[a-z][a-z0-9+.-]*://", body, re.IGNORECASE):
            await message_of(update).reply_html(texts.REJECTED.format(reason="Only http:// and https:// links work."))
        else:
            await message_of(update).reply_html(texts.HINT)
        return
    await _begin(update, context, ("url", match.group(0)), _fingerprint("url", match.group(0)))


async def unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stickers, voice, video, audio...: say what works instead (in a group: ignored)."""
    if in_group(update):
        return
    msg = message_of(update)
    kind = next(
        (
            name
            for name in ("sticker", "voice", "video", "video_note", "audio", "animation", "contact", "location", "poll")
            if getattr(msg, name, None)
        ),
        "message",
    )
    await msg.reply_html(texts.UNSUPPORTED.format(what=f"A {kind.replace('_', ' ')}"))


async def stale_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A button press no handler knows (an old message, a forged press): say so instead of spinning."""
    log.info("event=button_unknown user=%s data=%r", user_of(update).id, (query_of(update).data or "")[:64])
    await query_of(update).answer("This button no longer works.", show_alert=True)


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any command the bot does not have (and admin commands sent by non-admins). In a group, only a command
    addressed to the bot by name (/cmd@bot) is answered: a bare /cmd may be meant for another bot there."""
    if in_group(update):
        name = (context.bot.username or "").lower()
        command = ((message_of(update).text or "").split(maxsplit=1) or [""])[0].lower()
        if not name or not command.endswith(f"@{name}"):
            return
    await message_of(update).reply_html(texts.UNKNOWN_COMMAND)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log first, then tell the user something went wrong (never the exception itself)."""
    log.error("event=handler_error error=%r", context.error, exc_info=context.error)
    if isinstance(update, Update) and update.effective_message:
        try:
            await message_of(update).reply_html(texts.ERROR)
        except Exception:  # noqa: BLE001 - the error handler must not raise
            log.warning("event=error_reply_failed")
