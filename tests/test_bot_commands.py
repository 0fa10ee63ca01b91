"""Every user command and every stage of a job, driven through the Telegram stand-in on a devnet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger import JobState
from tests.fixtures_bot import BotNet, bot_on, photo_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")

NO_OFFER = {"workerpool_max_price_nrlc": 1, "match_timeout_s": 600}  # the pool asks more: the job waits


async def test_help_lists_user_commands_and_hides_admin_ones(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_command(user, "/help")
    msg = await botnet.wait_for_text(user, "Commands")
    for command in ("/balance", "/status", "/jobs", "/cancel", "/forget"):
        assert command in msg.text
    assert "/fund" not in msg.text
    names = {c["command"] for c in botnet.tg.commands()}
    assert {"start", "help", "balance", "status", "jobs", "cancel", "forget"} <= names


async def test_balance_shows_available_and_reserved(botnet: BotNet) -> None:
    user = botnet.new_user(credit_nrlc=1_500_000_000)
    botnet.tg.inject_command(user, "/balance")
    msg = await botnet.wait_for_text(user, "Available")
    assert "Available: 1.5 RLC" in msg.text
    assert "Reserved for jobs in progress: 0 RLC" in msg.text


async def test_a_job_through_every_stage_then_status_jobs_detections_forget(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, worker_args="--sleep 2.5") as botnet:  # the task takes a while
        await _job_through_every_stage(botnet)


async def _job_through_every_stage(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_photo(user, photo_bytes(seed=11))
    ack = await botnet.wait_for_text(user, "📥", timeout=5)
    result = await botnet.result_for(user)
    await botnet.settle()
    assert result.caption.startswith("1 person")
    assert "Charged 0.16 RLC (task 0.15 RLC + fee 0.01 RLC)" in result.caption  # 0.05 app + 0.1 pool + fee
    assert "Random weights" not in result.caption  # the test app says nothing about its weights
    [status] = [m for m in botnet.sent(user) if m.message_id == ack.message_id]
    assert status.text.startswith("✅ Done in")
    assert "Charged" not in status.text  # said once, under the picture
    history = [r.text or "" for r in status.edits]
    assert len(history) >= 2, history
    assert any("⏱" in t and "so far" in t for t in history), history  # elapsed time while it works
    assert any("segmenting" in t for t in history), history
    actions = [c for c in botnet.tg.calls("sendChatAction") if c.params.get("chat_id") == user.id]
    assert actions and all(c.params["action"] == "upload_photo" for c in actions)

    botnet.tg.inject_command(user, "/status")
    msg = await botnet.wait_for_text(user, "Nothing in progress")
    assert ("🔄 Refresh", "status") in msg.buttons()

    botnet.tg.inject_command(user, "/jobs")
    msg = await botnet.wait_for_text(user, "Recent jobs")
    [job] = botnet.ledger.user_jobs(user.id)
    assert job.id[-8:] in msg.text and "delivered" in msg.text and "0.15 RLC + fee" in msg.text

    botnet.tg.press_button(user, result.message_id, f"det:{job.id}")
    await botnet.tg.wait_for(lambda: any(m.file_name == "detections.json" for m in botnet.sent(user)), 10)
    doc = next(m for m in botnet.sent(user) if m.file_name == "detections.json")
    assert json.loads(doc.data)["detections"][0]["class_name"] == "person"

    stored = [Path(job.input_ref), Path(job.result_ref)]
    assert all(p.exists() for p in stored)
    botnet.tg.inject_command(user, "/forget")
    ask = await botnet.wait_for_text(user, "cannot be undone")
    assert "2 stored" in ask.text
    assert [d for _, d in ask.buttons()] == [f"forget:yes:{user.id}", f"forget:no:{user.id}"]
    stranger = botnet.new_user()
    botnet.tg.inject_text(stranger, "hello")
    hint = await botnet.wait_for_text(stranger, "Send me a photo")
    answered = len(botnet.tg.calls("answerCallbackQuery"))
    botnet.tg.press_button(stranger, hint.message_id, f"forget:yes:{user.id}", must_exist=False)  # forged
    await botnet.tg.wait_calls("answerCallbackQuery", answered + 1, timeout=5)
    assert all(p.exists() for p in stored)  # only the asker may confirm
    botnet.tg.press_button(user, ask.message_id, f"forget:no:{user.id}")
    await botnet.wait_for_text(user, "Nothing deleted")
    assert all(p.exists() for p in stored)
    botnet.tg.inject_command(user, "/forget")
    ask = await botnet.wait_for_text(user, "cannot be undone")
    botnet.tg.press_button(user, ask.message_id, f"forget:yes:{user.id}")
    msg = await botnet.wait_for_text(user, "Deleted")
    assert "Deleted 2 stored" in msg.text
    assert not any(p.exists() for p in stored)
    botnet.tg.inject_command(user, "/forget")
    await botnet.wait_for_text(user, "nothing to delete")
    assert botnet.ledger.balance(user.id).posted == 10**9 - 160_000_000  # the books keep the amounts
    botnet.tg.press_button(user, result.message_id, f"det:{job.id}")
    await botnet.wait_for_text(user, "no longer stored")


async def test_detections_button_of_another_user_gives_nothing(botnet: BotNet) -> None:
    owner, other = botnet.new_user(), botnet.new_user()
    botnet.tg.inject_photo(owner, photo_bytes(seed=12))
    await botnet.result_for(owner)
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(owner.id)
    botnet.tg.inject_text(other, "hello")
    hint = await botnet.wait_for_text(other, "Send me a photo")
    botnet.tg.press_button(other, hint.message_id, f"det:{job.id}", must_exist=False)
    await botnet.tg.wait_calls("answerCallbackQuery", 1, timeout=5)
    await botnet.bot.services.board.drain()
    assert not any(m.file_name == "detections.json" for m in botnet.tg.sent(other.id))
    assert not any(m.file_name == "detections.json" for m in botnet.tg.sent(owner.id))


async def test_status_refresh_and_cancel_before_matching_voids_the_reservation(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, **NO_OFFER) as bn:
        user = bn.new_user()
        bn.tg.inject_photo(user, photo_bytes(seed=13))
        await bn.wait_for_text(user, "looking for a worker")
        [job] = bn.ledger.user_jobs(user.id)
        assert job.state is JobState.ORDER_SIGNED
        assert bn.ledger.balance(user.id).pending == job.max_price

        bn.tg.inject_command(user, "/status")
        board = await bn.wait_for_text(user, "looking for a worker ·")
        assert job.id[-8:] in board.text
        bn.tg.press_button(user, board.message_id, "status")
        await bn.tg.wait_calls("answerCallbackQuery", 1, timeout=5)

        bn.tg.inject_command(user, "/balance")
        msg = await bn.wait_for_text(user, "Reserved")
        assert "Reserved for jobs in progress: 0.060000001 RLC" in msg.text  # 0.05 + 0.000000001 + fee

        bn.tg.inject_command(user, "/cancel")
        msg = await bn.wait_for_text(user, "Cancelled job")
        assert job.id[-8:] in msg.text
        assert bn.ledger.get_job(job.id).state is JobState.CANCELLED
        bal = bn.ledger.balance(user.id)
        assert (bal.posted, bal.pending) == (10**9, 0)
        await bn.wait_for_text(user, "🚫 Cancelled")
        bn.tg.inject_command(user, "/cancel")
        await bn.wait_for_text(user, "nothing I can cancel")
        assert bn.bot.inputs.published(job.id) is None
        bn.ledger.audit()
