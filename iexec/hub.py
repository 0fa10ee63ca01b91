"""Async client of the iExec PoCo v6 Diamond hub: views, deposit/withdraw, matchOrders, claims, events.

    hub = Hub(rpc_url, hub_address, account=wallet, persist=store_tx)
    deal_id = await hub.match_orders(app_order, NULL_DATASET_ORDER, workerpool_order, request_order)
    task = await hub.view_task(Hub.task_id(deal_id, 0))

Every state-changing call is first simulated with eth_call, so a refusal comes back as a typed HubRevert
(InsufficientStake, OrderConsumed, TagMismatch, PriceMismatch...) instead of a raw revert, then goes through
the one nonce-owning TxSender. Hub events are decoded with the hub's ABI (shipped in iexec/abi/); other
contracts' logs in the same receipt (RLC Transfer) are ignored. This module never logs a private key and
never sends a transaction except through the sender.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from eth_abi import decode as abi_decode
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError

from iexec import errors
from iexec.errors import HubRevert, InsufficientStake, OrderConsumed, TransactionReverted
from iexec.orders import NULL_DATASET_ORDER, AppOrder, DatasetOrder, Domain, RequestOrder, WorkerpoolOrder
from iexec.retry import RetryPolicy
from iexec.tx import Persist, SenderConfig, TxSender, connect, with_retry
from iexec.tx import close as close_w3

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


@lru_cache(maxsize=4)
def load_abi(name: str) -> list[dict[str, Any]]:
    """A shipped ABI: 'hub' (the subset of IexecInterfaceToken we use) or 'rlc'."""
    return json.loads(resources.files("iexec.abi").joinpath(f"{name}.json").read_text())


# ----------------------------------------------------------------------------------------------- values


class TaskStatus(IntEnum):
    """PoCo's TaskStatusEnum."""

    UNSET = 0  # not initialized yet
    ACTIVE = 1
    REVEALING = 2
    COMPLETED = 3
    FAILED = 4

    def is_terminal(self) -> bool:
        """COMPLETED and FAILED never change again."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)


class AccountBalance(NamedTuple):
    """An account in the hub, in nRLC: free `stake` and `locked` (frozen by deals)."""

    stake: int
    locked: int


@dataclass(frozen=True)
class Resource:
    """A deal's app, dataset or workerpool: its address, its owner and the price paid per task."""

    pointer: str
    owner: str
    price: int


@dataclass(frozen=True)
class Deal:
    """`viewDeal`: what a match fixed. `exists` is False for an unknown deal id (all zeros)."""

    deal_id: bytes
    app: Resource
    dataset: Resource
    workerpool: Resource
    trust: int
    category: int
    tag: bytes
    requester: str
    beneficiary: str
    callback: str
    params: str
    start_time: int
    bot_first: int
    bot_size: int
    worker_stake: int
    scheduler_reward_ratio: int
    sponsor: str

    @property
    def exists(self) -> bool:
        return self.app.pointer != ZERO_ADDRESS

    def task_price(self) -> int:
        """nRLC the requester pays per task (app + dataset + workerpool prices)."""
        return self.app.price + self.dataset.price + self.workerpool.price


@dataclass(frozen=True)
class Task:
    """`viewTask`: a task's status, deadlines (block time, seconds) and results."""

    task_id: bytes
    status: TaskStatus
    deal_id: bytes
    idx: int
    timeref: int
    contribution_deadline: int
    reveal_deadline: int
    final_deadline: int
    consensus_value: bytes
    reveal_counter: int
    winner_counter: int
    contributors: tuple[str, ...]
    result_digest: bytes
    results: bytes
    results_timestamp: int
    results_callback: bytes


@dataclass(frozen=True)
class Category:
    """A task category: its id, name, description and reference time (seconds)."""

    id: int
    name: str
    description: str
    work_clock_time_ref: int


@dataclass(frozen=True)
class HubEvent:
    """One decoded hub log."""

    name: str
    args: Mapping[str, Any]
    block_number: int
    tx_hash: str
    log_index: int

    @property
    def key(self) -> tuple[str, int]:
        """Identity of the log (dedupe across re-scans)."""
        return (self.tx_hash, self.log_index)


# ----------------------------------------------------------------------------------------------- events


def _event_signature(item: Mapping[str, Any]) -> str:
    return f"{item['name']}({','.join(_canonical(i) for i in item['inputs'])})"


def _canonical(param: Mapping[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in param["components"]) + ")" + param["type"][5:]
    return str(param["type"])


@lru_cache(maxsize=1)
def hub_events() -> dict[bytes, dict[str, Any]]:
    """topic0 -> event ABI, for every event of the shipped hub ABI."""
    return {keccak(text=_event_signature(e)): e for e in load_abi("hub") if e["type"] == "event"}


def event_topic(name: str) -> bytes:
    """topic0 of a hub event by name (e.g. 'TaskFinalize')."""
    for topic, item in hub_events().items():
        if item["name"] == name:
            return topic
    raise KeyError(name)


def _hexbytes(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    return bytes(value)


def _norm(abi_type: str, value: Any) -> Any:
    return to_checksum_address(value) if abi_type == "address" else value


def decode_hub_log(log: Mapping[str, Any], hub: str) -> HubEvent | None:
    """Decode a log emitted by `hub` with the hub ABI; None for other contracts' or unknown logs."""
    if to_checksum_address(log["address"]) != to_checksum_address(hub) or not log["topics"]:
        return None
    topics = [_hexbytes(t) for t in log["topics"]]
    item = hub_events().get(topics[0])
    if item is None:
        return None
    indexed = [i for i in item["inputs"] if i["indexed"]]
    plain = [i for i in item["inputs"] if not i["indexed"]]
    if len(topics) != len(indexed) + 1:
        return None  # not this event's shape: the same topic from an event that indexes other fields
    args: dict[str, Any] = {}
    for param, topic in zip(indexed, topics[1:], strict=True):
        args[param["name"]] = _norm(param["type"], abi_decode([param["type"]], topic)[0])
    values = abi_decode([_canonical(p) for p in plain], _hexbytes(log["data"]))
    for param, value in zip(plain, values, strict=True):
        args[param["name"]] = _norm(param["type"], value)
    tx_hash = log["transactionHash"]
    tx_hash = tx_hash if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex()
    block = log["blockNumber"]
    index = log["logIndex"]
    return HubEvent(
        item["name"],
        args,
        int(block, 16) if isinstance(block, str) else int(block),
        tx_hash,
        int(index, 16) if isinstance(index, str) else int(index),
    )


# ----------------------------------------------------------------------------------------------- reverts

# IexecPoco1Facet.sol `_matchOrders` require strings -> the error a caller can act on.
_MATCH_REVERTS: dict[str, tuple[type[HubRevert], str]] = {
    "0x00": (errors.CategoryMismatch, "request and workerpool orders have different categories"),
    "0x01": (errors.CategoryMismatch, "the category does not exist on this hub"),
    "0x02": (errors.TrustMismatch, "request trust is above the workerpool order's trust"),
    "0x03": (errors.PriceMismatch, "app price is above the request's appmaxprice"),
    "0x04": (errors.PriceMismatch, "dataset price is above the request's datasetmaxprice"),
    "0x05": (errors.PriceMismatch, "workerpool price is above the request's workerpoolmaxprice"),
    "0x06": (errors.TagMismatch, "the workerpool tag lacks a bit required by the app, dataset or request"),
    "0x07": (errors.TagMismatch, "a TEE bit is required, but the app order does not carry it"),
    "0x10": (errors.RestrictionMismatch, "request and app orders name different apps"),
    "0x11": (errors.RestrictionMismatch, "request and dataset orders name different datasets"),
    "0x12": (errors.RestrictionMismatch, "the request restricts the workerpool to another one"),
    "0x13": (errors.RestrictionMismatch, "the app order restricts the dataset"),
    "0x14": (errors.RestrictionMismatch, "the app order restricts the workerpool"),
    "0x15": (errors.RestrictionMismatch, "the app order restricts the requester"),
    "0x16": (errors.RestrictionMismatch, "the dataset order restricts the app"),
    "0x17": (errors.RestrictionMismatch, "the dataset order restricts the workerpool"),
    "0x18": (errors.RestrictionMismatch, "the dataset order restricts the requester"),
    "0x19": (errors.RestrictionMismatch, "the workerpool order restricts the app"),
    "0x1a": (errors.RestrictionMismatch, "the workerpool order restricts the dataset"),
    "0x1b": (errors.RestrictionMismatch, "the workerpool order restricts the requester"),
    "0x20": (HubRevert, "the app is not registered on this hub"),
    "0x21": (errors.InvalidSignature, "the app order is not signed by the app's owner"),
    "0x30": (HubRevert, "the dataset is not registered on this hub"),
    "0x31": (errors.InvalidSignature, "the dataset order is not signed by the dataset's owner"),
    "0x40": (HubRevert, "the workerpool is not registered on this hub"),
    "0x41": (errors.InvalidSignature, "the workerpool order is not signed by the workerpool's owner"),
    "0x50": (errors.InvalidSignature, "the request order is not signed by its requester"),
    "0x60": (OrderConsumed, "an order's volume is used up (already matched, or cancelled)"),
}

_STAKE_REVERTS = ("Transfer amount exceeds balance", "subtraction overflow", "burn amount exceeds balance")


def revert_reason(exc: BaseException) -> str:
    """The revert string of a web3 ContractLogicError ('' when the revert carries none)."""
    message = str(getattr(exc, "message", None) or exc)
    for prefix in ("execution reverted: ", "execution reverted:", "execution reverted"):
        if message.startswith(prefix):
            return message[len(prefix) :].strip()
    return message.strip()


def typed_revert(reason: str, what: str) -> HubRevert:
    """Map a hub revert string to the typed error a caller can act on."""
    if reason.startswith("iExecV5-matchOrders-"):
        code = reason.rsplit("-", 1)[1]
        cls, text = _MATCH_REVERTS.get(code, (HubRevert, "matchOrders refused"))
        return cls(reason, f"{what}: {text} ({reason})")
    if any(s in reason for s in _STAKE_REVERTS):
        return InsufficientStake(reason, f"{what}: not enough free stake in the hub ({reason})")
    return HubRevert(reason, f"{what}: hub reverted ({reason or 'no reason given'})")


# ----------------------------------------------------------------------------------------------- hub


class Hub:
    """An async client of one PoCo hub. Reads need only `rpc_url`/`w3`; writes need `account` or `sender`.

    A Hub built from `rpc_url` alone owns its connection: `await hub.close()` (or `async with Hub(...)`)
    closes it. A `w3` or `sender` passed in belongs to the caller, who closes it (`iexec.tx.close`).
    """

    def __init__(
        self,
        rpc_url: str | None,
        hub: str,
        account: Any = None,
        *,
        w3: AsyncWeb3 | None = None,
        sender: TxSender | None = None,
        persist: Persist | None = None,
        sender_config: SenderConfig | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._owns_w3 = w3 is None and sender is None
        if w3 is None:
            if rpc_url is None:
                raise ValueError("Hub needs rpc_url or w3")
            w3 = sender.w3 if sender is not None else connect(rpc_url, timeout_s=timeout_s)
        self.w3 = w3
        self.address = to_checksum_address(hub)
        self.contract = w3.eth.contract(address=self.address, abi=load_abi("hub"))
        self.retry = retry or (sender.config.retry if sender else RetryPolicy())
        if sender is None and account is not None:
            sender = TxSender(w3, account, persist=persist, config=sender_config)
        self.sender = sender
        self._domain: Domain | None = None
        self._token: ChecksumAddress | None = None

    async def close(self) -> None:
        """Close the connection this Hub opened itself (a caller's `w3` or `sender` is left open)."""
        if self._owns_w3:
            await close_w3(self.w3)

    async def __aenter__(self) -> Hub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def account_address(self) -> str:
        if self.sender is None:
            raise errors.ChainError("this Hub has no account: pass account= or sender= to send transactions")
        return self.sender.address

    async def _call(self, fn: Any, what: str) -> Any:
        return await with_retry(lambda: fn.call(), self.retry, what)

    # -- deterministic ids -------------------------------------------------------------------------------

    @staticmethod
    def deal_id(request_hash: bytes, consumed_before: int) -> bytes:
        """keccak256(abi.encodePacked(requestHash, consumedBefore)): the deal of a match."""
        return keccak(bytes(request_hash) + int(consumed_before).to_bytes(32, "big"))

    @staticmethod
    def task_id(deal_id: bytes, idx: int) -> bytes:
        """keccak256(abi.encodePacked(dealid, uint256 idx))."""
        return keccak(bytes(deal_id) + int(idx).to_bytes(32, "big"))

    # -- views -------------------------------------------------------------------------------------------

    async def domain(self) -> Domain:
        """The hub's EIP-712 domain (read once from `domain()`)."""
        if self._domain is None:
            name, version, chain_id, contract = await self._call(self.contract.functions.domain(), "domain")
            self._domain = Domain(chain_id=int(chain_id), verifying_contract=contract, name=name, version=version)
        return self._domain

    async def token(self) -> ChecksumAddress:
        """The RLC token the hub escrows."""
        if self._token is None:
            self._token = to_checksum_address(await self._call(self.contract.functions.token(), "token"))
        return self._token

    async def view_account(self, address: str) -> AccountBalance:
        """(stake, locked) of `address` in nRLC."""
        stake, locked = await self._call(
            self.contract.functions.viewAccount(to_checksum_address(address)), "viewAccount"
        )
        return AccountBalance(int(stake), int(locked))

    async def rlc_balance(self, address: str) -> int:
        """RLC (nRLC) in the wallet of `address`, outside the hub."""
        rlc = self.w3.eth.contract(address=await self.token(), abi=load_abi("rlc"))
        return int(await self._call(rlc.functions.balanceOf(to_checksum_address(address)), "balanceOf"))

    async def view_deal(self, deal_id: bytes) -> Deal:
        """The deal as the hub stores it (`exists` False when unknown)."""
        raw = await self._call(self.contract.functions.viewDeal(bytes(deal_id)), "viewDeal")
        res = [Resource(to_checksum_address(p), to_checksum_address(o), int(pr)) for p, o, pr in raw[:3]]
        (trust, category, tag, requester, beneficiary, callback, params, start, first, size, stake, ratio, sponsor) = (
            raw[3:]
        )
        return Deal(
            bytes(deal_id),
            res[0],
            res[1],
            res[2],
            int(trust),
            int(category),
            bytes(tag),
            to_checksum_address(requester),
            to_checksum_address(beneficiary),
            to_checksum_address(callback),
            params,
            int(start),
            int(first),
            int(size),
            int(stake),
            int(ratio),
            to_checksum_address(sponsor),
        )

    async def view_task(self, task_id: bytes) -> Task:
        """The task as the hub stores it (status UNSET when not initialized)."""
        raw = await self._call(self.contract.functions.viewTask(bytes(task_id)), "viewTask")
        return task_from_tuple(bytes(task_id), raw)

    async def view_consumed(self, order_hash: bytes) -> int:
        """How much of the order's volume has been matched (or cancelled)."""
        return int(await self._call(self.contract.functions.viewConsumed(bytes(order_hash)), "viewConsumed"))

    async def categories(self) -> list[Category]:
        """Every category of the hub, by id."""
        count = int(await self._call(self.contract.functions.countCategory(), "countCategory"))
        out = []
        for cat_id in range(count):
            name, description, ref = await self._call(self.contract.functions.viewCategory(cat_id), "viewCategory")
            out.append(Category(cat_id, name, description, int(ref)))
        return out

    async def block_timestamp(self) -> int:
        """Timestamp of the latest block: deadlines are judged on it."""
        block = await with_retry(lambda: self.w3.eth.get_block("latest"), self.retry, "get_block")
        return int(block["timestamp"])

    # -- writes ------------------------------------------------------------------------------------------

    async def transact(self, fn: Any, what: str, meta: Mapping[str, Any] | None = None, to: str | None = None) -> Any:
        """Simulate (typed revert), then send through the sender; a mined revert is re-simulated."""
        sender = self.sender
        if sender is None:
            raise errors.ChainError(f"{what}: this Hub has no account to send with")
        await self._simulate(fn, what)
        data = fn._encode_transaction_data()
        try:
            return await sender.send(to or fn.address, bytes.fromhex(data[2:]), meta={"kind": what, **(meta or {})})
        except TransactionReverted:
            await self._simulate(fn, what)  # state moved since: tell why if the hub says it now
            raise

    async def _simulate(self, fn: Any, what: str) -> None:
        try:
            await with_retry(lambda: fn.call({"from": self.account_address}), self.retry, what)
        except ContractCustomError as exc:
            raise HubRevert(str(exc), f"{what}: hub reverted with a custom error ({exc})") from None
        except ContractLogicError as exc:
            raise typed_revert(revert_reason(exc), what) from None

    async def deposit(self, amount: int) -> Any:
        """Move `amount` nRLC from the wallet into the hub (RLC approveAndCall, one transaction)."""
        _check_amount(amount)
        rlc = self.w3.eth.contract(address=await self.token(), abi=load_abi("rlc"))
        balance = await self.rlc_balance(self.account_address)
        if balance < amount:
            raise InsufficientStake("", f"deposit: the wallet holds {balance} nRLC, less than {amount}")
        return await self.transact(
            rlc.functions.approveAndCall(self.address, amount, b""), "deposit", {"amount": amount}
        )

    async def withdraw(self, amount: int) -> Any:
        """Move `amount` nRLC of free stake from the hub back to the wallet."""
        _check_amount(amount)
        stake = (await self.view_account(self.account_address)).stake
        if stake < amount:
            raise InsufficientStake("", f"withdraw: free stake is {stake} nRLC, less than {amount}")
        return await self.transact(self.contract.functions.withdraw(amount), "withdraw", {"amount": amount})

    async def match_orders(
        self, app: AppOrder, dataset: DatasetOrder | None, workerpool: WorkerpoolOrder, request: RequestOrder
    ) -> bytes:
        """Match the four orders; returns the deal id from the OrdersMatched event. Raises a typed
        HubRevert (OrderConsumed carries `.which`: the consumed order's kind)."""
        dataset = dataset or NULL_DATASET_ORDER
        fn = self.contract.functions.matchOrders(
            app.to_tuple(), dataset.to_tuple(), workerpool.to_tuple(), request.to_tuple()
        )
        domain = await self.domain()
        await self._check_requester_stake(app, dataset, workerpool, request)
        try:
            receipt = await self.transact(fn, "matchOrders", {"request_hash": "0x" + request.hash(domain).hex()})
        except InsufficientStake as exc:
            exc.args = (
                f"{exc.args[0]}: the workerpool owner cannot lock its share of the workerpool "
                f"price (the requester's stake was checked first)",
            )
            raise
        except OrderConsumed as exc:
            exc.which = await self._consumed_kind(domain, app, dataset, workerpool, request)
            exc.args = (f"{exc.args[0]} [{exc.which} order]",)
            raise
        for event in self.decode_receipt(receipt):
            if event.name == "OrdersMatched":
                return bytes(event.args["dealid"])
        raise errors.ChainError(f"matchOrders mined in {receipt['transactionHash'].hex()} without OrdersMatched")

    async def _check_requester_stake(
        self, app: AppOrder, dataset: DatasetOrder, workerpool: WorkerpoolOrder, request: RequestOrder
    ) -> None:
        price = app.appprice + workerpool.workerpoolprice
        price += dataset.datasetprice if dataset.dataset != ZERO_ADDRESS else 0
        stake = (await self.view_account(request.requester)).stake
        if stake < price:  # volume 1 at least; the hub locks volume x price
            raise InsufficientStake(
                "",
                f"matchOrders: requester {request.requester} has {stake} nRLC of free "
                f"stake, the task costs {price} nRLC: deposit first",
            )

    async def _consumed_kind(self, domain: Domain, *orders: Any) -> str:
        for order, kind in zip(orders, ("app", "dataset", "workerpool", "request"), strict=True):
            if kind == "dataset" and order.dataset == ZERO_ADDRESS:
                continue
            if await self.view_consumed(order.hash(domain)) >= order.volume:
                return kind
        return "unknown"

    async def claim(self, task_id: bytes) -> Any:
        """Claim a task past its final deadline (ACTIVE or REVEALING): it becomes FAILED and the requester
        is refunded. Raises WrongTaskStatus or DeadlineNotReached before sending anything."""
        task = await self.view_task(task_id)
        if task.status not in (TaskStatus.ACTIVE, TaskStatus.REVEALING):
            raise errors.WrongTaskStatus(
                "",
                f"claim: task 0x{bytes(task_id).hex()} is {task.status.name}"
                + (" (use initialize_and_claim_array)" if not task.status else ""),
            )
        now = await self.block_timestamp()
        if task.final_deadline > now:
            raise errors.DeadlineNotReached(
                "", f"claim: final deadline {task.final_deadline} not reached (block time {now})"
            )
        return await self.transact(
            self.contract.functions.claim(bytes(task_id)), "claim", {"task_id": "0x" + bytes(task_id).hex()}
        )

    async def initialize_and_claim_array(self, deal_ids: Sequence[bytes], idxs: Sequence[int]) -> Any:
        """Initialize then claim never-initialized tasks of deals past their final deadline."""
        if len(deal_ids) != len(idxs) or not deal_ids:
            raise ValueError("initialize_and_claim_array: deal_ids and idxs must be non-empty, same length")
        fn = self.contract.functions.initializeAndClaimArray([bytes(d) for d in deal_ids], list(idxs))
        return await self.transact(fn, "initializeAndClaimArray")

    def decode_receipt(self, receipt: Mapping[str, Any]) -> list[HubEvent]:
        """The hub's events in a receipt (logs of other contracts, like RLC Transfer, are skipped)."""
        events = (decode_hub_log(log, self.address) for log in receipt["logs"])
        return [e for e in events if e is not None]


def task_from_tuple(task_id: bytes, raw: Sequence[Any]) -> Task:
    """A Task from viewTask's ABI-decoded tuple."""
    (
        status,
        deal_id,
        idx,
        timeref,
        c_deadline,
        r_deadline,
        f_deadline,
        consensus,
        reveal_counter,
        winner_counter,
        contributors,
        digest,
        results,
        results_ts,
        callback,
    ) = raw
    return Task(
        task_id,
        TaskStatus(int(status)),
        bytes(deal_id),
        int(idx),
        int(timeref),
        int(c_deadline),
        int(r_deadline),
        int(f_deadline),
        bytes(consensus),
        int(reveal_counter),
        int(winner_counter),
        tuple(to_checksum_address(c) for c in contributors),
        bytes(digest),
        bytes(results),
        int(results_ts),
        bytes(callback),
    )


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amount must be a positive integer of nRLC, got {amount!r}")
