"""The bot's side of iExec: its wallet, the hub, the market, the watcher and results, behind one object.

`ChainGateway` is what the pipeline calls. It owns the one transaction sender of the custodial wallet
(every transaction is written to the books before broadcast, with the job it belongs to), one event watcher
for all jobs (one `eth_getLogs` per cycle whatever the number of jobs; its block cursor is kept in the
books), and the market client. It knows nothing of Telegram and writes no chat text: what admins read about
stake moves and prices is made by `bot.admin_ops` from what this returns.

In TEE mode (`settings.tee`) it also holds the bot's result key (RSA, `result_key_path`, encrypted with the
wallet password) and the SMS client: at start the key is loaded (or made once and saved) and pushed to the SMS
as the wallet's result-encryption key; per job it derives the photo's AES key from the result key and the job
id (`input_key`: the same after a restart, never stored) and pushes it as the job's requester secret.

Never here: the wallet's key outside the signer, a password in a message, an RPC URL with its key in a log,
a secret value (input key, result key) in a log, the books or order params; a sentence for a chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from eth_typing import HexStr
from eth_utils import to_checksum_address
from web3.exceptions import TransactionNotFound

from bot.errors import ChainDisagrees, NoOffer, OfferTaken, TeeUnavailable
from bot.logs import redact_url
from bot.settings import Settings
from iexec.errors import ChainError, InsufficientStake, MarketError, OrderConsumed
from iexec.hub import Hub, TaskStatus
from iexec.market import MarketClient
from iexec.orders import Domain, RequestOrder, Tag, build_request_order, tag_to_int, tags_compatible
from iexec.results import TaskResult, fetch_result
from iexec.retry import RetryPolicy, retry_async
from iexec.tx import SenderConfig, TxRecord, TxSender, connect
from iexec.tx import close as close_w3
from iexec.watch import TaskClaimed, TaskDeadlinePassed, TaskFinalized, TaskInitialized, TaskWatcher
from ledger import Ledger
from ledger.amounts import format_rlc

log = logging.getLogger(__name__)
CURSOR_KEY = "watcher.cursor"
#: How often a deal the chain calls unknown is read again (poll_interval_s apart, DEAL_REREAD_MAX_S in all)
#: before the books and the chain are said to disagree: behind a load-balanced RPC, a node behind the tip
#: does not know a deal mined a moment ago.
DEAL_REREADS = 3
DEAL_REREAD_MAX_S = 30.0
#: the longest pause between two watcher cycles after failures
WATCH_MAX_DELAY_S = 30.0


class _DealUnknown(Exception):
    """The chain answered an all-zero deal (it may not have seen the match yet): read it again."""

    def __init__(self, deal: Any) -> None:
        super().__init__("the chain does not know the deal (yet)")
        self.deal = deal


@dataclass(frozen=True)
class Offer:
    """A signed app order and workerpool order that our request order accepts."""

    app: Any
    workerpool: Any

    @property
    def total_price(self) -> int:
        return self.app.appprice + self.workerpool.workerpoolprice


class TaskKind(str, Enum):
    """Where a task stands, as far as the bot knows (`TaskEvent.kind`)."""

    WAITING = "waiting"  # matched, not started on chain
    INITIALIZED = "initialized"  # started by the workerpool
    FINALIZED = "finalized"  # completed: the results are known
    CLAIMED = "claimed"  # claimed (refunded on chain) by anyone
    DEADLINE = "deadline"  # its final deadline passed without a result: it can be claimed


@dataclass(frozen=True)
class TaskEvent:
    """What the pipeline learns about a task: its `kind`; `results` with FINALIZED; `initialized` tells which
    claim a DEADLINE needs."""

    kind: TaskKind
    results: bytes = b""
    final_deadline: int | None = None
    initialized: bool = False


@dataclass(frozen=True)
class WalletReport:
    address: str
    eth_wei: int
    rlc: int
    stake: int
    locked: int


@dataclass
class _TaskState:
    kind: TaskKind = TaskKind.WAITING
    results: bytes = b""
    final_deadline: int | None = None
    initialized: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def secret_name(job_id: str) -> str:
    """The SMS name of a job's input key (requester secret): `segbot-<job id>` (letters, digits, '-')."""
    return f"segbot-{job_id}"


def load_or_create_result_key(path: Path, password: str) -> Any:
    """The bot's result key from `path` (PKCS#8 PEM encrypted with `password`), made and saved once when the
    file is missing (mode 0600, written to a temporary file then renamed: never half a key). A file that
    exists is never overwritten; one that does not open raises TeeUnavailable."""
    from iexec.tee import ResultKey, TeeError

    secret = password.encode("utf-8")
    try:
        return ResultKey.from_encrypted_pem(path.read_bytes(), secret)
    except FileNotFoundError:
        pass
    except TeeError as exc:
        raise TeeUnavailable(f"result key {path}: {exc} (it is encrypted with the wallet password)") from None
    except OSError as exc:
        raise TeeUnavailable(f"result key {path} cannot be read: {exc.strerror}") from None
    key = ResultKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.to_encrypted_pem(secret))
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # never replaces a key another process saved meanwhile
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        return load_or_create_result_key(path, password)
    tmp.unlink(missing_ok=True)
    log.info("event=result_key_created file=%s", path)
    return key


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


class ChainGateway:
    """The custodial wallet's view of iExec, shared by every job."""

    def __init__(self, settings: Settings, ledger: Ledger, *, account: Any = None) -> None:
        self.settings = settings
        self.network = settings.resolved_network
        self.ledger = ledger
        self._account = account
        self._hub: Hub | None = None  # these three exist once `start` ran: see the properties below
        self._market: MarketClient | None = None
        self._watcher: TaskWatcher | None = None
        self._w3: Any = None  # the one chain connection, shared by the hub client and the watcher
        self._tasks: dict[bytes, _TaskState] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._domain: Domain | None = None
        self.tee = settings.tee
        self.request_tag = settings.request_tag
        self.result_key: Any = None  # iexec.tee.ResultKey in TEE mode
        self.sms: Any = None  # iexec.sms.SmsClient in TEE mode
        self._password_value: str | None = None
        self.watch_errors = 0
        #: after a failed watcher cycle: 2, 4, ... poll intervals, at most WATCH_MAX_DELAY_S (the watcher never
        #: gives up: `wait_s` only)
        self.watch_retry = RetryPolicy(
            base_delay_s=settings.poll_interval_s, max_delay_s=WATCH_MAX_DELAY_S, deadline_s=None, attempts=1
        )
        #: Set by the pipeline: `crash_hook(name)` stops the process at a named point (crash tests).
        self.crash_hook: Callable[[str], None] | None = None

    @property
    def hub(self) -> Hub:
        """The hub client (exists once `start` ran; RuntimeError before)."""
        if self._hub is None:
            raise RuntimeError("the chain gateway is not started")
        return self._hub

    @property
    def _sender(self) -> TxSender:
        """The hub's transaction sender, the one owner of the wallet's nonce (the hub has one once started)."""
        sender = self.hub.sender
        if sender is None:
            raise RuntimeError("the chain gateway is not started")
        return sender

    @property
    def market(self) -> MarketClient:
        """The market client (exists once `start` ran; RuntimeError before)."""
        if self._market is None:
            raise RuntimeError("the chain gateway is not started")
        return self._market

    @property
    def watcher(self) -> TaskWatcher:
        """The event watcher (exists once `start` ran; RuntimeError before)."""
        if self._watcher is None:
            raise RuntimeError("the chain gateway is not started")
        return self._watcher

    # ------------------------------------------------------------------------------------ life cycle

    @property
    def address(self) -> str:
        return self._account.address if self._account is not None else "(not loaded)"

    def _password(self) -> str:
        from ledger.wallet import read_password

        if self._password_value is None:
            password = self.settings.wallet_password_value()
            self._password_value = password if password is not None else read_password(env_var=None, password_file=None)
        return self._password_value

    def _load_account(self) -> Any:
        from ledger.wallet import load_wallet

        return load_wallet(self.settings.wallet_keystore, self._password())

    async def _start_tee(self) -> None:
        """Load (or make) the result key and make sure the SMS holds its public half as our wallet's
        result-encryption key (created, or updated when an older key is there). Raises TeeUnavailable."""
        from iexec.errors import SmsError
        from iexec.sms import SmsClient
        from iexec.tee import RESULT_KEY_SECRET

        url = self.settings.resolved_sms_url
        if not url:
            raise TeeUnavailable("TEE mode needs the SMS (Secret Management Service): set SMS_URL")
        self.result_key = await asyncio.to_thread(
            load_or_create_result_key, self.settings.result_key_path, self._password()
        )
        self.sms = SmsClient(url)
        try:
            await self.sms.set_web2_secret(self._account, RESULT_KEY_SECRET, self.result_key.sms_value)
        except (TimeoutError, SmsError, OSError) as exc:
            raise TeeUnavailable(
                f"TEE mode: the SMS at {redact_url(url)} does not answer or refuses the "
                f"bot's result key ({type(exc).__name__}: {str(exc)[:200]}); check SMS_URL, or "
                "set TEE_MODE=off where the network runs standard tasks"
            ) from None
        log.info(
            "event=tee_ready sms=%s tag=%s result_key_file=%s",
            redact_url(url),
            _hex(self.request_tag),
            self.settings.result_key_path,
        )

    async def start(self) -> None:
        """Connect, adopt transactions persisted before a restart, and start following the chain.

        If a step fails, what was opened is closed again (`stop`) before the error propagates."""
        if self._account is None:
            self._account = self._load_account()
        self._w3 = w3 = connect(self.network.rpc_url)
        try:
            if self.tee:
                await self._start_tee()
            config = SenderConfig(fee_cap_wei=self.settings.max_fee_gwei * 10**9)
            self._hub = Hub(None, self.network.hub, self._account, w3=w3, persist=self._persist, sender_config=config)
            self._market = MarketClient(self.network.market_url, self.network.chain_id, hub=self.network.hub)
            self._watcher = TaskWatcher(
                w3, self.network.hub, load_cursor=self._load_cursor, save_cursor=self._save_cursor
            )
            self._sender.on_broadcast = self._on_broadcast
            await self._resume_sender()
        except BaseException:
            await self.stop()
            raise
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(), name="watcher")
        log.info(
            "event=chain_ready rpc=%s hub=%s wallet=%s",
            redact_url(self.network.rpc_url),
            self.network.hub,
            self.address,
        )

    async def stop(self) -> None:
        """Stop following the chain and close the market client and the chain connection (idempotent).

        The hub client and the watcher stay usable for reads: a new session opens on their next request."""
        if self._watch_task:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        try:
            if self._market is not None:
                await self._market.close()
            if self.sms is not None:
                await self.sms.close()
        finally:
            if self._w3 is not None:
                await close_w3(self._w3)

    def _on_broadcast(self, record: Any) -> None:
        if self.crash_hook is not None and record.meta.get("kind") == "matchOrders":
            self.crash_hook("after_broadcast")

    async def _persist(self, raw_tx: bytes, tx_hash: Any, nonce: int, meta: Any) -> None:
        """Written before broadcast: the raw transaction, its hash and the job it belongs to."""
        meta = dict(meta)
        if "job_id" not in meta and meta.get("request_hash"):
            job = self.ledger.job_by(order_hash=str(meta["request_hash"]))
            meta["job_id"] = job.id if job else None
        elif "job_id" not in meta and meta.get("task_id"):
            job = self.ledger.job_by(task_id=str(meta["task_id"]))
            meta["job_id"] = job.id if job else None
        purpose = str(meta.get("purpose") or meta.get("kind") or "tx")
        self.ledger.record_tx(
            raw_tx, tx_hash, nonce, self.address, purpose, str(meta["job_id"]) if meta.get("job_id") else None, meta
        )

    async def _resume_sender(self) -> None:
        pending = self.ledger.pending_txs(self.address)
        if not pending:
            return
        records = [
            TxRecord(
                _bytes(t.raw_tx), t.tx_hash, t.nonce, t.meta if isinstance(t.meta, dict) else json.loads(t.meta or "{}")
            )
            for t in pending
        ]
        for outcome in await self._sender.resume(records):
            log.info("event=tx_resumed nonce=%d status=%s tx=%s", outcome.nonce, outcome.status, outcome.tx_hash)
        await self._settle_tx_records()

    async def _settle_tx_records(self) -> None:
        """Bring the books' transaction statuses up to date with the chain's receipts.

        Only a receipt the node says does not exist (`TransactionNotFound`) counts as "not mined": any
        other error (the RPC unreachable, a timeout) leaves the record as it is for the next time, so that
        a mined transaction is never relabelled `replaced` on a blip. Never raises for an RPC error."""
        w3 = self.hub.w3
        try:
            mined_nonce = await w3.eth.get_transaction_count(to_checksum_address(self.address), "latest")
        except Exception as exc:  # noqa: BLE001 - any RPC failure: settle the records next time
            log.warning("event=tx_settle_deferred error=%r", str(exc)[:200])
            return
        for tx in self.ledger.pending_txs(self.address):
            try:
                receipt = await w3.eth.get_transaction_receipt(HexStr(tx.tx_hash))
            except TransactionNotFound:
                receipt = None
            except Exception as exc:  # noqa: BLE001 - any RPC failure: this record waits for the next time
                log.warning("event=tx_settle_deferred job=%s tx=%s error=%r", tx.job_id, tx.tx_hash, str(exc)[:200])
                continue
            if receipt is not None:
                status = "mined" if int(receipt["status"]) == 1 else "failed"
                self.ledger.update_tx(tx.tx_hash, status, block_number=int(receipt["blockNumber"]))
            elif tx.nonce < mined_nonce:
                self.ledger.update_tx(tx.tx_hash, "replaced")

    async def _load_cursor(self) -> int | None:
        value = self.ledger.get_value(CURSOR_KEY)
        return int(value) if value is not None else None

    async def _save_cursor(self, block: int) -> None:
        self.ledger.set_value(CURSOR_KEY, str(block))

    # ------------------------------------------------------------------------------------ ordering

    async def domain(self) -> Domain:
        if self._domain is None:
            self._domain = await self.hub.domain()
        return self._domain

    async def sign_request_order(self, job_id: str, input_url: str | list[str], args: str) -> RequestOrder:
        """The job's one request order: workerpool open, max prices, volume 1, salt from the job id. In TEE
        mode it carries the TEE tag, the job's requester secret as input key 1 and result encryption."""
        s = self.settings
        params: dict[str, Any] = dict(
            iexec_args=args,
            iexec_input_files=[input_url] if isinstance(input_url, str) else list(input_url),  # an album: several
            iexec_result_storage_provider="ipfs",
        )
        if self.tee:
            params.update(iexec_secrets={1: secret_name(job_id)}, iexec_result_encryption=True)
            if not tag_to_int(self.request_tag) & Tag.TEE:  # settings guarantee it; never sign without it
                raise TeeUnavailable("refusing a TEE-mode request order without the TEE tag")
        order = build_request_order(
            app=s.app_address,
            requester=self.address,
            category=s.category,
            appmaxprice=s.app_max_price_nrlc,
            workerpoolmaxprice=s.workerpool_max_price_nrlc,
            params=params,
            job_id=job_id,
            tag=self.request_tag,
            trust=s.trust,
        )
        return order.sign(self._account, await self.domain())

    # ------------------------------------------------------------------------------------ TEE inputs

    def input_key(self, job_id: str) -> bytes:
        """The job's AES-256 input key: derived from the result key and the job id, so a restart finds the
        same key again; it is never written to the books or a log."""
        if self.result_key is None:
            raise TeeUnavailable("TEE mode is not started (no result key)")
        return self.result_key.derive_key("input:" + job_id)

    async def input_secret_pushed(self, job_id: str) -> bool:
        """True when the SMS already holds the job's requester secret."""
        return bool(await self.sms.requester_secret_exists(self.address, secret_name(job_id)))

    async def push_input_secret(self, job_id: str, key: bytes) -> None:
        """Push the job's input key as requester secret `segbot-<job id>` (the format iExec tools use for
        dataset keys). An "already exists" answer counts as done: the value is derived, so it is the same.
        SmsError (an IExecError) propagates for the pipeline to retry."""
        from iexec.errors import SmsError
        from iexec.tee import dataset_key_secret

        name = secret_name(job_id)
        try:
            await self.sms.push_requester_secret(self._account, name, dataset_key_secret(key))
        except SmsError as exc:
            if exc.status == 409 or await self.input_secret_pushed(job_id):
                log.info("event=input_secret_existed job=%s name=%s", job_id, name)
                return
            raise
        log.info("event=input_secret_pushed job=%s name=%s", job_id, name)

    @staticmethod
    def request_order_from_json(data: Any) -> RequestOrder:
        return RequestOrder.from_market_json(json.loads(data) if isinstance(data, str) else data)

    async def ensure_stake(self, amount: int) -> None:
        """Raise NoOffer(no_stake=True) when the hub's free stake cannot pay `amount`."""
        stake = (await self.hub.view_account(self.address)).stake
        if stake < amount:
            raise NoOffer(f"free stake {format_rlc(stake)} < {format_rlc(amount)}", no_stake=True)

    async def offers(self, tag: Any = None) -> list[Offer]:
        """App and workerpool order pairs within the maximum prices whose tags match `tag` (the request
        order's; default this mode's), cheapest first (`usable_offers`)."""
        s = self.settings
        request_tag = self.request_tag if tag is None else tag
        apps = [o.order for o in await self.market.app_orders(s.app_address, requester=self.address) if o.remaining > 0]
        pools = [
            o.order
            for o in await self.market.workerpool_orders(
                category=s.category,
                app=s.app_address,
                requester=self.address,
                min_tag=request_tag,
                min_trust=s.trust or None,
            )
            if o.remaining > 0
        ]
        return usable_offers(
            apps,
            pools,
            request_tag,
            app_max_price=s.app_max_price_nrlc,
            workerpool_max_price=s.workerpool_max_price_nrlc,
        )

    async def best_offer(self, tag: Any = None) -> Offer:
        try:
            found = await self.offers(tag)
        except MarketError as exc:
            raise NoOffer(f"market unavailable: {exc}") from exc
        if not found:
            raise NoOffer("no app and workerpool orders within the maximum prices")
        return found[0]

    async def deal_of(self, request: RequestOrder) -> str | None:
        """The deal of our volume-1 request order, if it was matched (derived, never searched)."""
        request_hash = request.hash(await self.domain())
        if await self.hub.view_consumed(request_hash) == 0:
            return None
        return _hex(Hub.deal_id(request_hash, 0))

    async def settle_pending_match(self, job_id: str) -> bool:
        """Wait for match transactions of `job_id` still in flight (after a restart); True if there were."""
        pending = [t for t in self.ledger.txs_for_job(job_id) if t.status in ("persisted", "broadcast")]
        if not pending:
            return False
        inflight = self._sender.inflight()
        for nonce in sorted({t.nonce for t in pending}):
            if nonce in inflight:
                try:
                    await self._sender.wait(nonce)
                except ChainError as exc:
                    log.info("event=pending_match_failed job=%s nonce=%d error=%r", job_id, nonce, str(exc))
        await self._settle_tx_records()
        return True

    async def match(self, offer: Offer, request: RequestOrder, job_id: str, crash_hook: Any = None) -> str:
        """Match through the one sender (stored before broadcast); returns the deal id."""
        try:
            deal = await self.hub.match_orders(offer.app, None, offer.workerpool, request)
        except OrderConsumed as exc:
            if exc.which == "request":
                found = await self.deal_of(request)
                if found:
                    return found
            raise OfferTaken(str(exc)) from exc
        except InsufficientStake as exc:
            raise NoOffer(str(exc), no_stake=True) from exc
        finally:
            await self._settle_tx_records()
        if crash_hook:
            crash_hook("after_match")
        return _hex(deal)

    async def view_deal(self, deal_id: str) -> Any:
        deal = await self.hub.view_deal(_bytes(deal_id))
        return _DealView(deal)

    async def known_deal(self, deal_id: str) -> Any:
        """`view_deal`, read again (up to DEAL_REREADS times, poll_interval_s apart) while the chain answers
        an all-zero deal; returns the last answer, which is still all-zero when the chain really does not
        know the deal."""
        pause = min(self.settings.poll_interval_s, DEAL_REREAD_MAX_S / DEAL_REREADS)
        rereads = RetryPolicy(
            base_delay_s=pause, max_delay_s=pause, jitter=0.0, deadline_s=None, attempts=1 + DEAL_REREADS
        )

        async def read() -> Any:
            deal = await self.hub.view_deal(_bytes(deal_id))
            if int(deal.requester, 16) == 0:
                raise _DealUnknown(deal)
            return deal

        try:
            deal = await retry_async(
                read,
                rereads,
                retry_on=lambda exc: isinstance(exc, _DealUnknown),
                give_up=lambda last, _attempts, _elapsed: last,
                on_retry=lambda _exc, attempt, _delay: log.info(
                    "event=deal_unknown_reread deal=%s attempt=%d", deal_id, attempt
                ),
            )
        except _DealUnknown as unknown:
            deal = unknown.deal
        return _DealView(deal)

    @staticmethod
    def task_id(deal_id: str) -> str:
        return _hex(Hub.task_id(_bytes(deal_id), 0))

    # ------------------------------------------------------------------------------------ tracking

    async def _watch_loop(self) -> None:
        """One watcher cycle every poll interval for all jobs; errors are retried, never fatal."""
        while True:
            try:
                if self._tasks:
                    for event in await self.watcher.poll():
                        self._apply(event)
                self.watch_errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the chain may be down for a while
                self.watch_errors += 1
                log.warning("event=watch_failed errors=%d error=%r", self.watch_errors, str(exc)[:200])
            await asyncio.sleep(
                self.settings.poll_interval_s
                if self.watch_errors == 0
                else self.watch_retry.wait_s(self.watch_errors + 1)
            )

    def _apply(self, event: Any) -> None:
        task_id = getattr(event, "task_id", None)
        state = self._tasks.get(bytes(task_id)) if task_id is not None else None
        if state is None:
            return
        if isinstance(event, TaskInitialized) and state.kind == TaskKind.WAITING:
            state.kind, state.initialized = TaskKind.INITIALIZED, True
        elif isinstance(event, TaskFinalized):
            state.kind, state.results = TaskKind.FINALIZED, bytes(event.results)
        elif isinstance(event, TaskClaimed):
            state.kind = TaskKind.CLAIMED
        elif isinstance(event, TaskDeadlinePassed) and state.kind in (TaskKind.WAITING, TaskKind.INITIALIZED):
            state.kind = TaskKind.DEADLINE
            state.initialized = event.task.status != TaskStatus.UNSET
        else:
            return
        if state.changed is not None:
            state.changed.set()

    async def _follow(self, deal_id: str, task_id: str) -> _TaskState:
        """Start following a task; its state is read once so that nothing before the cursor is missed."""
        key = _bytes(task_id)
        state = self._tasks.get(key)
        if state is not None:
            return state
        deal = (await self.known_deal(deal_id)).deal
        if int(deal.requester, 16) == 0:
            raise ChainDisagrees(
                f"the chain does not know deal {deal_id} of task {task_id} although the "
                "books recorded it: was the chain reset?"
            )
        category = next((c for c in await self.hub.categories() if c.id == deal.category), None)
        timeref = category.work_clock_time_ref if category else 0
        final_deadline = deal.start_time + 10 * timeref if timeref else None
        task = await self.hub.view_task(key)
        state = _TaskState(final_deadline=final_deadline)
        if task.status == TaskStatus.COMPLETED:
            state.kind, state.results, state.initialized = TaskKind.FINALIZED, bytes(task.results), True
        elif task.status == TaskStatus.FAILED:
            state.kind, state.initialized = TaskKind.CLAIMED, True
        elif task.status in (TaskStatus.ACTIVE, TaskStatus.REVEALING):
            state.kind, state.initialized = TaskKind.INITIALIZED, True
            state.final_deadline = task.final_deadline or final_deadline
        self._tasks[key] = state
        self.watcher.follow_task(key, final_deadline=state.final_deadline, deal_id=_bytes(deal_id))
        return state

    async def wait_task(
        self, deal_id: str, task_id: str, *, known: TaskKind = TaskKind.WAITING, timeout: float = 30.0
    ) -> TaskEvent:
        """Wait until the task's state differs from `known` (or `timeout`); returns what is known then.

        Returns at once when the state already differs: the caller must act on every kind it can get
        (waiting, initialized, finalized, claimed, deadline), else it would call again at once.
        Raises ChainDisagrees when the chain does not know the deal."""
        state = await self._follow(deal_id, task_id)
        if state.kind == known:
            state.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.changed.wait(), timeout)
        return TaskEvent(state.kind, state.results, state.final_deadline, state.initialized)

    async def reread_task(self, deal_id: str, task_id: str) -> TaskEvent:
        """Read the task from the chain again (not from what the watcher saw): a second opinion before
        acting on a state the books cannot explain (an RPC node behind the chain answers stale reads)."""
        self.unfollow(task_id)
        state = await self._follow(deal_id, task_id)
        return TaskEvent(state.kind, state.results, state.final_deadline, state.initialized)

    def unfollow(self, task_id: str) -> None:
        key = _bytes(task_id)
        self._tasks.pop(key, None)
        if self._watcher is not None:
            self.watcher.unfollow(key)

    async def claim(self, deal_id: str, task_id: str, *, initialized: bool) -> None:
        """Claim a task past its final deadline (initializing it first when the pool never did)."""
        task = await self.hub.view_task(_bytes(task_id))
        if task.status == TaskStatus.FAILED:
            return  # claimed already (by us before a crash, or by anyone)
        try:
            if task.status == TaskStatus.UNSET:
                await self.hub.initialize_and_claim_array([_bytes(deal_id)], [0])
            else:
                await self.hub.claim(_bytes(task_id))
        finally:
            await self._settle_tx_records()

    async def fetch_result(self, results: bytes, dest: Path) -> TaskResult:
        """Download and read a result; in TEE mode an encrypted archive is opened with the result key
        (DecryptionError, an UnsafeArchive, when it does not open)."""
        gateways = [self.network.ipfs_gateway]
        if self.result_key is not None:
            return await fetch_result(results, gateways, dest, result_key=self.result_key)
        return await fetch_result(results, gateways, dest)

    # ------------------------------------------------------------------------------------ admin

    async def wallet_report(self) -> WalletReport:
        w3 = self.hub.w3
        account = await self.hub.view_account(self.address)
        return WalletReport(
            self.address,
            int(await w3.eth.get_balance(to_checksum_address(self.address))),
            await self.hub.rlc_balance(self.address),
            account.stake,
            account.locked,
        )

    async def move_stake(self, kind: str, nrlc: int) -> None:
        """Deposit `nrlc` into the hub (`kind` "deposit") or withdraw it ("withdraw"), through the one sender.
        Raises ChainError (InsufficientStake when the wallet or the stake holds too little) or ValueError:
        nothing moved then."""
        try:
            if kind == "deposit":
                await self.hub.deposit(nrlc)
            else:
                await self.hub.withdraw(nrlc)
        finally:
            await self._settle_tx_records()


def usable_offers(
    apps: list[Any], pools: list[Any], request_tag: Any, *, app_max_price: int, workerpool_max_price: int
) -> list[Offer]:
    """The (app order, workerpool order) pairs a request order with `request_tag` can be matched with,
    cheapest first (then the cheaper app): PoCo takes the deal's TEE bit from the app order (a TEE request
    needs a TEE app order, and a TEE app order turns any deal into a TEE deal, so a standard request takes
    only app orders without it), the deal's tag is app | request, and the workerpool's tag must cover it.
    An app order asking for a bit the request does not (a GPU, say) is left out too."""
    wanted = tag_to_int(request_tag)
    tee = bool(wanted & Tag.TEE)
    pairs = []
    for app in apps:
        app_tag = tag_to_int(app.tag)
        if app.appprice > app_max_price or app_tag & ~wanted or bool(app_tag & Tag.TEE) != tee:
            continue
        for pool in pools:
            if pool.workerpoolprice <= workerpool_max_price and tags_compatible(pool.tag, app_tag, wanted):
                pairs.append(Offer(app, pool))
    pairs.sort(key=lambda o: (o.total_price, o.app.appprice))
    return pairs


@dataclass(frozen=True)
class _DealView:
    deal: Any

    @property
    def requester(self) -> str:
        return self.deal.requester

    @property
    def app_price(self) -> int:
        return self.deal.app.price

    @property
    def workerpool_price(self) -> int:
        return self.deal.workerpool.price
