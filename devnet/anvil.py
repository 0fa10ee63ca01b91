"""A child anvil process: the devnet's chain, bound to 127.0.0.1 on a free port.

    with Anvil(load_state=snapshot) as anvil:
        web3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        anvil.freeze(); ...; anvil.thaw()      # a chain outage, for tests

The anvil binary comes from npm (`@foundry-rs/anvil`, in devnet/node_modules). An Anvil never outlives its
owner: the child gets PR_SET_PDEATHSIG=SIGKILL (the kernel kills it when the spawning thread's process dies,
even on SIGKILL), and it is stopped in `__exit__`, in `stop()` and at interpreter exit.
It must never listen on anything but 127.0.0.1.

Errors of the devnet's chain half are declared here, together:

    DevnetChainError
    ├── AnvilError          anvil could not be found, started, or answered nothing
    ├── TransactionFailed   a devnet transaction could not be sent, or it reverted
    └── DeployError         deploying or configuring the PoCo contracts failed
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEVNET_DIR = Path(__file__).resolve().parent
ANVIL_ENV = "SEGBOT_ANVIL"  # overrides the binary's path
_PR_SET_PDEATHSIG = 1
_START_TIMEOUT_S = 10.0


class DevnetChainError(Exception):
    """Base of the errors raised by the devnet's chain half (anvil, deploy, helpers)."""


class AnvilError(DevnetChainError):
    """Anvil could not be found, started, or did not answer."""


class TransactionFailed(DevnetChainError):
    """A devnet transaction could not be sent, or it was mined and reverted."""


class DeployError(DevnetChainError):
    """Deploying or configuring the PoCo contracts failed."""


def anvil_binary() -> Path:
    """Path of the npm-installed anvil binary (or $SEGBOT_ANVIL). Raises AnvilError when missing."""
    override = os.environ.get(ANVIL_ENV)
    candidates = (
        [Path(override)]
        if override
        else [
            DEVNET_DIR / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
            DEVNET_DIR / "node_modules/@foundry-rs/anvil/bin/anvil",
            DEVNET_DIR / "node_modules/.bin/anvil",
        ]
    )
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise AnvilError(
        f"anvil binary not found (looked at {', '.join(map(str, candidates))}); "
        f"run `npm ci` in {DEVNET_DIR} or set {ANVIL_ENV}"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it: start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpc_call(rpc_url: str, method: str, params: list[Any] | None = None, *, timeout: float = 5.0) -> Any:
    """One JSON-RPC call with the standard library. Raises AnvilError on an RPC error reply;
    network errors (URLError, TimeoutError) propagate so callers can tell an outage apart."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(rpc_url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        answer = json.loads(reply.read())
    if "error" in answer:
        raise AnvilError(f"{method} failed: {answer['error'].get('message', answer['error'])}")
    return answer.get("result")


_libc = ctypes.CDLL(None, use_errno=True)


def _wait_state(pid: int, *, stopped: bool, bound_s: float = 5.0) -> None:
    """Wait until the kernel reports process `pid` stopped (state T) or not, for at most `bound_s` seconds:
    a signal is delivered asynchronously, so on a busy machine a request made right after SIGSTOP could
    still be answered. Without /proc (not Linux) this returns at once."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return  # gone, or no /proc: nothing to wait for
        state = stat[stat.rindex(")") + 2]  # the field after the command name, which may contain spaces
        if (state in "Tt") == stopped:
            return
        time.sleep(0.001)  # a poll of the kernel's view (not a synchronisation by time)


def _die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """preexec_fn: ask the kernel to send `sig` when our parent goes; exit if it is already gone."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def child_preexec(sig: int = signal.SIGKILL) -> Any:
    """A preexec_fn for the devnet's children: they get `sig` from the kernel when the spawning thread's
    process dies (call it in the thread that spawns: the main thread or the spawner below).

    Spawn them with `start_new_session=True` as well: a terminal's Ctrl-C (SIGINT to the whole foreground
    process group) then reaches only the parent, which stops its children in order and saves the chain."""
    parent = os.getpid()
    return lambda: _die_with_parent(parent, sig)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends. Children spawned from a worker
# thread (asyncio.to_thread, executors) are therefore spawned from this one long-lived thread instead.
_spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="anvil-spawner")
_live: set[Anvil] = set()  # started and not stopped yet: stopped at interpreter exit


def _popen(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
    def spawn() -> subprocess.Popen[bytes]:
        # own session: a terminal's group SIGINT must not kill the chain before the parent saved it
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_preexec(),
            close_fds=True,
            start_new_session=True,
        )

    if threading.current_thread() is threading.main_thread():
        return spawn()
    return _spawner.submit(spawn).result()


@atexit.register
def _stop_all() -> None:
    for anvil in list(_live):
        anvil.stop()


class Anvil:
    """A child anvil process on 127.0.0.1. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        *,
        port: int | None = None,
        load_state: Path | None = None,
        dump_state: Path | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
    ) -> None:
        self._fixed_port = port
        self.port: int = port or 0
        self.load_state = Path(load_state) if load_state else None
        self.dump_state_path = Path(dump_state) if dump_state else None
        self.chain_id = chain_id
        self.block_time = block_time
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._frozen = False

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise AnvilError("anvil is not running")
        return self._process.pid

    def _argv(self) -> list[str]:
        argv = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(self.chain_id)]
        if self.load_state is not None:
            if not self.load_state.is_file():
                raise AnvilError(f"state file {self.load_state} does not exist")
            argv += ["--load-state", str(self.load_state)]
        if self.dump_state_path is not None:
            argv += ["--dump-state", str(self.dump_state_path)]
        if self.block_time is not None:
            argv += ["--block-time", str(self.block_time)]
        return argv

    def start(self) -> Anvil:
        """Start anvil and wait until it answers eth_chainId. Raises AnvilError if it cannot."""
        if self._process is not None:
            return self
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            self.port = self._fixed_port or free_port()
            fd, log_name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
            self._log_path = Path(log_name)
            with os.fdopen(fd, "wb") as log:
                self._process = _popen(self._argv(), log)
            _live.add(self)
            if self._wait_ready():
                return self
            log = self._log_tail()
            self._reap()
            if attempt == attempts - 1:
                raise AnvilError(f"anvil did not start on 127.0.0.1:{self.port}: {log}")
        raise AssertionError("unreachable")

    def _wait_ready(self) -> bool:
        """True once *our* anvil listens and answers: with a port race, another process may answer on the
        same port, so anvil's own "Listening on" line is required as well."""
        listening = f"Listening on 127.0.0.1:{self.port}"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            if listening in self._log_tail(whole=True):
                try:
                    if int(rpc_call(self.rpc_url, "eth_chainId", timeout=0.5), 16) == self.chain_id:
                        return self._process.poll() is None
                except (OSError, AnvilError, ValueError):
                    pass
            time.sleep(0.01)
        return False

    def _log_tail(self, whole: bool = False) -> str:
        try:
            text = self._log_path.read_text(errors="replace") if self._log_path else ""
            return text if whole else text[-800:]
        except OSError:
            return ""

    def _reap(self) -> None:
        process, self._process = self._process, None
        _live.discard(self)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop anvil (it writes --dump-state on a clean stop). Idempotent; never raises."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if self._frozen:
                os.kill(process.pid, signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._frozen = False
        self._process = None
        _live.discard(self)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP anvil: its port stays open but nothing answers (a chain outage)."""
        os.kill(self.pid, signal.SIGSTOP)
        self._frozen = True
        _wait_state(self.pid, stopped=True)  # the signal is delivered asynchronously: return once it has stopped

    def thaw(self) -> None:
        """SIGCONT anvil after freeze(); queued requests are then answered."""
        os.kill(self.pid, signal.SIGCONT)
        self._frozen = False
        _wait_state(self.pid, stopped=False)

    def dump_state(self, path: Path) -> Path:
        """Write the current chain state to `path` in the format --load-state reads (anvil_dumpState)."""
        import gzip

        raw = bytes.fromhex(rpc_call(self.rpc_url, "anvil_dumpState", timeout=30)[2:])
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if not raw:
            raise AnvilError("anvil_dumpState returned nothing")
        path = Path(path)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:  # a crash mid-write leaves the previous state whole
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._process else "stopped"
        return f"Anvil(rpc_url={self.rpc_url!r}, {state})"
