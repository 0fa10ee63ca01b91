"""`python -m devnet up` / `status` as an operator runs them: it comes up (waited for, not timed), `status` says so,
Ctrl-C leaves no process behind, and a second start reuses the saved chain, app and wallet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devnet.__main__ import status
from devnet.up import REPO_DIR

pytestmark = pytest.mark.timeout(300)  # a hang guard; each wait has its own bound


def _children(pid: int) -> set[int]:
    """Every descendant pid of `pid` (from /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and int(entry.name) not in found:
                found.add(int(entry.name))
                todo.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _still_running(pids: set[int], limit: float = 30.0) -> list[int]:
    """Polls until none of `pids` runs (a process being reaped is not running), at most `limit` s; the ones
    still running then."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def _start(data: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devnet", "up", "--data", str(data), "--app", "test", *flags],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_up(proc: subprocess.Popen[str], data: Path, limit: float = 90.0) -> None:
    """Polls until `status` says the devnet is up; fails loudly if it exits first or after `limit` s (a
    generous bound on a loaded machine: how fast it starts is not what these tests check)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        if (data / "devnet.json").exists() and status(data) == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"devnet status did not exit 0 within {limit:.0f} s")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.slow  # over ~2 s
def test_up_status_and_ctrl_c_leaves_nothing_behind(tmp_path, capsys):
    data = tmp_path / "devnet"
    proc = _start(data)
    try:
        _wait_up(proc, data)
        capsys.readouterr()
        assert (
            subprocess.run(
                [sys.executable, "-m", "devnet", "status", "--data", str(data)],
                cwd=REPO_DIR,
                capture_output=True,
                timeout=30,
            ).returncode
            == 0
        )
        info = json.loads((data / "devnet.json").read_text())
        assert info["pid"] == proc.pid
        family = _children(proc.pid)
        assert info["anvil"]["pid"] in family
        env = dict(line.split("=", 1) for line in (data / "bot.env").read_text().splitlines())
        assert env["APP_ADDRESS"] == info["app"]["address"] and env["IPFS_GATEWAY"] == info["gateway"]["url"]
        assert env["WALLET_KEYSTORE"].endswith("wallet.json") and "WALLET_PASSWORD" not in env
        assert env["TEE_MODE"] == "off"  # up's bot runs standard deals unless --tee
        for secret_file in ("bot.env", "wallet.password", "wallet.json"):
            assert (data / secret_file).stat().st_mode & 0o077 == 0, secret_file
    finally:
        out = _stop(proc) if proc.poll() is None else ""
    assert proc.returncode == 0, out
    assert "[8/8] telegram ... ok" in out and "devnet stopped." in out
    assert "(TEE_MODE=off: standard deals)" in out
    assert env["TELEGRAM_TOKEN"] not in out
    assert _still_running(family | {proc.pid}) == [], "Ctrl-C left processes running"
    assert status(data) == 2  # devnet.json is gone: "not running"


@pytest.mark.slow  # over ~2 s
def test_status_names_what_is_missing(tmp_path, capsys):
    data = tmp_path / "devnet"
    proc = _start(data)
    try:
        _wait_up(proc, data)
        info = json.loads((data / "devnet.json").read_text())
    finally:
        _stop(proc)
    data.mkdir(exist_ok=True)
    (data / "devnet.json").write_text(json.dumps(info))  # as if the devnet had died without cleaning up
    capsys.readouterr()
    assert status(data) == 1
    out = capsys.readouterr()
    assert "anvil       MISSING" in out.out and "workerpool" in out.err


@pytest.mark.slow  # over ~2 s
def test_second_start_reuses_chain_app_and_wallet(tmp_path):
    """... also when the second start switches the bot to TDX deals (--tee): same folder, same chain."""
    data = tmp_path / "devnet"
    first_info = second_info = {}
    for round_ in range(2):
        proc = _start(data, *(["--tee"] if round_ else []))
        try:
            _wait_up(proc, data)
            info = json.loads((data / "devnet.json").read_text())
            env = dict(line.split("=", 1) for line in (data / "bot.env").read_text().splitlines())
            assert env["TEE_MODE"] == ("on" if round_ else "off") and info["bot"]["tee"] is bool(round_)
        finally:
            out = _stop(proc)
        if round_:
            assert "(TEE_MODE=on: TDX deals)" in out
        if round_ == 0:
            first_info = info
        else:
            second_info = info
    assert second_info["app"]["address"] == first_info["app"]["address"]
    assert second_info["bot"]["address"] == first_info["bot"]["address"]
    assert second_info["workerpool"]["address"] == first_info["workerpool"]["address"]


def test_one_source_for_the_worker_arguments(tmp_path):
    """The graph exported at start is keyed on the arguments the bot's tasks run with (issue 11, point 12):
    devnet's WORKER_ARGS is in bot.env, the bot's own default is the same, build-graph gets the same."""
    from bot.settings import Settings
    from devnet.up import WORKER_ARGS, Devnet, DevnetConfig, graph_arguments

    assert Settings(_env_file=None).worker_args == WORKER_ARGS  # type: ignore[call-arg]  # a pydantic-settings option
    assert graph_arguments(WORKER_ARGS) == ["--max-dim", "1024", "--min-confidence", "0.7"]
    assert graph_arguments("--min-confidence=0.5 --format jpeg --max-dim 512") == [
        "--min-confidence",
        "0.5",
        "--max-dim",
        "512",
    ]
    assert Devnet(DevnetConfig(data_dir=tmp_path)).config.worker_args == WORKER_ARGS


def test_status_without_data_finds_the_running_demo(tmp_path, capsys):
    from devnet.__main__ import default_status_dir

    demo, devnet = tmp_path / "demo", tmp_path / "devnet"
    assert status(None, (demo, devnet)) == 2 and str(demo) in capsys.readouterr().err  # says where it looked
    demo.mkdir()
    (demo / "devnet.json").write_text("{}")
    assert default_status_dir((demo, devnet)) == demo
    devnet.mkdir()
    (devnet / "devnet.json").write_text("{}")
    (demo / "devnet.json").unlink()
    assert default_status_dir((demo, devnet)) == devnet


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
def test_fresh_is_refused_while_a_bot_holds_the_books_lock(tmp_path):
    """A bot started apart from the devnet (no devnet.json names it) runs on the folder's books: --fresh must
    not rename the folder under it, and says why; once the bot is gone, --fresh goes ahead."""
    data = tmp_path / "devnet"
    data.mkdir()
    (data / "books.db").write_bytes(b"")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from bot.lock import InstanceLock; "
            f"lock = InstanceLock({str(data / 'books.lock')!r}).acquire(); "
            "print('held', flush=True); sys.stdin.read()",
        ],
        cwd=REPO_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = subprocess.run(
            [sys.executable, "-m", "devnet", "up", "--app", "test", "--fresh", "--data", str(data)],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1
        assert f"a bot (pid {holder.pid}) is running on {data}" in refused.stderr
        assert (data / "books.db").exists() and not list(tmp_path.glob("devnet.old-*"))
    finally:
        holder.communicate("", timeout=10)  # the bot stops: the kernel drops its lock
    from devnet.up import move_aside

    kept = move_aside(data)
    assert kept is not None and (kept / "books.db").exists() and not data.exists()
