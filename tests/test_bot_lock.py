"""One running bot per books: a second `python -m bot` on the same books refuses to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.errors import AlreadyRunning
from bot.lock import InstanceLock
from tests.fixtures_e2e import E2E

ROOT = Path(__file__).resolve().parent.parent


def _hold(path: Path) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import sys, time
        from bot.lock import InstanceLock
        InstanceLock({str(path)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)  # holds the lock until the test kills it (not a synchronisation)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "books.lock"
    with _hold(path) as holder:  # on leaving: its stdout pipe closed, the process reaped
        try:
            with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
                InstanceLock(path).acquire()
        finally:
            os.kill(holder.pid, signal.SIGKILL)  # a crash must not leave a stale lock behind
            holder.wait()
    with InstanceLock(path) as lock:
        assert path.read_text() == str(os.getpid())
        assert lock.path == path


@pytest.mark.asyncio(loop_scope="session")
async def test_a_second_bot_on_the_same_books_refuses_to_start(e2e: E2E) -> None:
    await e2e.start_bot()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "--env-file", str(e2e.env_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # a second bot that waited for the lock instead of refusing fails here, loudly
    )
    assert proc.returncode == 3
    assert "already running" in proc.stderr
    assert e2e.bot is not None and e2e.bot.alive  # the first one goes on: the second did not wait for it
