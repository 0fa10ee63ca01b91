"""Do the books belong to this chain? Checked once at start, after the chain connection is up.

    await check_books_match_chain(ledger, w3, hub, wallet, rpc_label)   # raises BooksDoNotMatchChain

Books and chain drift apart when the chain behind RPC_URL was reset (a devnet restarted without its saved
state, another node, another network): the wallet's nonces and the deals in the books then mean nothing
there, and running on would re-use nonces and follow deals that do not exist. Two cheap signs are checked:

- a transaction of this wallet recorded as mined whose nonce the chain has not reached
  (nonce >= eth_getTransactionCount(wallet, "latest"));
- a job still followed (not terminal) whose deal the hub does not know (`viewDeal` answers all zeros).

When either holds, the bot refuses to start with a message that names the difference and what to do.
An RPC failure while checking is logged and does not stop the start (the chain's own errors follow).
"""
from __future__ import annotations

import logging
from typing import Any

from bot.errors import BotError
from ledger import JobState

log = logging.getLogger(__name__)

#: How many followed jobs' deals are looked up at most (each is one eth_call).
MAX_DEALS_CHECKED = 200
_FOLLOWED = (JobState.MATCHED, JobState.RUNNING, JobState.COMPLETED, JobState.NEEDS_ADMIN)
WHAT_TO_DO = ("the chain was reset: start the demo with --fresh (python -m devnet demo --fresh), "
              "or point RPC_URL at the chain these books belong to")


class BooksDoNotMatchChain(BotError):
    """The books record transactions or deals the chain does not know: the bot must not run on them."""

    exit_code = 4


async def check_books_match_chain(ledger: Any, w3: Any, hub: Any, wallet: str, rpc_label: str = "") -> None:
    """Raise BooksDoNotMatchChain when the books (a `ledger.Ledger`) record a mined transaction of
    `wallet` with a nonce the chain has not reached, or a followed job whose deal `hub` does not know."""
    differences: list[str] = []
    mined = ledger.highest_nonce(wallet, "mined")
    if mined is not None:
        try:
            sent = int(await w3.eth.get_transaction_count(wallet, "latest"))
        except Exception as exc:  # noqa: BLE001 - cannot check: say so, let the chain's errors speak
            log.warning("event=books_chain_check_skipped what=nonce error=%r", str(exc)[:200])
        else:
            if mined >= sent:
                differences.append(f"the books record transaction nonce {mined} of wallet {wallet} as mined, "
                                   f"but this chain has seen only {sent} transaction(s) from it")
    unknown: list[str] = []
    jobs = [j for j in ledger.jobs_in_states(*_FOLLOWED, limit=MAX_DEALS_CHECKED) if j.deal_id]
    for job in jobs:
        try:
            deal = await hub.view_deal(bytes.fromhex(job.deal_id.removeprefix("0x")))
        except Exception as exc:  # noqa: BLE001
            log.warning("event=books_chain_check_skipped what=deal job=%s error=%r", job.id, str(exc)[:200])
            break
        if not deal.exists:
            unknown.append(f"{job.deal_id} (job {job.id})")
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        differences.append(f"the hub does not know the deal{'s' if len(unknown) > 1 else ''} of "
                           f"{len(unknown)} job(s) in progress: {shown}")
    if differences:
        log.error("event=books_chain_mismatch wallet=%s rpc=%s differences=%d", wallet, rpc_label,
                  len(differences))
        where = f" at {rpc_label}" if rpc_label else ""
        raise BooksDoNotMatchChain(f"the books do not match the chain{where}: " + "; ".join(differences)
                                   + f". {WHAT_TO_DO}.")
    log.info("event=books_chain_match wallet=%s mined_nonce=%s deals_checked=%d", wallet, mined, len(jobs))
