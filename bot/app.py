"""Build and run the bot: python-telegram-bot `Application`, handlers, the pipeline and its services.

`build_bot` wires everything and is what tests drive (against the Telegram stand-in and the devnet);
`run` is `python -m bot`: lock file, logs, polling or webhook, a clean shutdown on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from telegram import BotCommand, Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest

from bot import admin, funding, handlers
from bot.admin_ops import AdminOps
from bot.chain_gateway import ChainGateway
from bot.crashpoints import CrashPoints
from bot.deposits import DepositService
from bot.errors import TeeUnavailable, WebhookRefused
from bot.inbox import CLAIM_GROUP, FINISH_GROUP, InboxBot, UpdateInbox
from bot.input_server import InputServer
from bot.linking import Linking, LinkSettings
from bot.lock import InstanceLock
from bot.logs import install_logging, redact_url
from bot.pipeline import Pipeline
from bot.rate_limit import ChatRateLimiter
from bot.services import KEY, Services
from bot.settings import Settings
from bot.status_board import StatusBoard
from bot.webhook import WebhookServer
from ledger import Ledger

log = logging.getLogger(__name__)


USER_COMMANDS = [
    ("start", "what this bot does, price, privacy"),
    ("help", "the commands"),
    ("balance", "your credit"),
    ("status", "jobs in progress"),
    ("jobs", "recent jobs"),
    ("cancel", "cancel a job not started yet"),
    ("forget", "delete your stored pictures"),
    ("segment", "reply to a picture (in a group) to segment it"),
    ("link", "link your wallet to fund yourself with RLC"),
]


def register_handlers(app: Application, inbox: UpdateInbox | None = None) -> None:
    """All handlers in one place; admin commands check the numeric id themselves. With an `inbox`, a first
    group skips updates handled already and a last group marks each update handled (see `bot.inbox`)."""
    if inbox is not None:
        app.add_handler(TypeHandler(Update, inbox.claim), group=CLAIM_GROUP)
        app.add_handler(TypeHandler(Update, inbox.finish), group=FINISH_GROUP)
    user_cmds = {
        "start": handlers.start,
        "help": handlers.help_command,
        "balance": handlers.balance,
        "status": handlers.status,
        "jobs": handlers.jobs,
        "cancel": handlers.cancel,
        "forget": handlers.forget,
        "link": funding.link,
        "unlink": funding.unlink,
    }
    admin_cmds = {
        "fund": admin.fund,
        "wallet": admin.wallet,
        "deposit": admin.stake_move,
        "withdraw": admin.stake_move,
        "users": admin.users,
        "job": admin.job,
        "refund": admin.refund,
        "retry": admin.retry,
        "reconcile": admin.reconcile,
        "pause": admin.pause,
        "resume": admin.resume,
        "price": admin.price,
        "unclaimed": admin.unclaimed,
    }
    # What shows a person's money or wallet is answered in a private chat only: in a group everyone would read
    # it. /start, /help, /status (its button answers only its owner) and /cancel stay usable in groups.
    personal = {"balance", "jobs", "forget", "link", "unlink"}
    new = filters.UpdateType.MESSAGE
    private = filters.ChatType.PRIVATE
    for name, fn in user_cmds.items():
        app.add_handler(CommandHandler(name, fn, filters=new & private if name in personal else new))
    app.add_handler(CommandHandler(sorted(personal), handlers.personal_elsewhere, filters=new & ~private))
    for name, fn in admin_cmds.items():  # in a private chat only; elsewhere answered by admin_elsewhere
        app.add_handler(CommandHandler(name, fn, filters=new & private))
    app.add_handler(CommandHandler(list(admin_cmds), handlers.admin_elsewhere, filters=new & ~private))
    app.add_handler(CommandHandler("segment", handlers.segment, filters=new))  # a reply to a picture (groups)
    app.add_handler(MessageHandler(new & filters.COMMAND, handlers.unknown_command))
    app.add_handler(MessageHandler(new & filters.PHOTO, handlers.photo))
    app.add_handler(MessageHandler(new & filters.Document.ALL, handlers.document))
    app.add_handler(MessageHandler(new & filters.Regex(funding.SIGNATURE_MESSAGE), funding.signature_reply))
    app.add_handler(MessageHandler(new & filters.TEXT, handlers.text))
    app.add_handler(MessageHandler(new & ~filters.TEXT, handlers.unsupported))
    app.add_handler(CallbackQueryHandler(handlers.status_refresh, pattern=r"^status(:|$)"))
    app.add_handler(CallbackQueryHandler(handlers.detections, pattern=r"^det:"))
    app.add_handler(CallbackQueryHandler(handlers.forget_pressed, pattern=r"^forget:"))
    app.add_handler(CallbackQueryHandler(admin.retry, pattern=r"^retry:"))
    app.add_handler(CallbackQueryHandler(admin.dismissed, pattern=r"^x$"))
    app.add_handler(CallbackQueryHandler(admin.confirmed, pattern=r"^(fund|deposit|withdraw|refund):"))
    app.add_handler(CallbackQueryHandler(admin.claim_confirmed, pattern=r"^claim:"))
    app.add_handler(CallbackQueryHandler(handlers.stale_button))  # any other press gets an answer
    # Edited messages and other update kinds fall through: nothing is done twice.
    app.add_error_handler(handlers.on_error)


@dataclass
class Bot:
    """A built bot: the PTB application plus the parts it drives (for tests and `run`)."""

    app: Application
    services: Services
    inputs: InputServer
    chain: ChainGateway
    webhook: WebhookServer | None = None
    deposit_task: asyncio.Task[None] | None = None

    async def start(self, *, polling: bool = True, poll_timeout: int = 10) -> None:
        await self.inputs.start()
        await self.chain.start()
        from bot.consistency import check_books_match_chain  # raises BooksDoNotMatchChain (a reset chain)

        await check_books_match_chain(
            self.services.ledger,
            self.chain.hub.w3,
            self.chain.hub,
            self.chain.address,
            redact_url(self.services.settings.resolved_network.rpc_url),
            network=self.services.settings.resolved_network.name,
        )
        await self.app.initialize()
        await self.app.start()
        await self._set_commands()
        if self.services.inbox is not None:  # what arrived before a crash, before anything new
            await self.services.inbox.replay(self.app)
        if polling:
            if self.app.updater is None:
                raise RuntimeError("the application was built without an updater: it cannot poll")
            await self.app.updater.start_polling(
                timeout=poll_timeout, drop_pending_updates=False, allowed_updates=Update.ALL_TYPES
            )
        await self.services.pipeline.resume()
        self._start_deposits()

    def _start_deposits(self) -> None:
        """The deposit watcher as its own supervised task (bot.deposits.DepositService.run), on the chain
        gateway's connection; its cursor and credits live in the books."""
        s = self.services.settings
        network = s.resolved_network
        service = DepositService.build(
            self.services.ledger,
            self.chain.hub.w3,
            chain_id=network.chain_id,
            rlc=network.rlc,
            hot_wallet=self.chain.address,
            hub=network.hub,
            confirmations=s.resolved_deposit_confirmations,
            min_deposit_nrlc=s.min_deposit_nrlc,
        )
        self.services.deposits = service
        self.services.linking = Linking(
            self.services.ledger, LinkSettings(network.chain_id, self.chain.address, s.min_deposit_nrlc)
        )
        self.deposit_task = asyncio.create_task(
            service.run(funding.notifier(self.app.bot), interval_s=s.deposit_poll_s), name="deposits"
        )
        log.info(
            "event=deposits_started wallet=%s confirmations=%d min_deposit_nrlc=%d",
            self.chain.address,
            s.resolved_deposit_confirmations,
            s.min_deposit_nrlc,
        )

    async def start_webhook(self) -> None:
        """Receive updates on our webhook server (settings.mode == "webhook") and tell Telegram where it is.

        The server checks the secret header before reading a body and caps the body (see `bot.webhook`).
        Raises WebhookRefused without a secret token.
        """
        s = self.services.settings
        if s.webhook_secret is None or not s.webhook_secret.get_secret_value():
            raise WebhookRefused("webhook mode needs WEBHOOK_SECRET: without it anyone could post updates")
        secret = s.webhook_secret.get_secret_value()
        self.webhook = WebhookServer(
            self.app, self.services.inbox, secret, listen=s.webhook_listen, port=s.webhook_port, path="/telegram"
        )
        await self.webhook.start()
        await self.app.bot.set_webhook(url=s.webhook_url, secret_token=secret, allowed_updates=Update.ALL_TYPES)

    async def _set_commands(self) -> None:
        try:
            await self.app.bot.set_my_commands([BotCommand(c, d) for c, d in USER_COMMANDS])
        except Exception as exc:  # noqa: BLE001 - cosmetic, never fatal
            log.warning("event=set_commands_failed error=%r", str(exc))

    async def stop(self) -> None:
        """Stop taking updates and stop the jobs, then release the chain connection, the input server and
        the books: each of the three is released even when an earlier step failed, so no socket or
        session outlives the bot."""
        async with contextlib.AsyncExitStack() as release:  # runs last-in first-out: the books close last
            release.callback(self.services.ledger.close)
            release.push_async_callback(self.inputs.stop)
            release.push_async_callback(self.chain.stop)
            if self.deposit_task is not None:  # before the books and the chain connection close
                self.deposit_task.cancel()
                await asyncio.gather(self.deposit_task, return_exceptions=True)
                self.deposit_task = None
            if self.webhook is not None:
                await self.webhook.stop()
            if self.app.updater and self.app.updater.running:
                await self.app.updater.stop()
            await self.services.pipeline.stop()
            await self.services.board.drain(timeout=3)
            if self.app.running:
                await self.app.stop()
            await self.app.shutdown()


def build_bot(
    settings: Settings, *, account: Any = None, crash_at: str | None = None, concurrent_updates: int = 64
) -> Bot:
    """Wire the application, the books, the chain gateway, the input server and the pipeline."""
    if settings.telegram_token is None:
        raise SystemExit("TELEGRAM_TOKEN is not set (see .env.example)")
    token = settings.telegram_token.get_secret_value()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(str(settings.db_path))
    inbox = UpdateInbox(ledger)
    tg_bot = InboxBot(
        token,
        base_url=settings.telegram_base_url,
        base_file_url=settings.telegram_base_file_url,
        request=HTTPXRequest(
            connection_pool_size=256, connect_timeout=10, read_timeout=30, write_timeout=30, media_write_timeout=60
        ),
        get_updates_request=HTTPXRequest(connection_pool_size=1, connect_timeout=10, read_timeout=30, write_timeout=30),
        rate_limiter=ChatRateLimiter(overall_per_second=28, group_max_rate=18, group_time_period=60, max_retries=3),
    )
    app = ApplicationBuilder().bot(tg_bot).concurrent_updates(concurrent_updates).build()
    board = StatusBoard(app.bot)
    inputs = InputServer.from_settings(settings)
    chain = ChainGateway(settings, ledger, account=account)
    crash_points = CrashPoints(crash_at)
    pipeline = Pipeline(settings, ledger, chain, inputs, app.bot, board, crash_points=crash_points)
    tg_bot.keep_updates_in(inbox, crash_points)  # in the books before getUpdates confirms them
    admin_ops = AdminOps(ledger, chain, pipeline)
    services = Services(
        settings=settings, ledger=ledger, pipeline=pipeline, admin_ops=admin_ops, board=board, inbox=inbox
    )
    app.bot_data[KEY] = services
    register_handlers(app, inbox)
    return Bot(app=app, services=services, inputs=inputs, chain=chain)


async def _serve(settings: Settings) -> None:
    bot = build_bot(settings, crash_at=CrashPoints.from_env().at)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    webhook = settings.mode == "webhook"
    try:
        await bot.start(polling=not webhook)
        if webhook:
            await bot.start_webhook()
        log.info(
            "event=bot_started mode=%s network=%s rpc=%s wallet=%s",
            settings.mode,
            settings.resolved_network.name,
            redact_url(settings.resolved_network.rpc_url),
            bot.chain.address,
        )
        await stop.wait()
        log.info("event=bot_stopping")
    finally:
        await bot.stop()  # also after a failed start: what did start is closed again


def run(settings: Settings | None = None) -> None:
    """`python -m bot`: one bot per books (lock file), redacted logs, clean shutdown."""
    settings = settings or Settings()
    secrets = [
        s.get_secret_value()
        for s in (settings.telegram_token, settings.wallet_password, settings.webhook_secret)
        if s is not None
    ]
    install_logging(settings.log_level, secrets=secrets)
    with InstanceLock(settings.db_path.with_suffix(".lock")):
        try:
            asyncio.run(_serve(settings))
        except TeeUnavailable as exc:  # no SMS, or a result key that does not open: say it, no traceback
            log.error("event=tee_unavailable error=%r", str(exc))
            raise SystemExit(f"refusing to start: {exc}") from None
