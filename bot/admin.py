"""Admin commands: recognised by numeric Telegram id only; anyone else gets the unknown-command answer.

Commands that move money (/fund, /deposit, /withdraw, /refund) first show what they will do with a
confirmation button. The button carries everything needed (update id, user, amount), so a double press or
a replayed update reuses the same transfer id or event key: nothing happens twice, even after a restart.
"""

from __future__ import annotations

import datetime
import html
import logging
import re
from pathlib import Path
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import ContextTypes

from bot import texts
from bot.errors import AssignRefused, UpdateLacks
from bot.handlers import unknown_command
from bot.results import read_album
from bot.services import Services, services_of
from bot.updates import message_of, query_of, user_of
from ledger import JobState, LedgerError
from ledger.amounts import parse_rlc

log = logging.getLogger(__name__)
MAX_GRANT_NRLC = 1_000_000 * 10**9
MAX_TELEGRAM_ID = 2**52  # Telegram: user ids have at most 52 significant bits
MAX_CALLBACK_BYTES = 64  # Telegram refuses longer callback_data (BUTTON_DATA_INVALID)
ALREADY_DONE = texts.ALREADY_DONE
NOT_FOR_YOU = "This button is not for you."
_ASCII_ID = re.compile(r"[0-9]{1,16}")  # str.isdigit() would take "٣٤٥" (and int() reads it as 345)


def user_id_arg(text: str) -> int | None:
    """A Telegram user id typed by an admin: ASCII digits only, 1 .. 2**52; None for anything else."""
    if not _ASCII_ID.fullmatch(text):
        return None
    value = int(text)
    return value if 0 < value < MAX_TELEGRAM_ID else None


def button(label: str, data: str) -> InlineKeyboardButton:
    """An inline button; raises ValueError when its callback data would not fit Telegram's 64 bytes."""
    if not 0 < len(data.encode()) <= MAX_CALLBACK_BYTES:
        raise ValueError(f"callback data of {len(data.encode())} bytes (Telegram takes 1..64): {data[:20]}…")
    return InlineKeyboardButton(label, callback_data=data)


def admin_only(handler: Any) -> Any:
    """Run `handler` for admins; a command from anyone else is answered as unknown, a button press with
    "not for you" (and nothing happens)."""

    async def wrapped(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user = user_of(update).id if update.effective_user else None
        if not services_of(context).is_admin(user):
            if update.callback_query:
                log.info("event=button_refused user=%s data=%r", user, (update.callback_query.data or "")[:64])
                await update.callback_query.answer(NOT_FOR_YOU, show_alert=True)
                return
            await unknown_command(update, context)
            return
        await handler(update, context)

    wrapped.__doc__ = handler.__doc__
    wrapped.__name__ = handler.__name__
    return wrapped


def _confirm(action: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[button("✅ Confirm", action), button("✖ Cancel", "x")]])


def _amount(text: str) -> int:
    nrlc = parse_rlc(text)
    if nrlc > MAX_GRANT_NRLC:
        raise LedgerError(f"{text} RLC is more than the {texts.rlc(MAX_GRANT_NRLC)} allowed at once")
    return nrlc


@admin_only
async def fund(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/fund USER RLC [memo]: credit a user, after confirmation."""
    args = context.args or []
    user = user_id_arg(args[0]) if args else None
    if len(args) < 2 or user is None:
        await message_of(update).reply_html(
            "Usage: /fund USER_ID RLC [memo], e.g. /fund 123456 2.5 (USER_ID: the numeric Telegram id, digits 0-9 only)"
        )
        return
    try:
        nrlc = _amount(args[1])
    except LedgerError as exc:
        await message_of(update).reply_html(f"Not funded: {exc}")
        return
    memo = " ".join(args[2:])[:100]
    if memo:  # kept in the books: the button stays valid after a restart, with the same memo
        services_of(context).ledger.set_value(f"fund.memo:{update.update_id}", memo)
    await message_of(update).reply_html(
        f"Credit user <code>{user}</code> with {texts.rlc(nrlc)}?",
        reply_markup=_confirm(f"fund:{update.update_id}:{user}:{nrlc}"),
    )


@admin_only
async def confirmed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A confirmation button: carry out the action once, whatever the number of presses.

    A second press (or a replayed update) only gets a short notice; the message keeps saying what was done.
    """
    query = query_of(update)
    svc = services_of(context)
    kind, key, *rest = (query.data or "").split(":")
    numbers = [key, *rest] if kind != "refund" else [key]
    if not all(_ASCII_ID.fullmatch(n) for n in numbers) or len(rest) != {"fund": 2}.get(kind, 1):
        log.warning("event=button_malformed admin=%s data=%r", user_of(update).id, (query.data or "")[:64])
        await query.answer("This button is not valid.", show_alert=True)
        return
    if kind == "fund":
        user, nrlc = int(rest[0]), int(rest[1])
        if svc.ledger.get_transfer(f"fund:{key}") is not None:
            text = ALREADY_DONE
        else:
            memo = svc.ledger.get_value(f"fund.memo:{key}") or f"by admin {user_of(update).id}"
            svc.ledger.grant(f"fund:{key}", user, nrlc, memo=memo)
            text = (
                f"✅ Credited {texts.rlc(nrlc)} to <code>{user}</code>; available now "
                f"{texts.rlc(svc.ledger.balance(user).available)}."
            )
    elif kind in ("deposit", "withdraw"):
        nrlc = int(rest[0])
        # A used button says so first: after the move, the same amount may well be missing now.
        short = (
            None if svc.ledger.seen_event("admin_stake", f"{kind}:{key}") else await _stake_shortfall(svc, kind, nrlc)
        )
        if short:  # checked again: the stake may have moved since the question was asked
            await query.answer()
            await query.edit_message_text(f"❌ Nothing done: {short}", parse_mode="HTML")
            return
        await query.answer("Sending the transaction…")
        text = await svc.admin_ops.move_stake(kind, nrlc, key=f"{kind}:{key}")
    elif kind == "refund":
        text = await svc.admin_ops.admin_refund(rest[0])
    else:
        await query.answer()
        return
    log.info("event=admin_action kind=%s key=%s admin=%s done=%s", kind, key, user_of(update).id, text != ALREADY_DONE)
    if text == ALREADY_DONE:
        if kind not in ("deposit", "withdraw"):
            await query.answer(ALREADY_DONE, show_alert=True)
        await message_of(update).reply_html(ALREADY_DONE)
        return
    if kind not in ("deposit", "withdraw"):
        await query.answer()
    await query.edit_message_text(text, parse_mode="HTML")


@admin_only
async def dismissed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The cancel button of a confirmation."""
    await query_of(update).answer()
    await query_of(update).edit_message_text("Cancelled; nothing done.")


@admin_only
async def stake_move(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/deposit RLC and /withdraw RLC: move RLC between the wallet and the hub, after confirmation."""
    command_text = message_of(update).text
    if command_text is None:  # registered as a CommandHandler: a command has its text
        raise UpdateLacks(f"update {update.update_id} has no command text")
    command = command_text.split()[0].lstrip("/").split("@")[0]
    args = context.args or []
    try:
        nrlc = _amount(args[0]) if args else 0
    except LedgerError as exc:
        await message_of(update).reply_html(f"Nothing done: {exc}")
        return
    if not nrlc:
        await message_of(update).reply_html(f"Usage: /{command} RLC, e.g. /{command} 10")
        return
    short = await _stake_shortfall(services_of(context), command, nrlc)
    if short:
        await message_of(update).reply_html(f"Nothing done: {short}")
        return
    where = "from the wallet into the hub" if command == "deposit" else "from the hub back to the wallet"
    await message_of(update).reply_html(
        f"Move {texts.rlc(nrlc)} {where}?", reply_markup=_confirm(f"{command}:{update.update_id}:{nrlc}")
    )


async def _stake_shortfall(svc: Services, kind: str, nrlc: int) -> str | None:
    """Why a deposit or withdrawal of `nrlc` cannot succeed now (more than the wallet or the free stake
    holds), else None: such a request is refused before anything is recorded or sent."""
    w = await svc.pipeline.chain.wallet_report()
    if kind == "withdraw" and nrlc > w.stake:
        return (
            f"the hub holds {texts.rlc(w.stake)} of free stake (locked: {texts.rlc(w.locked)}); "
            f"{texts.rlc(nrlc)} cannot be withdrawn."
        )
    if kind == "deposit" and nrlc > w.rlc:
        return f"the wallet holds {texts.rlc(w.rlc)}; {texts.rlc(nrlc)} cannot be deposited."
    return None


@admin_only
async def wallet(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/wallet: address, ETH, RLC, hub stake and locked, users' credit, solvency."""
    svc = services_of(context)
    w = await svc.pipeline.chain.wallet_report()
    owed = svc.admin_ops.user_credit()
    deposits = svc.ledger.deposits.totals()
    # RLC received from unlinked addresses sits in the wallet too, and belongs to whoever an admin assigns it
    solvent = w.stake + w.locked + w.rlc >= owed + deposits.unclaimed
    await message_of(update).reply_html(
        f"<b>Wallet</b> <code>{w.address}</code>\nETH (gas): {w.eth_wei / 10**18:.6f}\n"
        f"RLC in wallet: {texts.rlc(w.rlc)}\nHub stake: {texts.rlc(w.stake)} · locked: {texts.rlc(w.locked)}\n"
        f"Users' credit: {texts.rlc(owed)}\n"
        f"Deposits: {texts.rlc(deposits.credited)} credited ({deposits.credited_count}) · "
        f"{texts.rlc(deposits.unclaimed)} unclaimed ({deposits.unclaimed_count})\n"
        + ("✅ solvent" if solvent else "❌ NOT solvent: fund the wallet")
    )


@admin_only
async def users(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/users: users with credit or jobs."""
    ledger = services_of(context).ledger
    rows = [(a.user_id, a) for a in ledger.accounts() if a.user_id is not None][:50]
    if not rows:
        await message_of(update).reply_html("No users yet.")
        return
    lines = [
        f"<code>{user}</code> available {texts.rlc(a.balance.available)} · reserved "
        f"{texts.rlc(a.balance.pending)} · in flight {ledger.jobs_in_flight(user)}"
        for user, a in rows
    ]
    await message_of(update).reply_html("\n".join(lines))


def _utc(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def job_receipt(found: Any, *, fee: int, explorer: str = "", refunded: dict[int, int] | None = None) -> str:
    """/job ID as a receipt: state in words, times in UTC, amounts in RLC, the deal and task ids (HTML;
    the error and options are untrusted and escaped)."""
    state = found.state.value
    lines = [
        f"<b>Job</b> <code>{found.id}</code>",
        f"User <code>{found.user_id}</code> · chat <code>{found.chat_id}</code>",
        f"State: {texts.STAGE_NAMES.get(state, state)} ({state})",
        f"Created: {_utc(found.created_at)} · last change: {_utc(found.updated_at)}",
    ]
    times = sorted(found.state_times.items(), key=lambda item: item[1])
    if times:
        lines.append(
            "Steps: "
            + " · ".join(f"{texts.STAGE_NAMES.get(s, html.escape(str(s)))} {_utc(int(ms))[11:19]}" for s, ms in times)
        )
    lines.append(f"Reserved: {texts.rlc(found.max_price)}")
    if found.app_price is not None and found.workerpool_price is not None:
        task = found.app_price + found.workerpool_price
        album = found.options.get("album") if isinstance(found.options, dict) else None
        photos = f" + {len(album['inputs'])} × {texts.rlc(int(album['photo_fee']))} per photo" if album else ""
        photo_fees = len(album["inputs"]) * int(album["photo_fee"]) if album else 0
        lines.append(
            f"Price: app {texts.rlc(found.app_price)} + workerpool {texts.rlc(found.workerpool_price)} "
            f"+ fee {texts.rlc(fee)}{photos} = {texts.rlc(task + fee + photo_fees)}"
        )
    lines += _album_lines(found, refunded or {})
    if found.deal_id:
        link = f' · <a href="{html.escape(explorer)}/deal/{found.deal_id}">explorer</a>' if explorer else ""
        lines.append(f"Deal: <code>{found.deal_id}</code>{link}")
    if found.task_id:
        lines.append(f"Task: <code>{found.task_id}</code>")
    if found.options:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(found.options.items()))
        lines.append(f"Options: <code>{html.escape(opts)}</code>")
    if found.attempts:
        lines.append(f"Attempts: {found.attempts}")
    if found.result_ref:
        lines.append(f"Result file: <code>{html.escape(found.result_ref)}</code>")
    if found.error:
        lines.append(f"Error: <code>{html.escape(found.error)}</code>")
    return "\n".join(lines)


def _album_lines(found: Any, refunded: dict[int, int]) -> list[str]:
    """An album job's pictures on its receipt: the per-photo fee, then each picture (what was found, or why
    it failed and what it got back), read from the album's result when it is there."""
    album = found.options.get("album") if isinstance(found.options, dict) else None
    if not album:
        return []
    count = len(album.get("inputs", []))
    lines = [f"Album: {count} pictures · {texts.rlc(int(album.get('photo_fee', 0)))} per photo"]
    try:
        result = read_album(Path(found.result_ref), count) if found.result_ref else None
    except ValueError:
        result = None
    for index in range(1, count + 1):
        picture = result.pictures[index - 1] if result else None
        if picture is None:
            line = "waiting for the result"
        elif picture.ok:
            line = texts.caption(str(d.get("class_name", "?")) for d in picture.detections)
        else:
            line = f"failed: {html.escape(picture.error)}"
        if index in refunded:
            line += f" · paid back {texts.rlc(refunded[index])}"
        lines.append(f"  {index}. {line}")
    return lines


@admin_only
async def job(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/job ID: everything about one job."""
    svc = services_of(context)
    job_id = (context.args or [""])[0]
    found = svc.admin_ops.find_job(job_id)
    if found is None:
        await message_of(update).reply_html("Usage: /job ID (the id or its last 8 characters).")
        return
    body = job_receipt(
        found,
        fee=svc.settings.fee_nrlc,
        explorer=svc.settings.resolved_network.explorer,
        refunded=svc.ledger.parts_refunded(found.id),
    )
    buttons = None
    if found.state is JobState.NEEDS_ADMIN:
        buttons = InlineKeyboardMarkup(
            [
                [
                    button("↩️ Refund", f"refund:{update.update_id}:{found.id}"),
                    button("🔁 Retry", f"retry:{update.update_id}:{found.id}"),
                ]
            ]
        )
    await message_of(update).reply_html(body[:4000], reply_markup=buttons)


@admin_only
async def refund(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/refund ID: refund a job held for an admin, after confirmation."""
    svc = services_of(context)
    found = svc.admin_ops.find_job((context.args or [""])[0])
    if found is None or found.state is not JobState.NEEDS_ADMIN:
        await message_of(update).reply_html("Only a job held for an admin (NEEDS_ADMIN) can be refunded.")
        return
    await message_of(update).reply_html(
        f"Refund job <code>{found.id}</code> ({texts.rlc(found.max_price)} back to the user)?",
        reply_markup=_confirm(f"refund:{update.update_id}:{found.id}"),
    )


@admin_only
async def retry(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/retry ID: put a held job back where it stopped and drive it again."""
    svc = services_of(context)
    pressed = (update.callback_query.data or "").split(":") if update.callback_query else []
    job_id = (context.args or [""])[0] or (pressed[2] if len(pressed) > 2 else "")
    text = await svc.admin_ops.admin_retry(job_id)
    if update.callback_query:
        await update.callback_query.answer()
    await message_of(update).reply_html(text)


@admin_only
async def reconcile(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/reconcile: the books against the chain, differences listed."""
    svc = services_of(context)
    report = await svc.admin_ops.reconcile()
    await message_of(update).reply_html((report + "\n" + deposit_report(svc))[:4000])


def deposit_report(svc: Services) -> str:
    """/reconcile's deposit lines: what was credited and held, and operator:deposits against the credits."""
    t = svc.ledger.deposits.totals()
    lines = [
        f"deposits: {texts.rlc(t.credited)} credited ({t.credited_count}), {texts.rlc(t.unclaimed)} unclaimed "
        f"({t.unclaimed_count}); operator:deposits paid out {texts.rlc(t.account_net)}"
    ]
    if t.account_net != t.credited:
        lines.append(
            f"❌ operator:deposits paid out {texts.rlc(t.account_net)} but credited deposits sum to "
            f"{texts.rlc(t.credited)}"
        )
    return "\n".join(lines)


@admin_only
async def unclaimed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/unclaimed: deposits held for an admin; /unclaimed ID USER: assign one, after confirmation."""
    svc = services_of(context)
    if svc.deposits is None:
        await message_of(update).reply_html(texts.FUNDING_OFF)
        return
    args = context.args or []
    if not args:
        await message_of(update).reply_html(html.escape(svc.deposits.unclaimed_text())[:4000])
        return
    user = user_id_arg(args[1]) if len(args) == 2 else None
    found = _held_deposit(svc, args[0])
    if user is None or found is None:
        await message_of(update).reply_html(
            "Usage: /unclaimed ID USER_ID, with the ID as /unclaimed lists it (0xTXHASH:LOGINDEX) of a deposit "
            "still unclaimed, and USER_ID the numeric Telegram id."
        )
        return
    # the deposit's id does not fit in a button (64 bytes): it is kept in the books under the update's id
    svc.ledger.set_value(f"claim:{update.update_id}", args[0].lower())
    await message_of(update).reply_html(
        f"Credit {texts.rlc(found.amount)} from <code>{found.sender}</code> to user <code>{user}</code>?",
        reply_markup=_confirm(f"claim:{update.update_id}:{user}"),
    )


def _held_deposit(svc: Services, ref: str) -> Any:
    """The unclaimed deposit named "0xTX:INDEX", or None."""
    tx, _, index = ref.partition(":")
    if not re.fullmatch(r"0x[0-9a-fA-F]{64}", tx) or not _ASCII_ID.fullmatch(index):
        return None
    found = svc.ledger.deposits.get(tx, int(index))
    return found if found is not None and found.status == "unclaimed" else None


@admin_only
async def claim_confirmed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The confirmation of /unclaimed ID USER: credit the deposit once, whatever the number of presses."""
    query = query_of(update)
    svc = services_of(context)
    _, key, user_text = [*(query.data or "").split(":"), "", ""][:3]
    ref = svc.ledger.get_value(f"claim:{key}") if _ASCII_ID.fullmatch(key) else None
    user = user_id_arg(user_text)
    if ref is None or user is None or svc.deposits is None:
        log.warning("event=button_malformed admin=%s data=%r", user_of(update).id, (query.data or "")[:64])
        await query.answer("This button is not valid.", show_alert=True)
        return
    tx, _, index = ref.partition(":")
    before = svc.ledger.deposits.get(tx, int(index))
    if before is not None and before.status == "credited" and before.user_id == user:
        await query.answer(ALREADY_DONE, show_alert=True)
        await message_of(update).reply_html(ALREADY_DONE)
        return
    try:
        done = svc.deposits.assign(ref, user, user_of(update).id)
    except AssignRefused as exc:
        await query.answer()
        await query.edit_message_text(f"❌ Nothing done: {html.escape(str(exc))}", parse_mode="HTML")
        return
    log.info(
        "event=deposit_assigned tx=%s log_index=%d user=%s admin=%s",
        done.tx_hash,
        done.log_index,
        user,
        user_of(update).id,
    )
    await query.answer()
    await query.edit_message_text(
        f"✅ Credited {texts.rlc(done.amount)} to <code>{user}</code>; available now "
        f"{texts.rlc(svc.ledger.balance(user).available)}. They are told with the next deposit cycle.",
        parse_mode="HTML",
    )


@admin_only
async def pause(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/pause: stop taking new pictures (jobs in flight go on)."""
    services_of(context).pipeline.paused = True
    await message_of(update).reply_html("⏸ Intake paused. Jobs in flight go on. /resume to restart.")


@admin_only
async def resume(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/resume: take pictures again."""
    services_of(context).pipeline.paused = False
    await message_of(update).reply_html("▶️ Intake resumed.")


@admin_only
async def price(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/price: the best offer on the market now."""
    svc: Services = services_of(context)
    text = await svc.admin_ops.price_report()
    await message_of(update).reply_html(text)
