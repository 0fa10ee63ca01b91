"""Small file helpers shared by the devnet's stand-ins (no import of `iexec` or `bot`)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or the next start after a kill) sees the old file or the new
    one, never half of one: a scratch file beside it (named by this process, so two writers never share
    one), flushed to disk, then renamed over `path`."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(scratch, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)
