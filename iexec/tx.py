"""The one transaction sender of a wallet, and the chain connection helpers it shares with the hub client.

`TxSender` owns the wallet's nonce (an asyncio lock): it builds EIP-1559 transactions, signs them, hands the
raw transaction and its hash to a caller-supplied `persist` hook BEFORE broadcasting, broadcasts, waits for
the receipt, re-broadcasts a transaction the node forgot and replaces a stuck one (same nonce, higher fees,
never above the fee cap). After a restart, `resume(records)` looks receipts up for what was persisted and
re-broadcasts only raw transactions the node does not know: it never signs a second transaction for a nonce
unless it is replacing a stuck one.

`connect()` builds an AsyncWeb3 over a counting HTTP provider (no hidden retries: `with_retry` does them
under the client's one retry policy, iexec.retry, and raises ChainUnavailable after its bound). Its aiohttp
session (its own, not web3's shared one: see `CountingHTTPProvider`) opens on the first request and stays
open until `close(w3)` (or `close_all()`, at a teardown that does not hold every owner). This module must
never log or put in an error a private key, a raw transaction or an RPC URL (they may carry API keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiohttp
from eth_account.typed_transactions import TypedTransaction
from eth_typing import ChecksumAddress, HexStr
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3._utils.batching import sort_batch_response_by_response_ids
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import RPCResponse, TxParams

from iexec.errors import ChainUnavailable, FeeCapExceeded, TransactionError, TransactionReverted
from iexec.retry import RetryPolicy, retry_async

log = logging.getLogger(__name__)
T = TypeVar("T")
Persist = Callable[[bytes, str, int, Mapping[str, Any]], Awaitable[None]]

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    TimeoutError,
    ConnectionError,
    OSError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
)


# ----------------------------------------------------------------------------------------------- RPC


class _NoSharedSessions:
    """Stands where web3's `HTTPSessionManager` was: any use of it is a bug of ours, said loudly.

    That manager guards a process-wide session cache with one `threading.Lock`, taken by an executor thread
    the awaiting coroutine does not own: a request cancelled while that thread waits leaves the lock held for
    ever (every later request in the process hangs, and so does the interpreter's exit), or its `finally`
    releases a lock another caller holds (web3.py issue #3867, web3 8.0.0). Its sessions also open a new TCP
    connection per request (`force_close=True`).
    """

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"CountingHTTPProvider must not use web3's shared HTTP session manager ({name})")


class CountingHTTPProvider(AsyncHTTPProvider):
    """AsyncHTTPProvider that counts JSON-RPC calls (a batch counts as the calls inside it), per method, and
    owns its aiohttp sessions (one per event loop, made on that loop at its first request, keep-alive
    connections to its one RPC URL) instead of web3's shared session manager and its lock (see
    `_NoSharedSessions`). Errors are web3's: aiohttp errors, `ClientResponseError` for an HTTP error
    status, `asyncio.TimeoutError` past the request timeout. Cancelling a request at any instant leaves
    nothing held: session creation never awaits, and aiohttp drops a connection whose request was cancelled.
    Close it (`close(w3)`) before its loop ends, as with web3's own sessions: the idle keep-alive sockets of a
    session whose loop has ended can no longer be closed gracefully (ResourceWarning when collected).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_session_manager = cast(Any, _NoSharedSessions())
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self.calls: dict[str, int] = {}

    @property
    def total_calls(self) -> int:
        """All JSON-RPC calls made so far."""
        return sum(self.calls.values())

    def _count(self, method: str, n: int = 1) -> None:
        self.calls[method] = self.calls.get(method, 0) + n

    def _session(self) -> aiohttp.ClientSession:
        """This loop's session, made now if it has none open (no await: a cancellation cannot split this)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # a session of a loop that has ended stays here until `disconnect()` closes it (aiohttp closes one
            # whose loop is closed without touching that loop)
            session = aiohttp.ClientSession(raise_for_status=True, connector=aiohttp.TCPConnector())
            self._sessions[loop] = session
        return session

    async def _post(self, request_data: bytes) -> bytes:
        assert self.endpoint_uri is not None  # connect() always gives one
        async with self._session().post(self.endpoint_uri, data=request_data, **self.get_request_kwargs()) as resp:
            return await resp.read()

    async def _make_request(self, method: Any, request_data: bytes) -> bytes:
        self._count(str(method))  # below web3's request cache: only what goes over the wire counts
        return await self._post(request_data)

    async def make_batch_request(self, batch_requests: list[tuple[Any, Any]]) -> Any:
        for method, _ in batch_requests:
            self._count(str(method))
        response = self.decode_rpc_response(await self._post(self.encode_batch_rpc_request(batch_requests)))
        if not isinstance(response, list):
            return response  # an error about the whole batch comes as one response
        return sort_batch_response_by_response_ids(cast(list[RPCResponse], response))

    async def cache_async_session(self, session: aiohttp.ClientSession) -> aiohttp.ClientSession:
        """Use `session` on this loop unless one is open here already; returns the one in use."""
        loop = asyncio.get_running_loop()
        current = self._sessions.get(loop)
        if current is None or current.closed:
            self._sessions[loop] = current = session
        return current

    async def disconnect(self) -> None:
        """Close every session (a later request opens a new one); a failure to close one is logged."""
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            try:
                await session.close()
            except Exception as exc:  # noqa: BLE001 - close the others whatever happens to one
                log.warning("event=rpc_session_close_failed error=%s", type(exc).__name__)

    def __str__(self) -> str:
        return "CountingHTTPProvider(<rpc url redacted>)"


#: Providers built by `connect()` that are still alive (weakly held: this never keeps one alive).
_OPEN: weakref.WeakSet[CountingHTTPProvider] = weakref.WeakSet()


def connect(rpc_url: str, *, timeout_s: float = 10.0) -> AsyncWeb3:
    """An AsyncWeb3 on `rpc_url` with a per-request timeout and no hidden retries (see `with_retry`)."""
    provider = CountingHTTPProvider(
        rpc_url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
        exception_retry_configuration=None,
        cache_allowed_requests=True,
        cacheable_requests={"eth_chainId", "net_version"},
    )  # never cache state that changes
    _OPEN.add(provider)
    return AsyncWeb3(provider)


async def close(w3: AsyncWeb3) -> None:
    """Close the HTTP sessions of `w3`'s provider (at shutdown; a later request would open a new one)."""
    disconnect = getattr(w3.provider, "disconnect", None)
    if disconnect is not None:
        await disconnect()


async def close_all() -> int:
    """Close the HTTP sessions of every connection `connect()` made that is still alive; returns how many.

    For a teardown that does not hold every owner (a test harness, a tool about to exit): aiohttp warns
    "Unclosed client session" for each one left open when it is garbage-collected. A connection closed here
    still works: web3 opens a new session on its next request. A failure to close one is logged, not raised,
    so the others still get closed.
    """
    providers = list(_OPEN)
    for provider in providers:
        try:
            await provider.disconnect()
        except Exception as exc:  # noqa: BLE001 - teardown: close the rest whatever happens to one
            log.warning("event=rpc_close_failed error=%s", type(exc).__name__)
    return len(providers)


def rpc_calls(w3: AsyncWeb3) -> int:
    """Total JSON-RPC calls made through `w3` when it was built by `connect()` (else 0)."""
    provider = w3.provider
    return provider.total_calls if isinstance(provider, CountingHTTPProvider) else 0


def is_network_error(exc: BaseException) -> bool:
    """True for errors that mean 'the node did not answer' (worth retrying), not 'the node said no'."""
    return isinstance(exc, NETWORK_ERRORS) and not isinstance(exc, Web3RPCError)


async def with_retry(
    op: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str, clock: Callable[[], float] = time.monotonic
) -> T:
    """Run `op` under `policy` (see iexec.retry), retrying network errors; ChainUnavailable when the policy
    gives up. Other errors propagate at once."""

    def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
        log.warning("event=rpc_retry what=%s attempt=%d error=%s delay=%.2f", what, attempt, type(exc).__name__, delay)

    def give_up(exc: BaseException, attempts: int, waited: float) -> ChainUnavailable:
        return ChainUnavailable(
            f"chain node unreachable during {what} for {waited:.1f}s "
            f"({attempts} attempts, last error {type(exc).__name__})"
        )

    return await retry_async(op, policy, retry_on=is_network_error, give_up=give_up, on_retry=on_retry, clock=clock)


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TxRecord:
    """One signed transaction, as persisted before broadcast: raw bytes, hash, nonce and caller's meta."""

    raw_tx: bytes
    tx_hash: str
    nonce: int
    meta: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The transaction's fields decoded from the raw bytes (to, data, value, gas, fees, chainId)."""
        return dict(TypedTransaction.from_bytes(HexBytes(self.raw_tx)).as_dict())

    @property
    def max_fee_per_gas(self) -> int:
        return int(self.fields()["maxFeePerGas"])

    @property
    def max_priority_fee_per_gas(self) -> int:
        return int(self.fields()["maxPriorityFeePerGas"])


@dataclass(frozen=True)
class ResumedTx:
    """What `resume` found for one persisted nonce: status mined / reverted / pending / dropped."""

    nonce: int
    status: str
    tx_hash: str | None
    receipt: Any = None


@dataclass(frozen=True)
class SenderConfig:
    """Fees and timings of a TxSender. `fee_cap_wei` bounds maxFeePerGas of every transaction signed."""

    fee_cap_wei: int = 200 * 10**9
    priority_fee_wei: int = 10**9
    base_fee_multiplier: int = 2
    gas_margin_pct: int = 25
    bump_pct: int = 15
    stuck_after_s: float = 15.0
    poll_interval_s: float = 0.2
    receipt_timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


async def _no_persist(raw_tx: bytes, tx_hash: str, nonce: int, meta: Mapping[str, Any]) -> None:
    return None


def _rpc_message(exc: Web3RPCError) -> str:
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(exc.message)


# ----------------------------------------------------------------------------------------------- sender


class TxSender:
    """The one coroutine-safe owner of a wallet's nonce; every transaction of the wallet goes through it."""

    def __init__(
        self,
        w3: AsyncWeb3,
        account: Any,
        *,
        persist: Persist | None = None,
        config: SenderConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.w3 = w3
        self._account = account
        self._persist = persist or _no_persist
        self.config = config or SenderConfig()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self._chain_id: int | None = None
        self._inflight: dict[int, list[TxRecord]] = {}
        self._unbroadcast: set[str] = set()
        #: Called with each new transaction right after its first broadcast (an observer: crash tests
        #: stop the process here, between the broadcast and the receipt).
        self.on_broadcast: Callable[[TxRecord], None] | None = None

    @property
    def address(self) -> ChecksumAddress:
        """The wallet's address."""
        return to_checksum_address(self._account.address)

    def inflight(self) -> dict[int, list[TxRecord]]:
        """Nonces not yet known mined, with every transaction signed for each (latest last)."""
        return {nonce: list(records) for nonce, records in self._inflight.items()}

    async def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await with_retry(op, self.config.retry, what, self._clock)

    async def send(
        self,
        to: str | None,
        data: bytes = b"",
        *,
        value: int = 0,
        gas: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Any:
        """Sign, persist, broadcast and wait: the receipt of a successful transaction.
        Raises TransactionReverted (with the receipt), TransactionError, FeeCapExceeded, ChainUnavailable."""
        record = await self.submit(to, data, value=value, gas=gas, meta=meta)
        return await self.wait(record.nonce)

    async def submit(
        self,
        to: str | None,
        data: bytes = b"",
        *,
        value: int = 0,
        gas: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> TxRecord:
        """Sign with the next nonce, persist, broadcast; return the record without waiting for it."""
        async with self._lock:
            await self._flush_unbroadcast()
            if self._chain_id is None:
                self._chain_id = int(await self._retry(lambda: self.w3.eth.chain_id, "eth_chainId"))
            if self._next_nonce is None:
                self._next_nonce = int(
                    await self._retry(lambda: self.w3.eth.get_transaction_count(self.address, "pending"), "nonce")
                )
            nonce = self._next_nonce
            tx: dict[str, Any] = {
                "from": self.address,
                "value": value,
                "data": HexBytes(data),
                "chainId": self._chain_id,
                "nonce": nonce,
                "type": 2,
            }
            if to is not None:
                tx["to"] = to
            if gas is None:
                call: dict[str, Any] = {k: tx[k] for k in ("from", "to", "value", "data") if k in tx}
                estimate = await self._estimate(call)
                gas = estimate * (100 + self.config.gas_margin_pct) // 100
            tx["gas"] = gas
            tx.update(await self._initial_fees())
            del tx["from"]
            record = self._sign(tx, meta or {})
            await self._persist(record.raw_tx, record.tx_hash, nonce, record.meta)
            self._inflight[nonce] = [record]
            self._next_nonce = nonce + 1
            await self._broadcast_first(record)
            log.info("event=tx_sent nonce=%d tx=%s kind=%s", nonce, record.tx_hash, record.meta.get("kind", "-"))
            if self.on_broadcast is not None:
                self.on_broadcast(record)
            return record

    async def _estimate(self, call: Mapping[str, Any]) -> int:
        try:
            params = cast(TxParams, dict(call))  # the same keys a transaction has: from, to, value, data
            return int(await self._retry(lambda: self.w3.eth.estimate_gas(params), "estimate_gas"))
        except (Web3RPCError, ContractLogicError) as exc:
            message = _rpc_message(exc) if isinstance(exc, Web3RPCError) else str(exc)
            raise TransactionError(f"gas estimation failed (the transaction would fail): {message}") from None

    async def _initial_fees(self) -> dict[str, int]:
        cfg = self.config
        block = await self._retry(lambda: self.w3.eth.get_block("latest"), "get_block")
        base = int(block.get("baseFeePerGas", 0) or 0)
        if base >= cfg.fee_cap_wei:
            raise FeeCapExceeded(f"base fee {base} wei is at or above the fee cap {cfg.fee_cap_wei} wei")
        priority = min(cfg.priority_fee_wei, cfg.fee_cap_wei - base)
        max_fee = min(base * cfg.base_fee_multiplier + priority, cfg.fee_cap_wei)
        return {"maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority}

    def _sign(self, tx: Mapping[str, Any], meta: Mapping[str, Any]) -> TxRecord:
        signed = self._account.sign_transaction(dict(tx))
        return TxRecord(
            raw_tx=bytes(signed.raw_transaction),
            tx_hash="0x" + bytes(signed.hash).hex(),
            nonce=int(tx["nonce"]),
            meta=dict(meta),
        )

    async def _broadcast_first(self, record: TxRecord) -> None:
        try:
            await self._broadcast(record)
        except ChainUnavailable:
            self._unbroadcast.add(record.tx_hash)  # persisted: re-broadcast before the next send
            raise
        except TransactionError:
            # The node refused the transaction outright: the nonce stays free for the next one.
            del self._inflight[record.nonce]
            self._next_nonce = None
            raise

    async def _flush_unbroadcast(self) -> None:
        for records in list(self._inflight.values()):
            if records[-1].tx_hash in self._unbroadcast:
                await self._broadcast(records[-1])
                self._unbroadcast.discard(records[-1].tx_hash)

    async def _broadcast(self, record: TxRecord) -> None:
        """Broadcast; 'already known' counts as done; a nonce already used by another tx is an error."""
        try:
            await self._retry(lambda: self.w3.eth.send_raw_transaction(record.raw_tx), "broadcast")
        except Web3RPCError as exc:
            message = _rpc_message(exc).lower()
            if "already known" in message or "already imported" in message or "known transaction" in message:
                return
            if "nonce too low" in message or "nonce has already been used" in message:
                if await self._receipt(record.tx_hash) is not None or len(self._inflight.get(record.nonce, [])) > 1:
                    return  # ours (or a replacement of ours) is mined
                raise TransactionError(
                    f"nonce {record.nonce} was used by another transaction of this wallet (is another sender running?)"
                ) from None
            if "underpriced" in message:
                return  # a replacement the node does not want yet: the previous one stays
            raise TransactionError(f"node rejected transaction nonce={record.nonce}: {message}") from None

    async def _receipt(self, tx_hash: str) -> Any:
        async def get() -> Any:
            try:
                return await self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            except TransactionNotFound:
                return None

        return await self._retry(get, "get_receipt")

    async def _known(self, tx_hash: str) -> bool:
        async def get() -> bool:
            try:
                await self.w3.eth.get_transaction(HexStr(tx_hash))
                return True
            except TransactionNotFound:
                return False

        return await self._retry(get, "get_transaction")

    async def wait(self, nonce: int) -> Any:
        """Wait until one transaction signed for `nonce` is mined; re-broadcast or replace it when stuck.
        Raises TransactionReverted, TransactionError (timeout), ChainUnavailable."""
        cfg = self.config
        started = last_action = self._clock()
        while True:
            for record in reversed(self._inflight.get(nonce, [])):
                receipt = await self._receipt(record.tx_hash)
                if receipt is not None:
                    self._inflight.pop(nonce, None)
                    if int(receipt["status"]) != 1:
                        raise TransactionReverted(f"transaction {record.tx_hash} (nonce {nonce}) reverted", receipt)
                    return receipt
            if nonce not in self._inflight:
                raise TransactionError(f"no transaction of ours is in flight for nonce {nonce}")
            now = self._clock()
            if now - started > cfg.receipt_timeout_s:
                raise TransactionError(
                    f"nonce {nonce} not mined after {cfg.receipt_timeout_s:.0f}s "
                    f"({len(self._inflight[nonce])} transactions signed, fee cap "
                    f"{cfg.fee_cap_wei} wei)"
                )
            if now - last_action > cfg.stuck_after_s:
                await self._unstick(nonce)
                last_action = self._clock()
            await asyncio.sleep(cfg.poll_interval_s)

    async def _unstick(self, nonce: int) -> None:
        """Re-broadcast a forgotten transaction, or replace a pending one with bumped fees within the cap."""
        async with self._lock:
            records = self._inflight.get(nonce)
            if not records:
                return
            latest = records[-1]
            if not await self._known(latest.tx_hash):
                log.info("event=tx_rebroadcast nonce=%d tx=%s", nonce, latest.tx_hash)
                await self._broadcast(latest)
                return
            replacement = self._bumped(latest)
            if replacement is None:
                log.warning(
                    "event=tx_stuck_at_cap nonce=%d tx=%s cap=%d", nonce, latest.tx_hash, self.config.fee_cap_wei
                )
                return
            await self._persist(replacement.raw_tx, replacement.tx_hash, nonce, replacement.meta)
            records.append(replacement)
            log.info(
                "event=tx_replaced nonce=%d old=%s new=%s max_fee=%d",
                nonce,
                latest.tx_hash,
                replacement.tx_hash,
                replacement.max_fee_per_gas,
            )
            await self._broadcast(replacement)

    def _bumped(self, record: TxRecord) -> TxRecord | None:
        """The same transaction with fees raised by bump_pct (at least +10%), or None above the cap."""
        cfg = self.config
        tx = record.fields()
        old_max, old_tip = int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"])
        bump = max(cfg.bump_pct, 10)
        new_max = -(-old_max * (100 + bump) // 100)
        new_tip = -(-old_tip * (100 + bump) // 100)
        if new_max > cfg.fee_cap_wei:
            new_max = cfg.fee_cap_wei
            if new_max * 100 < old_max * 110:  # nodes refuse a replacement under +10%
                return None
        new_tip = min(new_tip, new_max)
        if new_tip * 100 < old_tip * 110:
            return None
        tx.update(maxFeePerGas=new_max, maxPriorityFeePerGas=new_tip, type=2)
        for key in ("v", "r", "s", "yParity", "hash"):
            tx.pop(key, None)
        if "data" not in tx and "input" in tx:
            tx["data"] = tx.pop("input")
        meta = dict(record.meta)
        meta["replaces"] = record.tx_hash
        return self._sign(tx, meta)

    async def resume(self, records: Iterable[TxRecord | tuple[bytes, str, int, Mapping[str, Any]]]) -> list[ResumedTx]:
        """Take over persisted transactions after a restart: look receipts up, re-broadcast persisted raw
        transactions the node does not know, and adopt pending nonces (then `wait(nonce)` on them).
        Never signs anything."""
        by_nonce: dict[int, list[TxRecord]] = {}
        for item in records:
            record = item if isinstance(item, TxRecord) else TxRecord(*item)
            by_nonce.setdefault(record.nonce, []).append(record)
        async with self._lock:
            mined_nonce = int(
                await self._retry(lambda: self.w3.eth.get_transaction_count(self.address, "latest"), "nonce")
            )
            results = [
                await self._resume_nonce(nonce, sorted(group, key=lambda r: r.max_fee_per_gas), mined_nonce)
                for nonce, group in sorted(by_nonce.items())
            ]
            pending = int(
                await self._retry(lambda: self.w3.eth.get_transaction_count(self.address, "pending"), "nonce")
            )
            highest = max((r.nonce + 1 for r in results if r.status == "pending"), default=0)
            self._next_nonce = max(pending, highest, self._next_nonce or 0)
            return results

    async def _resume_nonce(self, nonce: int, group: list[TxRecord], mined_nonce: int) -> ResumedTx:
        for record in group:
            receipt = await self._receipt(record.tx_hash)
            if receipt is not None:
                status = "mined" if int(receipt["status"]) == 1 else "reverted"
                return ResumedTx(nonce, status, record.tx_hash, receipt)
        if nonce < mined_nonce:
            return ResumedTx(nonce, "dropped", None)  # the nonce went to a transaction not persisted
        self._inflight[nonce] = list(group)
        known = [r for r in group if await self._known(r.tx_hash)]
        if not known:
            log.info("event=tx_rebroadcast_after_restart nonce=%d tx=%s", nonce, group[-1].tx_hash)
            await self._broadcast(group[-1])
        return ResumedTx(nonce, "pending", (known or group)[-1].tx_hash)
