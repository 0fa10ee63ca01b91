"""Crash points: named places in the bot where it kills itself, at once and without cleanup, when asked to.

They exist for the crash tests, which prove that every step is persisted before its side effect: a test
starts the bot with `SEGBOT_CRASH_AT=<point>` in its environment (`tests/fixtures_e2e.py`, used by
tests/test_e2e_crash.py, test_e2e_soak.py and test_e2e_told.py) or builds it with
`bot.app.build_bot(crash_at=<point>)` (tests/test_bot_tee.py), waits for the process to die at that point
(SIGKILL: no `finally`, no flush, like a power cut), starts it again and checks that nothing was done twice
or lost. When the variable is unset (always, outside tests), reaching a point does nothing.

The points, in the order a job meets them:

    after_inbox      an update is stored in the books, before Telegram is told it was received
    after_ack        the "got it" message is sent, before the job exists
    after_reserve    the job and its reservation are written
    before_secret    TEE: the input secret's push is recorded, before it is pushed to the SMS
    after_secret     TEE: the input secret is in the SMS
    after_sign       the request order is signed and stored (ORDER_SIGNED)
    before_match     an offer is chosen, before the match transaction
    after_broadcast  the match transaction is broadcast, before its receipt
    after_match      the match is mined, before the deal is recorded
    after_deal       the deal is recorded (MATCHED)
    after_claim      a claim is mined, before the refund is recorded
    after_download   the result is downloaded and checked, before the charge
    after_settle     the charge is posted (COMPLETED)
    after_reply      the result is sent, before DELIVERED is recorded
    before_tell      a refund or hold is recorded, before the user is told
    after_tell       the user is told, before the telling is recorded

Never here: anything but dying. A point's name is its whole interface.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: The environment variable naming the point to die at (`python -m bot` reads it at start).
ENV_VAR = "SEGBOT_CRASH_AT"


class CrashPoints:
    """Kills the process when the point named at construction is reached (`crash_points("after_sign")`)."""

    def __init__(self, at: str | None = None) -> None:
        self.at = at or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CrashPoints:
        """The point named by `SEGBOT_CRASH_AT` (none when it is unset or empty)."""
        return cls(environ.get(ENV_VAR))

    def __call__(self, name: str) -> None:
        """Die here, at once and without cleanup, if this is the point asked for."""
        if self.at == name:
            log.warning("event=crash_injected point=%s", name)
            os.kill(os.getpid(), signal.SIGKILL)
