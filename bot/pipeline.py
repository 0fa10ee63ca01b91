"""The job pipeline: drives each job from intake to delivery or refund, and resumes after a restart.

Every step is persisted before its side effect and every transition is one ledger transaction, so a crash
anywhere resumes without a second order, a second charge or a lost reply:

- RECEIVED: the job row and the reservation (max prices + fee) were written together at intake.
- ORDER_SIGNED: the input is published and the job's one request order (workerpool open, volume 1, salt from
  the job id) is signed and stored with its hash. It never changes afterwards. In TEE mode, before signing:
  the photo is encrypted with the job's input key (derived from the bot's result key and the job id, so the
  same after a restart; never stored), only the encrypted bytes are published (IPFS or our input server),
  an "input_secret" event is recorded and the key is pushed to the SMS as requester secret
  `segbot-<job id>` (after a restart: checked first; "already exists" is success); the order then carries
  the TEE tag, `iexec_secrets` {1: name} and `iexec_result_encryption`.
- MATCHING: an app order and a workerpool order within the maximum prices were found; the match transaction
  goes through the one nonce-owning sender, which stores it before broadcast. After a crash the stored order
  hash tells whether the match happened (`viewConsumed`): the deal id is derived, never re-ordered.
- MATCHED -> RUNNING -> COMPLETED: followed with the event watcher; the result is downloaded and checked,
  then the charge is posted (matched prices + fee, the rest returns) in the same transaction as COMPLETED.
- DELIVERED: the reply was sent (at least once): as a photo, else as a file, else as a text when Telegram
  refuses the picture for good (a `BadRequest` is never retried; the job is held for an admin if even the
  text is refused). REFUNDED: claimed on chain when claimable, then voided.
- Telling the user is part of a job's ending: a refund or a hold is told by a message of its own, and the
  books record ("told" event) that Telegram took it. At start-up, endings not told yet are told then: at
  least once (a crash between the message and its record tells twice).

No loop here may spin: every wait yields to the event loop, and every state the chain can report has a
branch (a state the books cannot explain holds the job for an admin with the reason). `_drive` also slows
down a step that keeps returning without changing the job.

Telling users how their jobs ended is the job of `bot.endings.Endings`, which the pipeline holds
(`self.endings`); what the admin commands ask (find, refund, retry, reconcile) is `bot.admin_ops.AdminOps`,
which uses the pipeline's public `drive` and `refund`; reading a downloaded result's files is in
`bot.results`; calls on a busy database wait in `bot.busy.when_free`.

Never here: a Telegram token (the bot downloads photos itself), floats for money, or long work in a handler.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import html
import io
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, ChatMigrated, Forbidden, TelegramError

from bot import texts
from bot.busy import when_free
from bot.chain_gateway import ChainGateway, TaskEvent, TaskKind, secret_name
from bot.crashpoints import CrashPoints
from bot.endings import PERMANENT_TELEGRAM, Endings, Refund
from bot.errors import ChainDisagrees, InputRejected, NeedsAdmin, NoOffer, OfferTaken
from bot.images import check_image_async
from bot.input_server import upload_to_ipfs
from bot.intake import DownloadLimiter, fetch_image
from bot.results import (
    RESULT_LIMITS,
    AlbumResult,
    album_detections,
    is_album,
    made_with_random_weights,
    read_album,
    read_detections,
    result_image,
)
from bot.settings import Settings
from iexec.errors import DecryptionError, IExecError, ResultDownloadError, ResultLocationError, TeeError, UnsafeArchive
from iexec.retry import RetryPolicy
from ledger import InsufficientFunds, Job, JobState, Ledger, LedgerBusy, LedgerError, RefundReason, UnknownJob

if TYPE_CHECKING:
    from bot.albums import AlbumCollector

log = logging.getLogger(__name__)

PHOTO_MAX_BYTES = 10 * 1024 * 1024
DOCUMENT_MAX_BYTES = 50 * 1024 * 1024  # Telegram answers 413 above it (PTB: a NetworkError, not BadRequest)
PHOTO_MAX_SIDES = 10_000
#: A step that failed is tried again after 1, 2, 4, ... at most 30 s (jittered); an unexpected error holds the
#: job at the STEP_ATTEMPTS-th (the other failures are retried for as long as it takes: the driver never gives up).
STEP_ATTEMPTS = 5
STEP_RETRY = RetryPolicy(base_delay_s=1.0, max_delay_s=30.0, deadline_s=None, attempts=STEP_ATTEMPTS)
CATEGORY_REF_S = {0: 300, 1: 1200, 2: 3600, 3: 10800, 4: 36000}
RESULT_ATTEMPTS = 8
#: `_drive` sleeps SPIN_PAUSE_S when a step returned SPIN_LIMIT times within SPIN_WINDOW_S without changing
#: the job (a missing wait somewhere: defence in depth, with a log line to find it).
SPIN_LIMIT = 10
SPIN_WINDOW_S = 1.0
SPIN_PAUSE_S = 1.0
#: How long intake waits for a busy database before it leaves the picture for the next start.
INTAKE_BUSY_LIMIT_S = 30.0
#: A driver that died of an unexpected error is started again once, after this pause.
DRIVER_RESTART_S = 5.0
RESUMABLE = tuple(state for state in JobState if state.is_resumable())


T = TypeVar("T")


def _needs(value: T | None, what: str, job: Job) -> T:
    """`value`, which the books always hold for a job in this state; NeedsAdmin when they do not."""
    if value is None:
        raise NeedsAdmin(f"the books have no {what} for job {job.id} in state {job.state.value}")
    return value


def _task_price(job: Job) -> int:
    """What the job's task cost on chain (app + workerpool), known from MATCHED on."""
    return _needs(job.app_price, "app price", job) + _needs(job.workerpool_price, "workerpool price", job)


def _detections_button(job: Job) -> InlineKeyboardMarkup:
    """The "detections.json" button under a result (handlers.detections sends the file to its owner)."""
    return InlineKeyboardMarkup([[InlineKeyboardButton("detections.json", callback_data=f"det:{job.id}")]])


def job_id_of(chat: int, message_id: int) -> str:
    """A job's id: one per Telegram message, so a replayed or edited update never makes a second job."""
    return f"c{chat}m{message_id}"


class Pipeline:
    """Owns every job in flight: one asyncio task per job, resumed from the books at start-up."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        chain: ChainGateway,
        inputs: Any,
        bot: Any,
        board: Any,
        *,
        clock: Callable[[], float] = time.time,
        crash_points: CrashPoints | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.chain = chain
        self.inputs = inputs
        self.bot = bot
        self.board = board
        self.clock = clock
        #: `crash_point(name)` dies there when the crash tests ask for it (see `bot.crashpoints`).
        self.crash_point = crash_points or CrashPoints()
        chain.crash_hook = self.crash_point
        self.paused = False
        self.retry: RetryPolicy = STEP_RETRY
        self.result_attempts = RESULT_ATTEMPTS
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._intakes: set[str] = set()
        self.downloads = DownloadLimiter.from_settings(settings)  # per user and in all, at once
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self.intake_busy_limit_s = INTAKE_BUSY_LIMIT_S
        self.driver_restart_s = DRIVER_RESTART_S
        self._restarted: set[str] = set()  # drivers started again once after they died
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        self._stopping = False
        self.results_dir = Path(settings.data_dir) / "results"
        #: What `_drive` does in each state it drives (the resumable ones).
        self._steps: dict[JobState, Callable[[Job], Awaitable[None]]] = {
            JobState.RECEIVED: self._step_received,
            JobState.ORDER_SIGNED: self._step_order_signed,
            JobState.MATCHING: self._step_matching,
            JobState.MATCHED: self._step_matched,
            JobState.RUNNING: self._step_running,
            JobState.COMPLETED: self._step_completed,
        }
        self.endings = Endings(ledger, bot, board, clock=clock, retry=self.retry, crash_point=self.crash_point)
        self.uploads_dir = Path(settings.data_dir) / "uploads"
        #: the album collector (bot.albums), made at the first album and stopped with the pipeline
        self.albums: AlbumCollector | None = None
        #: place in line (1 = next) of each picture that waits for one of its user's slots (see `advance`)
        self._positions: dict[str, int] = {}

    # ------------------------------------------------------------------------------------ life cycle

    async def resume(self) -> int:
        """Start a driver for every unfinished job (NEEDS_ADMIN jobs wait for a person), and finish telling
        the users of refunds and holds that ended untold (killed before the message)."""
        jobs = self.ledger.jobs_in_states(*RESUMABLE)
        waiting_users = set()
        for job in jobs:
            if job.state is JobState.RECEIVED:  # started or waiting in line: `advance` decides, in arrival order
                waiting_users.add(job.user_id)
            else:
                self.drive(job.id)
        for user in sorted(waiting_users):
            self.advance(user)
        untold = self.endings.untold()
        for job in untold:
            self._show(job, reason=Refund.from_error(job.error).text())
            self.endings.tell_soon(job)
        unannounced = self.endings.unannounced_holds()
        for job in unannounced:  # killed between the hold and the admins' message
            self._in_background(self._announce_hold(job, job.error or "unknown reason"))
        log.info("event=resume jobs=%d untold=%d unannounced=%d", len(jobs), len(untold), len(unannounced))
        return len(jobs)

    def drive(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._drive(job_id), name=job_id)
            task.add_done_callback(self._driver_ended)
            self._tasks[job_id] = task

    def _driver_ended(self, task: asyncio.Task[None]) -> None:
        """A driver that ended with an error is logged and started again once after a pause (a second
        death leaves the job to the next start's resume, logged too): a job never stops silently."""
        if task.cancelled():
            return
        if task.exception() is None:  # the job ended (or is held): a slot of its user may be free
            if not self._stopping:
                self._in_background(self._advance_after(task.get_name()))
            return
        job_id, exc = task.get_name(), task.exception()
        log.error("event=driver_died job=%s error=%r", job_id, str(exc)[:300], exc_info=exc)
        if self._stopping or job_id in self._restarted:
            log.error("event=driver_left job=%s until=next_start", job_id)
            return
        self._restarted.add(job_id)

        def restart() -> None:
            self._restarts.pop(job_id, None)
            if not self._stopping and self._tasks.get(job_id) is task:
                log.warning("event=driver_restarted job=%s", job_id)
                self.drive(job_id)

        self._restarts[job_id] = asyncio.get_running_loop().call_later(self.driver_restart_s, restart)

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def stop(self) -> None:
        self._stopping = True
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        await self.endings.stop()
        if self.albums is not None:
            await self.albums.stop()

    async def idle(self, timeout: float) -> bool:
        """Wait until no job task runs (tests); True when everything finished in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t.done() for t in self._tasks.values()) and self.endings.idle():
                return True
            await asyncio.sleep(0.05)
        return False

    # ------------------------------------------------------------------------------------ the queue

    def advance(self, user: int) -> None:
        """Start the user's waiting pictures while fewer than `max_jobs_in_flight` of theirs run (in arrival
        order), and show each picture still waiting its place in line.

        The line lives in the books: a waiting picture is a RECEIVED job (created, its price reserved) that no
        driver runs; a RECEIVED job has done nothing outside the books yet, so after a restart `resume` starts
        the first ones again in the same order. A held job (NEEDS_ADMIN) does not take a slot. Idempotent: it
        is called after every intake, every job's end, /cancel and at start-up. Waiting pictures start even
        while the bot is paused (/pause stops new pictures only: these were taken in already)."""
        if self._stopping:  # the next start's `resume` goes on with the line
            return
        active = [
            job
            for job in self.ledger.user_jobs(user, limit=1000)
            if not job.state.is_terminal() and job.state is not JobState.NEEDS_ADMIN
        ]
        waiting = sorted(
            (job for job in active if job.state is JobState.RECEIVED and not self._running(job.id)),
            key=lambda job: (job.created_at, job.user_message_id or 0, job.id),
        )
        free = self.settings.max_jobs_in_flight - (len(active) - len(waiting))
        for job in waiting[: max(free, 0)]:
            was_waiting = self._positions.pop(job.id, None) is not None
            log.info("event=job_started job=%s user=%s from_queue=%s", job.id, user, was_waiting)
            self._show(job)
            self.drive(job.id)
        for position, job in enumerate(waiting[max(free, 0) :], start=1):
            if self._positions.get(job.id) != position:
                self._positions[job.id] = position
                log.info("event=job_queued job=%s user=%s position=%d", job.id, user, position)
                self._show(job)

    def queue_position(self, job_id: str) -> int | None:
        """The place in line (1 = next to start) of a waiting picture; None when it is not waiting."""
        return self._positions.get(job_id)

    def _running(self, job_id: str) -> bool:
        task = self._tasks.get(job_id)
        return task is not None and not task.done()

    async def _advance_after(self, job_id: str) -> None:
        """After a job's driver ended: start its user's next waiting pictures (a busy database is waited for)."""
        try:
            job = await self.when_free(self.ledger.get_job, job_id)
            if job is not None:
                await self.when_free(self.advance, job.user_id)
        except LedgerBusy:  # still busy: the pictures wait for the next job's end or the next start
            log.warning("event=queue_advance_failed job=%s until=next_event", job_id)

    # ------------------------------------------------------------------------------------ intake

    def refusal_before_download(self, user: int, *, price: int | None = None) -> str | None:
        """A reason to refuse a new picture before anything is downloaded (pause, limits, credit).

        Beyond `max_jobs_in_flight` pictures in progress, up to `max_queued_per_user` more wait in line
        (reserved at intake like the others); the next one is refused."""
        s = self.settings
        if self.paused:
            return texts.PAUSED
        now_ms = int(self.clock() * 1000)
        in_flight = self.ledger.jobs_in_flight(user)
        if in_flight >= s.max_jobs_in_flight + s.max_queued_per_user:
            if s.max_queued_per_user == 0:
                return texts.LIMIT_IN_FLIGHT.format(n=in_flight)
            return texts.LIMIT_QUEUE.format(
                running=min(in_flight, s.max_jobs_in_flight),
                waiting=max(in_flight - s.max_jobs_in_flight, 0),
                cap=s.max_queued_per_user,
            )
        last_hour = self.ledger.jobs_since(user, now_ms - 3_600_000)
        if last_hour >= s.max_jobs_per_hour:
            return texts.LIMIT_HOURLY.format(n=last_hour)
        day_start_ms = now_ms - now_ms % 86_400_000
        price = s.max_price_nrlc if price is None else price  # an album's is higher (bot.albums)
        if self.ledger.spent_since(user, day_start_ms) + price > s.max_daily_spend_nrlc:
            return texts.LIMIT_DAILY.format(limit=texts.rlc(s.max_daily_spend_nrlc))
        available = self.ledger.balance(user).available
        if available < price:
            return texts.NO_CREDIT.format(available=texts.rlc(available), price=texts.rlc(price))
        return None

    async def start_job(
        self, *, user: int, chat: int, message_id: int, status_message_id: int, source: tuple[str, str]
    ) -> bool:
        """Download and check the input, then create the job and its reservation in one transaction.

        Returns True once the message is answered for good (the job exists, or the user can read why
        not); False when a refusal could not reach Telegram, so the update must be handled again later."""
        job_id = job_id_of(chat, message_id)
        if job_id in self._intakes or await self.when_free(self.ledger.get_job, job_id) is not None:
            return True  # a replayed update: the job exists already (or is being taken in)
        self._intakes.add(job_id)
        log.info("event=intake job=%s user=%s source=%s", job_id, user, source[0])
        try:
            return await self._take_in(
                job_id, user=user, chat=chat, message_id=message_id, status_message_id=status_message_id, source=source
            )
        finally:
            self._intakes.discard(job_id)

    async def when_free(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`call(*args, **kwargs)` on the books, tried again with pauses while the database is busy, for at
        most `intake_busy_limit_s` (then LedgerBusy: the caller leaves the update for the next start)."""
        return await when_free(functools.partial(call, *args, **kwargs), limit_s=self.intake_busy_limit_s)

    def is_known(self, chat: int, message_id: int) -> bool:
        """True when this message already started a job (or is being taken in): a replay does nothing."""
        job_id = job_id_of(chat, message_id)
        return job_id in self._intakes or self.ledger.get_job(job_id) is not None

    async def _take_in(
        self, job_id: str, *, user: int, chat: int, message_id: int, status_message_id: int, source: tuple[str, str]
    ) -> bool:
        try:
            async with self.downloads.slot(user):
                data = await self._download(source)
            image = await check_image_async(data, self.settings)
        except InputRejected as exc:
            log.info("event=input_rejected job=%s reason=%r", job_id, str(exc)[:200])
            return await self._refuse(job_id, chat, status_message_id, texts.REJECTED.format(reason=str(exc)))
        except TelegramError as exc:
            log.info("event=download_failed job=%s error=%r", job_id, str(exc)[:200])
            return await self._refuse(
                job_id, chat, status_message_id, texts.REJECTED.format(reason=texts.DOWNLOAD_FAILED)
            )
        refusal = self.refusal_before_download(user)
        if refusal:  # the limits are checked again: several pictures may have been sent at once
            log.info("event=intake_over_limit job=%s user=%s", job_id, user)
            return await self._refuse(job_id, chat, status_message_id, refusal)
        path = self.uploads_dir / f"{job_id}.{'png' if image.format == 'PNG' else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.data)
        try:
            job = await self.when_free(
                self.ledger.create_job,
                job_id,
                user,
                chat,
                self.settings.max_price_nrlc,
                user_message_id=message_id,
                status_message_id=status_message_id,
                input_ref=str(path),
                options={"args": self.settings.worker_args},
            )
        except InsufficientFunds:
            path.unlink(missing_ok=True)
            available = self.ledger.balance(user).available
            log.info("event=intake_no_credit job=%s user=%s available=%d", job_id, user, available)
            return await self._refuse(
                job_id,
                chat,
                status_message_id,
                texts.NO_CREDIT.format(available=texts.rlc(available), price=texts.rlc(self.settings.max_price_nrlc)),
            )
        log.info(
            "event=job_created job=%s user=%s reserved=%d source_format=%s size=%dx%d bytes=%d",
            job.id,
            user,
            self.settings.max_price_nrlc,
            image.source_format,
            image.width,
            image.height,
            len(image.data),
        )
        self.crash_point("after_reserve")
        await self.when_free(self.advance, user)  # started now, or told its place in line
        return True

    async def _refuse(self, job_id: str, chat: int, status_message_id: int, text: str) -> bool:
        """Turn the message's "got it" into why nothing was charged, and wait until Telegram has it."""
        told = await self.board.show_now(chat, status_message_id, text)
        log.info("event=intake_refused job=%s told=%s", job_id, told)
        return told

    async def _download(self, source: tuple[str, str]) -> bytes:
        kind, ref = source
        if kind == "url":
            return await fetch_image(ref, self.settings)
        tg_file = await self.bot.get_file(ref)
        if tg_file.file_size and tg_file.file_size > self.settings.max_image_bytes:
            raise InputRejected(
                f"That file is too large (the limit is {self.settings.max_image_bytes // (1024 * 1024)} MB)."
            )
        buffer = io.BytesIO()
        await tg_file.download_to_memory(buffer)
        return buffer.getvalue()

    # ------------------------------------------------------------------------------------ albums

    async def start_album(
        self,
        job_id: str,
        *,
        user: int,
        chat: int,
        message_ids: list[int],
        status_message_id: int,
        sources: list[tuple[str, str]],
    ) -> bool:
        """An album's photos (2-10, in message order; see bot.albums) become ONE job: each is downloaded and
        checked (a refused one is left out and the user reads why), then the job is created and the album's
        price (`Settings.album_price_nrlc` of the photos kept) reserved in one transaction. One photo kept: an
        ordinary job (one photo's price) under the album's id; none: refused, nothing charged.

        The job's options name the album: `album.messages` (every message of the album, so that a replayed
        one is known), `album.inputs` (the kept files in album order, under the job's upload folder
        `input_ref`) and `album.photo_fee`. Returns like `start_job`."""
        if job_id in self._intakes or await self.when_free(self.ledger.get_job, job_id) is not None:
            return True
        self._intakes.add(job_id)
        try:
            return await self._take_in_album(job_id, user, chat, message_ids, status_message_id, sources)
        finally:
            self._intakes.discard(job_id)

    async def _take_in_album(
        self,
        job_id: str,
        user: int,
        chat: int,
        message_ids: list[int],
        status_message_id: int,
        sources: list[tuple[str, str]],
    ) -> bool:
        log.info("event=album_intake job=%s user=%s photos=%d", job_id, user, len(sources))
        folder = self.uploads_dir / job_id
        shutil.rmtree(folder, ignore_errors=True)  # an intake cut short by a crash starts anew
        folder.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        left_out: list[str] = []
        for index, source in enumerate(sources, start=1):
            try:
                async with self.downloads.slot(user):
                    data = await self._download(source)
                image = await check_image_async(data, self.settings)
            except InputRejected as exc:
                left_out.append(texts.ALBUM_PHOTO_REJECTED.format(index=index, reason=html.escape(str(exc))))
                continue
            except TelegramError as exc:
                log.info("event=download_failed job=%s photo=%d error=%r", job_id, index, str(exc)[:200])
                left_out.append(texts.ALBUM_PHOTO_REJECTED.format(index=index, reason=texts.DOWNLOAD_FAILED))
                continue
            name = f"{index}.{'png' if image.format == 'PNG' else 'jpg'}"
            (folder / name).write_bytes(image.data)
            kept.append(name)
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)
            return await self._refuse(job_id, chat, status_message_id, texts.REJECTED.format(reason=" ".join(left_out)))
        s = self.settings
        options: dict[str, Any] = {"args": s.worker_args}
        if len(kept) == 1:  # one photo left: an ordinary job
            price, input_ref = s.max_price_nrlc, str(folder / kept[0])
        else:
            price, input_ref = s.album_price_nrlc(len(kept)), str(folder)
            options["album"] = {"messages": message_ids, "inputs": kept, "photo_fee": s.album_photo_fee_nrlc}
        refusal = self.refusal_before_download(user, price=price)
        if refusal:
            shutil.rmtree(folder, ignore_errors=True)
            return await self._refuse(job_id, chat, status_message_id, refusal)
        try:
            job = await self.when_free(
                self.ledger.create_job,
                job_id,
                user,
                chat,
                price,
                user_message_id=message_ids[0],
                status_message_id=status_message_id,
                input_ref=input_ref,
                options=options,
            )
        except InsufficientFunds:
            shutil.rmtree(folder, ignore_errors=True)
            available = self.ledger.balance(user).available
            return await self._refuse(
                job_id,
                chat,
                status_message_id,
                texts.NO_CREDIT.format(available=texts.rlc(available), price=texts.rlc(price)),
            )
        log.info("event=job_created job=%s user=%s reserved=%d photos=%d", job.id, user, price, len(kept))
        if left_out:
            await self._send_text(chat, "\n".join(left_out))
        self.crash_point("after_reserve")
        await self.when_free(self.advance, user)
        return True

    async def _publish_album(self, job: Job, ttl: float) -> list[str]:
        """Publish every photo of an album job, in album order; returns their URLs. TEE mode: each encrypted
        with the job's one input key (the worker decrypts every input with secret 1), the key pushed once."""
        folder = Path(_needs(job.input_ref, "input folder", job))
        names = job.options["album"]["inputs"]
        key = self.chain.input_key(job.id) if self.chain.tee else None
        urls = []
        for index, name in enumerate(names, start=1):
            data = (folder / name).read_bytes()
            part = f"{job.id}-p{index}"
            if key is None:
                urls.append(self.inputs.publish(part, data, ttl, user_id=job.user_id, name=f"input{Path(name).suffix}"))
                continue
            from iexec.tee import encrypt_dataset

            blob = encrypt_dataset(data, key)
            upload = self.settings.resolved_ipfs_upload
            if upload:
                urls.append(await upload_to_ipfs(upload, blob, self.chain.network.ipfs_gateway))
            else:
                urls.append(
                    self.inputs.publish(
                        part, blob, ttl, user_id=job.user_id, name="input.bin", content_type="application/octet-stream"
                    )
                )
        if key is not None:
            if self.ledger.record_event("input_secret", job.id, {"name": secret_name(job.id)}):
                self.crash_point("before_secret")
                await self.chain.push_input_secret(job.id, key)
            elif not await self.chain.input_secret_pushed(job.id):
                await self.chain.push_input_secret(job.id, key)
            self.crash_point("after_secret")
        log.info("event=album_published job=%s photos=%d tee=%s", job.id, len(urls), key is not None)
        return urls

    def _revoke_album(self, job: Job) -> None:
        album = job.options.get("album")
        for index in range(1, len(album["inputs"]) + 1 if album else 1):
            self.inputs.revoke(f"{job.id}-p{index}")

    def album_share(self, job: Job) -> int:
        """What a failed picture of an album job gets back (nRLC): its per-photo fee plus an equal share,
        rounded down, of the task price and the bot's fee."""
        album = job.options["album"]
        count = len(album["inputs"])
        return int(album["photo_fee"]) + (_task_price(job) + self.settings.fee_nrlc) // count

    async def _take_album_result(self, job: Job, manifest: Path) -> None:
        """Check an album result and charge the job: the task, the fee and every photo's fee; failed pictures
        are paid back their share when the result is delivered (`_deliver_album`)."""
        album = job.options["album"]
        try:
            result = read_album(manifest, len(album["inputs"]))
            if not result.delivered:
                raise ValueError("no picture of the album was segmented")
            for picture in result.delivered:
                assert picture.image is not None
                await check_image_async(picture.image.read_bytes(), RESULT_LIMITS)
        except (ValueError, InputRejected) as exc:
            await self.refund(job, Refund(RefundReason.BAD_RESULT, str(exc), operator_pays=True))
            return
        self.crash_point("after_download")
        price = _task_price(job)
        fee = self.settings.fee_nrlc + len(album["inputs"]) * int(album["photo_fee"])
        self.ledger.complete_job(job.id, f"{job.id}:post", price, fee=fee, result_ref=str(manifest))
        log.info(
            "event=settled job=%s charged=%d photos=%d failed=%d",
            job.id,
            price + fee,
            len(result.pictures),
            len(result.failed),
        )
        self.crash_point("after_settle")
        self._revoke_album(job)

    async def _deliver_album(self, job: Job) -> None:
        """Pay back each failed picture its share (idempotent), then send the delivered ones as one album
        (`sendMediaGroup`, in order, the summary caption on the first) and record DELIVERED."""
        album = job.options["album"]
        try:
            result: AlbumResult = read_album(Path(_needs(job.result_ref, "result", job)), len(album["inputs"]))
        except ValueError as exc:
            raise NeedsAdmin(f"the album result cannot be read any more ({exc}); the job was charged") from None
        share = self.album_share(job)
        for picture in result.failed:
            self.ledger.refund_part(job.id, picture.index, share, reason=picture.error or "failed")
            log.info("event=picture_refunded job=%s picture=%d amount=%d", job.id, picture.index, share)
        caption = texts.album_caption(
            [(p.index, [str(d.get("class_name", "?")) for d in p.detections]) for p in result.delivered],
            [(p.index, p.error, share) for p in result.failed],
            total=len(result.pictures),
            random_weights=result.random_weights,
            task=_task_price(job),
            fee=self.settings.fee_nrlc,
            per_photo=int(album["photo_fee"]),
        )
        markup = _detections_button(job)

        async def send(chat: int, reply: bool) -> str:
            note = await self._send_album(job, chat, result, caption, reply=reply)
            await self.bot.send_message(  # an album message cannot carry a button: it comes right after it
                chat_id=chat,
                text=texts.ALBUM_DETECTIONS,
                reply_markup=markup,
                reply_to_message_id=job.user_message_id if reply else None,
                allow_sending_without_reply=True,
            )
            self.board.touch(chat)
            return note

        await self._deliver(job, send, pictures=len(result.delivered))

    async def _deliver(self, job: Job, send: Callable[[int, bool], Awaitable[str]], **extra: int) -> None:
        """Send a completed job's result with `send(chat, reply)` (at least once), then record DELIVERED.

        `send` returns a note for the books ("" when it went as planned). A group that became a supergroup
        takes the result at its new id (not as a reply: the old message ids are gone there); a user who
        blocked the bot is noted (the work was paid for, the reply is impossible); a chat that moved twice
        holds the job for an admin. `extra`: more key=value pairs for the `delivered` log line."""
        note = ""
        try:
            try:
                note = await send(job.chat_id, True)
            except ChatMigrated as exc:  # a group became a supergroup: its new id takes the reply
                log.info("event=chat_migrated job=%s chat=%s new_chat=%s", job.id, job.chat_id, exc.new_chat_id)
                note = await send(exc.new_chat_id, False)
        except Forbidden:
            log.info("event=user_blocked_bot job=%s", job.id)  # paid for the work done, reply impossible
            note = "not sent: the user blocked the bot"
        except ChatMigrated as exc:
            raise NeedsAdmin(
                f"the result could not be sent: the chat moved twice ({exc}); the job was charged"
            ) from None
        self.crash_point("after_reply")
        self.ledger.transition(
            job.id, JobState.COMPLETED, JobState.DELIVERED, **({"error": note[:500]} if note else {})
        )
        took = self.clock() - job.created_at / 1000
        self._show(self.ledger.get_job(job.id), elapsed=texts.elapsed(took))
        log.info("event=delivered job=%s seconds=%.1f%s", job.id, took, "".join(f" {k}={v}" for k, v in extra.items()))

    async def _send_album(self, job: Job, chat: int, result: AlbumResult, caption: str, *, reply: bool = True) -> str:
        """The delivered pictures as one album message (sendMediaGroup) when there are 2 or more and each fits a
        photo; else, or when Telegram refuses the album, one by one (`_send_result`: photo, file or text)."""
        from PIL import Image
        from telegram import InputMediaPhoto

        pictures = [(p.index, _needs(p.image, "picture", job).read_bytes()) for p in result.delivered]

        def fits(data: bytes) -> bool:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
            return len(data) <= PHOTO_MAX_BYTES and width + height <= PHOTO_MAX_SIDES

        refusal = ""
        if len(pictures) >= 2 and all(fits(data) for _, data in pictures):
            media = [
                InputMediaPhoto(data, caption=caption if i == 0 else None, filename=f"result-{index}.png")
                for i, (index, data) in enumerate(pictures)
            ]
            try:
                await self.bot.send_media_group(
                    chat_id=chat,
                    media=media,
                    reply_to_message_id=job.user_message_id if reply else None,
                    allow_sending_without_reply=True,
                )
                self.board.touch(chat)
                return ""
            except BadRequest as exc:
                log.warning("event=result_refused job=%s form=album error=%r", job.id, str(exc)[:200])
                refusal = f"album refused: {exc}"
        notes = [refusal] if refusal else []
        for i, (index, data) in enumerate(pictures):
            note = await self._send_result(
                job, chat, data, f"result-{index}.png", caption if i == 0 else f"{index}.", None, reply=reply
            )
            if note:
                notes.append(f"picture {index}: {note}")
        return "; ".join(notes)

    # ------------------------------------------------------------------------------------ driving

    async def _drive(self, job_id: str) -> None:
        failures = 0
        unchanged: collections.deque[float] = collections.deque(maxlen=SPIN_LIMIT)
        last: tuple[Any, ...] | None = None
        while True:
            try:
                job = self.ledger.get_job(job_id)
            except LedgerBusy as exc:
                failures += 1
                delay = self.retry.wait_s(failures)
                log.warning("event=step_retry job=%s state=? error=%r delay=%s", job_id, str(exc)[:300], delay)
                await asyncio.sleep(delay)
                continue
            if job is None or job.state.is_terminal() or job.state is JobState.NEEDS_ADMIN:
                return
            await self._slow_down_if_spinning(job, last, unchanged)
            last = (job.state, job.updated_at)
            step = self._steps[job.state]
            hold: str | None = None
            try:
                await step(job)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (NeedsAdmin, ChainDisagrees) as exc:
                hold = str(exc)
            except PERMANENT_TELEGRAM as exc:
                # Telegram refused the request itself: the same request would be refused again.
                hold = f"Telegram refused a request: {exc}"[:500]
            except (TimeoutError, IExecError, OSError, TelegramError, LedgerBusy) as exc:
                # The chain, the market, a gateway or Telegram is unreachable: wait and try the same step
                # again; nothing was lost because every step starts from what the books say.
                failures += 1
                delay = self.retry.wait_s(failures)
                log.warning(
                    "event=step_retry job=%s state=%s error=%r delay=%s", job_id, job.state.value, str(exc)[:300], delay
                )
                await asyncio.sleep(delay)
            except Exception as exc:  # an unexpected bug must not lose the job
                log.exception("event=step_crashed job=%s state=%s", job_id, job.state.value)
                failures += 1
                if failures >= STEP_ATTEMPTS:
                    hold = f"unexpected error: {exc!r}"[:500]
                else:
                    await asyncio.sleep(self.retry.wait_s(failures))
            if hold is not None:
                try:
                    await self._hold(job, hold)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - holding must not end the driver
                    # The next pass reaches the same decision again (or finds the job held already).
                    log.warning("event=hold_retry job=%s error=%r", job_id, str(exc)[:300])
                    await asyncio.sleep(self.retry.wait_s(failures + 1))

    async def _slow_down_if_spinning(
        self, job: Job, last: tuple[Any, ...] | None, unchanged: collections.deque[float]
    ) -> None:
        """Sleep when the steps keep returning at once without changing the job (a missing wait)."""
        if (job.state, job.updated_at) != last:
            unchanged.clear()
            return
        now = time.monotonic()
        unchanged.append(now)
        if len(unchanged) == unchanged.maxlen and now - unchanged[0] < SPIN_WINDOW_S:
            log.warning(
                "event=step_spinning job=%s state=%s returns=%d within_s=%.3f pause_s=%s",
                job.id,
                job.state.value,
                len(unchanged),
                now - unchanged[0],
                SPIN_PAUSE_S,
            )
            unchanged.clear()
            await asyncio.sleep(SPIN_PAUSE_S)

    async def _step_received(self, job: Job) -> None:
        """Publish the input and sign the job's one request order."""
        ttl = self.settings.match_timeout_s + 10 * CATEGORY_REF_S.get(self.settings.category, 36000) + 600
        url: str | list[str]
        if job.options.get("album"):  # every photo, in album order (iexec_input_files)
            url = await self._publish_album(job, ttl)
        else:
            input_path = Path(_needs(job.input_ref, "input file", job))
            data = input_path.read_bytes()
            if self.chain.tee:
                url = await self._publish_encrypted(job, data, ttl)
            else:
                url = self.inputs.publish(job.id, data, ttl, user_id=job.user_id, name="input" + input_path.suffix)
        order = await self.chain.sign_request_order(job.id, url, job.options.get("args", self.settings.worker_args))
        self.ledger.transition(
            job.id,
            JobState.RECEIVED,
            JobState.ORDER_SIGNED,
            request_order=order.to_market_json(),
            order_hash="0x" + order.hash(await self.chain.domain()).hex(),
        )
        self.crash_point("after_sign")
        self._show(self.ledger.get_job(job.id))

    async def _publish_encrypted(self, job: Job, data: bytes, ttl: float) -> str:
        """TEE mode: publish the photo encrypted with the job's input key and give the key to the SMS; returns
        the URL for the order. Each part can run again after a crash: the key is derived (the same), the
        upload is content-addressed or replaces the job's earlier file, and the secret push is recorded
        before it happens and checked first when it was (an "already exists" answer is success)."""
        from iexec.tee import encrypt_dataset

        key = self.chain.input_key(job.id)
        blob = encrypt_dataset(data, key)
        upload = self.settings.resolved_ipfs_upload
        if upload:
            url = await upload_to_ipfs(upload, blob, self.chain.network.ipfs_gateway)
            log.info("event=input_uploaded job=%s bytes=%d where=ipfs", job.id, len(blob))
        else:
            url = self.inputs.publish(
                job.id, blob, ttl, user_id=job.user_id, name="input.bin", content_type="application/octet-stream"
            )
        name = secret_name(job.id)
        if self.ledger.record_event("input_secret", job.id, {"name": name}):
            self.crash_point("before_secret")
            await self.chain.push_input_secret(job.id, key)
        elif not await self.chain.input_secret_pushed(job.id):
            await self.chain.push_input_secret(job.id, key)
        self.crash_point("after_secret")
        return url

    async def _step_order_signed(self, job: Job) -> None:
        """Wait for offers within the maximum prices, then move to MATCHING (or refund after the timeout)."""
        try:
            await self.chain.ensure_stake(self.settings.max_price_nrlc - self.settings.fee_nrlc)
            await self.chain.best_offer(self.chain.request_order_from_json(job.request_order).tag)
        except NoOffer as exc:
            if self.clock() - job.created_at / 1000 > self.settings.match_timeout_s:
                reason = RefundReason.NO_STAKE if exc.no_stake else RefundReason.NO_OFFER
                if exc.no_stake:
                    await self.notify_admins(f"⚠️ Hub stake too low to match job {job.id}: {html.escape(str(exc))}")
                await self.refund(job, Refund(reason))
                return
            await asyncio.sleep(self.settings.poll_interval_s)
            return
        self.ledger.transition(job.id, JobState.ORDER_SIGNED, JobState.MATCHING)
        self._show(self.ledger.get_job(job.id))

    async def _step_matching(self, job: Job) -> None:
        """Find out whether the order was matched (after a crash too); match it if not."""
        request = self.chain.request_order_from_json(job.request_order)
        deal_id = await self.chain.deal_of(request)
        if deal_id is None and await self.chain.settle_pending_match(job.id):
            deal_id = await self.chain.deal_of(request)
        if deal_id is None:
            try:
                offer = await self.chain.best_offer(request.tag)
                await self.chain.ensure_stake(offer.total_price)
                self.crash_point("before_match")
                deal_id = await self.chain.match(offer, request, job.id, crash_hook=self.crash_point)
            except OfferTaken as exc:
                # The next offer on the next pass (the request order is the same), after a pause: the
                # market may still list the taken order for a moment.
                log.info("event=offer_taken job=%s error=%r", job.id, str(exc)[:200])
                await asyncio.sleep(self.settings.poll_interval_s)
                return
            except NoOffer as exc:
                if self.clock() - job.created_at / 1000 > self.settings.match_timeout_s:
                    await self.refund(job, Refund(RefundReason.NO_STAKE if exc.no_stake else RefundReason.NO_OFFER))
                    return
                await asyncio.sleep(self.settings.poll_interval_s)
                return
        deal = await self.chain.known_deal(deal_id)  # read again a few times while the chain says unknown
        if int(deal.requester, 16) == 0:
            raise NeedsAdmin(
                f"the chain does not know deal {deal_id} of job {job.id} although its request "
                "order is consumed: was the chain reset?"
            )
        if deal.requester.lower() != self.chain.address.lower():
            raise NeedsAdmin(f"deal {deal_id} of job {job.id} is not ours")
        self.ledger.transition(
            job.id,
            JobState.MATCHING,
            JobState.MATCHED,
            deal_id=deal_id,
            task_id=self.chain.task_id(deal_id),
            app_price=deal.app_price,
            workerpool_price=deal.workerpool_price,
        )
        log.info(
            "event=matched job=%s deal=%s app_price=%d pool_price=%d",
            job.id,
            deal_id,
            deal.app_price,
            deal.workerpool_price,
        )
        self.crash_point("after_deal")
        self._show(self.ledger.get_job(job.id))
        await self._check_funds()

    async def _step_matched(self, job: Job) -> None:
        await self._follow_task(job)

    async def _step_running(self, job: Job) -> None:
        await self._follow_task(job)

    async def _follow_task(self, job: Job) -> None:
        """One wait on the watcher; act on what it says (start, result, claim, deadline)."""
        deal_id, task_id = _needs(job.deal_id, "deal", job), _needs(job.task_id, "task", job)
        known = TaskKind.INITIALIZED if job.state is JobState.RUNNING else TaskKind.WAITING
        timeout = 30.0
        if job.state is JobState.MATCHED:  # wake up in time to tell the user their task has not started
            waited = self.clock() - job.state_times.get("MATCHED", job.updated_at) / 1000
            if waited < self.settings.start_warning_s:
                timeout = min(timeout, max(0.5, self.settings.start_warning_s - waited))
        event: TaskEvent = await self.chain.wait_task(deal_id, task_id, known=known, timeout=timeout)
        if event.kind == TaskKind.INITIALIZED and job.state is JobState.MATCHED:
            self.ledger.transition(job.id, JobState.MATCHED, JobState.RUNNING)
            self._show(self.ledger.get_job(job.id))
        elif event.kind == TaskKind.FINALIZED:
            if job.state is JobState.MATCHED:
                self.ledger.transition(job.id, JobState.MATCHED, JobState.RUNNING)
            await self._take_result(self._reload(job.id), event.results)
            self.chain.unfollow(task_id)
        elif event.kind == TaskKind.CLAIMED:
            self.chain.unfollow(task_id)
            await self.refund(job, Refund(RefundReason.EXPIRED))
        elif event.kind == TaskKind.DEADLINE:
            await self.chain.claim(deal_id, task_id, initialized=event.initialized)
            self.crash_point("after_claim")
            self.chain.unfollow(task_id)
            await self.refund(job, Refund(RefundReason.EXPIRED))
        elif event.kind == TaskKind.WAITING and job.state is JobState.MATCHED:
            await self._warn_not_started(job, event)
            self._show(job)  # the elapsed time moves on
        elif event.kind == TaskKind.WAITING:
            # The books saw the task start; the chain says it never did. Read it again a moment later (a
            # node behind the chain answers stale reads); if it still says so, waiting changes nothing.
            await asyncio.sleep(self.settings.poll_interval_s)
            if (await self.chain.reread_task(deal_id, task_id)).kind != TaskKind.WAITING:
                return
            raise NeedsAdmin(
                f"the chain says task {job.task_id} of job {job.id} is not started although the "
                "books saw it start: was the chain reset?"
            )
        elif event.kind == known:
            self._show(job)
        else:  # a kind this code does not know: never call wait_task again at once
            raise NeedsAdmin(
                f"the chain reports task {job.task_id} as {event.kind.value!r} while the job is {job.state.value}"
            )

    async def _warn_not_started(self, job: Job, event: TaskEvent) -> None:
        waited = self.clock() - job.state_times.get("MATCHED", job.updated_at) / 1000
        if waited < self.settings.start_warning_s or self.ledger.seen_event("start_warning", job.id):
            return
        self.ledger.record_event("start_warning", job.id)
        deadline = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event.final_deadline or 0))
        await self._send_text(job.chat_id, texts.NOT_STARTED.format(waited=texts.elapsed(waited), deadline=deadline))

    async def _take_result(self, job: Job, results: bytes) -> None:
        """Download and check the result; settle on success, refund on an error archive."""
        dest = self.results_dir / job.id
        # A crash after an earlier download left this folder filled: start it anew (the result is
        # content-addressed, so downloading it again gives the same files).
        shutil.rmtree(dest, ignore_errors=True)
        try:
            result = await self.chain.fetch_result(results, dest)
        except (DecryptionError, TeeError) as exc:
            # An encrypted result our key does not open (or one we have no key for) stays so: refunded, the
            # operator pays the task, never tried again.
            log.warning("event=result_undecryptable job=%s error=%r", job.id, str(exc)[:200])
            await self.refund(
                job, Refund(RefundReason.BAD_RESULT, "it could not be decrypted with the bot's key", operator_pays=True)
            )
            return
        except (ResultLocationError, UnsafeArchive) as exc:
            await self.refund(job, Refund(RefundReason.BAD_RESULT, str(exc), operator_pays=True))
            return
        except ResultDownloadError:
            # A gateway that lost the result may get it back; give it a while, then refund.
            attempts = job.attempts + 1
            self.ledger.update_job(job.id, attempts=attempts)
            if attempts >= self.result_attempts:
                await self.refund(
                    job, Refund(RefundReason.BAD_RESULT, "the result could not be downloaded", operator_pays=True)
                )
                return
            raise
        if not result.ok:
            await self.refund(job, Refund(RefundReason.APP_ERROR, result.error_message or "", operator_pays=True))
            return
        if bool(job.options.get("album")) != is_album(result.deterministic_output):
            await self.refund(
                job, Refund(RefundReason.BAD_RESULT, "the result's layout does not match the task", operator_pays=True)
            )
            return
        if is_album(result.deterministic_output):
            assert result.deterministic_output is not None
            await self._take_album_result(job, result.deterministic_output)
            return
        try:
            await check_image_async(result_image(result.deterministic_output).read_bytes(), RESULT_LIMITS)
        except InputRejected as exc:
            await self.refund(job, Refund(RefundReason.BAD_RESULT, str(exc), operator_pays=True))
            return
        self.crash_point("after_download")
        price = _task_price(job)
        self.ledger.complete_job(
            job.id,
            f"{job.id}:post",
            price,
            fee=self.settings.fee_nrlc,
            result_ref=str(result_image(result.deterministic_output)),
        )
        log.info("event=settled job=%s charged=%d", job.id, price + self.settings.fee_nrlc)
        self.crash_point("after_settle")
        # The job's encrypted photo stops being served by our input server (one uploaded to IPFS stays there,
        # encrypted: content cannot be taken back). Its key is NOT overwritten in the SMS: requester secrets
        # are write-once (the SMS serves no update for them, the SDK has no call for it), so it stays there,
        # handed only to attested enclaves running tasks whose deal names it, i.e. deals of our wallet.
        self.inputs.revoke(job.id)

    async def _step_completed(self, job: Job) -> None:
        """Send the result (at least once), then record it."""
        if job.options.get("album"):
            await self._deliver_album(job)
            return
        path = Path(_needs(job.result_ref, "result", job))
        detections = read_detections(path.parent)
        caption = texts.result_caption(
            (d.get("class_name", "?") for d in detections),
            random_weights=made_with_random_weights(path.parent),
            task=_task_price(job),
            fee=self.settings.fee_nrlc,
        )
        markup = _detections_button(job)
        data = path.read_bytes()

        async def send(chat: int, reply: bool) -> str:
            return await self._send_result(job, chat, data, path.name, caption, markup, reply=reply)

        await self._deliver(job, send)

    async def _send_result(
        self, job: Job, chat: int, data: bytes, name: str, caption: str, markup: Any, *, reply: bool = True
    ) -> str:
        """Send the result as a photo, else as a file, else the caption as a text saying the picture could
        not be sent; returns a note for the books ("" when it went as planned).

        Telegram is the judge of what it takes (it refuses e.g. photos over 20:1 with
        PHOTO_INVALID_DIMENSIONS): a refusal (`BadRequest`) moves on to the next form at once, never
        retried. Raises NeedsAdmin when even the text is refused (the job was charged); Forbidden and
        ChatMigrated propagate; other errors (network, flood) propagate to be retried by `_drive`."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        forms = [
            form
            for form, fits in (
                ("photo", len(data) <= PHOTO_MAX_BYTES and width + height <= PHOTO_MAX_SIDES),
                ("document", len(data) <= DOCUMENT_MAX_BYTES),
            )
            if fits
        ]
        kwargs = dict(
            chat_id=chat,
            caption=caption,
            reply_to_message_id=job.user_message_id if reply else None,
            reply_markup=markup,
            allow_sending_without_reply=True,
        )
        refusals: list[str] = []
        for form in forms:
            try:
                if form == "photo":
                    await self.bot.send_photo(photo=data, **kwargs)
                else:
                    await self.bot.send_document(document=data, filename=name, **kwargs)
                self.board.touch(chat)
                return "; ".join(refusals)
            except BadRequest as exc:
                log.warning("event=result_refused job=%s form=%s error=%r", job.id, form, str(exc)[:200])
                refusals.append(f"{form} refused: {exc}")
        why = refusals[-1].partition(": ")[2][:120] if refusals else "it is too large to send"
        text = f"{caption}\n\n{texts.PICTURE_NOT_SENT.format(why=why, short=job.id[-8:])}"
        try:
            await self.bot.send_message(
                chat_id=chat,
                text=text,
                reply_markup=markup,
                reply_to_message_id=kwargs["reply_to_message_id"],
                allow_sending_without_reply=True,
            )
        except BadRequest as exc:
            log.warning("event=result_refused job=%s form=text error=%r", job.id, str(exc)[:200])
            refusals.append(f"text refused: {exc}")
            raise NeedsAdmin(
                "Telegram refused the result (" + "; ".join(refusals) + "); the job was "
                "charged: send it by other means or refund it"
            ) from None
        self.board.touch(chat)
        log.warning("event=result_sent_as_text job=%s refusals=%r", job.id, "; ".join(refusals)[:300])
        return "picture not sent, caption sent as text: " + "; ".join(refusals)

    # ------------------------------------------------------------------------------------ endings

    async def refund(self, job: Job, why: Refund) -> None:
        """Give the money back and mark the job REFUNDED in one transaction, then tell the user."""
        if why.operator_pays and job.app_price is not None and job.workerpool_price is not None:
            # The task was paid on chain: book that spending and pay the user back from the operator's
            # refund expense, in the same transaction as REFUNDED.
            self.ledger.refund_paid_job(
                job.id, f"{job.id}:post", f"{job.id}:refund", job.app_price + job.workerpool_price, error=why.error
            )
        else:
            self.ledger.refund_job(job.id, f"{job.id}:refund", error=why.error)
        self.inputs.revoke(job.id)  # see _take_result: what becomes of a TEE job's key and encrypted input
        if job.options.get("album"):
            self._revoke_album(job)
        log.info("event=refunded job=%s reason=%s operator_pays=%s", job.id, why.reason, why.operator_pays)
        self.crash_point("before_tell")
        refunded = self.ledger.get_job(job.id)
        self._show(refunded, reason=why.text())
        self.endings.tell_soon(refunded)
        if self._positions.pop(job.id, None) is not None or not self._running(job.id):
            await self.when_free(self.advance, job.user_id)  # a waiting picture refunded by an admin

    async def _hold(self, job: Job, why: str) -> None:
        self.ledger.transition(job.id, job.state, JobState.NEEDS_ADMIN, error=why[:500])
        log.error("event=needs_admin job=%s why=%r", job.id, why)
        self.crash_point("before_tell")
        held = self._reload(job.id)
        self._show(held)
        self.endings.tell_soon(held)
        await self._announce_hold(held, why)

    async def _announce_hold(self, job: Job, why: str) -> None:
        """Tell the admins a job is held, then record it ("admin_told"): a kill before the record announces
        it again at the next start (`resume`)."""
        text = f"⚠️ Job <code>{job.id}</code> needs an admin: {html.escape(why)}\n/job {job.id}"
        if await self.notify_admins(text):
            await when_free(self.ledger.record_event, "admin_told", self.endings.told_key(job))
            log.info("event=admin_told job=%s", job.id)

    async def notify_admins(self, text: str) -> bool:
        """Send `text` (HTML: untrusted values escaped by the caller) to every admin; True when each one
        got it (or Telegram refused it for good)."""
        told = True
        for admin in self.settings.admin_ids:
            told = await self._send_text(admin, text) and told
        return told

    async def _send_text(self, chat: int, text: str) -> bool:
        """Send an HTML text; False when Telegram could not be reached (a refusal counts as done)."""
        try:
            await self.bot.send_message(chat_id=chat, text=text, parse_mode="HTML")
            self.board.touch(chat)
            return True
        except PERMANENT_TELEGRAM as exc:
            log.warning("event=send_refused chat=%s error=%r", chat, str(exc))
            return True
        except TelegramError as exc:
            log.warning("event=send_failed chat=%s error=%r", chat, str(exc))
            return False

    def _reload(self, job_id: str) -> Job:
        """The job as the books hold it now (it exists: UnknownJob otherwise)."""
        job = self.ledger.get_job(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def _show(self, job: Job | None, **values: str) -> None:
        """Edit the job's status message to its stage (with the time so far while it works)."""
        if job is None or not job.status_message_id:
            return
        fmt = dict(
            reserved=texts.rlc(job.max_price),
            deal=(job.deal_id or "")[:10] + "…",
            elapsed="",
            charged="",
            reason="",
            money="",
        )
        if job.state is JobState.NEEDS_ADMIN:
            fmt["money"] = self.endings.held_money(job)
        fmt.update(values)
        position = self._positions.get(job.id) if job.state is JobState.RECEIVED else None
        if position is not None:
            text = texts.QUEUED.format(position=texts.ordinal(position), reserved=fmt["reserved"], short=job.id[-8:])
            self.board.show(job.chat_id, job.status_message_id, text)
            return
        text = texts.STAGES[job.state.value].format(**fmt)
        working = not job.state.is_terminal() and job.state is not JobState.NEEDS_ADMIN
        if working:
            took = texts.elapsed(self.clock() - job.created_at / 1000)
            text += "\n" + texts.WORKING.format(elapsed=took, short=job.id[-8:])
            self._chat_action(job.chat_id)
        self.board.show(job.chat_id, job.status_message_id, text)

    def _chat_action(self, chat: int) -> None:
        """Show "sending a photo…" in the chat while the job works (best effort, in the background)."""

        async def send() -> None:
            try:
                await self.bot.send_chat_action(chat_id=chat, action="upload_photo")
            except TelegramError as exc:
                log.debug("event=chat_action_failed chat=%s error=%r", chat, str(exc))

        self._in_background(send())

    async def _check_funds(self) -> None:
        """Tell the admins (once an hour at most) when the wallet is low on gas or the hub on stake."""
        try:
            report = await self.chain.wallet_report()
        except (IExecError, OSError) as exc:
            log.warning("event=funds_check_failed error=%r", str(exc)[:200])
            return
        hour = int(self.clock() // 3600)
        low = []
        if report.eth_wei < self.settings.low_gas_wei:
            low.append(f"gas: {report.eth_wei / 10**18:.6f} ETH in the wallet")
        if report.stake < self.settings.low_stake_nrlc:
            low.append(f"stake: {texts.rlc(report.stake)} free in the hub (/deposit RLC)")
        if low and self.ledger.record_event("low_funds", f"{hour}", {"low": low}):
            log.warning("event=low_funds %s", " ".join(low))
            await self.notify_admins("⚠️ The wallet runs low on " + "; ".join(low))

    # ------------------------------------------------------------------------------------ user actions

    def active_jobs(self, user: int) -> list[Job]:
        return [j for j in self.ledger.user_jobs(user, limit=50) if not j.state.is_terminal()]

    async def cancel(self, user: int) -> list[tuple[str, int]]:
        """Cancel the user's jobs that are not matched yet; returns (job id, amount returned)."""
        done = []
        for job in self.active_jobs(user):
            if job.state not in (JobState.RECEIVED, JobState.ORDER_SIGNED):
                continue
            task = self._tasks.pop(job.id, None)
            if task:
                task.cancel()
            try:
                self.ledger.cancel_job(job.id, f"{job.id}:void")
            except LedgerError:
                self.drive(job.id)  # it moved on meanwhile: keep driving it
                continue
            self.inputs.revoke(job.id)
            self._revoke_album(job)  # an album's pictures are published one by one
            self._positions.pop(job.id, None)
            self._show(self.ledger.get_job(job.id))
            done.append((job.id, job.max_price))
        if done:
            self.advance(user)
        return done

    def _stored(self, user: int) -> list[tuple[Job, list[Path]]]:
        """The user's finished jobs with the pictures and results still stored for them."""
        found = []
        for job in self.ledger.user_jobs(user, limit=10_000):
            if job.state.is_terminal():
                paths = [
                    p
                    for p in (Path(job.input_ref) if job.input_ref else None, self.results_dir / job.id)
                    if p is not None and p.exists()
                ]
                found.append((job, paths))
        return found

    def stored_count(self, user: int) -> int:
        """How many pictures and results /forget would delete."""
        return sum(len(paths) for _, paths in self._stored(user))

    async def forget(self, user: int) -> int:
        """Delete the user's stored pictures and results of finished jobs."""
        count = 0
        for job, paths in self._stored(user):
            for path in paths:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                count += 1
            self.inputs.revoke(job.id)
        return count

    async def send_detections(self, user: int, job_id: str) -> None:
        job = self.ledger.get_job(job_id)
        if job is None or job.user_id != user or not job.result_ref:
            return
        path = Path(job.result_ref).parent / "detections.json"
        album = job.options.get("album")
        try:  # an album's button sends one file listing the detections of each picture
            data = album_detections(read_album(Path(job.result_ref), len(album["inputs"]))) if album else None
        except ValueError:
            data = None
        if data is None and (album or not path.exists()):
            await self._send_text(job.chat_id, texts.DETECTIONS_GONE)
            return
        await self.bot.send_document(
            chat_id=job.chat_id,
            document=data if data is not None else path.read_bytes(),
            filename="detections.json",
            reply_to_message_id=job.user_message_id,
            allow_sending_without_reply=True,
        )
        self.board.touch(job.chat_id)
