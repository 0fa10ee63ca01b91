"""The bot's exception tree: every error the `bot` package raises on purpose derives from `BotError`.

Subclasses live next to the code that raises them (e.g. `bot.intake.InputRejected`); this module only holds
the root so that every part can import it without importing each other. It must never import anything.
"""
from __future__ import annotations


class BotError(Exception):
    """Base class of the errors raised on purpose by the bot package."""


class InputRejected(BotError):
    """An input (photo, file or URL) the bot will not process; str(exc) is a message for the user."""


class NeedsAdmin(BotError):
    """Something is inconsistent: the job is held for a person, its money stays reserved."""
