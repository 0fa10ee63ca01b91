"""The bot end to end on the devnet: a picture in, a segmented picture back, the money right."""

from __future__ import annotations

import pytest

from tests.fixtures_bot import BotNet, photo_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_start_shows_price_balance_and_privacy(botnet: BotNet) -> None:
    user = botnet.new_user(credit_nrlc=2 * 10**9)
    botnet.tg.inject_command(user, "/start")
    msg = await botnet.wait_for_text(user, "Privacy")
    assert "2 RLC" in msg.text
    assert "public" in msg.text and "/forget" in msg.text


async def test_photo_comes_back_segmented_and_is_charged_matched_prices_plus_fee(botnet: BotNet) -> None:
    user = botnet.new_user(credit_nrlc=10**9)
    botnet.tg.inject_photo(user, photo_bytes(seed=1))
    result = await botnet.result_for(user)
    assert result.kind == "photo"
    assert "Charged" in result.caption
    await botnet.settle()
    net = botnet.net
    charged = net.config.app_price + net.config.pool_price + botnet.settings.fee_nrlc
    bal = botnet.ledger.balance(user.id)
    assert bal.posted == 10**9 - charged
    assert bal.pending == 0
    [job] = botnet.ledger.user_jobs(user.id)
    assert job.state.value == "DELIVERED"
    assert job.deal_id and job.task_id
    status = next(m for m in botnet.sent(user) if m.kind == "text" and m.edits)
    assert "Done" in status.text
    botnet.ledger.audit()


async def test_no_credit_costs_nothing(botnet: BotNet) -> None:
    user = botnet.new_user(credit_nrlc=0)
    botnet.tg.inject_photo(user, photo_bytes(seed=2))
    msg = await botnet.wait_for_text(user, "Nothing was charged")
    assert "available" in msg.text
    assert botnet.ledger.user_jobs(user.id) == []


async def test_admin_commands_refused_to_users(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_command(user, "/fund", f"{user.id} 100")
    await botnet.wait_for_text(user, "don't know that command")
    assert botnet.ledger.balance(user.id).posted == 10**9
