"""Fixtures of the end-to-end tests: a devnet in this process and the bot as a real subprocess.

    async def test_x(e2e):                       # E2E: the module's devnet + fresh books for this test
        user = e2e.new_user()                    # a Telegram user credited 1 RLC in the books
        await e2e.start_bot(crash_at="after_sign")
        e2e.tg.inject_photo(user, photo_bytes())
        await e2e.wait_dead()                    # the bot SIGKILLed itself at the named point
        await e2e.start_bot()                    # restarted on the same books
        [job] = await e2e.wait_terminal(user)
        assert e2e.deals_on_chain(job) == (1, 1)

The bot runs as `python -m bot --env-file <test dir>/bot.env` (the devnet's bot.env plus the test's
settings), so a crash is a real SIGKILL and a restart is a real new process. The test side only reads the
books (plus admin grants, as the admin CLI would) and the chain. Everything binds 127.0.0.1. This module
must never import the bot's code: the bot is a black box reached through Telegram, the books and the chain.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from devnet import chain as devchain
from devnet.anvil import free_port
from devnet.deploy import hub_abi
from devnet.telegram import TelegramStandIn
from devnet.telegram_model import SentMessage, TgUser
from devnet.up import REPO_DIR, Devnet, DevnetConfig
from ledger import Job, Ledger

ADMIN = TgUser(id=910_001, first_name="Ada", username="admin")
FEE_NRLC = 10_000_000
FINAL_DEADLINE_S = 10 * 300  # category 0: ten times its 300 s reference
TERMINAL = ("DELIVERED", "REFUNDED", "CANCELLED", "NEEDS_ADMIN")
_user_ids = itertools.count(710_001)
_dir_ids = itertools.count(1)


class BotDied(AssertionError):
    """The bot process ended when it should be running (its log tail is in the message)."""


def bot_env(net: Devnet, data: Path, inputs_port: int, **overrides: Any) -> dict[str, str]:
    """The devnet's bot settings with this test's books, admin and fast polling."""
    env = dict(net.env)
    # A fixed input port, as in production (INPUTS_PUBLIC_URL): the URL in a signed order must still
    # answer after a restart.
    env.update(
        ADMIN_IDS=str(ADMIN.id),
        DB_PATH=str(data / "books.db"),
        DATA_DIR=str(data),
        INPUTS_PORT=str(inputs_port),
        POLL_INTERVAL_S="0.2",
        MATCH_TIMEOUT_S="20",
        FEE_NRLC=str(FEE_NRLC),
        LOG_LEVEL="INFO",
        WORKER_ARGS="--max-dim 256 --min-confidence 0.5",
        MAX_JOBS_IN_FLIGHT="5",
    )
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


@dataclass
class BotProcess:
    """One `python -m bot` process on a settings file; its output goes to `log_path`."""

    env_file: Path
    log_path: Path
    crash_at: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SEGBOT_CRASH_AT"}
        if self.crash_at:
            env["SEGBOT_CRASH_AT"] = self.crash_at
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "--env-file", str(self.env_file)],
                cwd=REPO_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it hangs past `timeout`."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class E2E:
    """The module's devnet, fresh books in `data`, and the bot process on them."""

    net: Devnet
    data: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    bot: BotProcess | None = None
    ledger: Ledger | None = None
    users: list[TgUser] = field(default_factory=list)
    processes: int = 0

    def __post_init__(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.env_file = self.data / "bot.env"
        self.inputs_port = free_port()
        self.write_env()
        self.ledger = Ledger(str(self.data / "books.db"))  # creates the schema before the bot opens it

    def write_env(self, **overrides: Any) -> None:
        self.overrides.update(overrides)
        env = bot_env(self.net, self.data, self.inputs_port, **self.overrides)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        os.chmod(self.env_file, 0o600)

    @property
    def tg(self) -> TelegramStandIn:
        return self.net.telegram

    @property
    def rpc_url(self) -> str:
        assert self.net.anvil is not None
        return self.net.anvil.rpc_url

    # -- the bot process ---------------------------------------------------------------------------------

    async def start_bot(self, crash_at: str | None = None, timeout: float = 40.0) -> BotProcess:
        """Start the bot and wait until it polls Telegram. Raises BotDied if it exits first."""
        self.stop_bot()
        polls = len(self.tg.calls("getUpdates"))
        self.processes += 1
        self.bot = BotProcess(self.env_file, self.data / f"bot-{self.processes}.log", crash_at)
        self.bot.start()
        deadline = time.monotonic() + timeout
        while len(self.tg.calls("getUpdates")) <= polls:
            if not self.bot.alive:
                raise BotDied(f"the bot exited with {self.bot.returncode}:\n{self.bot.log_tail()}")
            if time.monotonic() > deadline:
                raise BotDied(f"the bot did not poll Telegram within {timeout} s:\n{self.bot.log_tail()}")
            await asyncio.sleep(0.05)
        return self.bot

    def spawn_bot(self) -> BotProcess:
        """Start a bot process and return at once (`wait_started` waits for it to be up)."""
        self.stop_bot()
        self.processes += 1
        self.bot = BotProcess(self.env_file, self.data / f"bot-{self.processes}.log")
        self.bot.start()
        return self.bot

    async def wait_started(self, timeout: float = 60.0) -> None:
        """Wait until the running bot logs `event=bot_started` (polling, its jobs resumed). Unlike
        `start_bot`, this does not wait for a getUpdates call to end (the stand-in records a call when it
        answers, and an idle long poll answers after its timeout). Raises BotDied if it exits first."""
        assert self.bot is not None
        deadline = time.monotonic() + timeout
        while "event=bot_started" not in self.bot.log_path.read_text(errors="replace"):
            if not self.bot.alive:
                raise BotDied(f"the bot exited with {self.bot.returncode}:\n{self.bot.log_tail()}")
            if time.monotonic() > deadline:
                raise BotDied(f"the bot did not start within {timeout} s:\n{self.bot.log_tail()}")
            await asyncio.sleep(0.05)

    async def wait_dead(self, timeout: float = 60.0) -> int:
        """Wait for the bot to die (an injected crash); returns its exit code (-9 for SIGKILL)."""
        assert self.bot is not None
        deadline = time.monotonic() + timeout
        while self.bot.alive:
            if time.monotonic() > deadline:
                raise AssertionError(f"the bot did not crash within {timeout} s:\n{self.bot.log_tail()}")
            await asyncio.sleep(0.05)
        code = self.bot.returncode
        assert code is not None
        return code

    def stop_bot(self, timeout: float = 15.0) -> None:
        if self.bot is not None:
            self.bot.stop(timeout)

    def kill_bot(self) -> float:
        """SIGKILL the running bot (no cleanup, as a crash or the OOM killer would) and wait until it is
        gone; returns the instant of the kill on the Telegram stand-in's clock (`time.monotonic`)."""
        assert self.bot is not None and self.bot.proc is not None
        at = time.monotonic()
        if self.bot.alive:
            self.bot.proc.send_signal(signal.SIGKILL)
        self.bot.proc.wait()
        return at

    def logs(self) -> str:
        """Everything every bot process of this test wrote."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.data.glob("bot-*.log")))

    def close(self) -> None:
        self.stop_bot(timeout=2.0)  # the books are thrown away: no need to wait for a long poll
        if self.ledger is not None:
            self.ledger.close()

    # -- users and chats ---------------------------------------------------------------------------------

    def new_user(self, credit_nrlc: int = 10**9) -> TgUser:
        """A fresh Telegram user, credited by an admin grant in the books."""
        user = TgUser(id=next(_user_ids), first_name="User", username=None)
        if credit_nrlc:
            assert self.ledger is not None
            self.ledger.grant(f"e2e-grant-{user.id}", user.id, credit_nrlc, memo="test credit")
        self.users.append(user)
        return user

    def sent(self, user: TgUser) -> list[SentMessage]:
        return self.tg.sent(user.id)

    def results(self, user: TgUser) -> list[SentMessage]:
        """The bot's result pictures in the user's chat."""
        return [
            m
            for m in self.sent(user)
            if m.kind in ("photo", "document") and m.data and m.file_name != "detections.json"
        ]

    def texts(self, user: TgUser) -> str:
        return "\n".join(m.text or "" for m in self.sent(user))

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tail = self.bot.log_tail() if self.bot else ""
                raise AssertionError(f"{what}: not within {timeout} s\n{tail}")
            if self.bot is not None and not self.bot.alive and self.bot.crash_at is None:
                raise BotDied(f"the bot exited with {self.bot.returncode}:\n{self.bot.log_tail()}")
            await asyncio.sleep(0.1)

    async def result_for(self, user: TgUser, timeout: float = 60.0) -> SentMessage:
        await self.wait_for(lambda: bool(self.results(user)), timeout, f"a result for user {user.id}")
        return self.results(user)[0]

    async def wait_text(self, user: TgUser, needle: str, timeout: float = 30.0) -> str:
        await self.wait_for(lambda: needle in self.texts(user), timeout, f"{needle!r} for user {user.id}")
        return self.texts(user)

    # -- the books and the chain ---------------------------------------------------------------------------

    def jobs(self, user: TgUser) -> list[Job]:
        assert self.ledger is not None
        return self.ledger.user_jobs(user.id, limit=1000)

    async def wait_terminal(self, user: TgUser, n: int = 1, timeout: float = 60.0) -> list[Job]:
        """Wait until the user has `n` jobs, all in a terminal state (or held for an admin)."""

        def done() -> bool:
            jobs = self.jobs(user)
            return len(jobs) >= n and all(j.state.value in TERMINAL for j in jobs)

        await self.wait_for(
            done, timeout, f"{n} finished jobs for user {user.id} (now {[j.state.value for j in self.jobs(user)]})"
        )
        return self.jobs(user)

    async def expire_if_abandoned(self, user: TgUser, timeout: float = 60.0) -> str:
        """When the workerpool gave up a task of the user (e.g. it could not fetch the input while the bot
        was down), move chain time past the final deadline so that the bot claims it; returns the pool's
        outcome ("completed", "input_failed", ...) or "unmatched" when the job never got a task."""

        def known() -> bool:
            jobs = self.jobs(user)
            return bool(jobs) and (jobs[0].task_id is not None or jobs[0].state.value in TERMINAL)

        await self.wait_for(known, timeout, f"a task for user {user.id}")
        job = self.jobs(user)[0]
        if job.task_id is None:
            return "unmatched"
        outcome = await self.net.pool.wait_task(job.task_id, timeout)
        if outcome.state not in ("completed", "error_archive"):
            await asyncio.to_thread(self.increase_time, FINAL_DEADLINE_S + 100)
        return outcome.state

    def settlements(self, job: Job) -> list[tuple[str, str]]:
        """(transfer id, kind) of every resolution (post or void) of the job's reservation."""
        conn = sqlite3.connect(f"file:{self.data / 'books.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT DISTINCT id, kind FROM transfers WHERE pending_id = ? AND kind IN ('post', 'void')",
                (job.reservation,),
            ).fetchall()
        finally:
            conn.close()
        return [(r[0], r[1]) for r in rows]

    # The chain reads below are blocking web3 calls: from async code, call them through asyncio.to_thread (the
    # in-process devnet serves on this event loop; blocking it can hang both).

    def hub(self) -> Any:
        assert self.net.deployment is not None
        return devchain.web3_for(self.rpc_url).eth.contract(address=self.net.deployment.hub, abi=hub_abi())

    def deals_on_chain(self, job: Job) -> tuple[int, int]:
        """(viewConsumed of the job's request order, OrdersMatched logs naming it): (1, 1) when matched once."""
        if not job.order_hash:
            return (0, 0)
        order_hash = bytes.fromhex(job.order_hash.removeprefix("0x"))
        hub = self.hub()
        consumed = int(hub.functions.viewConsumed(order_hash).call())
        logs = hub.events.OrdersMatched().get_logs(from_block=0)
        matched = sum(1 for ev in logs if bytes(ev["args"]["requestHash"]) == order_hash)
        return consumed, matched

    def charged(self, job: Job) -> int:
        """What the job cost its user: the matched prices plus the fee."""
        return (job.app_price or 0) + (job.workerpool_price or 0) + FEE_NRLC

    def wallet_stake(self) -> tuple[int, int]:
        """(free, locked) nRLC of the bot's wallet in the hub."""
        assert self.net.deployment is not None
        return devchain.stake_of(self.rpc_url, self.net.deployment, self.net.bot_address)

    def increase_time(self, seconds: int) -> None:
        devchain.increase_time(self.rpc_url, seconds)

    def task_status(self, job: Job) -> int:
        """The hub's status of the job's task: 0 unset, 1 active, 2 revealing, 3 completed, 4 failed."""
        if not job.task_id:
            return 0
        return int(self.hub().functions.viewTask(job.task_id).call()[0])

    def replies_to(self, user: TgUser, message_id: int) -> list[SentMessage]:
        """The bot's messages in the user's chat that reply to the user's message `message_id`."""
        return [m for m in self.sent(user) if m.reply_to == message_id]

    def result_sends(self, user: TgUser) -> list[tuple[int, float]]:
        """(replied-to message id, instant on the stand-in's clock) of every result picture the bot sent to
        the user with success (sendPhoto / sendDocument; detections.json is not a result)."""
        out = []
        for call in self.tg.calls():
            if call.status != 200 or call.method.lower() not in ("sendphoto", "senddocument"):
                continue
            params = call.params
            if str(params.get("chat_id")) != str(user.id) or "detections.json" in str(params.get("document")):
                continue
            target = params.get("reply_to_message_id")
            reply = params.get("reply_parameters")
            if isinstance(reply, str):
                reply = json.loads(reply)
            if target is None and isinstance(reply, dict):
                target = reply.get("message_id")
            if target is not None:
                out.append((int(target), call.at))
        return out


async def open_devnet(root: Path, app: str = "test", **config: Any) -> Devnet:
    """Start a devnet (no saved chain state) in `root`; stopped again if any step fails."""
    net = Devnet(DevnetConfig(data_dir=root, app=app, persist_chain=False, **config))
    try:
        await net.start()
    except BaseException:
        await net.stop()
        raise
    return net  # Telegram's flood limits stay on in the stand-in: the load test counts 429s


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def e2e_devnet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Devnet]:
    """A devnet running the small test app (2 workers), shared by one test module."""
    net = await open_devnet(tmp_path_factory.mktemp("e2e-devnet"), "test", workers=2)
    try:
        yield net
    finally:
        await net.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def e2e(e2e_devnet: Devnet, tmp_path: Path) -> AsyncIterator[E2E]:
    """Fresh books on the module's devnet; the bot process is started by the test and stopped after."""
    e2e_devnet.pool.faults.clear()
    e2e_devnet.gateway.clear_faults()
    run = E2E(e2e_devnet, tmp_path / f"books-{next(_dir_ids)}")
    try:
        yield run
    finally:
        run.close()
        if e2e_devnet.anvil is not None and getattr(e2e_devnet.anvil, "_frozen", False):
            e2e_devnet.anvil.thaw()
