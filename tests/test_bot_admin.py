"""Admin commands through the Telegram stand-in: confirmations, idempotence, the chain, refusals to users."""

from __future__ import annotations

from pathlib import Path

import pytest
from telegram import Update

from bot.admin_ops import AdminOps
from devnet.telegram import SentMessage, TgChat, TgUser
from ledger import JobState, Ledger
from tests.fixtures_bot import ADMIN, BotNet, bot_on, photo_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN_COMMANDS = (
    "fund",
    "wallet",
    "deposit",
    "withdraw",
    "users",
    "job",
    "refund",
    "retry",
    "reconcile",
    "pause",
    "resume",
    "price",
)
NO_OFFER = {"workerpool_max_price_nrlc": 1, "match_timeout_s": 600}


def _texts(bn: BotNet, who: object) -> list[str]:
    return [m.text or "" for m in bn.sent(who)]


async def test_every_admin_command_is_unknown_to_a_user(botnet: BotNet) -> None:
    user = botnet.new_user()
    for name in ADMIN_COMMANDS:
        botnet.tg.inject_command(user, f"/{name}", f"{user.id} 5" if name == "fund" else "1")
    await botnet.tg.wait_for(
        lambda: sum("don't know that command" in t for t in _texts(botnet, user)) == len(ADMIN_COMMANDS), timeout=15
    )
    assert len(botnet.sent(user)) == len(ADMIN_COMMANDS)
    assert botnet.ledger.balance(user.id).posted == 10**9
    assert not botnet.bot.services.pipeline.paused


async def test_find_job_by_id_or_by_a_unique_end_of_it(fresh_ledger: Ledger) -> None:
    fresh_ledger.grant("g", 7, 10**9)
    for job_id in ("c7m1234", "c7m5234", "c7g_ab"):
        fresh_ledger.create_job(job_id, 7, 7, 10)
    ops = AdminOps(fresh_ledger, chain=None, jobs=None)  # type: ignore[arg-type]  # finding a job reads the books only
    assert ops.find_job("c7m1234").id == "c7m1234"
    assert ops.find_job("1234").id == "c7m1234"  # the short id users see
    assert ops.find_job("234") is None  # ambiguous: two jobs end so
    assert ops.find_job("9999") is None and ops.find_job("") is None
    assert ops.find_job("_ab").id == "c7g_ab" and ops.find_job("%") is None


async def test_help_shows_admin_commands_to_admins(botnet: BotNet) -> None:
    botnet.tg.inject_command(ADMIN, "/help")
    msg = await botnet.wait_for_text(ADMIN, "Admin")
    assert "/fund" in msg.text and "/reconcile" in msg.text


async def test_fund_asks_confirmation_and_grants_once(botnet: BotNet) -> None:
    user = botnet.new_user(credit_nrlc=0)
    botnet.tg.inject_command(ADMIN, "/fund", f"{user.id} 2.5 welcome gift")
    ask = await botnet.wait_for_text(ADMIN, "Credit user")
    assert botnet.ledger.balance(user.id).posted == 0  # nothing before the button
    [(_label, data), _] = ask.buttons()
    assert data.startswith("fund:") and data.endswith(f":{user.id}:2500000000")
    botnet.tg.press_button(ADMIN, ask.message_id, data)  # a double press: both arrive
    botnet.tg.press_button(ADMIN, ask.message_id, data)
    await botnet.tg.wait_for(lambda: len(botnet.tg.calls("answerCallbackQuery")) >= 2, timeout=10)
    await botnet.bot.services.board.drain()
    assert botnet.ledger.balance(user.id).posted == 2_500_000_000
    grant = botnet.ledger.get_transfer(data.rsplit(":", 2)[0])
    assert grant is not None and grant.memo == "welcome gift"

    # The same Telegram update delivered again (as after a crash): recognised, nothing is asked or done twice.
    update_id = int(data.split(":")[1])
    replay = {
        "update_id": update_id,
        "message": {
            "message_id": 10_000,
            "date": 0,
            "chat": {"id": ADMIN.id, "type": "private"},
            "from": ADMIN.to_api(),
            "text": f"/fund {user.id} 2.5 welcome gift",
            "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
        },
    }
    sent_before = len(botnet.sent(ADMIN))
    await botnet.bot.app.process_update(Update.de_json(replay, botnet.bot.app.bot))
    assert len(botnet.sent(ADMIN)) == sent_before
    assert "Credited 2.5 RLC" in next(m for m in botnet.sent(ADMIN) if m.message_id == ask.message_id).text
    # A stale copy of the button (the key is in its data) does nothing either.
    botnet.tg.press_button(ADMIN, ask.message_id, data, must_exist=False)
    await botnet.wait_for_text(ADMIN, "Already done")
    assert botnet.ledger.balance(user.id).posted == 2_500_000_000
    botnet.ledger.audit()


@pytest.mark.parametrize("amount", ["-1", "0", "abc", "1e3", "99999999999", "1.0000000001"])
async def test_fund_refuses_bad_amounts(botnet: BotNet, amount: str) -> None:
    user = botnet.new_user(credit_nrlc=0)
    botnet.tg.inject_command(ADMIN, "/fund", f"{user.id} {amount}")
    msg = await botnet.wait_for_text(ADMIN, "Not funded")
    assert not msg.buttons()
    assert botnet.ledger.balance(user.id).posted == 0


async def test_fund_usage_without_a_numeric_user(botnet: BotNet) -> None:
    botnet.tg.inject_command(ADMIN, "/fund", "@someone 1")
    msg = await botnet.wait_for_text(ADMIN, "Usage: /fund")
    assert not msg.buttons()


async def test_wallet_withdraw_deposit_on_chain_once_each(botnet: BotNet) -> None:
    chain = botnet.bot.chain
    before = await chain.wallet_report()
    botnet.tg.inject_command(ADMIN, "/wallet")
    msg = await botnet.wait_for_text(ADMIN, "Wallet")
    assert before.address in msg.text and "solvent" in msg.text and "Hub stake" in msg.text

    for command, sign in (("withdraw", -1), ("deposit", +1)):
        botnet.tg.inject_command(ADMIN, f"/{command}", "1.5")
        ask = await botnet.wait_for_text(ADMIN, "Move 1.5 RLC")
        data = ask.buttons()[0][1]
        assert data.startswith(f"{command}:")
        botnet.tg.press_button(ADMIN, ask.message_id, data)
        await botnet.wait_for_text(ADMIN, f"{command.capitalize()} done", timeout=20)
        report = await chain.wallet_report()
        expected = before.stake - 1_500_000_000 if sign < 0 else before.stake
        assert report.stake == expected
        # The same button again (a replayed callback): nothing moves.
        botnet.tg.press_button(ADMIN, ask.message_id, data, must_exist=False)
        replies = 1 if sign < 0 else 2
        await botnet.tg.wait_for(
            lambda: sum("Already done" in t for t in _texts(botnet, ADMIN)) >= replies,  # noqa: B023 - awaited here
            timeout=10,
        )
        assert (await chain.wallet_report()).stake == expected
    botnet.tg.inject_command(ADMIN, "/withdraw", "-3")
    await botnet.wait_for_text(ADMIN, "Nothing done")


async def test_users_job_reconcile_price(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_photo(user, photo_bytes(seed=21))
    await botnet.result_for(user)
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(user.id)

    botnet.tg.inject_command(ADMIN, "/users")
    msg = await botnet.wait_for_text(ADMIN, str(user.id))
    assert "available 0.84 RLC" in msg.text

    botnet.tg.inject_command(ADMIN, "/job", job.id[-8:])
    msg = await botnet.wait_for_text(ADMIN, "State:")
    assert "State: delivered (DELIVERED)" in msg.text and not msg.buttons()
    assert f"Deal: {job.deal_id}" in msg.text and f"Task: {job.task_id}" in msg.text
    assert "Price: app 0.05 RLC + workerpool 0.1 RLC + fee 0.01 RLC = 0.16 RLC" in msg.text
    assert " UTC" in msg.text and "{" not in msg.text and "nRLC" not in msg.text  # no Python reprs

    botnet.tg.inject_command(ADMIN, "/job", "nope")
    await botnet.wait_for_text(ADMIN, "Usage: /job")

    botnet.tg.inject_command(ADMIN, "/reconcile")
    msg = await botnet.wait_for_text(ADMIN, "audit passed")
    assert "no differences" in msg.text

    botnet.tg.inject_command(ADMIN, "/price")
    msg = await botnet.wait_for_text(ADMIN, "Best offer")
    assert "app 0.05 RLC + workerpool 0.1 RLC" in msg.text


async def test_pause_refuses_pictures_and_resume_takes_them_again(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_command(ADMIN, "/pause")
    await botnet.wait_for_text(ADMIN, "Intake paused")
    botnet.tg.inject_photo(user, photo_bytes(seed=22))
    await botnet.wait_for_text(user, "not taking new pictures")
    assert botnet.ledger.user_jobs(user.id) == []
    botnet.tg.inject_command(ADMIN, "/resume")
    await botnet.wait_for_text(ADMIN, "Intake resumed")
    botnet.tg.inject_photo(user, photo_bytes(seed=23))
    await botnet.result_for(user)
    await botnet.settle()
    assert botnet.ledger.balance(user.id).posted == 10**9 - 160_000_000


async def test_refund_and_retry_of_a_held_job(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, **NO_OFFER) as bn:
        user = bn.new_user()
        pipeline = bn.bot.services.pipeline
        bn.tg.inject_photo(user, photo_bytes(seed=24))
        await bn.wait_for_text(user, "looking for a worker")
        [job] = bn.ledger.user_jobs(user.id)
        await pipeline._hold(bn.ledger.get_job(job.id), "test: books and chain disagree")
        alert = await bn.wait_for_text(ADMIN, "needs an admin")
        assert job.id in alert.text
        await bn.wait_for_text(user, "an operator will look at it")

        bn.tg.inject_command(ADMIN, "/job", job.id)
        msg = await bn.wait_for_text(ADMIN, "NEEDS_ADMIN")
        assert [d.split(":")[0] for _, d in msg.buttons()] == ["refund", "retry"]

        bn.tg.inject_command(ADMIN, "/retry", job.id)
        await bn.wait_for_text(ADMIN, "resumed from ORDER_SIGNED")
        assert bn.ledger.get_job(job.id).state is JobState.ORDER_SIGNED
        await pipeline._hold(bn.ledger.get_job(job.id), "test: again")

        bn.tg.inject_command(ADMIN, "/refund", job.id)
        ask = await bn.wait_for_text(ADMIN, "Refund job")
        assert bn.ledger.balance(user.id).pending == job.max_price  # nothing before the button
        bn.tg.press_button(ADMIN, ask.message_id, ask.buttons()[0][1])
        await bn.wait_for_text(ADMIN, "refunded.")
        assert bn.ledger.get_job(job.id).state is JobState.REFUNDED
        bal = bn.ledger.balance(user.id)
        assert (bal.posted, bal.pending) == (10**9, 0)
        await bn.wait_for_text(user, "an operator refunded it")

        bn.tg.inject_command(ADMIN, "/refund", job.id)  # not held any more
        await bn.wait_for_text(ADMIN, "Only a job held")
        bn.ledger.audit()


async def test_admins_told_when_the_stake_runs_low(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, low_stake_nrlc=10**6 * 10**9) as bn:
        user = bn.new_user()
        bn.tg.inject_photo(user, photo_bytes(seed=25))
        await bn.result_for(user)
        msg = await bn.wait_for_text(ADMIN, "runs low")
        assert "stake" in msg.text and "gas" not in msg.text
        await bn.settle()


# --- who pressed the button; strict admin input -----------------------------------------------------------

GROUP = TgChat(id=-1_001_234_567_890, type="supergroup", title="Segbot fans")
OTHER_GROUP = TgChat(id=-1_001_234_567_891, type="supergroup", title="Segbot friends")


async def _next_text(bn: BotNet, who: TgUser, needle: str, after: int, timeout: float = 20.0) -> SentMessage:
    """The first bot message to `who` among those after the first `after` (earlier tests share the chat)
    whose text contains `needle`."""

    def find() -> SentMessage | None:
        return next((m for m in bn.sent(who)[after:] if needle in (m.text or "")), None)

    await bn.tg.wait_for(lambda: find() is not None, timeout)
    return find()  # type: ignore[return-value]  # found: wait_for returned only once find() is not None


async def _pressed(bn: BotNet, user: TgUser, message_id: int, data: str, **where: object) -> dict:
    """Press a button and wait for the bot's answer to the callback query."""
    query = bn.tg.press_button(user, message_id, data, **where)
    await bn.tg.wait_for(lambda: bn.tg.callback_answer(query) is not None, timeout=10)
    return bn.tg.callback_answer(query) or {}


async def test_a_non_admin_pressing_an_admins_buttons_gets_not_for_you(botnet: BotNet) -> None:
    """Admin commands work only in a private chat (in a group the admin is told so: tests/test_bot_groups.py),
    so their buttons are the admin's own; a press of them by anyone else (forged) changes nothing."""
    user, bystander = botnet.new_user(credit_nrlc=0), botnet.new_user(credit_nrlc=0)
    admin_chat = TgChat.private(ADMIN)
    seen = len(botnet.tg.sent(admin_chat.id))
    botnet.tg.inject_command(ADMIN, "/fund", f"{user.id} 2")
    await botnet.tg.wait_for(lambda: len(botnet.tg.sent(admin_chat.id)) > seen, 10)
    ask = botnet.tg.sent(admin_chat.id)[seen]
    assert "Credit user" in (ask.text or "")
    [(_, confirm), (_, cancel)] = ask.buttons()
    botnet.tg.inject_text(bystander, "hello")
    hint = await botnet.wait_for_text(bystander, "Send me a photo")
    for data in (confirm, cancel):  # the admin's buttons' data, forged under a message of the bystander's
        answer = await _pressed(botnet, bystander, hint.message_id, data, must_exist=False)
        assert answer["text"] == "This button is not for you." and answer["show_alert"]
    now = botnet.tg.sent(admin_chat.id)[seen]
    assert now.text == ask.text and now.buttons() == ask.buttons() and not now.edits  # nothing happened
    assert botnet.ledger.balance(user.id).posted == 0
    await _pressed(botnet, ADMIN, ask.message_id, cancel)
    await botnet.tg.wait_for(lambda: "Cancelled" in (botnet.tg.sent(admin_chat.id)[seen].text or ""), 10)
    assert botnet.ledger.balance(user.id).posted == 0


async def test_status_refresh_in_a_group_answers_only_its_owner(botnet: BotNet) -> None:
    owner, other = botnet.new_user(), botnet.new_user()
    seen = len(botnet.tg.sent(OTHER_GROUP.id))
    botnet.tg.inject_command(owner, "/status", chat=OTHER_GROUP)
    await botnet.tg.wait_for(lambda: len(botnet.tg.sent(OTHER_GROUP.id)) > seen, 10)
    board = botnet.tg.sent(OTHER_GROUP.id)[seen]
    [(_, data)] = board.buttons()
    assert data == f"status:{owner.id}" and len(data.encode()) <= 64
    refused = await _pressed(botnet, other, board.message_id, data, chat=OTHER_GROUP)
    assert refused["text"] == "This button is not for you."
    assert (await _pressed(botnet, owner, board.message_id, data, chat=OTHER_GROUP)).get("text") is None
    forged = await _pressed(botnet, other, board.message_id, "status", chat=OTHER_GROUP, must_exist=False)
    assert forged["text"] == "This button is not for you."  # an owner-less button counts in private chats only


async def test_retry_and_detections_buttons_check_who_presses(botnet: BotNet) -> None:
    owner, other = botnet.new_user(), botnet.new_user()
    botnet.tg.inject_photo(owner, photo_bytes(seed=26))
    result = await botnet.result_for(owner)
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(owner.id)
    botnet.tg.inject_text(other, "hello")
    hint = await botnet.wait_for_text(other, "Send me a photo")
    for data in (f"det:{job.id}", f"retry:1:{job.id}", "x", f"refund:1:{job.id}"):
        answer = await _pressed(botnet, other, hint.message_id, data, must_exist=False)
        assert answer["text"] == "This button is not for you.", data
    assert (await _pressed(botnet, owner, result.message_id, f"det:{job.id}")).get("text") is None
    await botnet.tg.wait_for(lambda: any(m.file_name == "detections.json" for m in botnet.sent(owner)), 10)
    assert botnet.ledger.get_job(job.id).state is JobState.DELIVERED


# Arabic-Indic and full-width digits: str.isdigit() accepts them, the bot must not.
@pytest.mark.parametrize(
    "who",
    [
        "٣٤٥",
        "３４５",  # noqa: RUF001 - the look-alike digits are the point
        "0",
        "-5",
        "+5",
        "4503599627370496",
        "99999999999999999999",
        "1_0",
    ],
)
async def test_fund_takes_only_ascii_ids_of_real_users(botnet: BotNet, who: str) -> None:
    seen = len(botnet.sent(ADMIN))
    botnet.tg.inject_command(ADMIN, "/fund", f"{who} 1")
    msg = await _next_text(botnet, ADMIN, "Usage: /fund", seen)
    assert not msg.buttons()
    assert botnet.ledger.balance(345).posted == 0 and botnet.ledger.balance(5).posted == 0


async def test_the_longest_fund_confirmation_fits_telegrams_64_bytes(botnet: BotNet) -> None:
    biggest = 2**52 - 1
    seen = len(botnet.sent(ADMIN))
    botnet.tg.inject_command(ADMIN, "/fund", f"{biggest} 1000000")  # the largest id and the largest grant
    ask = await _next_text(botnet, ADMIN, "Credit user", seen)
    [(_, data), _] = ask.buttons()  # the stand-in refuses callback data over 64 bytes, as Telegram does
    assert len(data.encode()) <= 64
    botnet.tg.press_button(ADMIN, ask.message_id, data)
    await _next_text(botnet, ADMIN, "Credited 1000000 RLC", seen)
    assert botnet.ledger.balance(biggest).posted == 10**15
    botnet.ledger.audit()


async def test_withdraw_beyond_the_free_stake_is_refused_and_not_recorded(botnet: BotNet) -> None:
    report = await botnet.bot.chain.wallet_report()
    too_much = report.stake + 10**9
    seen = len(botnet.sent(ADMIN))
    botnet.tg.inject_command(ADMIN, "/withdraw", str(too_much // 10**9))
    msg = await _next_text(botnet, ADMIN, "Nothing done", seen)
    assert "free stake" in msg.text and not msg.buttons()
    botnet.tg.inject_command(ADMIN, "/deposit", str((report.rlc + 10**9) // 10**9))
    msg = await _next_text(botnet, ADMIN, "cannot be deposited", seen)
    assert not msg.buttons()
    # A confirmation whose amount is no longer there when pressed: refused, and nothing is recorded.
    forged = f"withdraw:777:{too_much}"
    botnet.tg.inject_command(ADMIN, "/withdraw", "1")
    ask = await _next_text(botnet, ADMIN, "Move 1 RLC", seen)
    botnet.tg.press_button(ADMIN, ask.message_id, forged, must_exist=False)
    await botnet.tg.wait_for(
        lambda: "Nothing done" in (next(m for m in botnet.sent(ADMIN) if m.message_id == ask.message_id).text or ""), 10
    )
    assert botnet.ledger._conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'admin_stake'").fetchone()[0] == 0
    assert (await botnet.bot.chain.wallet_report()).stake == report.stake


async def test_a_button_nobody_knows_is_answered(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_text(user, "hello")
    hint = await botnet.wait_for_text(user, "Send me a photo")
    for data in ("zzz", "retry", "fund:1"):
        answer = await _pressed(botnet, user, hint.message_id, data, must_exist=False)
        assert answer["text"] in ("This button no longer works.", "This button is not for you."), data
    seen = len(botnet.sent(ADMIN))
    botnet.tg.inject_text(ADMIN, "hello")
    admin_hint = await _next_text(botnet, ADMIN, "Send me a photo", seen)
    for data in ("fund:1", "refund:x:y", "withdraw:1:٣", "deposit:٣:1"):
        answer = await _pressed(botnet, ADMIN, admin_hint.message_id, data, must_exist=False)
        assert answer["text"] == "This button is not valid.", data  # never a silent spinner
