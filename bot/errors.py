"""The bot's exception tree: every error the `bot` package raises on purpose derives from `BotError`.

All of them live here, as `iexec.errors` and `ledger.errors` keep theirs, so that any module can raise or
catch any of them without importing the module that raises it (which is how import cycles start):

    BotError
    ├── InputRejected           an input the bot will not process; str(exc) is a message for the user
    │   ├── ImageRejected       the bytes are not an image the bot accepts
    │   └── DownloadsBusy       too many downloads at once (per user, or in all)
    ├── NeedsAdmin              a job is inconsistent: held for a person, its money stays reserved
    ├── NoOffer                 nothing to match within the maximum prices (or not enough stake)
    ├── OfferTaken              the chosen app or workerpool order was taken before our match was mined
    ├── ChainDisagrees          the chain does not know what the books recorded (a reset chain?)
    ├── TeeUnavailable          TEE mode cannot start (no SMS, SMS down, result key does not open)
    ├── InputsError             the input server cannot do what was asked
    ├── UploadFailed            the IPFS node did not take an upload (also an `iexec.errors.IExecError`)
    ├── AlreadyRunning          another bot process holds the lock on these books
    ├── BooksDoNotMatchChain    the books record what the chain does not know: the bot must not run
    ├── WebhookRefused          webhook mode without a secret token
    ├── LinkRefused             a /link or /unlink the bot will not do; str(exc) is a message for the user
    ├── AssignRefused           an /unclaimed assignment the bot will not do; str(exc) is for the admin
    └── UpdateLacks             a handler got an update without the part it was registered for (a bug)

It imports nothing of ours but `iexec.errors` (UploadFailed is one of its errors too).
"""

from __future__ import annotations

from iexec.errors import IExecError


class BotError(Exception):
    """Base class of the errors raised on purpose by the bot package."""


class InputRejected(BotError):
    """An input (photo, file or URL) the bot will not process; str(exc) is a message for the user."""


class ImageRejected(InputRejected):
    """The bytes are not an image the bot accepts; str(exc) is a message for the user."""


class DownloadsBusy(InputRejected):
    """A user has too many downloads running and waiting; str(exc) is a message for the user."""


class NeedsAdmin(BotError):
    """Something is inconsistent: the job is held for a person, its money stays reserved."""


class NoOffer(BotError):
    """No app + workerpool order pair within the maximum prices (or not enough stake to pay one)."""

    def __init__(self, message: str, *, no_stake: bool = False) -> None:
        super().__init__(message)
        self.no_stake = no_stake


class OfferTaken(BotError):
    """The chosen app or workerpool order was consumed by someone else before our match was mined."""


class ChainDisagrees(BotError):
    """The chain does not know what the books recorded (a deal, a started task): was the chain reset?
    Waiting would not change it; the job is held for an admin with this message."""


class TeeUnavailable(BotError):
    """TEE mode cannot start: no SMS configured, the SMS does not answer, or the result key cannot be opened."""


class InputsError(BotError):
    """The input server cannot do what was asked (bad name or ttl, not started, disk error)."""


class UploadFailed(BotError, IExecError):
    """The IPFS node did not take the upload (unreachable, an error status or an unreadable answer): an
    IExecError too, so the pipeline tries the step again later."""


class AlreadyRunning(BotError):
    """Another bot process holds the lock on these books."""


class BooksDoNotMatchChain(BotError):
    """The books record transactions or deals the chain does not know: the bot must not run on them."""

    exit_code = 4


class WebhookRefused(BotError):
    """Webhook mode was asked for without a secret token."""


class UpdateLacks(BotError):
    """A handler got an update without the user, message, chat or button press it was registered for."""


class LinkRefused(BotError):
    """A /link or /unlink the bot will not do; str(exc) is a message for the user (it cost nothing)."""


class AssignRefused(BotError):
    """An /unclaimed assignment the bot will not do; str(exc) is a message for the admin."""
