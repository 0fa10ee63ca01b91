"""How jobs end when something cannot go on: the books and the chain disagree, Telegram refuses the result,
the chain's RPC fails for a moment; and what the books record of it.

Each ending is told to the user by a message of its own, and no job waits forever or spins: a state that
waiting cannot change holds the job for an admin, with the reason, while the bot keeps answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from telegram.error import BadRequest
from web3 import Web3

from devnet.anvil import free_port
from devnet.archive import result_archive
from ledger import JobState, Ledger, LedgerBusy
from tests.fixtures_bot import ADMIN, BotNet, bot_on, photo_bytes, start_botnet

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _job_in(read: Any, states: tuple[JobState, ...], what: str, timeout: float) -> Any:
    """Polls `read()` (a job or None) until the job is in one of `states`; fails loudly, with the state it is
    in, after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = read()
        if job is not None and job.state in states:
            return job
        if asyncio.get_running_loop().time() > deadline:
            now = "no job" if job is None else f"{job.state.value} ({job.error})"
            raise AssertionError(f"{what} not in {[s.value for s in states]} within {timeout} s: {now}")
        await asyncio.sleep(0.05)


async def wait_job(ledger: Any, job_id: str, *states: JobState, timeout: float = 30) -> Any:
    return await _job_in(lambda: ledger.get_job(job_id), states, f"job {job_id}", timeout)


async def first_job(bn: BotNet, user_id: int, *states: JobState, timeout: float = 30) -> Any:
    def latest() -> Any:
        jobs = bn.ledger.user_jobs(user_id)
        return jobs[0] if jobs else None

    return await _job_in(latest, states, f"the job of user {user_id}", timeout)


async def known_chat(bn: BotNet, credit: int = 10**9) -> Any:
    """A user who has talked to the bot (Telegram lets a bot write only to such chats)."""
    user = bn.new_user(credit)
    bn.tg.inject_command(user, "/start")
    await bn.wait_for_text(user, "Privacy")
    return user


def held_told(bn: BotNet, user: Any) -> list[Any]:
    return [m for m in bn.sent(user) if m.text and "is held for an operator" in m.text]


async def test_a_running_job_the_chain_never_saw_start_is_held_while_the_bot_answers(
    devnet_module, tmp_path: Path
) -> None:
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
            await second.tg.wait_for(
                lambda: any(job.id in (m.text or "") and "needs an admin" in m.text for m in second.tg.sent(ADMIN.id)),
                timeout=10,
            )
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
    books.transition(
        job_id,
        JobState.MATCHING,
        JobState.MATCHED,
        deal_id=deal,
        task_id=botnet.bot.chain.task_id(deal),
        app_price=0,
        workerpool_price=0,
    )
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
    botnet.ledger.create_job(
        job_id,
        user.id,
        user.id,
        botnet.settings.max_price_nrlc,
        input_ref=str(upload),
        options={"args": botnet.settings.worker_args},
    )
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
        10**9 - charged, 0, 10**9 - charged
    )
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
            return web.json_response(
                {
                    "jsonrpc": "2.0",
                    "id": call.get("id"),
                    "error": {"code": -32000, "message": "backend unavailable, retry"},
                }
            )
        assert self._session is not None
        async with self._session.post(self.upstream, data=body, headers={"Content-Type": "application/json"}) as resp:
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


UNTRUSTED = '<b>&</b> <a href="x">'


async def test_an_app_error_with_html_in_it_is_told_as_the_app_wrote_it(botnet: BotNet, tmp_path: Path) -> None:
    """An app's error.txt is text from outside: a refund that quotes it reaches the user with the characters
    as written (it used to go out as HTML: Telegram refused it, "can't parse entities", and the user was
    never told although the books said "told"), and it can add no tag or link."""
    user = await known_chat(botnet)
    pipeline = botnet.bot.services.pipeline
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):  # the stand-in reads HTML as Telegram
        await pipeline.bot.send_message(chat_id=user.id, text=f"x {UNTRUSTED}", parse_mode="HTML")
    out = tmp_path / "iexec_out"
    out.mkdir()
    archive, _ = result_archive(out, 1, b"", f"Traceback...\nValueError: {UNTRUSTED}\n".encode())
    cid = botnet.net.gateway.put(archive)
    results = json.dumps({"storage": "ipfs", "location": botnet.net.gateway.location(cid)}).encode()
    ack = await pipeline.bot.send_message(chat_id=user.id, text="📥 Got it. Checking your picture…")
    job_id = f"c{user.id}m9003"
    books = botnet.ledger
    books.create_job(job_id, user.id, user.id, botnet.settings.max_price_nrlc, status_message_id=ack.message_id)
    deal = "0x" + hashlib.sha256(job_id.encode()).hexdigest()
    books.transition(job_id, JobState.RECEIVED, JobState.ORDER_SIGNED)
    books.transition(job_id, JobState.ORDER_SIGNED, JobState.MATCHING)
    books.transition(
        job_id,
        JobState.MATCHING,
        JobState.MATCHED,
        deal_id=deal,
        task_id=botnet.bot.chain.task_id(deal),
        app_price=1,
        workerpool_price=1,
    )
    books.transition(job_id, JobState.MATCHED, JobState.RUNNING)
    await pipeline._take_result(books.get_job(job_id), results)  # the task finalized with this archive

    notice = await botnet.wait_for_text(user, "was refunded in full")
    assert f"ValueError: {UNTRUSTED}" in notice.text, notice.text  # what the user reads: the literal text
    await botnet.tg.wait_for(
        lambda: any(m.message_id == ack.message_id and UNTRUSTED in (m.text or "") for m in botnet.sent(user)),
        timeout=10,
    )  # the status message too
    await botnet.tg.wait_for(lambda: books.seen_event("told", f"REFUNDED:{job_id}"), timeout=10)
    refused = [
        c
        for c in botnet.tg.calls()
        if str(c.params.get("chat_id")) == str(user.id)
        and c.status == 400
        and c.method in ("sendMessage", "editMessageText")
    ]
    assert len(refused) == 1  # only the probe above: every text of the refund was read as sent
    assert books.get_job(job_id).state is JobState.REFUNDED
    botnet.tg.inject_command(ADMIN, "/job", job_id)  # the admin reads the books' error as written too
    report = await botnet.wait_for_text(ADMIN, "Error: app_error")
    assert f"ValueError: {UNTRUSTED}" in report.text, report.text
    bal = books.balance(user.id)
    assert (bal.posted, bal.pending) == (10**9, 0)
    books.audit()


def hold_books(path: Path) -> sqlite3.Connection:
    """Another process's long write transaction on the books (a CLI run, a backup): the file is locked."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def test_a_picture_taken_in_while_the_books_are_busy_waits_for_them(botnet: BotNet) -> None:
    """Intake waits for books locked longer than the event loop's short bound, without an error reply (it
    used to raise LedgerBusy after 0.25 s: a generic error, the update marked handled, the picture lost);
    books that stay locked past the limit raise, for the update to be left to the next start."""
    user = await known_chat(botnet)
    pipeline = botnet.bot.services.pipeline
    sent = await pipeline.bot.send_photo(chat_id=user.id, photo=photo_bytes(seed=73))
    file_id = max(sent.photo, key=lambda p: p.width * p.height).file_id
    ack = await pipeline.bot.send_message(chat_id=user.id, text="📥 Got it. Checking your picture…")
    lock = hold_books(botnet.books / "books.db")
    try:
        intake = asyncio.create_task(
            pipeline.start_job(
                user=user.id,
                chat=user.id,
                message_id=9004,
                status_message_id=ack.message_id,
                source=("telegram", file_id),
            )
        )
        upload = botnet.books / "uploads" / f"c{user.id}m9004.jpg"
        await botnet.tg.wait_for(upload.exists, timeout=20)  # downloaded and checked: the job is written next
        await asyncio.sleep(0)  # the loop ran on: the first write found the books busy and waits
        assert not intake.done()
    finally:
        lock.rollback()
        lock.close()
    assert await asyncio.wait_for(intake, 30) is True
    job = await wait_job(botnet.ledger, f"c{user.id}m9004", *JobState)
    assert job.status_message_id == ack.message_id and job.max_price == botnet.settings.max_price_nrlc

    pipeline.intake_busy_limit_s = 1.0
    lock = hold_books(botnet.books / "books.db")
    try:
        with pytest.raises(LedgerBusy):
            await pipeline.start_job(
                user=user.id,
                chat=user.id,
                message_id=9005,
                status_message_id=ack.message_id,
                source=("telegram", file_id),
            )
    finally:
        lock.rollback()
        lock.close()
    assert botnet.ledger.get_job(f"c{user.id}m9005") is None  # nothing reserved: taken in at the next start
    await botnet.result_for(user)  # the first picture's job went on as usual
    await botnet.settle()
    botnet.ledger.audit()


VIEW_DEAL = Web3.keccak(text="viewDeal(bytes32)")[:4].hex()


class LaggingRpc(BlippingRpc):
    """A relay whose first `hide` viewDeal reads answer as a node behind the tip does: the deal is unknown
    (the read is made for a deal id nobody has)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.hide = 0
        self.hidden = 0

    async def _relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        call = json.loads(body) if body.startswith(b"{") else None
        if self.hide > 0 and isinstance(call, dict) and call.get("method") == "eth_call":
            tx = call["params"][0]
            key = "data" if "data" in tx else "input"
            if str(tx.get(key, "")).removeprefix("0x").startswith(VIEW_DEAL.removeprefix("0x")):
                self.hide -= 1
                self.hidden += 1
                tx[key] = "0x" + VIEW_DEAL.removeprefix("0x") + "ab" * 32
                body = json.dumps(call).encode()
        assert self._session is not None
        async with self._session.post(self.upstream, data=body, headers={"Content-Type": "application/json"}) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")


async def test_a_deal_a_node_behind_the_tip_does_not_know_yet_is_read_again(devnet_module, tmp_path: Path) -> None:
    """Just after our match is mined, an RPC node behind the tip calls the deal unknown: it is read again a
    moment later (it used to hold the job for an admin at once, "was the chain reset?")."""
    relay = LaggingRpc(devnet_module.anvil.rpc_url)
    await relay.start()
    try:
        async with bot_on(devnet_module, tmp_path, rpc_url=relay.url) as bn:
            user = bn.new_user()
            relay.hide = 2
            bn.tg.inject_photo(user, photo_bytes(seed=74))
            result = await bn.result_for(user)
            assert "Charged" in (result.caption or "")
            await bn.settle()
            assert relay.hidden == 2
            [job] = bn.ledger.user_jobs(user.id)
            assert job.state is JobState.DELIVERED and not bn.ledger.jobs_in_states(JobState.NEEDS_ADMIN)
            bn.ledger.audit()
    finally:
        await relay.stop()


async def test_a_picture_the_busy_books_could_not_take_is_taken_at_the_next_start(
    devnet_module, tmp_path: Path
) -> None:
    """Books locked past the intake's limit: the user reads that the picture waits (not a generic error,
    not "Got it" for ever), the update stays in the inbox, and the next start takes the picture in."""
    first = await start_botnet(devnet_module, tmp_path)
    try:
        user = await known_chat(first)
        first.bot.services.pipeline.intake_busy_limit_s = 1.0
        first.tg.inject_photo(user, photo_bytes(seed=75))
        await first.tg.wait_for(lambda: any("Got it" in (m.text or "") for m in first.sent(user)), timeout=20)
        lock = hold_books(tmp_path / "books.db")  # the update is in the inbox; the job is not written yet
        try:
            await first.wait_for_text(user, "could not take your picture in yet", timeout=30)
        finally:
            lock.rollback()
            lock.close()
        assert first.ledger.user_jobs(user.id) == []
        assert len(first.ledger.inbox.pending()) == 1  # not handled: left for the next start
        assert not any("went wrong" in (m.text or "") for m in first.sent(user))
    finally:
        await first.bot.stop()
    second = await start_botnet(devnet_module, tmp_path)
    try:
        result = await second.result_for(user)
        assert "Charged" in (result.caption or "")
        await second.settle()
        assert len(second.ledger.user_jobs(user.id)) == 1
        assert second.ledger.inbox.pending() == []
        second.ledger.audit()
    finally:
        await second.bot.stop()
