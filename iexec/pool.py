"""Workerpool-side calls of PoCo: initialize a task, contribute, reveal, finalize (or contributeAndFinalize).

    pool = WorkerpoolClient(w3, hub_address, scheduler=pool_owner, worker=worker)
    task_id = await pool.initialize(deal_id, 0)
    await pool.contribute_and_finalize(task_id, results=b'{"storage":"ipfs","location":"/ipfs/..."}')

Used by the devnet workerpool and by tests that need tasks to complete for real. The formulas are the
contract's: resultHash = keccak(taskid ‖ digest), resultSeal = keccak(worker ‖ taskid ‖ digest),
authorizationSign = personal_sign by the scheduler of keccak(worker ‖ taskid ‖ enclave), enclaveSign =
personal_sign by the enclave of keccak(resultHash ‖ resultSeal). It never holds keys longer than the
accounts the caller passes, and never logs them.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
from web3 import AsyncWeb3

from iexec.hub import ZERO_ADDRESS, Hub
from iexec.tx import Persist, SenderConfig, TxSender


def result_hash(task_id: bytes, digest: bytes) -> bytes:
    """keccak256(abi.encodePacked(taskid, resultDigest))."""
    return keccak(bytes(task_id) + bytes(digest))


def result_seal(worker: str, task_id: bytes, digest: bytes) -> bytes:
    """keccak256(abi.encodePacked(worker, taskid, resultDigest))."""
    return keccak(bytes.fromhex(worker[2:]) + bytes(task_id) + bytes(digest))


def eth_signed(account: Any, packed: bytes) -> bytes:
    """personal_sign of keccak256(packed) (what `_verifySignatureOfEthSignedMessage` checks)."""
    return bytes(Account.sign_message(encode_defunct(primitive=keccak(packed)), account.key).signature)


class WorkerpoolClient:
    """A workerpool's scheduler (its owner) and one worker, acting on a hub through their own senders."""

    def __init__(
        self,
        w3: AsyncWeb3,
        hub: str,
        *,
        scheduler: Any,
        worker: Any | None = None,
        enclave: Any | None = None,
        persist: Persist | None = None,
        sender_config: SenderConfig | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.worker = worker or scheduler
        self.enclave = enclave
        scheduler_sender = TxSender(w3, scheduler, persist=persist, config=sender_config)
        self.scheduler_hub = Hub(None, hub, w3=w3, sender=scheduler_sender)
        if self.worker is scheduler:
            self.worker_hub = self.scheduler_hub
        else:
            self.worker_hub = Hub(
                None, hub, w3=w3, sender=TxSender(w3, self.worker, persist=persist, config=sender_config)
            )

    def authorization(self, task_id: bytes, enclave: str = ZERO_ADDRESS) -> bytes:
        """The scheduler's authorization for this client's worker to contribute to `task_id`."""
        packed = bytes.fromhex(self.worker.address[2:]) + bytes(task_id) + bytes.fromhex(enclave[2:])
        return eth_signed(self.scheduler, packed)

    def _enclave_args(self, task_id: bytes, digest: bytes, enclave: Any | None = None) -> tuple[str, bytes]:
        enclave = enclave if enclave is not None else self.enclave
        if enclave is None:
            return ZERO_ADDRESS, b""
        packed = result_hash(task_id, digest) + result_seal(self.worker.address, task_id, digest)
        return enclave.address, eth_signed(enclave, packed)

    async def initialize(self, deal_id: bytes, idx: int) -> bytes:
        """Initialize task `idx` of the deal (by the scheduler); returns the task id."""
        fn = self.scheduler_hub.contract.functions.initialize(bytes(deal_id), int(idx))
        await self.scheduler_hub.transact(fn, "initialize")
        return Hub.task_id(deal_id, idx)

    async def contribute(self, task_id: bytes, digest: bytes, *, enclave: Any | None = None) -> Any:
        """The worker's contribution (hash and seal of `digest`); `enclave` (an account) signs for this
        task instead of the client's own enclave (a real enclave's per-task challenge key)."""
        enclave, enclave_sign = self._enclave_args(task_id, digest, enclave)
        fn = self.worker_hub.contract.functions.contribute(
            bytes(task_id),
            result_hash(task_id, digest),
            result_seal(self.worker.address, task_id, digest),
            enclave,
            enclave_sign,
            self.authorization(task_id, enclave),
        )
        return await self.worker_hub.transact(fn, "contribute")

    async def reveal(self, task_id: bytes, digest: bytes) -> Any:
        """The worker reveals its digest after consensus."""
        fn = self.worker_hub.contract.functions.reveal(bytes(task_id), bytes(digest))
        return await self.worker_hub.transact(fn, "reveal")

    async def finalize(self, task_id: bytes, results: bytes, results_callback: bytes = b"") -> Any:
        """The scheduler finalizes with the results (what TaskFinalize carries)."""
        fn = self.scheduler_hub.contract.functions.finalize(bytes(task_id), bytes(results), bytes(results_callback))
        return await self.scheduler_hub.transact(fn, "finalize")

    async def contribute_and_finalize(
        self,
        task_id: bytes,
        results: bytes,
        digest: bytes | None = None,
        results_callback: bytes = b"",
        *,
        enclave: Any | None = None,
    ) -> Any:
        """One-shot completion for trust-1 deals: contribution, consensus, reveal and finalize at once.
        `digest` defaults to keccak(results); `enclave` as for contribute()."""
        digest = digest if digest is not None else keccak(bytes(results))
        enclave, enclave_sign = self._enclave_args(task_id, digest, enclave)
        fn = self.worker_hub.contract.functions.contributeAndFinalize(
            bytes(task_id),
            bytes(digest),
            bytes(results),
            bytes(results_callback),
            enclave,
            enclave_sign,
            self.authorization(task_id, enclave),
        )
        return await self.worker_hub.transact(fn, "contributeAndFinalize")

    async def complete(self, deal_id: bytes, idx: int, results: bytes) -> bytes:
        """Initialize and complete task `idx` of a trust-1 deal with `results`; returns the task id."""
        task_id = await self.initialize(deal_id, idx)
        await self.contribute_and_finalize(task_id, results)
        return task_id

    async def complete_with_consensus(self, deal_id: bytes, idx: int, results: bytes) -> bytes:
        """The long path: initialize, contribute, reveal, finalize; returns the task id."""
        task_id = await self.initialize(deal_id, idx)
        digest = keccak(bytes(results))
        await self.contribute(task_id, digest)
        await self.reveal(task_id, digest)
        await self.finalize(task_id, results)
        return task_id
