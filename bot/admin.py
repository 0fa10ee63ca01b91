"""Admin commands: recognised by numeric Telegram id only; anyone else gets the unknown-command answer.

Commands that move money (/fund, /deposit, /withdraw, /refund) first show what they will do with a
confirmation button. The button carries everything needed (update id, user, amount), so a double press or
a replayed update reuses the same transfer id or event key: nothing happens twice, even after a restart.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import ContextTypes

from bot import texts
from bot.handlers import unknown_command
from bot.services import Services, services_of
from ledger import JobState, LedgerError
from ledger.amounts import parse_rlc

log = logging.getLogger(__name__)
MAX_GRANT_NRLC = 1_000_000 * 10**9
ALREADY_DONE = texts.ALREADY_DONE


def admin_only(handler: Any) -> Any:
    """Run `handler` for admins; answer anyone else as for an unknown command."""

    async def wrapped(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not services_of(context).is_admin(update.effective_user.id if update.effective_user else None):
            if update.callback_query:
                await update.callback_query.answer()
                return
            await unknown_command(update, context)
            return
        await handler(update, context)

    wrapped.__doc__ = handler.__doc__
    wrapped.__name__ = handler.__name__
    return wrapped


def _confirm(action: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("✅ Confirm", callback_data=action),
                                  InlineKeyboardButton("✖ Cancel", callback_data="x")]])


def _amount(text: str) -> int:
    nrlc = parse_rlc(text)
    if nrlc > MAX_GRANT_NRLC:
        raise LedgerError(f"{text} RLC is more than the {texts.rlc(MAX_GRANT_NRLC)} allowed at once")
    return nrlc


@admin_only
async def fund(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/fund USER RLC [memo]: credit a user, after confirmation."""
    args = context.args or []
    if len(args) < 2 or not args[0].isdigit():
        await update.effective_message.reply_html("Usage: /fund USER_ID RLC [memo], e.g. /fund 123456 2.5")
        return
    try:
        nrlc = _amount(args[1])
    except LedgerError as exc:
        await update.effective_message.reply_html(f"Not funded: {exc}")
        return
    memo = " ".join(args[2:])[:100]
    if memo:  # kept in the books: the button stays valid after a restart, with the same memo
        services_of(context).ledger.set_value(f"fund.memo:{update.update_id}", memo)
    await update.effective_message.reply_html(
        f"Credit user <code>{args[0]}</code> with {texts.rlc(nrlc)}?",
        reply_markup=_confirm(f"fund:{update.update_id}:{args[0]}:{nrlc}"),
    )


@admin_only
async def confirmed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A confirmation button: carry out the action once, whatever the number of presses.

    A second press (or a replayed update) only gets a short notice; the message keeps saying what was done.
    """
    query = update.callback_query
    svc = services_of(context)
    kind, key, *rest = query.data.split(":")
    if kind == "fund":
        user, nrlc = int(rest[0]), int(rest[1])
        if svc.ledger.get_transfer(f"fund:{key}") is not None:
            text = ALREADY_DONE
        else:
            memo = svc.ledger.get_value(f"fund.memo:{key}") or f"by admin {update.effective_user.id}"
            svc.ledger.grant(f"fund:{key}", user, nrlc, memo=memo)
            text = (f"✅ Credited {texts.rlc(nrlc)} to <code>{user}</code>; available now "
                    f"{texts.rlc(svc.ledger.balance(user).available)}.")
    elif kind in ("deposit", "withdraw"):
        await query.answer("Sending the transaction…")
        text = await svc.pipeline.chain.move_stake(kind, int(rest[0]), key=f"{kind}:{key}", ledger=svc.ledger)
    elif kind == "refund":
        text = await svc.pipeline.admin_refund(rest[0])
    else:
        await query.answer()
        return
    log.info("event=admin_action kind=%s key=%s admin=%s done=%s", kind, key, update.effective_user.id,
             text != ALREADY_DONE)
    if text == ALREADY_DONE:
        if kind not in ("deposit", "withdraw"):
            await query.answer(ALREADY_DONE, show_alert=True)
        await update.effective_message.reply_html(ALREADY_DONE)
        return
    if kind not in ("deposit", "withdraw"):
        await query.answer()
    await query.edit_message_text(text, parse_mode="HTML")


async def dismissed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The cancel button of a confirmation."""
    await update.callback_query.answer()
    await update.callback_query.edit_message_text("Cancelled; nothing done.")


@admin_only
async def stake_move(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/deposit RLC and /withdraw RLC: move RLC between the wallet and the hub, after confirmation."""
    command = update.effective_message.text.split()[0].lstrip("/").split("@")[0]
    args = context.args or []
    try:
        nrlc = _amount(args[0]) if args else 0
    except LedgerError as exc:
        await update.effective_message.reply_html(f"Nothing done: {exc}")
        return
    if not nrlc:
        await update.effective_message.reply_html(f"Usage: /{command} RLC, e.g. /{command} 10")
        return
    where = "from the wallet into the hub" if command == "deposit" else "from the hub back to the wallet"
    await update.effective_message.reply_html(
        f"Move {texts.rlc(nrlc)} {where}?", reply_markup=_confirm(f"{command}:{update.update_id}:{nrlc}")
    )


@admin_only
async def wallet(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/wallet: address, ETH, RLC, hub stake and locked, users' credit, solvency."""
    svc = services_of(context)
    w = await svc.pipeline.chain.wallet_report()
    owed = svc.pipeline.user_credit()
    solvent = w.stake + w.locked + w.rlc >= owed
    await update.effective_message.reply_html(
        f"<b>Wallet</b> <code>{w.address}</code>\nETH (gas): {w.eth_wei / 10**18:.6f}\n"
        f"RLC in wallet: {texts.rlc(w.rlc)}\nHub stake: {texts.rlc(w.stake)} · locked: {texts.rlc(w.locked)}\n"
        f"Users' credit: {texts.rlc(owed)}\n" + ("✅ solvent" if solvent else "❌ NOT solvent: fund the wallet")
    )


@admin_only
async def users(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/users: users with credit or jobs."""
    ledger = services_of(context).ledger
    rows = [a for a in ledger.accounts() if a.user_id is not None][:50]
    if not rows:
        await update.effective_message.reply_html("No users yet.")
        return
    lines = [f"<code>{a.user_id}</code> available {texts.rlc(a.balance.available)} · reserved "
             f"{texts.rlc(a.balance.pending)} · in flight {ledger.jobs_in_flight(a.user_id)}" for a in rows]
    await update.effective_message.reply_html("\n".join(lines))


@admin_only
async def job(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/job ID: everything about one job."""
    svc = services_of(context)
    job_id = (context.args or [""])[0]
    found = svc.pipeline.find_job(job_id)
    if found is None:
        await update.effective_message.reply_html("Usage: /job ID (the id or its last 8 characters).")
        return
    fields = {k: v for k, v in dataclasses.asdict(found).items() if v not in (None, "", {}) and k != "request_order"}
    body = "\n".join(f"{k}: <code>{v}</code>" for k, v in fields.items())
    buttons = None
    if found.state is JobState.NEEDS_ADMIN:
        buttons = InlineKeyboardMarkup([[
            InlineKeyboardButton("↩️ Refund", callback_data=f"refund:{update.update_id}:{found.id}"),
            InlineKeyboardButton("🔁 Retry", callback_data=f"retry:{update.update_id}:{found.id}")]])
    await update.effective_message.reply_html(body[:4000], reply_markup=buttons)


@admin_only
async def refund(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/refund ID: refund a job held for an admin, after confirmation."""
    svc = services_of(context)
    found = svc.pipeline.find_job((context.args or [""])[0])
    if found is None or found.state is not JobState.NEEDS_ADMIN:
        await update.effective_message.reply_html("Only a job held for an admin (NEEDS_ADMIN) can be refunded.")
        return
    await update.effective_message.reply_html(
        f"Refund job <code>{found.id}</code> ({texts.rlc(found.max_price)} back to the user)?",
        reply_markup=_confirm(f"refund:{update.update_id}:{found.id}"),
    )


@admin_only
async def retry(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/retry ID: put a held job back where it stopped and drive it again."""
    svc = services_of(context)
    job_id = (context.args or [""])[0] or (update.callback_query.data.split(":")[2] if update.callback_query else "")
    text = await svc.pipeline.admin_retry(job_id)
    if update.callback_query:
        await update.callback_query.answer()
    await update.effective_message.reply_html(text)


@admin_only
async def reconcile(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/reconcile: the books against the chain, differences listed."""
    report = await services_of(context).pipeline.reconcile()
    await update.effective_message.reply_html(report[:4000])


@admin_only
async def pause(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/pause: stop taking new pictures (jobs in flight go on)."""
    services_of(context).pipeline.paused = True
    await update.effective_message.reply_html("⏸ Intake paused. Jobs in flight go on. /resume to restart.")


@admin_only
async def resume(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/resume: take pictures again."""
    services_of(context).pipeline.paused = False
    await update.effective_message.reply_html("▶️ Intake resumed.")


@admin_only
async def price(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/price: the best offer on the market now."""
    svc: Services = services_of(context)
    text = await svc.pipeline.chain.price_report()
    await update.effective_message.reply_html(text)
