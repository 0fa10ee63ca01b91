"""Structured, redacted logging for the bot: one line per event, key=value, never a secret.

Telegram's Bot API puts the token in every URL (`/bot<token>/sendMessage`, `/file/bot<token>/...`) and RPC
URLs often carry an API key in their path or query. `install_logging` adds a filter that rewrites every
record's final text, so neither reaches a log whatever library printed it, and turns httpx's request lines
down to WARNING.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import TextIO

_TOKEN_RE = re.compile(r"\b\d{5,12}:[A-Za-z0-9_-]{30,}\b")
_BOT_PATH_RE = re.compile(r"/(file/)?bot[^/\s]+")
_URL_SECRET_RE = re.compile(r"(https?://[^/\s:@]+(?::\d+)?)(/[^\s'\"]*)?")


def redact_url(url: str) -> str:
    """A URL with its path and query replaced by `/***` (API keys live there); scheme and host stay."""
    match = _URL_SECRET_RE.match(url)
    if not match:
        return "***"
    host = match.group(1)
    if "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        host = re.sub(r"//[^@/]*@", "//***@", host)
    return host + ("/***" if match.group(2) and match.group(2) != "/" else "")


class RedactingFilter(logging.Filter):
    """Rewrites each record's message: Telegram tokens and the given secrets become `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _TOKEN_RE.sub("***", text)
        return _BOT_PATH_RE.sub(lambda m: "/" + (m.group(1) or "") + "bot***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not take logging down
            message = str(record.msg)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.msg = f"{record.msg}\n{self.redact(formatted)}"
            record.exc_info = None
            record.exc_text = None
        return True


def install_logging(level: str = "INFO", secrets: Iterable[str] = (), stream: TextIO | None = None) -> RedactingFilter:
    """Configure the root logger with key=value lines and the redacting filter on every handler."""
    redactor = RedactingFilter(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiohttp.access", "web3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor
