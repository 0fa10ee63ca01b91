"""Do the books belong to this chain? Checked once at start, after the chain connection is up.

    held = await check_books_match_chain(ledger, w3, hub, wallet, rpc_label, network=name)
    # raises BooksDoNotMatchChain; `held` lists held jobs whose deal the chain does not know (warnings)

Books and chain drift apart when the chain behind RPC_URL was reset (a devnet restarted without its saved
state, another node, another network): the wallet's nonces and the deals in the books then mean nothing
there, and running on would re-use nonces and follow deals that do not exist. Two cheap signs are checked:

- a transaction of this wallet recorded as mined whose nonce the chain has not reached
  (nonce >= eth_getTransactionCount(wallet, "latest"));
- a job still followed (not terminal) whose deal the hub does not know (`viewDeal` answers all zeros).

A node behind the tip (a load-balanced RPC whose nodes lag each other) shows both signs for a while after
our transaction was mined. So a sign counts only when the node's block number is at or past the block the
books recorded for that transaction (for a deal: the job's mined transactions); while the node is behind,
the check waits and looks again (every `poll_s`, up to `lag_wait_s`), then refuses all the same. On the
devnet preset there is no wait: its one anvil is never behind itself, and a reset devnet (a new chain from
the PoCo snapshot, shorter than the books' blocks) would otherwise look like a node behind.

When a sign holds, the bot refuses to start with a message that names the difference and what to do: on
the devnet preset, start the demo with --fresh; on any other network, check RPC_URL and NETWORK and never
delete the books (they hold users' money). A held job (NEEDS_ADMIN) whose deal is unknown does not stop the
start: only the running bot's admin commands can resolve it. It is logged (`event=books_chain_held_unknown`)
and returned to the caller, which may tell the admins. An RPC failure while checking is logged and does not
stop the start (the chain's own errors follow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from bot.errors import BooksDoNotMatchChain
from ledger import JobState, Ledger

log = logging.getLogger(__name__)

#: How many followed jobs' deals are looked up at most (each is one eth_call).
MAX_DEALS_CHECKED = 200
LAG_WAIT_S = 30.0  # how long a node behind the books' blocks is waited for
POLL_S = 2.0
_FOLLOWED = (JobState.MATCHED, JobState.RUNNING, JobState.COMPLETED)
_HELD = (JobState.NEEDS_ADMIN,)
DEVNET_WHAT_TO_DO = (
    "the chain was reset: start the demo with --fresh (python -m devnet demo --fresh), "
    "or point RPC_URL at the chain these books belong to"
)
WHAT_TO_DO = (
    "check that RPC_URL and NETWORK name the chain these books were written on (a node still "
    "syncing answers like this too: wait and start again); never delete or replace the books: "
    "they hold users' money and the record of what was paid on chain"
)


@dataclass
class _Look:
    differences: list[str]  # signs that hold on a node at or past the recorded block
    behind: list[str]  # signs that hold on a node behind the recorded block (or with no block recorded)
    held: list[str]  # held jobs whose deal is unknown
    deals_checked: int = 0


def _mined_tip(ledger: Ledger, wallet: str) -> tuple[int | None, int | None]:
    """(highest mined nonce, highest block recorded for a mined transaction) of `wallet` in the books."""
    with ledger.snapshot() as conn:
        row = conn.execute(
            "SELECT MAX(nonce), MAX(block_number) FROM chain_txs WHERE sender = ? AND status = 'mined'",
            (wallet.lower(),),
        ).fetchone()
    return (None if row[0] is None else int(row[0]), None if row[1] is None else int(row[1]))


def _job_block(ledger: Ledger, job_id: str) -> int | None:
    blocks = [
        tx.block_number for tx in ledger.txs_for_job(job_id) if tx.status == "mined" and tx.block_number is not None
    ]
    return max(blocks) if blocks else None


async def _look(ledger: Ledger, w3: Any, hub: Any, wallet: str) -> _Look:
    found = _Look([], [], [])
    try:
        head = int(await w3.eth.block_number)
    except Exception as exc:  # noqa: BLE001 - cannot check: say so, let the chain's errors speak
        log.warning("event=books_chain_check_skipped what=block_number error=%r", str(exc)[:200])
        return found

    def file(sign: str, block: int | None) -> None:
        if block is not None and head >= block:
            found.differences.append(sign)
        else:
            found.behind.append(
                sign + f" (this node is at block {head}, the books recorded "
                f"{'no block' if block is None else f'block {block}'})"
            )

    mined, mined_block = _mined_tip(ledger, wallet)
    if mined is not None:
        try:
            sent = int(await w3.eth.get_transaction_count(wallet, "latest"))
        except Exception as exc:  # noqa: BLE001 - cannot check: skip this check, say so in the log
            log.warning("event=books_chain_check_skipped what=nonce error=%r", str(exc)[:200])
        else:
            if mined >= sent:
                file(
                    f"the books record transaction nonce {mined} of wallet {wallet} as mined, "
                    f"but this chain has seen only {sent} transaction(s) from it",
                    mined_block,
                )
    followed = [j for j in ledger.jobs_in_states(*_FOLLOWED, limit=MAX_DEALS_CHECKED) if j.deal_id]
    held = [j for j in ledger.jobs_in_states(*_HELD, limit=MAX_DEALS_CHECKED) if j.deal_id]
    unknown: list[tuple[str, int | None]] = []
    for job in followed + held:
        try:
            deal = await hub.view_deal(bytes.fromhex((job.deal_id or "").removeprefix("0x")))
        except Exception as exc:  # noqa: BLE001 - cannot check: skip this check, say so in the log
            log.warning("event=books_chain_check_skipped what=deal job=%s error=%r", job.id, str(exc)[:200])
            break
        found.deals_checked += 1
        if deal.exists:
            continue
        if job.state in _HELD:
            found.held.append(job.id)
            log.warning("event=books_chain_held_unknown job=%s deal=%s", job.id, job.deal_id)
        else:
            unknown.append((f"{job.deal_id} (job {job.id})", _job_block(ledger, job.id)))
    for group in (
        [u for u in unknown if u[1] is not None and head >= u[1]],
        [u for u in unknown if u[1] is None or head < u[1]],
    ):
        if group:
            names = [name for name, _ in group]
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            blocks = [b for _, b in group if b is not None]
            file(
                f"the hub does not know the deal{'s' if len(names) > 1 else ''} of {len(names)} job(s) in "
                f"progress: {shown}",
                max(blocks) if len(blocks) == len(group) else None,
            )
    return found


async def check_books_match_chain(
    ledger: Ledger,
    w3: Any,
    hub: Any,
    wallet: str,
    rpc_label: str = "",
    *,
    network: str = "",
    lag_wait_s: float | None = None,
    poll_s: float = POLL_S,
) -> list[str]:
    """Raise BooksDoNotMatchChain when the books (a `ledger.Ledger`) record a mined transaction of
    `wallet` with a nonce the chain has not reached, or a followed job whose deal `hub` does not know.

    Waits up to `lag_wait_s` for a node behind the recorded blocks (default: LAG_WAIT_S, none on "devnet").
    `network` is the preset's name (the advice differs on "devnet"). Returns the ids of held jobs whose
    deal the chain does not know.
    """
    if lag_wait_s is None:
        lag_wait_s = 0.0 if network == "devnet" else LAG_WAIT_S
    deadline = time.monotonic() + lag_wait_s
    while True:
        found = await _look(ledger, w3, hub, wallet)
        if found.differences or not found.behind or time.monotonic() >= deadline:
            break
        log.info("event=books_chain_wait wallet=%s signs=%d", wallet, len(found.behind))
        await asyncio.sleep(poll_s)
    differences = found.differences + found.behind
    if differences:
        log.error(
            "event=books_chain_mismatch wallet=%s rpc=%s network=%s differences=%d",
            wallet,
            rpc_label,
            network,
            len(differences),
        )
        where = f" at {rpc_label}" if rpc_label else ""
        advice = DEVNET_WHAT_TO_DO if network == "devnet" else WHAT_TO_DO
        raise BooksDoNotMatchChain(
            f"the books do not match the chain{where}: " + "; ".join(differences) + f". {advice}."
        )
    log.info(
        "event=books_chain_match wallet=%s deals_checked=%d held_unknown=%d",
        wallet,
        found.deals_checked,
        len(found.held),
    )
    return found.held
