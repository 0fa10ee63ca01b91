"""The record of on-chain transactions and a small key-value store (external events: `ledger.books`).

Chain transactions are written BEFORE broadcast (status `persisted`), then moved to `broadcast`,
`mined`, `failed` or `replaced`; after a restart the sender looks their receipts up instead of
re-sending blindly. The kv table holds small
cursors (e.g. the last scanned block).

This module must never hold a private key: a raw transaction is already signed when it gets here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ledger.books import check_id, check_text
from ledger.db import Store
from ledger.errors import InvalidArgument, TransferConflict

TX_STATUSES = ("persisted", "broadcast", "mined", "failed", "replaced")
OPEN_TX_STATUSES = ("persisted", "broadcast")


@dataclass(frozen=True)
class ChainTx:
    """A signed transaction as stored: hex strings with 0x, status, timestamps in unix ms."""

    tx_hash: str
    raw_tx: str
    nonce: int
    sender: str
    purpose: str
    job_id: str | None
    status: str
    block_number: int | None
    replaced_by: str | None
    error: str | None
    meta: dict[str, object]
    created_at: int
    updated_at: int


def _hex(value: bytes | str, name: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, str):
        body = value[2:] if value[:2] in ("0x", "0X") else value
        try:
            bytes.fromhex(body)
        except ValueError:
            raise InvalidArgument(f"{name} must be bytes or hex text") from None
        return "0x" + body.lower()
    raise InvalidArgument(f"{name} must be bytes or hex text, got {type(value).__name__}")


def _row_tx(row: sqlite3.Row) -> ChainTx:
    data = dict(row)
    data["meta"] = json.loads(data["meta"])
    return ChainTx(**data)


class ChainRecords(Store):
    """Chain transactions, external events and kv on the books' connection."""

    def record_tx(
        self,
        raw_tx: bytes | str,
        tx_hash: bytes | str,
        nonce: int,
        sender: str,
        purpose: str,
        job_id: str | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> ChainTx:
        """Store a signed transaction before it is broadcast (status `persisted`).

        Idempotent on tx_hash; the same hash with another raw tx raises TransferConflict.
        """
        raw, digest = _hex(raw_tx, "raw_tx"), _hex(tx_hash, "tx_hash")
        if isinstance(nonce, bool) or not isinstance(nonce, int) or nonce < 0:
            raise InvalidArgument(f"nonce must be a non-negative int, got {nonce!r}")
        check_text(sender, "sender")
        check_id(purpose, "purpose")
        if job_id is not None:
            check_id(job_id, "job_id")
        meta_text = json.dumps(dict(meta or {}), sort_keys=True, default=str)
        now = self._now_ms()
        with self.transaction() as conn:
            row = conn.execute("SELECT raw_tx FROM chain_txs WHERE tx_hash = ?", (digest,)).fetchone()
            if row is not None and row[0] != raw:
                raise TransferConflict(f"tx {digest} is recorded with another raw transaction")
            if row is None:
                conn.execute(
                    "INSERT INTO chain_txs (tx_hash, raw_tx, nonce, sender, purpose, job_id, status, "
                    "meta, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'persisted', ?, ?, ?)",
                    (digest, raw, nonce, sender.lower(), purpose, job_id, meta_text, now, now),
                )
            return _row_tx(conn.execute("SELECT * FROM chain_txs WHERE tx_hash = ?", (digest,)).fetchone())

    def update_tx(
        self,
        tx_hash: bytes | str,
        status: str,
        *,
        block_number: int | None = None,
        replaced_by: bytes | str | None = None,
        error: str | None = None,
    ) -> ChainTx:
        """Set a recorded transaction's status (and block, replacement hash, error)."""
        digest = _hex(tx_hash, "tx_hash")
        if status not in TX_STATUSES:
            raise InvalidArgument(f"tx status must be one of {', '.join(TX_STATUSES)}, got {status!r}")
        replacement = _hex(replaced_by, "replaced_by") if replaced_by is not None else None
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE chain_txs SET status = ?, block_number = COALESCE(?, block_number), "
                "replaced_by = COALESCE(?, replaced_by), error = COALESCE(?, error), updated_at = ? "
                "WHERE tx_hash = ?",
                (status, block_number, replacement, error, self._now_ms(), digest),
            )
            if cursor.rowcount == 0:
                raise InvalidArgument(f"no recorded transaction {digest}")
            return _row_tx(conn.execute("SELECT * FROM chain_txs WHERE tx_hash = ?", (digest,)).fetchone())

    def get_tx(self, tx_hash: bytes | str) -> ChainTx | None:
        """The recorded transaction with this hash, or None."""
        rows = self._read("SELECT * FROM chain_txs WHERE tx_hash = ?", (_hex(tx_hash, "tx_hash"),))
        return _row_tx(rows[0]) if rows else None

    def pending_txs(self, sender: str | None = None) -> list[ChainTx]:
        """Transactions still `persisted` or `broadcast` (of `sender` if given), by nonce."""
        sql = "SELECT * FROM chain_txs WHERE status IN ('persisted', 'broadcast')"
        params: tuple[object, ...] = ()
        if sender is not None:
            sql, params = sql + " AND sender = ?", (sender.lower(),)
        return [_row_tx(row) for row in self._read(sql + " ORDER BY nonce, created_at", params)]

    def highest_nonce(self, sender: str, status: str = "mined") -> int | None:
        """The highest nonce among `sender`'s transactions recorded with `status`, or None (read-only)."""
        if status not in TX_STATUSES:
            raise InvalidArgument(f"tx status must be one of {', '.join(TX_STATUSES)}, got {status!r}")
        rows = self._read("SELECT MAX(nonce) FROM chain_txs WHERE sender = ? AND status = ?", (sender.lower(), status))
        return None if rows[0][0] is None else int(rows[0][0])

    def txs_for_job(self, job_id: str) -> list[ChainTx]:
        """Every transaction recorded for a job, oldest first."""
        rows = self._read("SELECT * FROM chain_txs WHERE job_id = ? ORDER BY created_at, nonce", (job_id,))
        return [_row_tx(row) for row in rows]

    def get_value(self, key: str, default: str | None = None) -> str | None:
        """A kv value (e.g. a block cursor), or `default`."""
        rows = self._read("SELECT value FROM kv WHERE key = ?", (check_id(key, "key"),))
        return rows[0][0] if rows else default

    def set_value(self, key: str, value: str) -> None:
        """Set a kv value (joins an open transaction)."""
        check_text(value, "value")
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (check_id(key, "key"), value, self._now_ms()),
            )

    def persist_hook(self, sender: str) -> Callable[[bytes, bytes | str, int, Mapping[str, object]], Awaitable[None]]:
        """An `async persist(raw_tx, tx_hash, nonce, meta)` for the iexec sender: records the tx
        (purpose and job id taken from meta["purpose"] / meta["job_id"]) before it is broadcast."""

        async def persist(raw_tx: bytes, tx_hash: bytes | str, nonce: int, meta: Mapping[str, object]) -> None:
            purpose = str(meta.get("purpose") or "tx")
            job_id = meta.get("job_id")
            self.record_tx(raw_tx, tx_hash, nonce, sender, purpose, str(job_id) if job_id is not None else None, meta)

        return persist
