"""In-process fakes for the fast tier: the chain gateway, the Bot API client, the input server and a clock.

The slow tier proves the real things (anvil with PoCo, the market, the workerpool, the Telegram stand-in);
these fakes stand where the point of a test is a decision of ours: what the pipeline does when there is no
offer, when a match reverts, when a task hits its deadline; what the status board sends when Telegram answers
429. Each fake is scriptable per test and records what it was asked, so that a test asserts what a user or
the books would see. The ledger is never faked: tests use a real SQLite file.

    chain = FakeChain()
    chain.offers = [offer(app_price=3, pool_price=5)]
    chain.push(TaskKind.INITIALIZED); chain.push(TaskKind.FINALIZED, results=b"ok")
    bot = FakeBot(); bot.fail("edit_message_text", RetryAfter(3))

Orders are the real `iexec.orders` dataclasses, signed with a throwaway key; ids and request-order parsing
are the real `ChainGateway` static methods.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot.chain_gateway import ChainGateway, Offer, TaskEvent, TaskKind, WalletReport
from bot.errors import NoOffer, OfferTaken
from iexec.orders import ZERO_ADDRESS, AppOrder, Domain, RequestOrder, WorkerpoolOrder, build_request_order
from iexec.results import TaskResult

#: A throwaway key (never funded anywhere): the fake wallet signs request orders with it.
WALLET_KEY = "0x" + "11" * 32
WALLET = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
DOMAIN = Domain(chain_id=31337, verifying_contract="0x5FC8d32690cc91D4c39d9d3abcBD16989F875707")
APP = "0x" + "a1" * 20
POOL = "0x" + "b2" * 20
_salts = itertools.count(1)


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A small real PNG."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def offer(app_price: int = 30_000_000, pool_price: int = 50_000_000) -> Offer:
    """An app order and a workerpool order at these prices (unsigned: the fake chain never checks them)."""
    salt = next(_salts).to_bytes(32, "big")
    app = AppOrder(
        app=APP,
        appprice=app_price,
        volume=10,
        tag=b"\0" * 32,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    )
    pool = WorkerpoolOrder(
        workerpool=POOL,
        workerpoolprice=pool_price,
        volume=10,
        tag=b"\0" * 32,
        category=0,
        trust=0,
        apprestrict=ZERO_ADDRESS,
        datasetrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    )
    return Offer(app, pool)


@dataclass(frozen=True)
class FakeDeal:
    """What `known_deal` answers: the deal's requester (all zero: the chain does not know it) and prices."""

    requester: str
    app_price: int
    workerpool_price: int


UNKNOWN_DEAL = FakeDeal("0x" + "00" * 20, 0, 0)


@dataclass
class FakeChain:
    """The pipeline's view of `bot.chain_gateway.ChainGateway`, in process and scripted by the test.

    - `offers`: what the market lists, cheapest first (`best_offer` gives the first; empty: NoOffer).
    - `stake`: the hub's free stake (`ensure_stake` raises NoOffer(no_stake=True) below the amount).
    - `match_errors`: exceptions `match` raises in turn before it succeeds (an OfferTaken also removes that
      offer from `offers`, as the market would once the order is consumed).
    - `push(kind, ...)`: the task's next state. `wait_task` returns the current state at once when it differs
      from what the caller knows (as the real one), else the next pushed state (waiting for one).
    - `deal`: what `known_deal` answers (default: ours, at the matched offer's prices).
    - `results`: what `fetch_result` does, in turn (the last one again and again): a callable(dest) ->
      TaskResult (`good_result()`, `error_result(msg)`), or an exception to raise.
    """

    address: str = WALLET
    tee: bool = False
    offers: list[Offer] = field(default_factory=list)
    stake: int = 10**12
    match_errors: list[BaseException] = field(default_factory=list)
    deal: FakeDeal | None = None
    results: list[Any] = field(default_factory=list)
    report: WalletReport = field(default_factory=lambda: WalletReport(WALLET, 10**18, 10**12, 10**12, 0))
    calls: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    crash_hook: Callable[[str], None] | None = None
    task: TaskEvent = field(default_factory=lambda: TaskEvent(TaskKind.WAITING))
    _events: asyncio.Queue[TaskEvent | BaseException] = field(default_factory=asyncio.Queue)
    _matched: dict[str, Offer] = field(default_factory=dict)
    consumed: dict[bytes, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ scripting

    def push(
        self, kind: TaskKind, *, results: bytes = b"", final_deadline: int | None = None, initialized: bool = False
    ) -> None:
        """Queue the next task event `wait_task` returns."""
        self._events.put_nowait(TaskEvent(kind, results, final_deadline, initialized))

    def push_error(self, error: BaseException) -> None:
        """Make the next `wait_task` raise `error` (e.g. ChainDisagrees: the chain does not know the deal)."""
        self._events.put_nowait(error)

    def count(self, name: str) -> int:
        return len(self.calls[name])

    # ------------------------------------------------------------------ ordering

    async def domain(self) -> Domain:
        return DOMAIN

    async def sign_request_order(self, job_id: str, input_url: str, args: str) -> RequestOrder:
        self.calls["sign_request_order"].append((job_id, input_url, args))
        order = build_request_order(
            app=APP,
            requester=self.address,
            category=0,
            appmaxprice=100_000_000,
            workerpoolmaxprice=200_000_000,
            params={"iexec_args": args, "iexec_input_files": [input_url]},
            job_id=job_id,
        )
        return order.sign(WALLET_KEY, DOMAIN)

    request_order_from_json = staticmethod(ChainGateway.request_order_from_json)
    task_id = staticmethod(ChainGateway.task_id)

    async def ensure_stake(self, amount: int) -> None:
        self.calls["ensure_stake"].append(amount)
        await asyncio.sleep(0)
        if self.stake < amount:
            raise NoOffer(f"free stake {self.stake} < {amount}", no_stake=True)

    async def best_offer(self, tag: Any = None) -> Offer:
        self.calls["best_offer"].append(tag)
        await asyncio.sleep(0)
        if not self.offers:
            raise NoOffer("no app and workerpool orders within the maximum prices")
        return self.offers[0]

    async def deal_of(self, request: RequestOrder) -> str | None:
        self.calls["deal_of"].append(request)
        return self.consumed.get(request.hash(DOMAIN))

    async def settle_pending_match(self, job_id: str) -> bool:
        return False

    async def match(self, chosen: Offer, request: RequestOrder, job_id: str, crash_hook: Any = None) -> str:
        self.calls["match"].append(chosen)
        await asyncio.sleep(0)
        if self.match_errors:
            error = self.match_errors.pop(0)
            if isinstance(error, OfferTaken) and chosen in self.offers:
                self.offers.remove(chosen)
            raise error
        request_hash = request.hash(DOMAIN)
        deal_id = "0x" + request_hash.hex()  # any 32 bytes: the fake never derives
        self.consumed[request_hash] = deal_id
        self._matched[deal_id] = chosen
        return deal_id

    async def known_deal(self, deal_id: str) -> FakeDeal:
        self.calls["known_deal"].append(deal_id)
        if self.deal is not None:
            return self.deal
        chosen = self._matched[deal_id]
        return FakeDeal(self.address, chosen.app.appprice, chosen.workerpool.workerpoolprice)

    # ------------------------------------------------------------------ tracking

    async def wait_task(
        self, deal_id: str, task_id: str, *, known: TaskKind = TaskKind.WAITING, timeout: float = 30.0
    ) -> TaskEvent:
        self.calls["wait_task"].append((deal_id, task_id, known))
        await asyncio.sleep(0)  # the real one always yields (it reads the chain, then waits on the watcher)
        if self.task.kind != known:  # as the real one: what is known now, at once, when it differs
            return self.task
        event = await self._events.get()
        if isinstance(event, BaseException):
            raise event
        self.task = event
        return event

    async def reread_task(self, deal_id: str, task_id: str) -> TaskEvent:
        self.calls["reread_task"].append(task_id)
        return await self.wait_task(deal_id, task_id)

    def unfollow(self, task_id: str) -> None:
        self.calls["unfollow"].append(task_id)

    async def claim(self, deal_id: str, task_id: str, *, initialized: bool) -> None:
        self.calls["claim"].append((deal_id, task_id, initialized))
        await asyncio.sleep(0)

    async def fetch_result(self, results: bytes, dest: Path) -> TaskResult:
        self.calls["fetch_result"].append(results)
        await asyncio.sleep(0)
        step = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(step, BaseException):
            raise step
        return step(dest)

    async def wallet_report(self) -> WalletReport:
        return self.report


def good_result(detections: list[str] = ("person", "dog")) -> Callable[[Path], TaskResult]:  # type: ignore[assignment]  # a tuple default: never mutated
    """A `FakeChain.results` step: a result folder with result.png and detections.json, as the app writes."""

    def write(dest: Path) -> TaskResult:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "result.png").write_bytes(png((80, 60), (20, 160, 60)))
        found = [{"class_name": name, "score": 0.9} for name in detections]
        (dest / "detections.json").write_text(json.dumps({"detections": found}))
        return TaskResult(ok=True, deterministic_output=dest)

    return write


def error_result(message: str) -> Callable[[Path], TaskResult]:
    """A `FakeChain.results` step: an error archive (the app's error message, no result)."""

    def write(dest: Path) -> TaskResult:
        dest.mkdir(parents=True, exist_ok=True)
        return TaskResult(ok=False, error_message=message)

    return write


class FakeInputs:
    """The input server's interface as the pipeline uses it: publish gives a URL, revoke forgets it."""

    def __init__(self) -> None:
        self.published: dict[str, bytes] = {}
        self.revoked: list[str] = []

    def publish(self, job_id: str, data: bytes, ttl: float, **kwargs: Any) -> str:
        self.published[job_id] = data
        return f"http://127.0.0.1:9/inputs/{job_id}"

    def revoke(self, job_id: str) -> None:
        self.revoked.append(job_id)


# ---------------------------------------------------------------------------------------- the Bot API


@dataclass(frozen=True)
class Call:
    """One Bot API call the fake bot received (`at`: the fake clock's time, when one is given)."""

    method: str
    kwargs: dict[str, Any]
    at: float


@dataclass
class FakeMessage:
    message_id: int
    chat_id: int


class FakeBot:
    """The Bot API client's methods the pipeline and the status board call, recorded; `fail(method, exc)`
    makes the next call of `method` raise `exc` (queued in order: RetryAfter, BadRequest, Forbidden...)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.calls: list[Call] = []
        self._failures: dict[str, list[BaseException]] = defaultdict(list)
        self._ids = itertools.count(1000)
        self._clock = clock or (lambda: 0.0)

    def fail(self, method: str, *errors: BaseException) -> None:
        self._failures[method].extend(errors)

    def of(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (chat_id is None or c.kwargs.get("chat_id") == chat_id)]

    def texts(self, chat_id: int) -> list[str]:
        """The texts sent to a chat with send_message, in order."""
        return [c.kwargs["text"] for c in self.of("send_message", chat_id)]

    async def _call(self, method: str, **kwargs: Any) -> FakeMessage:
        await asyncio.sleep(0)  # a real request yields to the event loop
        self.calls.append(Call(method, kwargs, self._clock()))
        if self._failures[method]:
            raise self._failures[method].pop(0)
        return FakeMessage(next(self._ids), int(kwargs.get("chat_id", 0)))

    async def send_message(self, **kwargs: Any) -> FakeMessage:
        return await self._call("send_message", **kwargs)

    async def edit_message_text(self, **kwargs: Any) -> FakeMessage:
        return await self._call("edit_message_text", **kwargs)

    async def send_photo(self, **kwargs: Any) -> FakeMessage:
        return await self._call("send_photo", **kwargs)

    async def send_document(self, **kwargs: Any) -> FakeMessage:
        return await self._call("send_document", **kwargs)

    async def send_chat_action(self, **kwargs: Any) -> bool:
        await asyncio.sleep(0)
        return True


# ---------------------------------------------------------------------------------------- time


class FakeClock:
    """A clock and a sleep that only move when the test says so (`advance`), like trio's MockClock.

    `time()`/`monotonic()` read it; `sleep(d)` waits until the clock reaches now + d (a zero or negative
    delay yields once). `advance(d)` wakes the sleepers in order of their wake-up time and lets them run."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    monotonic = time
    __call__ = time

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), future))
        await future

    @property
    def sleeping(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, delay: float) -> None:
        target = self.now + delay
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every task that can run, run (a few turns of the event loop, no real time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], *, rounds: int = 5000) -> None:
    """Yield to the event loop (with 1 ms pauses: thread work such as image checks may be involved) until
    `predicate()` holds; fails after `rounds` turns, i.e. never waits on a wall-clock bound."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")
