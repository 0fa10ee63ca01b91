"""Amounts: validation of nRLC integers and exact RLC text parsing/formatting.

1 RLC = 10**9 nRLC. Amounts are plain ints everywhere; RLC text typed by an operator is parsed with
Decimal, at most 9 decimals, and converted once. This module must never use floats.
"""

from __future__ import annotations

import re
from decimal import Decimal

from ledger.errors import InvalidAmount

NRLC_PER_RLC = 10**9
MAX_AMOUNT = 2**63 - 1

# Digits, an optional point with 1..9 digits after it. No sign, exponent, spaces, NaN or inf.
_RLC_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]{1,9}))?")


def check_amount(amount: object, name: str = "amount") -> int:
    """Return `amount` if it is an int in 1..2**63-1; raise InvalidAmount otherwise (bool refused)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"{name} must be an int number of nRLC, got {type(amount).__name__}")
    if amount <= 0:
        raise InvalidAmount(f"{name} must be positive, got {amount}")
    if amount > MAX_AMOUNT:
        raise InvalidAmount(f"{name} must be at most 2**63-1 nRLC, got {amount}")
    return amount


def check_fee(fee: object) -> int:
    """Return `fee` if it is an int in 0..2**63-1; raise InvalidAmount otherwise."""
    if isinstance(fee, int) and not isinstance(fee, bool) and fee == 0:
        return 0
    return check_amount(fee, "fee")


def parse_rlc(text: str) -> int:
    """Parse RLC text such as "1.5" into nRLC (1500000000).

    Raises InvalidAmount for anything but plain digits with at most 9 decimals: "", " 5 ", "1e9",
    "NaN", "inf", "-0", "+1", "1.0000000001", zero, and totals over 2**63-1 nRLC.
    """
    if not isinstance(text, str):
        raise InvalidAmount(f"RLC amount must be text, got {type(text).__name__}")
    match = _RLC_RE.fullmatch(text)
    if match is None:
        raise InvalidAmount(f"not an RLC amount: {text!r} (use digits with at most 9 decimals, e.g. 1.5)")
    nrlc = int(Decimal(text).scaleb(9))
    if nrlc == 0:
        raise InvalidAmount(f"RLC amount must be positive, got {text!r}")
    if nrlc > MAX_AMOUNT:
        raise InvalidAmount(f"RLC amount too large: {text!r} (max {format_rlc(MAX_AMOUNT)})")
    return nrlc


def format_rlc(nrlc: int) -> str:
    """Format nRLC as exact RLC text: 1500000000 -> "1.5 RLC", 0 -> "0 RLC", -5 -> "-0.000000005 RLC"."""
    if isinstance(nrlc, bool) or not isinstance(nrlc, int):
        raise InvalidAmount(f"nRLC must be an int, got {type(nrlc).__name__}")
    sign = "-" if nrlc < 0 else ""
    whole, frac = divmod(abs(nrlc), NRLC_PER_RLC)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return f"{sign}{text} RLC"
