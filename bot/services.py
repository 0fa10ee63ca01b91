"""What the handlers reach: one `Services` object stored in `application.bot_data`.

Handlers take everything from here instead of globals, so tests can run several bots in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from telegram.ext import ContextTypes

if TYPE_CHECKING:
    from bot.admin_ops import AdminOps
    from bot.deposits import DepositService
    from bot.inbox import UpdateInbox
    from bot.linking import Linking
    from bot.pipeline import Pipeline
    from bot.settings import Settings
    from bot.status_board import StatusBoard
    from ledger import Ledger

KEY = "segbot.services"


@dataclass
class Services:
    """The bot's parts, shared by every handler."""

    settings: Settings
    ledger: Ledger
    pipeline: Pipeline
    admin_ops: AdminOps
    board: StatusBoard
    inbox: UpdateInbox | None = None  # None: updates are not kept (e.g. an application built by a test)
    linking: Linking | None = None  # /link and /unlink (None: users cannot fund themselves)
    deposits: DepositService | None = None  # the deposit watcher, set once the chain is connected (Bot.start)

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.settings.admin_ids


def services_of(context: ContextTypes.DEFAULT_TYPE) -> Services:
    """The bot's `Services` from a handler's context (stored under `KEY` by `bot.app.build_bot`)."""
    services = context.application.bot_data[KEY]
    if not isinstance(services, Services):
        raise TypeError(f"bot_data[{KEY!r}] is not the bot's Services")
    return services
