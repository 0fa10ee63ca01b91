"""Fault modes of the devnet workerpool: what a test can ask it to get wrong, per deal or for every deal.

    pool.faults.set(Fault.NO_SHOW)                    # every deal from now on
    pool.faults.set(Fault.APP_ERROR, deal_id=deal)    # one deal only (hex or bytes)
    POST {control_url}/control/faults {"mode": "overrun", "deal_id": "0x..."}   # from another process

Modes (what a real iExec network can do to a requester):
- `no_show`: the workerpool never initializes the task (UNSET until the deadline; `initializeAndClaimArray`).
- `crash_before_contribute`: it initializes the task, then nothing (ACTIVE until the final deadline: claim).
- `app_error`: the app is run with `--fail` and exits non-zero: the error archive is still finalized, so the
  task is COMPLETED with an error archive, as on real iExec.
- `overrun`: the task is initialized and then "runs" until the chain's time passes its contribution
  deadline (the test moves chain time instead of waiting); nothing is contributed.
- `gateway_lose` / `gateway_500`: the task completes, and the gateway answers 404 / 500 for its result.
- `market_500`: the market stand-in answers the next `count` requests with 500 (global only).

This module only keeps the rules; it must never act on the chain itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Fault", "FaultBook", "FaultError", "normalise_deal_id"]


class FaultError(ValueError):
    """An unknown fault mode or a malformed deal id."""


class Fault(str, enum.Enum):
    """What the workerpool should get wrong."""

    NONE = "none"
    NO_SHOW = "no_show"
    CRASH_BEFORE_CONTRIBUTE = "crash_before_contribute"
    APP_ERROR = "app_error"
    OVERRUN = "overrun"
    GATEWAY_LOSE = "gateway_lose"
    GATEWAY_500 = "gateway_500"
    MARKET_500 = "market_500"

    @classmethod
    def parse(cls, value: str | Fault | None) -> Fault:
        """The Fault named `value` (None means NONE). Raises FaultError for an unknown name."""
        if value is None:
            return cls.NONE
        if isinstance(value, Fault):
            return value
        try:
            return cls(str(value).lower().replace("-", "_"))
        except ValueError:
            names = ", ".join(f.value for f in cls)
            raise FaultError(f"unknown fault mode {value!r}; use one of {names}") from None


def normalise_deal_id(deal_id: str | bytes) -> str:
    """A deal id as lowercase 0x-hex of 32 bytes. Raises FaultError when it is not one."""
    if isinstance(deal_id, (bytes, bytearray)):
        raw = bytes(deal_id)
    elif isinstance(deal_id, str) and deal_id.startswith(("0x", "0X")):
        try:
            raw = bytes.fromhex(deal_id[2:])
        except ValueError:
            raise FaultError(f"deal id is not hex: {deal_id[:80]!r}") from None
    else:
        raise FaultError(f"deal id must be 0x-hex or bytes, got {deal_id!r:.80}")
    if len(raw) != 32:
        raise FaultError(f"deal id must be 32 bytes, got {len(raw)}")
    return "0x" + raw.hex()


@dataclass(frozen=True)
class FaultRule:
    """One rule: `fault` applies to `deal_id`, or to every deal when `deal_id` is None."""

    fault: Fault
    deal_id: str | None = None


class FaultBook:
    """Fault rules by deal, with one global rule; a per-deal rule wins over the global one."""

    def __init__(self) -> None:
        self._rules: dict[str | None, Fault] = {}

    def set(self, fault: str | Fault | None, deal_id: str | bytes | None = None) -> None:
        """Apply `fault` to `deal_id` (or globally); Fault.NONE / None removes the rule. Raises FaultError."""
        parsed = Fault.parse(fault)
        key = None if deal_id is None else normalise_deal_id(deal_id)
        if parsed is Fault.MARKET_500 and key is not None:
            raise FaultError("market_500 is global: the market does not know which deal a request is for")
        if parsed is Fault.NONE:
            self._rules.pop(key, None)
        else:
            self._rules[key] = parsed

    def clear(self) -> None:
        """Remove every rule."""
        self._rules.clear()

    def for_deal(self, deal_id: str | bytes) -> Fault:
        """The fault that applies to `deal_id` (market_500 never applies to a deal)."""
        key = normalise_deal_id(deal_id)
        fault = self._rules.get(key) or self._rules.get(None) or Fault.NONE
        return Fault.NONE if fault is Fault.MARKET_500 else fault

    def rules(self) -> list[FaultRule]:
        """The rules in force."""
        return [FaultRule(fault=f, deal_id=d) for d, f in self._rules.items()]
