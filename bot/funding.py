"""Users fund themselves: the /link and /unlink commands, the bare-signature reply, and the deposit notices.

    /link                           -> the one-time message to sign (EIP-712 and personal_sign) and how
    0xSIGNATURE (a reply)           -> the EIP-712 signer is linked
    /link 0xADDRESS 0xSIGNATURE     -> either form, checked against ADDRESS
    /unlink 0xADDRESS               -> transfers from it are no longer credited to the user

The work is `bot.linking.Linking` (verify, link one address to one user) and `bot.deposits.DepositService`
(the watcher, credits and notices); this module only talks to Telegram. Every refusal is a clear message
and costs nothing. A private key or a seed phrase is never asked for; a signature is never logged.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Awaitable, Callable

from telegram import Bot, Update
from telegram.error import Forbidden, TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.deposits import DepositNotice
from bot.errors import LinkRefused
from bot.linking import Linking, parse_link_args
from bot.services import services_of
from bot.updates import message_of, user_of

log = logging.getLogger(__name__)

#: A message that is only a signature (a reply to /link), optionally after the address it was made by.
SIGNATURE_MESSAGE = re.compile(r"^\s*(?:0x[0-9a-fA-F]{40}\s+)?0x[0-9a-fA-F]{128,130}\s*$")


async def link(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/link alone: a message to sign; /link 0xADDRESS 0xSIGNATURE (or 0xSIGNATURE): link the signer."""
    await _link(update, context, context.args or [])


async def signature_reply(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A text that is a signature (the answer to /link's message): link the signer."""
    await _link(update, context, (message_of(update).text or "").split(), reply=True)


async def _linking_or_off(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Linking | None:
    """The bot's Linking; None (after telling the user FUNDING_OFF) when users cannot fund themselves."""
    linking = services_of(context).linking
    if linking is None:
        await message_of(update).reply_html(texts.FUNDING_OFF)
    return linking


async def _link(update: Update, context: ContextTypes.DEFAULT_TYPE, args: list[str], *, reply: bool = False) -> None:
    linking = await _linking_or_off(update, context)
    if linking is None:
        return
    user = user_of(update).id
    try:
        address, signature = parse_link_args(args)
        if signature is None:
            if address is not None:
                raise LinkRefused(texts.LINK_NEEDS_SIGNATURE)
            _, challenge = linking.start(user)
            log.info("event=link_requested user=%s", user)
            await message_of(update).reply_html(challenge)
            return
        linked = linking.finish(user, signature, address)
    except LinkRefused as exc:
        log.info("event=link_refused user=%s reply=%s reason=%r", user, reply, str(exc)[:120])
        await message_of(update).reply_html("❌ " + html.escape(str(exc)))
        return
    log.info("event=wallet_linked user=%s address=%s form=%s", user, linked.address, linked.form)
    check = texts.LINK_CHECK_ADDRESS if address is None else ""  # a signature alone names no address
    await message_of(update).reply_html("✅ " + linking.linked_text(linked) + check)


async def unlink(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/unlink 0xADDRESS: stop crediting transfers from that address to this user."""
    linking = await _linking_or_off(update, context)
    if linking is None:
        return
    user = user_of(update).id
    args = context.args or []
    try:
        if len(args) != 1:
            raise LinkRefused("Use /unlink 0xADDRESS with one of the addresses /balance lists.")
        removed = linking.unlink(user, args[0])
    except LinkRefused as exc:
        await message_of(update).reply_html("❌ " + html.escape(str(exc)))
        return
    if not removed:
        await message_of(update).reply_html(texts.UNLINK_NONE.format(address=html.escape(args[0])))
        return
    log.info("event=wallet_unlinked user=%s address=%s", user, args[0].lower())
    await message_of(update).reply_html(texts.UNLINKED.format(address=html.escape(args[0].lower())))


def notifier(bot: Bot) -> Callable[[DepositNotice], Awaitable[bool]]:
    """How the deposit service tells a user: True once Telegram took the message (then it is marked told).

    A user who blocked the bot (Forbidden) can never be told: True as well, logged, so that the notice is
    not sent again every cycle (the credit is in the books and /balance shows it). Any other error: False,
    and the next cycle sends it again."""

    async def send(notice: DepositNotice) -> bool:
        try:
            await bot.send_message(chat_id=notice.user_id, text=notice.text)
        except Forbidden as exc:
            log.warning(
                "event=deposit_notice_undeliverable user=%s tx=%s error=%r", notice.user_id, notice.tx_hash, exc
            )
            return True
        except TelegramError as exc:
            log.warning("event=deposit_notice_not_sent user=%s tx=%s error=%r", notice.user_id, notice.tx_hash, exc)
            return False
        return True

    return send
