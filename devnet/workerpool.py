"""The devnet workerpool: scheduler and worker in one process, running real deals on the local PoCo.

    pool = Workerpool(rpc_url, deployment, POOL_OWNER, WORKER, market_url, gateway,
                      app_cmd=[sys.executable, "-m", "devnet.testapp"], workers=2)
    await pool.start()          # registers the workerpool, publishes its order, watches its deals
    outcome = await pool.wait_task(task_id)
    await pool.stop()

What it does, as a real iExec workerpool does: owns a registered workerpool; publishes signed workerpool
orders (price, category, tag, trust, volume) to the market and re-publishes when the remaining volume runs
low; follows `SchedulerNotice` logs for its address with `eth_getLogs`; initializes each task of a deal;
downloads the request's `iexec_input_files` into a fresh IEXEC_IN (each file named sha256(url) hex); runs the
app as a subprocess with the IEXEC_* environment, `iexec_args` split shell-like after the command, killed at
the category's time limit (× `time_scale`); zips IEXEC_OUT (files at the root) with stdout.txt/stderr.txt;
stores the zip in the result gateway and completes the task with `contributeAndFinalize` (trust 1), the
results being `{"storage": "ipfs", "location": "/ipfs/<id>"}`. At most `workers` tasks run at once.
At start it takes up the deals it was given before (as iexec-core replays its unfinished tasks after a
restart): SchedulerNotice logs from the deployment's block on, and each task still open on chain and before
its contribution deadline runs (initialized already: without initialize); log `workerpool_resume`.
Transactions go through the iExec client (`iexec.pool.WorkerpoolClient`: one nonce-owning sender per
account, typed revert reasons) and orders through `iexec.market.MarketClient`; the archive is devnet/archive.py.

TEE deals (the deal's tag has bit 0 set; the pool's order tag is TDX, 0x…09, by default, which covers
standard deals too) run as iExec runs them in an enclave: a fresh enclave account per task (a real
enclave's ephemeral challenge key) is named in the scheduler's authorization and signs the contribution;
the request's `iexec_secrets` {"<n>": "<name>"} are read from the SMS stand-in (`sms.requester_secret(deal
requester, name)`, the attested-enclave path) and given to the app as IEXEC_REQUESTER_SECRET_<n>; with
`iexec_result_encryption: true` the archive is encrypted to the beneficiary's web2 secret
`iexec-result-encryption-public-key` as iExec's post-compute does (devnet/postcompute.py). A secret or key
that is missing, or a TEE deal on a pool without an SMS, is what a TEE session that cannot be created is to
iexec-worker: no contribution, the task fails at its deadline and is claimable (state `tee_failed`, the
detail names what was missing, never a value). Standard deals ignore `iexec_secrets` and encryption.

Decisions (mirroring iexec-worker): an input that cannot be downloaded, or an app killed at the time limit,
leads to no contribution (the task fails at its deadline and is claimable). An app that ends by itself with
a non-zero code, or without computed.json, still has its archive finalized with an `error.txt` added: the
task is COMPLETED with an error archive. Fault modes: see devnet/faults.py.

It fetches inputs from loopback addresses only (the devnet never sends a packet elsewhere) and never logs a
private key; it is for dev chains only (the devnet's well-known keys sign everything).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3

from devnet.anvil import child_preexec
from devnet.archive import result_archive
from devnet.deploy import hub_abi, registry_abi
from devnet.faults import Fault, FaultBook, FaultError, normalise_deal_id
from devnet.gateway import ResultGateway
from devnet.loopback import serve_loopback
from devnet.postcompute import RESULT_KEY_SECRET, PostComputeError, encrypt_result, load_public_key
from iexec.bodies import read_capped
from iexec.errors import BodyTooLarge, IExecError, MarketError
from iexec.market import MarketClient
from iexec.orders import Domain, WorkerpoolOrder
from iexec.pool import WorkerpoolClient
from iexec.tx import SenderConfig, connect

log = logging.getLogger(__name__)

__all__ = ["InputError", "PoolError", "TDX_TAG", "TaskOutcome", "TeeSessionError", "Workerpool", "task_id"]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ZERO_TAG = b"\x00" * 32
TDX_TAG = bytes(31) + b"\x09"  # bits tee (0x01) + tdx (0x08): covers standard deals as well
_SCHEDULER_NOTICE = keccak(text="SchedulerNotice(address,bytes32)")
_UNSET, _ACTIVE = 0, 1  # viewTask status (then REVEALING, COMPLETED, FAILED)
_CONTRIBUTION_DEADLINE_RATIO = 7  # PoCo: a task's contribution deadline is startTime + 7 x the category's timeref
_RESUME_LOG_RANGE = 5_000  # blocks per eth_getLogs when looking back for live deals at start
INPUT_RETRY_S = 30.0
_MAX_INPUT_BYTES = 50 * 1024 * 1024
# anvil mines at once: poll receipts often; a task's transaction not mined within a minute is a failure
_SENDER_CONFIG = SenderConfig(poll_interval_s=0.02, receipt_timeout_s=60.0)


class PoolError(RuntimeError):
    """The workerpool could not do something on chain or with the market (message says what)."""


class InputError(PoolError):
    """A task's input file could not be fetched (refused URL, HTTP error, too large)."""


class TeeSessionError(PoolError):
    """A TEE task's session cannot be set up: no SMS, a requester secret or the result key is missing."""


@dataclass(frozen=True)
class _Deal:
    """What a task needs from viewDeal."""

    deal_id: str
    category: int
    params: str
    tag: bytes
    requester: str
    beneficiary: str

    @property
    def tee(self) -> bool:
        return bool(self.tag[31] & 0x01)


@dataclass(frozen=True)
class TaskOutcome:
    """What the workerpool did with one task.

    `state`: completed | error_archive | no_show | crashed | overrun | input_failed | tee_failed | timeout |
    failed. `tee` says the task ran as a TEE task, `encrypted` that its archive was encrypted.
    `cid` is the gateway id of the archive when one was stored; `app_seconds` the app's own run time,
    `fetch_seconds` the input download's, `finalize_seconds` archive + store + contributeAndFinalize;
    `finished_at` a time.monotonic() stamp taken when the outcome was final.
    """

    task_id: str
    deal_id: str
    index: int
    state: str
    cid: str | None = None
    app_seconds: float = 0.0
    finished_at: float = 0.0
    fetch_seconds: float = 0.0
    finalize_seconds: float = 0.0
    detail: str = ""
    tee: bool = False
    encrypted: bool = False


def task_id(deal_id: str | bytes, index: int) -> str:
    """keccak256(dealid ‖ uint256 idx) as 0x-hex, as the hub computes it."""
    raw = bytes.fromhex(normalise_deal_id(deal_id)[2:])
    return "0x" + keccak(raw + index.to_bytes(32, "big")).hex()


def _check_loopback_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"input URL must be http(s): {url[:80]!r}")
    host = parts.hostname
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise InputError(f"the devnet workerpool fetches loopback URLs only, not {host[:80]!r}")


def _parse_params(raw: str) -> dict[str, Any]:
    """Request params: a JSON object, or (as iExec does) a plain string taken as iexec_args."""
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {"iexec_args": raw}
    return data if isinstance(data, dict) else {"iexec_args": raw}


class Workerpool:
    """A registered workerpool that executes its deals on the devnet. See the module docstring."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Any,
        owner: LocalAccount,
        worker: LocalAccount,
        market_url: str,
        gateway: ResultGateway,
        app_cmd: Sequence[str],
        *,
        workers: int = 2,
        category: int = 0,
        price: int = 100_000_000,
        tag: bytes | str = TDX_TAG,
        trust: int = 1,
        volume: int = 1000,
        time_scale: float = 1.0,
        poll_interval: float = 0.05,
        description: str = "segbot devnet workerpool",
        market: Any = None,
        workdir: Path | None = None,
        app_env: dict[str, str] | None = None,
        app_cwd: Path | None = None,
        sms: Any = None,
    ) -> None:
        self.input_retry_s = INPUT_RETRY_S
        self.max_input_bytes = _MAX_INPUT_BYTES
        if workers < 1:
            raise PoolError("workers must be at least 1")
        self.rpc_url, self.deployment, self.owner, self.worker = rpc_url, deployment, owner, worker
        self.market_url, self.gateway, self.app_cmd = market_url.rstrip("/"), gateway, list(app_cmd)
        self.workers, self.category, self.price, self.trust = workers, category, price, trust
        self.tag = bytes.fromhex(tag[2:]) if isinstance(tag, str) else bytes(tag)
        self.volume, self.time_scale, self.poll_interval = volume, time_scale, poll_interval
        self.description, self.market = description, market
        self.app_env, self.app_cwd = dict(app_env or {}), app_cwd
        self.sms = sms  # devnet.sms.SmsStandIn (requester_secret, web2_secret) or None: TEE tasks then fail
        self.faults = FaultBook()
        self.address: str | None = None
        self.orders: list[WorkerpoolOrder] = []
        self.outcomes: dict[str, TaskOutcome] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.control_url: str | None = None
        self._workdir_arg = workdir
        self._workdir: Path | None = None
        self._domain = Domain(deployment.chain_id, deployment.hub)
        self._w3: AsyncWeb3 | None = None
        self._hub: Any = None  # views (the devnet's full ABI); transactions go through self._client
        self._client: WorkerpoolClient | None = None
        self._market_api: MarketClient | None = None
        self._slots = asyncio.Semaphore(workers)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._procs: set[asyncio.subprocess.Process] = set()
        self._deals_seen: set[str] = set()
        self._waiters: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[Any] | None = None
        self._cursor = 0
        self._timerefs: dict[int, int] = {}

    # ---------------------------------------------------------------------------------------- life cycle

    async def start(self, control_port: int | None = None) -> None:
        """Register (or reuse) the workerpool, publish its order, start watching; optionally serve control.

        Raises PoolError when the chain or the market refuses.
        """
        self._w3 = connect(self.rpc_url, timeout_s=30.0)  # its own sessions: see iexec.tx.CountingHTTPProvider
        self._hub = self._w3.eth.contract(address=to_checksum_address(self.deployment.hub), abi=hub_abi())
        self._client = WorkerpoolClient(
            self._w3, self.deployment.hub, scheduler=self.owner, worker=self.worker, sender_config=_SENDER_CONFIG
        )
        self._session = aiohttp.ClientSession()
        self._market_api = MarketClient(
            self.market_url, self.deployment.chain_id, hub=self.deployment.hub, session=self._session, timeout=15.0
        )
        self._workdir = Path(tempfile.mkdtemp(prefix="devnet-pool-", dir=self._workdir_arg))
        try:
            self.address = await self._register()
            head = await self._w3.eth.block_number
            await self._resume(head)
            self._cursor = head + 1
            await self._top_up(force=True)
        except IExecError as exc:  # the iExec client's typed errors, as this module's one error type
            raise PoolError(f"workerpool set-up refused: {exc}") from exc
        if control_port is not None:
            await self._serve_control(control_port)
        self._loop_task = asyncio.create_task(self._watch_loop(), name="workerpool-watch")
        log.info("workerpool_started address=%s workers=%d", self.address, self.workers)

    async def stop(self) -> None:
        """Stop watching, kill running apps, stop the control server and remove the work folder."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for proc in list(self._procs):
            if proc.returncode is None:
                proc.kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proc in list(self._procs):
            await proc.wait()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._w3 is not None:
            await self._w3.provider.disconnect()
            self._w3 = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def __aenter__(self) -> Workerpool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------------------------------- chain set-up

    async def _register(self) -> str:
        """The workerpool's address: predicted from the registry, created when not deployed yet."""
        assert self._w3 is not None
        registry_address = await self._hub.functions.workerpoolregistry().call()
        registry = self._w3.eth.contract(address=registry_address, abi=registry_abi("workerpool"))
        predicted = await registry.functions.predictWorkerpool(self.owner.address, self.description).call()
        if await self._w3.eth.get_code(predicted) in (b"", b"\x00"):
            assert self._client is not None
            create = registry.functions.createWorkerpool(self.owner.address, self.description)
            await self._client.scheduler_hub.transact(create, "createWorkerpool")  # the owner's one sender
        return to_checksum_address(predicted)

    def _new_order(self) -> WorkerpoolOrder:
        order = WorkerpoolOrder(
            workerpool=self.address,
            workerpoolprice=self.price,
            volume=self.volume,
            tag=self.tag,
            category=self.category,
            trust=self.trust,
            apprestrict=ZERO_ADDRESS,
            datasetrestrict=ZERO_ADDRESS,
            requesterrestrict=ZERO_ADDRESS,
            salt=os.urandom(32),
        )
        return order.sign_with(self.owner, self._domain)

    async def remaining(self) -> int:
        """Volume left on the newest published order (0 when none)."""
        if not self.orders:
            return 0
        consumed = await self._hub.functions.viewConsumed(self.orders[-1].hash(self._domain)).call()
        return max(0, self.orders[-1].volume - consumed)

    async def _top_up(self, force: bool = False) -> None:
        """Publish a fresh order when the newest one has less than a quarter of its volume left."""
        if not force and await self.remaining() >= max(1, self.volume // 4):
            return
        order = self._new_order()
        await self._publish(order)
        self.orders.append(order)
        log.info(
            "workerpool_order_published workerpool=%s hash=0x%s volume=%d price=%d",
            self.address,
            order.hash(self._domain).hex(),
            order.volume,
            order.workerpoolprice,
        )

    async def _publish(self, order: WorkerpoolOrder) -> None:
        """Publish through the iExec market client (challenge login, retries on 5xx). Raises PoolError."""
        assert self._market_api is not None
        try:
            await self._market_api.publish_workerpool_order(order, self.owner)
        except MarketError as exc:
            raise PoolError(f"market refused the WorkerpoolOrder: {exc}") from exc

    # ---------------------------------------------------------------------------------------- resuming

    async def _resume(self, head: int) -> None:
        """Take up this pool's deals still live on chain, as a restarted iexec-core replays its unfinished
        tasks: every SchedulerNotice for this pool from the deployment's block to `head` is read, and each task
        that can still be contributed runs. UNSET before its contribution deadline runs as a new task; ACTIVE
        without this worker's contribution before the deadline runs without initialize (it would revert).
        Anything else (done, failed, past the deadline, already contributed: contributeAndFinalize completes
        in one transaction, so there is nothing left to reveal or finalize) is left alone."""
        assert self._w3 is not None
        deal_ids = await self._scan_deals(self.deployment.block, head)
        now = (await self._w3.eth.get_block("latest"))["timestamp"]
        plans: list[tuple[_Deal, int, bool]] = []
        live_deals = 0
        for deal_id in deal_ids:
            self._deals_seen.add(deal_id)  # the watch loop starts after `head`: never run one twice
            try:
                found = await self._read_deal(deal_id)
            except Exception as exc:  # noqa: BLE001 - as _run_deal: an unreadable deal is skipped, said why
                log.error("workerpool_deal_unreadable deal=%s error=%s", deal_id, str(exc)[:200])
                continue
            info, first, size, start_time = found
            deadline = start_time + _CONTRIBUTION_DEADLINE_RATIO * await self._timeref(info.category)
            if now >= deadline:
                continue
            before = len(plans)
            for index in range(first, first + size):
                tid = task_id(deal_id, index)
                task = await self._hub.functions.viewTask(tid).call()
                if task[0] == _UNSET:
                    plans.append((info, index, True))
                elif task[0] == _ACTIVE and task[4] > now:
                    contribution = await self._hub.functions.viewContribution(tid, self.worker.address).call()
                    if contribution[0] == 0:
                        plans.append((info, index, False))
            live_deals += len(plans) > before
        log.info("workerpool_resume deals=%d tasks=%d scanned=%d", live_deals, len(plans), len(deal_ids))
        for info, index, initialize in plans:
            log.info(
                "workerpool_resume_task task=%s deal=%s index=%d initialized=%s tee=%s",
                task_id(info.deal_id, index),
                info.deal_id,
                index,
                str(not initialize).lower(),
                str(info.tee).lower(),
            )
            self._spawn(self._run_task(info, index, initialize=initialize), f"task-{info.deal_id[:10]}-{index}")

    async def _scan_deals(self, start: int, head: int) -> list[str]:
        """Deal ids of this pool's SchedulerNotice logs in blocks [start, head], in order, in bounded ranges."""
        assert self._w3 is not None and self.address is not None
        found: list[str] = []
        for low in range(max(0, start), head + 1, _RESUME_LOG_RANGE):
            logs = await self._w3.eth.get_logs(self._notice_filter(low, min(head, low + _RESUME_LOG_RANGE - 1)))
            for entry in logs:
                deal_id = "0x" + bytes(entry["data"])[:32].hex()
                if deal_id not in found:
                    found.append(deal_id)
        return found

    def _notice_filter(self, low: int, high: int) -> Any:
        assert self.address is not None
        return {
            "address": to_checksum_address(self.deployment.hub),
            "fromBlock": low,
            "toBlock": high,
            "topics": ["0x" + _SCHEDULER_NOTICE.hex(), "0x" + bytes(12).hex() + self.address[2:].lower()],
        }

    async def _read_deal(self, deal_id: str) -> tuple[_Deal, int, int, int]:
        """(what a task needs, botFirst, botSize, startTime) from viewDeal."""
        # viewDeal: app, dataset, workerpool, trust, category, tag, requester, beneficiary, callback, params,
        # startTime, botFirst, botSize, workerStake, schedulerRewardRatio, sponsor
        deal = await self._hub.functions.viewDeal(deal_id).call()
        info = _Deal(deal_id, deal[4], deal[9], bytes(deal[5]), str(deal[6]), str(deal[7]))
        return info, deal[11], deal[12], deal[10]

    # ---------------------------------------------------------------------------------------- watching

    async def _watch_loop(self) -> None:
        assert self._w3 is not None
        last_top_up = time.monotonic()
        while True:
            try:
                head = await self._w3.eth.block_number
                if head >= self._cursor:
                    logs = await self._w3.eth.get_logs(self._notice_filter(self._cursor, head))
                    for entry in logs:
                        self._on_deal("0x" + bytes(entry["data"])[:32].hex())
                    self._cursor = head + 1
                if time.monotonic() - last_top_up > 1.0:
                    last_top_up = time.monotonic()
                    await self._top_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the chain or market blinked: keep the pool alive, say why
                log.warning("workerpool_watch_error error=%s", str(exc)[:300])
                await asyncio.sleep(0.5)
            await asyncio.sleep(self.poll_interval)

    def _on_deal(self, deal_id: str) -> None:
        if deal_id in self._deals_seen:
            return
        self._deals_seen.add(deal_id)
        self._spawn(self._run_deal(deal_id), f"deal-{deal_id[:10]}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_deal(self, deal_id: str) -> None:
        try:
            info, first, size, _start = await self._read_deal(deal_id)
        except Exception as exc:  # noqa: BLE001 - any failure to read the deal: log it, skip the deal
            log.error("workerpool_deal_unreadable deal=%s error=%s", deal_id, str(exc)[:200])
            return
        log.info(
            "workerpool_deal deal=%s tasks=%d category=%d tee=%s", deal_id, size, info.category, str(info.tee).lower()
        )
        for index in range(first, first + size):
            self._spawn(self._run_task(info, index), f"task-{deal_id[:10]}-{index}")
        await self._top_up()

    def _record(self, outcome: TaskOutcome) -> None:
        self.outcomes[outcome.task_id] = outcome
        self._waiters.setdefault(outcome.task_id, asyncio.Event()).set()
        log.info(
            "workerpool_task task=%s deal=%s state=%s tee=%s encrypted=%s cid=%s fetch_s=%.3f app_s=%.3f "
            "finalize_s=%.3f %s",
            outcome.task_id,
            outcome.deal_id,
            outcome.state,
            str(outcome.tee).lower(),
            str(outcome.encrypted).lower(),
            outcome.cid,
            outcome.fetch_seconds,
            outcome.app_seconds,
            outcome.finalize_seconds,
            outcome.detail[:200],
        )

    async def wait_task(self, task: str, timeout: float = 60.0) -> TaskOutcome:
        """Wait until the workerpool is done with `task` (0x-hex id). Raises TimeoutError."""
        task = task.lower()
        if task not in self.outcomes:
            await asyncio.wait_for(self._waiters.setdefault(task, asyncio.Event()).wait(), timeout)
        return self.outcomes[task]

    # ---------------------------------------------------------------------------------------- one task

    async def _run_task(self, deal: _Deal, index: int, *, initialize: bool = True) -> None:
        """Run one task; `initialize=False` for a task already initialized (taken up again after a restart)."""
        deal_id = deal.deal_id
        tid = task_id(deal_id, index)
        fault = self.faults.for_deal(deal_id)

        def outcome(state: str, **kw: Any) -> None:
            kw.setdefault("tee", deal.tee)
            self._record(TaskOutcome(tid, deal_id, index, state, finished_at=time.monotonic(), **kw))

        if fault is Fault.NO_SHOW:
            return outcome("no_show", detail="fault: never initialized")
        async with self._slots:
            self.running.add(tid)
            self.max_running = max(self.max_running, len(self.running))
            try:
                await self._execute(tid, deal, index, fault, outcome, initialize=initialize)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any fault of one task is that task's outcome
                outcome("failed", detail=str(exc)[:500])
            finally:
                self.running.discard(tid)

    async def _execute(
        self, tid: str, deal: _Deal, index: int, fault: Fault, outcome: Any, *, initialize: bool = True
    ) -> None:
        assert self._client is not None
        deal_id = deal.deal_id
        if initialize:
            await self._client.initialize(bytes.fromhex(deal_id[2:]), index)  # a revert raises HubRevert (reason)
        if fault is Fault.CRASH_BEFORE_CONTRIBUTE:
            return outcome("crashed", detail="fault: initialized, never contributed")
        if fault is Fault.OVERRUN:
            await self._overrun(tid)
            return outcome("overrun", detail="fault: ran past the contribution deadline")
        assert self._workdir is not None
        folder = self._workdir / tid[2:18]
        in_dir, out_dir = folder / "iexec_in", folder / "iexec_out"
        in_dir.mkdir(parents=True)
        out_dir.mkdir()
        try:
            params = _parse_params(deal.params)
            secrets, result_key = self._tee_session(deal, params) if deal.tee else ({}, None)
            mark = time.monotonic()
            names = await self._download_inputs(params.get("iexec_input_files") or [], in_dir)
            fetch_s = time.monotonic() - mark
            env = self._app_env(tid, deal_id, index, in_dir, out_dir, names)
            env.update(secrets)
            args = shlex.split(str(params.get("iexec_args") or ""))
            if fault is Fault.APP_ERROR:
                args.append("--fail")
            limit = await self._time_limit(deal.category)
            code, stdout, stderr, seconds = await self._run_app(self.app_cmd + args, env, limit, self.app_cwd or folder)
            if code is None:
                return outcome(
                    "timeout", app_seconds=seconds, fetch_seconds=fetch_s, detail=f"app killed after {limit:.1f}s"
                )
            enclave = Account.create() if deal.tee else None  # the enclave's per-task challenge key
            await self._finalize(
                tid,
                out_dir,
                code,
                stdout,
                stderr,
                fault,
                outcome,
                seconds,
                fetch_s,
                enclave=enclave,
                result_key=result_key,
            )
        except InputError as exc:
            return outcome("input_failed", detail=str(exc))
        except TeeSessionError as exc:  # as iexec-worker when the TEE session cannot be created
            return outcome("tee_failed", detail=str(exc))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _tee_session(self, deal: _Deal, params: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """(IEXEC_REQUESTER_SECRET_<n> env, result key SMS value or None) of a TEE task, read from the SMS as
        an attested enclave would. Raises TeeSessionError naming what is missing (never a value)."""
        if self.sms is None:
            raise TeeSessionError("TEE task but this workerpool has no SMS: no enclave session")
        wanted = params.get("iexec_secrets") or {}
        if not isinstance(wanted, dict):
            raise TeeSessionError("iexec_secrets is not an object")
        env: dict[str, str] = {}
        for number, name in sorted(wanted.items(), key=lambda kv: str(kv[0])):
            if not str(number).isdigit() or int(number) < 1 or not isinstance(name, str) or not name:
                raise TeeSessionError(f"iexec_secrets entry {str(number)[:20]!r} is not <n>: <secret name>")
            value = self.sms.requester_secret(deal.requester, name)
            if value is None:
                raise TeeSessionError(
                    f"requester secret {name[:80]!r} (#{int(number)}) of {deal.requester} is not in the SMS"
                )
            env[f"IEXEC_REQUESTER_SECRET_{int(number)}"] = value
        result_key = None
        if params.get("iexec_result_encryption") in (True, "true"):
            result_key = self.sms.web2_secret(deal.beneficiary, RESULT_KEY_SECRET)
            if not result_key:
                raise TeeSessionError(
                    f"result encryption asked but the beneficiary {deal.beneficiary} has no "
                    f"{RESULT_KEY_SECRET} in the SMS"
                )
            try:
                load_public_key(result_key)
            except PostComputeError as exc:
                raise TeeSessionError(f"the beneficiary's {RESULT_KEY_SECRET}: {exc}") from None
        return env, result_key

    async def _finalize(
        self,
        tid: str,
        out_dir: Path,
        code: int,
        stdout: bytes,
        stderr: bytes,
        fault: Fault,
        outcome: Any,
        seconds: float,
        fetch_s: float,
        *,
        enclave: Any = None,
        result_key: str | None = None,
    ) -> None:
        mark = time.monotonic()
        # zipping a result of several MB takes a moment: off the event loop, which serves other tasks (and,
        # in tests and the demo, the market, the gateway and the Telegram stand-in)
        archive, digest = await asyncio.to_thread(result_archive, out_dir, code, stdout, stderr)
        if result_key is not None:  # the post-compute: only the beneficiary can open the archive
            try:
                archive = await asyncio.to_thread(encrypt_result, archive, result_key)
            except PostComputeError as exc:
                raise TeeSessionError(f"result encryption failed: {exc}") from None
        cid = self.gateway.put(archive)
        if fault is Fault.GATEWAY_LOSE:
            self.gateway.set_fault("lose", cid)
        elif fault is Fault.GATEWAY_500:
            self.gateway.set_fault("500", cid)
        results = json.dumps({"storage": "ipfs", "location": self.gateway.location(cid)}).encode()
        # trust 1: the worker contributes and finalizes at once, with the scheduler's authorization
        assert self._client is not None
        await self._client.contribute_and_finalize(bytes.fromhex(tid[2:]), results, digest=digest, enclave=enclave)
        error = out_dir / "error.txt"
        outcome(
            "error_archive" if error.exists() else "completed",
            cid=cid,
            app_seconds=seconds,
            fetch_seconds=fetch_s,
            finalize_seconds=time.monotonic() - mark,
            encrypted=result_key is not None,
            detail=error.read_text()[:500] if error.exists() else "",
        )

    async def _overrun(self, tid: str) -> None:
        """Hold the task (as a never-ending app would) until chain time passes its contribution deadline."""
        assert self._w3 is not None
        deadline = (await self._hub.functions.viewTask(tid).call())[4]
        while (await self._w3.eth.get_block("latest"))["timestamp"] < deadline:
            await asyncio.sleep(max(self.poll_interval, 0.2))

    async def _timeref(self, category: int) -> int:
        """The category's workClockTimeRef in seconds (chain time)."""
        if category not in self._timerefs:
            self._timerefs[category] = (await self._hub.functions.viewCategory(category).call())[2]
        return self._timerefs[category]

    async def _time_limit(self, category: int) -> float:
        return await self._timeref(category) * self.time_scale

    def _app_env(
        self, tid: str, deal_id: str, index: int, in_dir: Path, out_dir: Path, names: list[str]
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IEXEC_")}
        env.update(self.app_env)
        env.update(
            {
                "IEXEC_IN": str(in_dir),
                "IEXEC_OUT": str(out_dir),
                "IEXEC_TASK_ID": tid,
                "IEXEC_DEAL_ID": deal_id,
                "IEXEC_TASK_INDEX": str(index),
                "IEXEC_BOT_SIZE": "1",
                "IEXEC_BOT_FIRST_INDEX": str(index),
                "IEXEC_BOT_TASK_INDEX": str(index),
                "IEXEC_INPUT_FILES_FOLDER": str(in_dir),
                "IEXEC_INPUT_FILES_NUMBER": str(len(names)),
                "IEXEC_DATASET_FILENAME": "",
                "IEXEC_DATASET_ADDRESS": ZERO_ADDRESS,
            }
        )
        for i, name in enumerate(names, start=1):
            env[f"IEXEC_INPUT_FILE_NAME_{i}"] = name
        return env

    async def _download_inputs(self, urls: list[Any], in_dir: Path) -> list[str]:
        """Fetch each URL into in_dir/sha256(url); returns the file names. Raises PoolError('input ...')."""
        assert self._session is not None
        names: list[str] = []
        for url in urls:
            if not isinstance(url, str):
                raise InputError(f"input file entry is not a URL: {url!r:.80}")
            _check_loopback_url(url)
            name = hashlib.sha256(url.encode()).hexdigest()
            body = await self._fetch_input(url)
            (in_dir / name).write_bytes(body)
            names.append(name)
        return names

    async def _fetch_input(self, url: str) -> bytes:
        """GET one input, retrying for up to INPUT_RETRY_S: the requester's input server may be restarting
        (a bot restarted after a crash serves its inputs again). Raises InputError when it never answers."""
        assert self._session is not None
        deadline, delay = time.monotonic() + self.input_retry_s, 0.5
        while True:
            try:
                async with self._session.get(
                    url, timeout=aiohttp.ClientTimeout(total=30), allow_redirects=False
                ) as resp:
                    if resp.status == 200:  # the whole body, or InputError past the cap (not retried)
                        return await read_capped(resp, self.max_input_bytes, "input file")
                    problem = f"input download answered HTTP {resp.status}"
            except BodyTooLarge as exc:
                raise InputError(str(exc)) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"input download failed: {type(exc).__name__}"
            if time.monotonic() + delay > deadline:
                raise InputError(problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _run_app(
        self, cmd: list[str], env: dict[str, str], limit: float, cwd: Path
    ) -> tuple[int | None, bytes, bytes, float]:
        """Run the app; returns (exit code or None when killed at `limit`, stdout, stderr, seconds)."""
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=child_preexec(),
        )  # dies with us, even by SIGKILL
        self._procs.add(proc)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), limit)
            return proc.returncode, stdout, stderr, time.monotonic() - started
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None, b"", b"", time.monotonic() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            self._procs.discard(proc)

    # ---------------------------------------------------------------------------------------- control

    def set_fault(self, mode: str | Fault | None, deal_id: str | bytes | None = None, count: int = 1) -> None:
        """Set a fault mode (see devnet/faults.py); market_500 makes the market fail `count` requests.

        Raises FaultError for an unknown mode or a bad deal id; PoolError when no market stand-in is attached.
        """
        fault = Fault.parse(mode)
        if fault is Fault.MARKET_500:
            if self.market is None:
                raise PoolError("market_500 needs the market stand-in object (pass market=...)")
            self.market.fail_next(count, 500)
            return
        self.faults.set(fault, deal_id)

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for `devnet status` and the control endpoint."""
        states: dict[str, int] = {}
        for outcome in self.outcomes.values():
            states[outcome.state] = states.get(outcome.state, 0) + 1
        return {
            "ok": True,
            "workerpool": self.address,
            "workers": self.workers,
            "running": len(self.running),
            "tag": "0x" + self.tag.hex(),
            "sms": self.sms is not None,
            "tasks": states,
            "orders": ["0x" + o.hash(self._domain).hex() for o in self.orders[-3:]],
            "faults": [{"mode": r.fault.value, "deal_id": r.deal_id} for r in self.faults.rules()],
        }

    async def _serve_control(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/control/faults", self._handle_health)
        app.router.add_post("/control/faults", self._handle_fault)
        app.router.add_get("/control/tasks/{task}", self._handle_task)
        self._runner, self.control_url = await serve_loopback(app, port)

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _handle_fault(self, request: web.Request) -> web.Response:
        """Body: {"mode": "<fault>", "deal_id": "0x..."|null, "count": n} or {"clear": true}."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise FaultError("body must be a JSON object")
            if body.get("clear"):
                self.faults.clear()
            else:
                self.set_fault(body.get("mode"), body.get("deal_id"), int(body.get("count", 1)))
        except (ValueError, FaultError, PoolError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response(self.status())

    async def _handle_task(self, request: web.Request) -> web.Response:
        found = self.outcomes.get(request.match_info["task"].lower())
        if found is None:
            return web.json_response({"ok": False, "error": "unknown task"}, status=404)
        return web.json_response({"ok": True, **found.__dict__})
