"""The one exception tree of the `iexec` package.

Every error raised by `iexec` derives from `IExecError`, so a caller can catch the whole package with one
clause. Messages say what is wrong and what to do; they must never contain a private key, an RPC URL with
credentials, or a signed transaction's raw bytes.

    IExecError
    ├── OrderError                  an order field is malformed (carries .field)
    ├── ParamsError                 request params rejected by the builder (carries .key)
    ├── ChainError                  anything that went wrong talking to the chain
    │   ├── ChainUnavailable        the node did not answer after bounded retries
    │   ├── TransactionError        a transaction of ours could not be mined as intended
    │   │   ├── TransactionReverted the transaction was mined but reverted (carries .receipt)
    │   │   └── FeeCapExceeded      replacing a stuck transaction would exceed the fee cap
    │   └── HubRevert               the hub refused a call (carries .reason, the revert string)
    │       ├── InsufficientStake   the account's free stake cannot cover the price
    │       ├── OrderConsumed       the order's volume is already used up
    │       ├── TagMismatch         the orders' tags do not fit together
    │       ├── PriceMismatch       a price is above what the other side accepts
    │       ├── CategoryMismatch    request and workerpool orders name different categories
    │       ├── TrustMismatch       the request asks more trust than the workerpool gives
    │       ├── RestrictionMismatch an order restricts who may match it, and the other side is not it
    │       ├── InvalidSignature    an order's signature does not match its signer
    │       ├── WrongTaskStatus     the task is not in a status that allows this call
    │       └── DeadlineNotReached  the task's final deadline has not passed yet
    ├── BodyTooLarge                an HTTP body is larger than the caller's cap (iexec.bodies)
    ├── MarketError                 the market API failed or answered something unusable
    │   ├── MarketUnavailable       network error, timeout or 5xx after retries
    │   └── MarketReplyError        the reply has a wrong shape, a bad signature or an error status
    └── ResultError                 a task's result could not be used
        ├── ResultLocationError     `task.results` is empty or its location has a wrong form
        ├── ResultDownloadError     no gateway delivered the archive
        ├── UnsafeArchive           the archive escapes its folder or expands too much
        │   └── DecryptionError     (also a TeeError) an encrypted result or input cannot be opened
        │       └── ResultKeyMissing  the result is encrypted and no result key was given
        └── ErrorArchive            the app reported an error instead of a result
    ├── LinkProofError              a wallet-link signature that does not prove the address (iexec.link)
    ├── TeeError                    TEE (TDX) client side: keys, encryption formats (iexec.tee)
    └── SmsError                    the Secret Management Service refused or failed (carries .status)

DecryptionError derives from both TeeError and UnsafeArchive: a result that cannot be decrypted is a bad
result (refunded by a caller that refunds on UnsafeArchive), never something to retry.
"""

from __future__ import annotations

from typing import Any


class IExecError(Exception):
    """Base of every error raised by the iexec package."""


class OrderError(IExecError, ValueError):
    """An order field is malformed; `.field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ParamsError(IExecError, ValueError):
    """Request params were rejected by the builder; `.key` names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"params {key}: {message}")
        self.key = key


class ChainError(IExecError):
    """Something went wrong talking to the chain."""


class ChainUnavailable(ChainError):
    """The node did not answer after bounded retries."""


class TransactionError(ChainError):
    """A transaction of ours could not be mined as intended."""


class TransactionReverted(TransactionError):
    """The transaction was mined but reverted; `.receipt` holds the receipt."""

    def __init__(self, message: str, receipt: Any = None) -> None:
        super().__init__(message)
        self.receipt = receipt


class FeeCapExceeded(TransactionError):
    """Replacing a stuck transaction would exceed the configured fee cap."""


class HubRevert(ChainError):
    """The hub refused a call; `.reason` is the contract's revert string."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"hub reverted: {reason or '(no reason)'}")
        self.reason = reason


class InsufficientStake(HubRevert):
    """The account's free stake cannot cover the price: deposit RLC first."""


class OrderConsumed(HubRevert):
    """The order's volume is already used up: it was matched before. `which` names the consumed order's
    kind ("app", "dataset", "workerpool", "request") once the hub client has found it, else ""."""

    which: str = ""


class TagMismatch(HubRevert):
    """The orders' tags do not fit together (a required bit is missing on the workerpool/app side)."""


class PriceMismatch(HubRevert):
    """A price is above the maximum the request order accepts."""


class CategoryMismatch(HubRevert):
    """The request and workerpool orders name different categories."""


class TrustMismatch(HubRevert):
    """The request asks more trust than the workerpool order gives."""


class RestrictionMismatch(HubRevert):
    """An order restricts who may match it, and the counterpart is not allowed."""


class InvalidSignature(HubRevert):
    """An order's signature does not match its owner or requester."""


class WrongTaskStatus(HubRevert):
    """The task is not in a status that allows this call."""


class DeadlineNotReached(HubRevert):
    """The task's final deadline has not passed yet: it cannot be claimed."""


class BodyTooLarge(IExecError):
    """An HTTP body is larger than the caller's cap (or announces so): it was not read to its end."""


class MarketError(IExecError):
    """The market API failed or answered something unusable."""


class MarketUnavailable(MarketError):
    """Network error, timeout or 5xx from the market API after retries."""


class MarketReplyError(MarketError):
    """The market reply has a wrong shape, a bad signature or an error status."""


class ResultError(IExecError):
    """A task's result could not be used."""


class ResultLocationError(ResultError):
    """`task.results` is empty or its location has a wrong form."""


class ResultDownloadError(ResultError):
    """No gateway delivered the result archive."""


class UnsafeArchive(ResultError):
    """The result archive escapes its folder or expands too much."""


class ErrorArchive(ResultError):
    """The app reported an error (error.txt / error-message) instead of a result."""


class TeeError(IExecError):
    """TEE (TDX) client side: a key or an encrypted blob is unusable (iexec.tee)."""


class DecryptionError(TeeError, UnsafeArchive):
    """An encrypted result (or input) cannot be decrypted: wrong key, truncated, or not encrypted at all."""


class ResultKeyMissing(DecryptionError):
    """The result archive is encrypted and no result key was given to open it."""


class SmsError(IExecError):
    """The Secret Management Service refused or failed; `.status` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LinkProofError(IExecError, ValueError):
    """A wallet-link signature is malformed, or was not made by the address over this request."""


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, IExecError)]
