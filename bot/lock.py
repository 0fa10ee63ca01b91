"""One running bot per database and wallet: an exclusive lock file held for the process's life.

The lock is an `fcntl.flock` on a file beside the books, so it is released by the kernel when the process
dies, even by SIGKILL: a crash never leaves a stale lock that blocks the restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bot.errors import AlreadyRunning


class InstanceLock:
    """Hold `path` exclusively; `acquire()` raises AlreadyRunning if another process has it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(
                f"another bot is already running on these books (pid {holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
