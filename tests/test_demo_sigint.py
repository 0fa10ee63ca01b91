"""Ctrl-C in a terminal, as a person presses it: `python -m devnet demo` runs in its own process group, gets
a photo through the chat page, then SIGINT goes to the whole group (os.killpg, what a terminal does). It must
stop cleanly with the chain saved, start again at once on the same folder with chain and books agreeing
(the wallet's nonce on chain beyond every mined nonce of the books; a new photo is delivered), and a bot
pointed at a chain that was reset must refuse to start and say what to do. Also: `up` refuses books without
a saved chain and names --fresh; --fresh keeps the old folder aside and starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devnet import chain as devchain
from devnet.anvil import Anvil, rpc_call
from devnet.up import NOT_SAVED, REPO_DIR, Devnet, DevnetConfig, DevnetError
from tests.fixtures_devnet import png_bytes
from tests.test_devnet_up import _alive, _children

BOT = "segbot_devnet_bot"
USER = {"id": 1001, "first_name": "Demo"}


def _spawn(args: list[str], log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """`python -m devnet ...` in a new session: its pid is its process group, as a shell's job."""
    env = {k: v for k, v in os.environ.items() if k not in ("TELEGRAM_TOKEN", "ADMIN_IDS", "WORKER_ARGS")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "devnet", *args],
            cwd=REPO_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1", **extra_env},
            start_new_session=True,
        )


def _wait_for(
    what: str,
    check: Callable[[], Any],
    proc: subprocess.Popen[bytes],
    log: Path,
    limit: float = 90.0,
    every: float = 0.2,
) -> Any:
    """Polls `check()` every `every` s until it gives something true (returned); fails loudly if `proc` exits
    first or after `limit` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode} waiting for {what}:\n{log.read_text()[-3000:]}"
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"no {what} within {limit:.0f} s:\n{log.read_text()[-3000:]}")


def _info(data: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data / "devnet.json").read_text())
    except (OSError, ValueError):
        return None


def _bot_answers(url: str, text: str = "/start", limit: float = 60.0) -> str:
    """Send `text` as the demo user through the chat page; the bot's first reply to it."""
    with httpx.Client(base_url=f"{url}/_chat/{BOT}", timeout=40) as client:
        sent = client.post("/send", json={"user": USER, "text": text}).json()["message"]
        after, deadline = 0, time.monotonic() + limit
        while time.monotonic() < deadline:
            page = client.get("/messages", params={"chat_id": USER["id"], "after": after, "wait": 10}).json()
            after = page["changes"]
            replies = [m for m in page["messages"] if m["from_bot"] and m["message_id"] > sent["message_id"]]
            if replies:
                return str(replies[0]["text"] or "")
    raise AssertionError(f"the bot did not answer {text!r}")


def _send_photo(url: str) -> None:
    with httpx.Client(base_url=f"{url}/_chat/{BOT}", timeout=30) as client:
        reply = client.post(
            "/upload",
            data={"user_id": str(USER["id"]), "first_name": USER["first_name"], "kind": "photo"},
            files={"file": ("photo.png", png_bytes((160, 120)), "image/png")},
        )
        assert reply.status_code == 200, reply.text


def _books(data: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data / 'books.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _delivered(data: Path) -> int:
    return _books(data, "SELECT COUNT(*) FROM jobs WHERE state = 'DELIVERED'")[0][0]


def _ctrl_c(proc: subprocess.Popen[bytes], log: Path) -> set[int]:
    """SIGINT to the whole process group, as a terminal does; returns the family that was running."""
    family = _children(proc.pid) | {proc.pid}
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"Ctrl-C did not stop it within 60 s:\n{log.read_text()[-3000:]}") from None
    return family


def _demo_up(data: Path, log: Path, **extra_env: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc = _spawn(["demo", "--app", "test", "--workers", "1", "--data", str(data)], log, **extra_env)
    info = _wait_for("devnet.json", lambda: _info(data), proc, log)
    return proc, info


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ctrl_c_saves_the_chain_and_a_restart_goes_on(tmp_path: Path) -> None:
    data, log = tmp_path / "demo", tmp_path / "demo.log"
    proc, info = _demo_up(data, log)
    try:
        _bot_answers(info["telegram"]["url"])
        _send_photo(info["telegram"]["url"])
        _wait_for("a delivered job", lambda: _delivered(data) == 1, proc, log, limit=120)
    finally:
        family = _ctrl_c(proc, log)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "COULD NOT SAVE" not in out and not (data / NOT_SAVED).exists()
    assert (data / "chain-state.json").stat().st_size > 0
    assert _all_gone(family, limit=30) == [], "Ctrl-C left processes running"
    (mined,) = _books(data, "SELECT MAX(nonce) FROM chain_txs WHERE status = 'mined'")[0]
    assert mined is not None  # the photo cost real transactions: a lost chain would show

    # the same folder again: the chain goes on from the saved state, the books agree with it
    first_url = info["telegram"]["url"]
    log2 = tmp_path / "demo2.log"
    proc, info = _demo_up(data, log2)
    try:
        assert info["telegram"]["url"] == first_url  # the chat page keeps its address (its port was free)
        _bot_answers(info["telegram"]["url"])  # answers at once: nothing frozen, nothing refused
        wallet = json.loads((data / "wallet.json").read_text())["address"]
        wallet = wallet if wallet.startswith("0x") else "0x" + wallet
        sent = int(rpc_call(info["anvil"]["rpc_url"], "eth_getTransactionCount", [wallet, "latest"]), 16)
        assert sent > mined
        _send_photo(info["telegram"]["url"])  # new transactions on the next nonces: delivered too
        _wait_for("a second delivered job", lambda: _delivered(data) == 2, proc, log2, limit=120)
    finally:
        _ctrl_c(proc, log2)
    out2 = log2.read_text()
    assert proc.returncode == 0, out2[-3000:]
    # the start line tells the balance left after the first photo, not the demo credit again
    assert re.search(r"\(you are user 1001, also admin: 4\.[0-9]+ RLC available", out2), out2[-3000:]
    assert "books_chain_mismatch" not in out2 and "replayed_update" not in out2

    # the chain behind RPC_URL reset (a new chain from the PoCo snapshot): the bot refuses, says what to do
    state, _ = devchain.deployed_snapshot()
    with Anvil(load_state=state) as reset:
        env = (data / "demo-bot.env").read_text().splitlines()
        env = [f"RPC_URL={reset.rpc_url}" if line.startswith("RPC_URL=") else line for line in env]
        # the demo's SMS stopped with it (a TDX bot would refuse for that first); the books check is the
        # same in both modes
        env = [line for line in env if not line.startswith("TEE_MODE=")] + ["TEE_MODE=off"]
        (tmp_path / "reset.env").write_text("\n".join(env) + "\n")
        bot = subprocess.run(
            [sys.executable, "-m", "bot", "--env-file", str(tmp_path / "reset.env")],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert bot.returncode == 4, bot.stderr[-3000:]
    assert "refusing to start: the books do not match the chain" in bot.stderr
    assert "--fresh" in bot.stderr and "Traceback" not in bot.stderr


def _up_and_stop(args: list[str], data: Path, log: Path) -> str:
    proc = _spawn(["up", "--app", "test", "--workers", "1", "--data", str(data), *args], log)
    try:
        _wait_for("devnet.json", lambda: _info(data), proc, log)
    finally:
        _ctrl_c(proc, log)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.mark.slow  # over ~2 s
def test_books_without_a_saved_chain_are_refused_and_fresh_starts_over(tmp_path: Path) -> None:
    data = tmp_path / "devnet"
    data.mkdir()
    (data / "books.db").write_bytes(b"")  # books of an earlier run; its chain was never saved
    refused = subprocess.run(
        [sys.executable, "-m", "devnet", "up", "--app", "test", "--data", str(data)],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "no saved chain state" in refused.stderr and "--fresh" in refused.stderr
    assert not (data / "devnet.json").exists() and not (data / "chain-state.json").exists()

    out = _up_and_stop(["--fresh"], data, tmp_path / "fresh.log")
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("devnet.old-")]
    assert len(kept) == 1 and (kept[0] / "books.db").exists()  # the user's data is kept, and said where
    assert f"kept as {kept[0]}" in out
    assert (data / "chain-state.json").exists() and not (data / "books.db").exists()


@pytest.mark.slow  # over ~2 s
async def test_a_chain_save_that_failed_is_said_loudly_and_refused_next_time(tmp_path: Path, capfd) -> None:
    data = tmp_path / "devnet"
    net = Devnet(DevnetConfig(data_dir=data, app="test", workers=1))
    await net.start()
    try:
        assert net.anvil is not None
        os.kill(net.anvil.pid, signal.SIGKILL)  # the chain died first (as a group SIGINT did to it)
    finally:
        await net.stop()
    err = capfd.readouterr().err
    assert "COULD NOT SAVE THE CHAIN STATE" in err and "--fresh" in err
    assert (data / NOT_SAVED).exists()
    (data / "books.db").write_bytes(b"")  # the books of that run
    with pytest.raises(DevnetError, match=r"was not saved .*--fresh"):
        await Devnet(DevnetConfig(data_dir=data, app="test", workers=1)).start()
    assert not (data / "devnet.json").exists()


SLOW_APP = "--sleep 600"  # the test app runs this long: a task is running when the signal comes


def _running_app(pid: int) -> int | None:
    """The pid of a worker app (the test app) run by the demo's workerpool, if one runs."""
    for child in _children(pid):
        try:
            if b"devnet.testapp" in (Path("/proc") / str(child) / "cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def _demo_running_a_task(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The demo with a photo sent whose task is still running (the app sleeps): (demo, app pid)."""
    proc, info = _demo_up(data, log, WORKER_ARGS=SLOW_APP)
    try:
        _bot_answers(info["telegram"]["url"])
        _send_photo(info["telegram"]["url"])
        app = _wait_for("the worker app running", lambda: _running_app(proc.pid), proc, log, limit=120)
    except BaseException:
        _ctrl_c(proc, log)
        raise
    return proc, app


def _all_gone(pids: set[int], limit: float = 60.0) -> list[int]:
    """Polls until none of `pids` runs (or `limit`); the ones still running, which are then killed (a failing
    test leaves nothing behind either)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_terminal_hangup_saves_the_chain_and_leaves_nothing_running(tmp_path: Path) -> None:
    """Closing the terminal (SIGHUP to the job's process group) while a task runs: the demo stops in order as
    on Ctrl-C: the chain is saved, and no process is left, the worker app (in its own session) included."""
    data, log = tmp_path / "demo", tmp_path / "demo.log"
    proc, app = _demo_running_a_task(data, log)
    family = _children(proc.pid) | {proc.pid}
    assert app in family
    os.killpg(proc.pid, signal.SIGHUP)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"SIGHUP did not stop it within 60 s:\n{log.read_text()[-3000:]}") from None
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert f"stopped; the chain is saved in {data}" in out
    assert "COULD NOT SAVE" not in out and not (data / NOT_SAVED).exists()
    assert (data / "chain-state.json").stat().st_size > 0
    assert _all_gone(family, limit=30) == [], "SIGHUP left processes running"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_demo_killed_outright_is_detected_at_the_next_start(tmp_path: Path) -> None:
    """SIGKILL (as the OOM killer does) to the demo alone while a task runs: no save can happen. Its children
    die with it (the kernel's parent-death signal: anvil, the bot, the worker app), the NOT-SAVED marker
    stays, and the next start refuses the books that the saved chain would not match, naming --fresh."""
    data, log = tmp_path / "demo", tmp_path / "demo.log"
    proc, app = _demo_running_a_task(data, log)
    family = _children(proc.pid)
    assert app in family
    proc.kill()
    proc.wait(timeout=10)
    assert _all_gone(family) == [], "children outlived the killed demo"
    assert (data / NOT_SAVED).read_text().strip() == "not stopped cleanly"
    again = subprocess.run(
        [sys.executable, "-m", "devnet", "demo", "--app", "test", "--data", str(data)],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1, again.stdout[-2000:] + again.stderr[-2000:]
    assert "not saved (not stopped cleanly)" in again.stderr and "--fresh" in again.stderr


def _interrupt_start_up(data: Path, log: Path, presses: int) -> tuple[subprocess.Popen[bytes], str, set[int]]:
    """Start the demo, press Ctrl-C once anvil is up (`presses` 2: again as soon as it answers); (demo, its
    output, the processes it had)."""
    proc = _spawn(["demo", "--app", "test", "--workers", "1", "--data", str(data)], log)
    _wait_for("the anvil step", lambda: "[1/8] anvil ... ok" in log.read_text(), proc, log)
    family = _children(proc.pid) | {proc.pid}
    os.killpg(proc.pid, signal.SIGINT)
    if presses == 2:  # once the first is answered (two at once are one signal to the kernel)
        _wait_for("the answer to Ctrl-C", lambda: "stopping after start-up" in log.read_text(), proc, log, 30, 0.01)
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"Ctrl-C did not stop it:\n{log.read_text()[-3000:]}") from None
    return proc, log.read_text(), family


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_start_up_is_answered_and_a_second_one_aborts_it(tmp_path: Path) -> None:
    """The first start takes a while: Ctrl-C then says at once that it will stop after start-up, and does;
    a second Ctrl-C aborts the start-up. Either way what started is stopped (nothing left running) and the
    chain saved."""
    proc, out, family = _interrupt_start_up(tmp_path / "once", tmp_path / "once.log", presses=1)
    assert proc.returncode == 0, out[-3000:]
    assert out.index("stopping after start-up") < out.index("[8/8] telegram ... ok"), out[-3000:]
    assert "chat page" not in out and "stopped; the chain is saved" in out  # the bot was never started
    assert "COULD NOT SAVE" not in out and not (tmp_path / "once" / NOT_SAVED).exists()
    assert (tmp_path / "once" / "chain-state.json").stat().st_size > 0
    assert _all_gone(family, limit=30) == [], "Ctrl-C during start-up left processes running"

    data = tmp_path / "twice"
    proc, out, family = _interrupt_start_up(data, tmp_path / "twice.log", presses=2)
    assert proc.returncode == 0, out[-3000:]
    assert "stopping after start-up" in out and "start-up aborted" in out, out[-3000:]
    assert "[8/8]" not in out  # it did not go on starting
    assert "COULD NOT SAVE" not in out and not (data / NOT_SAVED).exists()
    assert (data / "chain-state.json").stat().st_size > 0 and not (data / "devnet.json").exists()
    assert _all_gone(family, limit=30) == [], "the aborted start-up left processes running"
