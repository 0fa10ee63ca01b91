"""What the admin commands ask of the books, the chain and the jobs: find a job, refund or retry a held one,
reconcile the books with the chain, move stake, report prices (the answers are the admin's chat text).

`AdminOps` is its own object (`services.admin_ops`), built beside the pipeline: it reads the books and the
chain gateway, and changes a job only through the ledger's transitions and the pipeline's public
`drive(job_id)` and `refund(job, why)` (the `JobDriver` it is given). Nothing here runs on its own.
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import Protocol

from bot import texts
from bot.chain_gateway import ChainGateway, TaskKind
from bot.endings import Refund
from bot.errors import ChainDisagrees
from iexec.errors import ChainError, InsufficientStake, MarketError
from ledger import Job, JobState, Ledger, LedgerError, RefundReason

log = logging.getLogger(__name__)


class JobDriver(Protocol):
    """What admin operations ask of the pipeline (`bot.pipeline.Pipeline` is one)."""

    def drive(self, job_id: str) -> None:
        """Drive the job from the state the books say (a no-op when a driver runs already)."""

    async def refund(self, job: Job, why: Refund) -> None:
        """Give the job's money back (REFUNDED) and tell its user."""


class AdminOps:
    """Owns the admin commands' operations on jobs and books; every change goes through the ledger or `jobs`."""

    def __init__(self, ledger: Ledger, chain: ChainGateway, jobs: JobDriver) -> None:
        self.ledger = ledger
        self.chain = chain
        self.jobs = jobs

    def find_job(self, ref: str) -> Job | None:
        """A job by its id or the last characters of it (as shown to users)."""
        if not ref:
            return None
        job = self.ledger.get_job(ref)
        if job is not None:
            return job
        matches = self.ledger.find_jobs_by_suffix(ref, limit=2)
        return matches[0] if len(matches) == 1 else None  # none, or ambiguous

    def user_credit(self) -> int:
        """What the books owe users: their posted balances (reserved credit included)."""
        return sum(a.balance.posted for a in self.ledger.accounts() if a.user_id is not None)

    async def admin_refund(self, ref: str) -> str:
        """Refund a job held for an admin, unless its task completed on chain (/retry delivers it then)."""
        job = self.find_job(ref)
        if job is None or job.state is not JobState.NEEDS_ADMIN:
            return "Only a job held for an admin (NEEDS_ADMIN) can be refunded."
        if job.task_id and job.deal_id:  # a task id comes with its deal id (MATCHED)
            try:
                event = await self.chain.wait_task(job.deal_id, job.task_id, timeout=0)
            except ChainDisagrees:
                pass  # the chain does not know the deal (a reset chain): nothing was paid there
            else:
                if event.kind is TaskKind.FINALIZED:
                    return "The task completed on chain: use /retry to deliver it instead."
        await self.jobs.refund(job, Refund(RefundReason.ADMIN))
        return f"↩️ Job <code>{job.id}</code> refunded."

    async def admin_retry(self, ref: str) -> str:
        """Put a held job back in the state it was held from and drive it again."""
        job = self.find_job(ref)
        if job is None or job.state is not JobState.NEEDS_ADMIN:
            return "Only a job held for an admin (NEEDS_ADMIN) can be retried."
        held_from = max(
            (k for k in job.state_times if k != "NEEDS_ADMIN"), key=lambda k: job.state_times[k], default="RECEIVED"
        )
        self.ledger.transition(job.id, JobState.NEEDS_ADMIN, JobState(held_from), error="")
        self.jobs.drive(job.id)
        return f"🔁 Job <code>{job.id}</code> resumed from {held_from}."

    async def reconcile(self) -> str:
        """The books against the chain: stake covers reservations, deals and task states agree."""
        lines = []
        try:
            await asyncio.to_thread(self.ledger.audit_apart)  # ~1 s a million transfers: off the event loop
            lines.append("✅ books balance (audit passed)")
        except LedgerError as exc:
            lines.append(f"❌ audit: {exc}")
        wallet = await self.chain.wallet_report()
        unsettled = [s for s in JobState if s.is_resumable() or s is JobState.NEEDS_ADMIN]
        reserved = sum(j.max_price for j in self.ledger.jobs_in_states(*unsettled))
        owed = self.user_credit()
        lines.append(
            f"hub stake {texts.rlc(wallet.stake)}, locked {texts.rlc(wallet.locked)}, wallet "
            f"{texts.rlc(wallet.rlc)}; users are owed {texts.rlc(owed)} ({texts.rlc(reserved)} reserved)"
        )
        if wallet.stake + wallet.locked + wallet.rlc < owed:
            lines.append("❌ the wallet holds less than the users' credit")
        for job in self.ledger.jobs_in_states(
            JobState.MATCHED, JobState.RUNNING, JobState.MATCHING, JobState.NEEDS_ADMIN
        ):
            if job.order_hash:
                request = self.chain.request_order_from_json(job.request_order)
                deal = await self.chain.deal_of(request)
                if job.deal_id and deal != job.deal_id:
                    lines.append(f"❌ job {job.id}: books say deal {job.deal_id}, chain says {deal}")
                elif not job.deal_id and deal:
                    lines.append(f"⚠️ job {job.id}: matched on chain ({deal}) but not in the books yet")
        if len(lines) == 2 and "❌" not in lines[1]:
            lines.append("✅ no differences")
        return "\n".join(lines)

    async def move_stake(self, kind: str, nrlc: int, *, key: str) -> str:
        """Deposit into (`kind` "deposit") or withdraw from ("withdraw") the hub, once per confirmation `key`;
        returns the admin's answer (`texts.ALREADY_DONE` when this key was done before)."""
        ledger = self.ledger
        if not ledger.record_event("admin_stake", key, {"kind": kind, "nrlc": nrlc}):
            if ledger.seen_event("admin_stake_failed", key):
                return texts.STAKE_FAILED_BEFORE.format(kind=kind)
            return texts.ALREADY_DONE
        try:
            await self.chain.move_stake(kind, nrlc)
        except (ChainError, ValueError) as exc:
            # Recorded, so that this button says "failed" (not "already done") if pressed again; a new
            # command makes a new confirmation key and may try again.
            ledger.record_event("admin_stake_failed", key, {"kind": kind, "nrlc": nrlc, "error": str(exc)[:300]})
            log.warning("event=stake_move_failed kind=%s nrlc=%d error=%r", kind, nrlc, str(exc)[:300])
            why = html.escape(str(exc))
            if isinstance(exc, InsufficientStake):  # its own text counts in nRLC: say it in RLC
                try:
                    report = await self.chain.wallet_report()
                    have = report.rlc if kind == "deposit" else report.stake
                    where = "the wallet holds" if kind == "deposit" else "the free stake is"
                    why = f"{where} {texts.rlc(have)}, less than {texts.rlc(nrlc)}"
                except ChainError:
                    why = f"not enough RLC for {texts.rlc(nrlc)}"
            return f"❌ {kind} failed, nothing moved: {why}\nSend /{kind} again to try again."
        report = await self.chain.wallet_report()
        return f"✅ {kind.capitalize()} done. Hub stake is now {texts.rlc(report.stake)}."

    async def price_report(self) -> str:
        """The best offer on the market now, for /price."""
        try:
            found = await self.chain.offers()
        except MarketError as exc:
            return f"The market does not answer: {html.escape(str(exc))}"
        if not found:
            return "No offer within the maximum prices right now."
        best = found[0]
        mode = "TEE (TDX) tasks" if self.chain.tee else "standard tasks"
        fee = self.chain.settings.fee_nrlc
        return (
            f"Mode: {mode}, tag {bytes(self.chain.request_tag).hex()[-4:]}.\n"
            f"Best offer: app {best.app.appprice / 10**9:g} RLC + workerpool "
            f"{best.workerpool.workerpoolprice / 10**9:g} RLC (+ fee {fee / 10**9:g}"
            f" RLC); {len(found)} workerpool orders within the limits."
        )
