"""How jobs end when something cannot go on: the books and the chain disagree, Telegram refuses the result,
the chain's RPC fails for a moment; and what the books record of it.

Each ending is told to the user by a message of its own, and no job waits forever or spins: a state that
waiting cannot change holds the job for an admin, with the reason, while the bot keeps answering.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from devnet.anvil import free_port
from ledger import JobState, Ledger
from tests.fixtures_bot import ADMIN, BotNet, bot_on, photo_bytes, start_botnet

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def wait_job(ledger: Any, job_id: str, *states: JobState, timeout: float = 30) -> Any:
    async def poll() -> Any:
        while True:
            job = ledger.get_job(job_id)
            if job is not None and job.state in states:
                return job
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(poll(), timeout)


async def first_job(bn: BotNet, user_id: int, *states: JobState, timeout: float = 30) -> Any:
    async def poll() -> Any:
        while True:
            jobs = bn.ledger.user_jobs(user_id)
            if jobs and jobs[0].state in states:
                return jobs[0]
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(poll(), timeout)


async def known_chat(bn: BotNet, credit: int = 10**9) -> Any:
    """A user who has talked to the bot (Telegram lets a bot write only to such chats)."""
    user = bn.new_user(credit)
    bn.tg.inject_command(user, "/start")
    await bn.wait_for_text(user, "Privacy")
    return user


def held_told(bn: BotNet, user: Any) -> list[Any]:
    return [m for m in bn.sent(user) if m.text and "is held for an operator" in m.text]


async def test_a_running_job_the_chain_never_saw_start_is_held_while_the_bot_answers(
        devnet_module, tmp_path: Path) -> None:
    """After a chain reset the books may say RUNNING while the chain says the task never started: the job
    is held for an admin with the reason (it used to spin without yielding: no command answered)."""
    net = devnet_module
    net.pool.faults.clear()
    net.pool.set_fault("no_show")  # the workerpool never initializes the task: UNSET on chain
    try:
        first = await start_botnet(net, tmp_path)
        try:
            user = await known_chat(first)
            first.tg.inject_command(ADMIN, "/start")  # the admin's chat, where holds are reported
            await first.tg.wait_for(lambda: bool(first.tg.sent(ADMIN.id)), timeout=20)
            first.tg.inject_photo(user, photo_bytes(seed=70))
            job = await first_job(first, user.id, JobState.MATCHED)
            assert (await net.pool.wait_task(job.task_id, 30)).state == "no_show"
        finally:
            await first.bot.stop()
        with Ledger(tmp_path / "books.db") as books:  # what books saved before a chain reset look like
            books.transition(job.id, JobState.MATCHED, JobState.RUNNING)
        second = await start_botnet(net, tmp_path)
        try:
            second.tg.inject_command(user, "/balance")
            held = await wait_job(second.ledger, job.id, JobState.NEEDS_ADMIN)
            assert "not started" in held.error and "chain reset" in held.error, held.error
            await second.wait_for_text(user, "Available")
            await second.wait_for_text(user, "is held for an operator")
            assert "Your money is safe" in held_told(second, user)[0].text
            await second.tg.wait_for(lambda: any(job.id in (m.text or "") and "needs an admin" in m.text
                                                 for m in second.tg.sent(ADMIN.id)), timeout=10)
            await second.settle()
            assert len(held_told(second, user)) == 1
            bal = second.ledger.balance(user.id)
            assert (bal.posted, bal.pending) == (10**9, job.max_price)  # reserved until an admin decides
            assert second.ledger.jobs_in_flight(user.id) == 1
            second.ledger.audit()
        finally:
            await second.bot.stop()
    finally:
        net.pool.faults.clear()


async def test_a_deal_the_chain_does_not_know_is_held(botnet: BotNet) -> None:
    """Books that name a deal the chain never had (a chain started afresh) hold the job; nothing is
    claimed or retried against a deal that does not exist."""
    user = await known_chat(botnet)
    books = botnet.ledger
    job_id = f"c{user.id}m9001"
    books.create_job(job_id, user.id, user.id, botnet.settings.max_price_nrlc)
    deal = "0x" + hashlib.sha256(job_id.encode()).hexdigest()
    books.transition(job_id, JobState.RECEIVED, JobState.ORDER_SIGNED)
    books.transition(job_id, JobState.ORDER_SIGNED, JobState.MATCHING)
    books.transition(job_id, JobState.MATCHING, JobState.MATCHED, deal_id=deal,
                     task_id=botnet.bot.chain.task_id(deal), app_price=0, workerpool_price=0)
    botnet.bot.services.pipeline.drive(job_id)  # what a restart does for every unfinished job
    held = await wait_job(books, job_id, JobState.NEEDS_ADMIN)
    assert f"does not know deal {deal}" in held.error, held.error
    await botnet.wait_for_text(user, "is held for an operator")
    await botnet.settle()
    assert books.txs_for_job(job_id) == []  # no claim of a deal that does not exist
    assert books.balance(user.id).pending == botnet.settings.max_price_nrlc
    books.audit()


async def test_a_result_telegram_refuses_as_a_photo_is_sent_as_a_file(botnet: BotNet) -> None:
    """Telegram refuses photos over 20:1 (PHOTO_INVALID_DIMENSIONS): the result goes as a file at once,
    the job is DELIVERED and leaves the in-flight count (it used to be retried every 30 s forever).

    The job is written to the books as intake writes it: intake now refuses such pictures (a job taken in
    by an earlier version, or a result of another shape than its input, still comes this way)."""
    user = await known_chat(botnet)
    job_id = f"c{user.id}m9002"
    upload = botnet.books / "uploads" / f"{job_id}.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(photo_bytes(size=(2100, 100), fmt="PNG", seed=71))
    botnet.ledger.create_job(job_id, user.id, user.id, botnet.settings.max_price_nrlc, input_ref=str(upload),
                             options={"args": botnet.settings.worker_args})
    botnet.bot.services.pipeline.drive(job_id)
    result = await botnet.result_for(user)
    assert result.kind == "document" and "Charged" in (result.caption or "")
    photos = [c for c in botnet.tg.calls("sendPhoto") if str(c.params.get("chat_id")) == str(user.id)]
    assert [c.status for c in photos] == [400]  # tried once as a photo, refused, never retried
    assert "PHOTO_INVALID_DIMENSIONS" in (photos[0].description or "")
    await botnet.settle()
    job = botnet.ledger.get_job(job_id)
    assert job.state is JobState.DELIVERED and "photo refused" in (job.error or "")
    assert botnet.ledger.jobs_in_flight(user.id) == 0
    charged = job.app_price + job.workerpool_price + botnet.settings.fee_nrlc
    assert botnet.ledger.balance(user.id) == botnet.ledger.balance(user.id).__class__(
        10**9 - charged, 0, 10**9 - charged)
    assert len([m for m in botnet.sent(user) if m.kind in ("photo", "document")]) == 1
    botnet.ledger.audit()


class BlippingRpc:
    """A JSON-RPC relay to anvil on 127.0.0.1 that answers the methods in `failing` with a node error, as a
    loaded or restarting node does for a moment."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failing: set[str] = set()
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._relay)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = ClientSession()
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            call = json.loads(body)
        except ValueError:
            call = None
        if isinstance(call, dict) and call.get("method") in self.failing:
            self.refused += 1
            return web.json_response({"jsonrpc": "2.0", "id": call.get("id"),
                                      "error": {"code": -32000, "message": "backend unavailable, retry"}})
        assert self._session is not None
        async with self._session.post(self.upstream, data=body,
                                      headers={"Content-Type": "application/json"}) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")


async def test_a_mined_transaction_is_not_relabelled_replaced_on_an_rpc_blip(devnet_module, tmp_path: Path) -> None:
    """Only a node saying "no such transaction" makes a recorded transaction unmined; an RPC error leaves
    the record for the next look (it used to be marked `replaced` although it was mined)."""
    relay = BlippingRpc(devnet_module.anvil.rpc_url)
    await relay.start()
    try:
        async with bot_on(devnet_module, tmp_path, rpc_url=relay.url) as bn:
            user = bn.new_user()
            bn.tg.inject_photo(user, photo_bytes(seed=72))
            await bn.result_for(user)
            await bn.settle()
            [job] = bn.ledger.user_jobs(user.id)
            [match] = [t for t in bn.ledger.txs_for_job(job.id) if "match" in (t.purpose or "").lower()]
            assert match.status == "mined"
            bn.ledger.update_tx(match.tx_hash, "broadcast")  # as left by a kill before its receipt was read
            relay.failing.add("eth_getTransactionReceipt")
            assert await bn.bot.chain.settle_pending_match(job.id)
            assert relay.refused >= 1
            assert bn.ledger.get_tx(match.tx_hash).status == "broadcast"  # unknown yet, not "replaced"
            relay.failing.clear()
            assert await bn.bot.chain.settle_pending_match(job.id)
            assert bn.ledger.get_tx(match.tx_hash).status == "mined"
            assert not await bn.bot.chain.settle_pending_match(job.id)  # nothing pending any more
    finally:
        await relay.stop()
