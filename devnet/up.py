"""`python -m devnet up`: a whole local iExec network for the bot, as one embeddable async object.

    async with Devnet(DevnetConfig(data_dir=Path("data/devnet"), app="test")) as net:
        net.env           # the bot's settings (also written to <data>/bot.env)
        net.pool.set_fault("no_show")

Start-up, in order (each step printed as "[i/8] name ... ok 0.1s"): anvil (from <data>/chain-state.json
when a previous run left one, else from the cached PoCo snapshot, built on first use), the market stand-in,
the result gateway (also the IPFS upload node), the SMS stand-in (secrets kept in <data>/sms.json), the
segmentation app (registered with worker/iexec.json's image and checksum; two app orders with a non-zero
price published by the app owner: tag 0 for standard deals and TDX 0x…09), the bot's wallet (created by
`python -m ledger wallet new` with a devnet-generated password file, mode 0600, when none exists; funded with
ETH for gas and RLC deposited into the hub; nothing is credited in the books: that is the admin's job), the
workerpool, the Telegram stand-in. Then <data>/bot.env (with SMS_URL and IPFS_UPLOAD_URL; TEE_MODE=off,
standard deals, unless `DevnetConfig.tee`: on, the bot's tasks run as TDX deals) and <data>/devnet.json (what
runs where) are written. The workerpool is given the SMS: TDX deals read their
secrets from it.

`stop()` stops everything it started, saves the chain state for the next run (written to a temporary file
and renamed) and removes devnet.json. <data>/chain-state.NOT-SAVED is written when anvil starts ("not
stopped cleanly") and removed only by a successful save, so a process killed outright (SIGKILL, the OOM
killer) leaves it too; when the state cannot be saved, stop() says so on stderr and the marker says why.
With the marker the next start refuses to run on books (<data>/books.db) that the chain would not match, as
it does when books exist without a saved chain, and names `--fresh` (`move_aside`: the folder is kept as
<data>.old-<time> and a new one started; refused while a devnet or a bot runs on it). Child processes run
in their own session, so a terminal's Ctrl-C reaches only the process that owns the Devnet, which stops
them in order; anvil and the apps the workerpool runs get SIGKILL from the kernel when it dies.

The worker arguments of the demo's bot and of the inference graph exported at start come from one place,
WORKER_ARGS (bot/settings.py has the same default). It uses the devnet's public dev keys, binds 127.0.0.1
only, and must never import `bot` or `ledger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import json
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account

from devnet import chain as devchain
from devnet.accounts import APP_OWNER, DEPLOYER, POOL_OWNER, WORKER
from devnet.anvil import Anvil
from devnet.deploy import Deployment, hub_abi, registry_abi, rlc_abi
from devnet.gateway import ResultGateway
from devnet.market import MarketStandIn
from devnet.workerpool import TDX_TAG, PoolError, Workerpool
from iexec.market import MarketClient, MarketError
from iexec.orders import AppOrder, Domain

__all__ = [
    "Devnet",
    "DevnetConfig",
    "DevnetError",
    "app_descriptor",
    "publish_app_order",
    "register_segmentation_app",
    "REPO_DIR",
    "WORKER_ARGS",
    "graph_arguments",
    "move_aside",
    "check_books_match_chain",
]

REPO_DIR = Path(__file__).resolve().parent.parent
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
STEPS = 8
DEFAULT_DESCRIPTOR = ("segbot-mrcnn", "docker.io/segbot/mrcnn-worker:0.1.0", bytes(32))
# The worker arguments of the bot's tasks on the devnet (bot.env, demo-bot.env) and of the inference graph
# exported at start: one source, so the tasks find the graph. bot/settings.py worker_args is the same.
WORKER_ARGS = "--max-dim 1024 --min-confidence 0.7"
CHAIN_STATE, DEPLOYMENT, NOT_SAVED, BOOKS = ("chain-state.json", "deployment.json", "chain-state.NOT-SAVED", "books.db")
log = logging.getLogger(__name__)


class DevnetError(RuntimeError):
    """The devnet could not start (the message names the step and what to do)."""


@dataclass(frozen=True)
class DevnetConfig:
    """What `devnet up` starts. Ports 0 mean "any free port"; prices are nRLC, funding ETH in wei."""

    data_dir: Path = REPO_DIR / "data" / "devnet"
    app: str = "test"  # "test" (devnet.testapp, fast) or "real" (python -m worker)
    weights: Path | None = None  # real app: the Mask R-CNN weights; None = random test weights
    workers: int = 2
    time_scale: float = 1.0  # the category time limit is multiplied by this
    cache_dir: Path | None = None  # PoCo snapshot and test weights cache (default: repo .devnet/)
    anvil_port: int | None = None
    market_port: int = 0
    gateway_port: int = 0
    sms_port: int = 0
    pool_port: int = 0
    telegram_port: int = 0
    bot_username: str = "segbot_devnet_bot"
    app_price: int = 50_000_000  # 0.05 RLC
    pool_price: int = 100_000_000  # 0.1 RLC
    bot_eth_wei: int = 10 * 10**18
    bot_stake_nrlc: int = 100 * 10**9  # 100 RLC in the hub
    pool_stake_nrlc: int = 1_000 * 10**9
    volume: int = 1000
    persist_chain: bool = True  # save/restore the chain state in data_dir
    extra_env: dict[str, str] = field(default_factory=dict)
    graph_cache: bool = False  # real app: export its inference graph in the background at start,
    # so tasks load it (~5 s a task instead of ~10 s); up and demo set it
    worker_args: str = WORKER_ARGS  # the bot's WORKER_ARGS (bot.env) and the exported graph's
    tee: bool = False  # bot.env TEE_MODE=on: the bot's tasks run as TDX deals (the demo's
    # default; `up --tee`); off: standard deals


# ------------------------------------------------------------------------------------------------- the app


def app_descriptor(path: Path = REPO_DIR / "worker" / "iexec.json") -> tuple[str, str, bytes]:
    """(name, multiaddr, checksum bytes32) of the app from worker/iexec.json. Raises DevnetError.

    While the worker's descriptor does not exist yet, a placeholder (same shape) is used and logged.
    """
    if not path.exists():
        log.warning("app_descriptor_missing path=%s using=%s", path, DEFAULT_DESCRIPTOR[1])
        return DEFAULT_DESCRIPTOR
    try:
        app = json.loads(path.read_text())["app"]
        checksum = str(app.get("checksum") or "0x" + "00" * 32)
        raw = bytes.fromhex(checksum.removeprefix("0x"))
        if len(raw) != 32:
            raise ValueError(f"checksum is {len(raw)} bytes, not 32")
        return str(app.get("name") or "segbot-mrcnn"), str(app["multiaddr"]), raw
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DevnetError(f"cannot read the app descriptor {path}: {exc}") from None


def register_segmentation_app(
    rpc_url: str, deployment: Deployment, owner: Any = APP_OWNER, descriptor: tuple[str, str, bytes] | None = None
) -> str:
    """Register the segmentation app (or find it when already registered); returns its address."""
    name, multiaddr, checksum = descriptor or app_descriptor()
    w3 = devchain.web3_for(rpc_url)
    registry = w3.eth.contract(address=deployment.app_registry, abi=registry_abi("app"))
    args = (owner.address, name, "DOCKER", multiaddr.encode(), checksum, b"")
    predicted = registry.functions.predictApp(*args).call()
    if w3.eth.get_code(predicted):
        return str(predicted)
    return devchain.register_app(rpc_url, deployment, owner, name, multiaddr, checksum)


async def publish_app_order(
    session: aiohttp.ClientSession,
    market_url: str,
    deployment: Deployment,
    app: str,
    price: int,
    *,
    owner: Any = APP_OWNER,
    volume: int = 1_000_000,
    tag: bytes = bytes(32),
) -> AppOrder:
    """Sign an app order (non-zero price) by the app owner and publish it to the market. Raises PoolError."""
    if price <= 0:
        raise DevnetError("the app order's price must be above 0 nRLC")
    order = AppOrder(
        app=app,
        appprice=price,
        volume=volume,
        tag=tag,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=os.urandom(32),
    )
    order = order.sign_with(owner, Domain(deployment.chain_id, deployment.hub))
    market = MarketClient(market_url, deployment.chain_id, hub=deployment.hub, session=session)
    try:
        await market.publish_app_order(order, owner)
    except MarketError as exc:
        raise PoolError(f"the market refused the app order: {exc}") from None
    finally:
        await market.close()  # the session stays the caller's
    return order


def graph_arguments(worker_args: str) -> list[str]:
    """The options of `worker_args` that the inference graph is keyed on (--max-dim, --min-confidence,
    --backbone, --precision), for `python -m worker build-graph`; absent ones keep the worker's defaults,
    which are the same for a task and for build-graph."""
    words, found = shlex.split(worker_args), []
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if name in ("--max-dim", "--min-confidence", "--backbone", "--precision"):
            if not eq:
                value = words[i + 1] if i + 1 < len(words) else ""
            if value:
                found += [name, value]
    return found


# ------------------------------------------------------------------------------------------- data folder


def check_books_match_chain(data_dir: Path) -> None:
    """Refuse (DevnetError) to start on books that the chain to be loaded would not match: books in
    `data_dir` but no saved chain state, or a save that failed (the state is older than the books)."""
    books = data_dir / BOOKS
    if not books.exists():
        return
    fresh = f"start over with --fresh (the folder is kept as {data_dir.name}.old-<time>)"
    if (data_dir / NOT_SAVED).exists():
        why = (data_dir / NOT_SAVED).read_text(errors="replace").strip()
        raise DevnetError(
            f"the chain state of the last run was not saved ({why}), but the books {books} "
            f"remember its jobs: the chain and the books would not match; {fresh}"
        )
    if not (data_dir / CHAIN_STATE).is_file() or not (data_dir / DEPLOYMENT).is_file():
        raise DevnetError(
            f"the books {books} exist but no saved chain state ({data_dir / CHAIN_STATE}): "
            f"a new chain would not know their transactions and deals; {fresh}"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bot_lock_holder(books: Path) -> str | None:
    """The pid (as the lock file says, or "unknown") of a bot holding its instance lock on `books`, None
    when no process holds it. The bot (bot/lock.py) holds an exclusive fcntl.flock on <books>.lock for its
    life; a non-blocking shared try here fails exactly while it runs (the kernel drops it when it dies)."""
    path = books.with_suffix(".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def move_aside(data_dir: Path) -> Path | None:
    """`--fresh`: rename `data_dir` to <data_dir>.old-<UTC time> (the user's data is kept) and return the
    new path; None when there is no such folder. Raises DevnetError when a devnet runs on it, or a bot
    (started apart from the devnet) holds its instance lock on the folder's books."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.exists():
        return None
    try:
        pid = int(json.loads((data_dir / "devnet.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if pid and pid != os.getpid() and _pid_alive(pid):
        raise DevnetError(f"a devnet (pid {pid}) runs on {data_dir}: stop it first (Ctrl-C)")
    holder = _bot_lock_holder(data_dir / BOOKS)
    if holder is not None:
        raise DevnetError(f"a bot (pid {holder}) is running on {data_dir} (it holds {BOOKS}'s lock): stop it first")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = data_dir.with_name(f"{data_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = data_dir.with_name(f"{data_dir.name}.old-{stamp}-{n}")
    data_dir.rename(target)
    return target


# ------------------------------------------------------------------------------------------------- funding


def fund_stake(rpc_url: str, deployment: Deployment, address: str, nrlc: int) -> int:
    """Top `address`'s free hub stake up to `nrlc` from the deployer's RLC (approve + depositFor).

    Returns what was deposited (0 when it already had enough).
    """
    w3 = devchain.web3_for(rpc_url)
    hub = w3.eth.contract(address=deployment.hub, abi=hub_abi())
    missing = nrlc - hub.functions.balanceOf(address).call()
    if missing <= 0:
        return 0
    sender = devchain.TxSender(w3, DEPLOYER)
    sender.call(deployment.rlc, rlc_abi(), "approve", deployment.hub, missing)
    sender.call(deployment.hub, hub_abi(), "depositFor", missing, address)
    return missing


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def ensure_wallet(data_dir: Path) -> tuple[Path, Path, str]:
    """(keystore, password file, address) of the bot's wallet, created with `python -m ledger` if absent.

    When the ledger CLI is not installed, the keystore is written in the same standard format (Web3 Secret
    Storage v3) with eth-account. Raises DevnetError when the wallet cannot be created or read.
    """
    keystore, password_file = data_dir / "wallet.json", data_dir / "wallet.password"
    if not password_file.exists():
        _write_private(password_file, secrets.token_urlsafe(24) + "\n")
    if not keystore.exists():
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ledger",
                "wallet",
                "new",
                "--keystore",
                str(keystore),
                "--password-file",
                str(password_file),
            ],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
        if proc.returncode != 0:
            if "No module named" not in proc.stderr:
                raise DevnetError(f"`python -m ledger wallet new` failed: {proc.stderr.strip()[-400:]}")
            password = password_file.read_text().strip()
            _write_private(keystore, json.dumps(Account.encrypt(Account.create().key, password)))
    try:
        address = json.loads(keystore.read_text())["address"]
    except (OSError, ValueError, KeyError) as exc:
        raise DevnetError(f"the keystore {keystore} is not readable: {exc}") from None
    return keystore, password_file, _checksum(address)


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address if address.startswith("0x") else "0x" + address)


def test_weights(cache_dir: Path) -> Path:
    """Random ResNet50 Mask R-CNN weights for the real worker, made once into `cache_dir`."""
    path = cache_dir / "test-weights-resnet50.h5"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.h5")
        proc = subprocess.run(
            [sys.executable, "-m", "worker", "make-test-weights", str(tmp), "--backbone", "resnet50"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            start_new_session=True,
        )
        if proc.returncode != 0 or not tmp.exists():
            raise DevnetError(f"making test weights failed: {proc.stderr.strip()[-400:]}")
        tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------------- Devnet


class Devnet:
    """Everything `devnet up` runs, started and stopped together. See the module docstring."""

    def __init__(self, config: DevnetConfig = DevnetConfig(), progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir).resolve()
        self.cache_dir = Path(config.cache_dir or devchain.DEFAULT_CACHE_DIR).resolve()
        self._progress = progress or (lambda line: None)
        self._graph_builder: subprocess.Popen[bytes] | None = None
        self.anvil: Anvil | None = None
        self.deployment: Deployment | None = None
        self.market: MarketStandIn | None = None
        self.gateway: ResultGateway | None = None
        self.sms: Any = None  # devnet.sms.SmsStandIn
        self.pool: Workerpool | None = None
        self.telegram: Any = None
        self.app_address = ""
        self.app_order: AppOrder | None = None  # the standard (tag 0) app order
        self.tdx_app_order: AppOrder | None = None  # the TDX (0x…09) app order
        self.bot_address = ""
        self.bot_token = ""
        self.keystore = self.password_file = Path()
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._anvil_step: asyncio.Future[None] | None = None
        self._step = 0

    async def __aenter__(self) -> Devnet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run_step(self, name: str, action: Callable[[], Any]) -> Any:
        self._step += 1
        started = time.monotonic()
        try:
            result = action()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            self._progress(f"[{self._step}/{STEPS}] {name} ... FAILED")
            raise DevnetError(f"devnet step {name!r} failed: {exc}") from exc
        self.timings[name] = time.monotonic() - started
        self._progress(f"[{self._step}/{STEPS}] {name} ... ok {self.timings[name]:.1f}s")
        return result

    async def start(self) -> None:
        """Start every part (see the module docstring). Raises DevnetError naming the failing step, or
        refusing books the chain would not match (see check_books_match_chain)."""
        if self.config.persist_chain:
            check_books_match_chain(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession()
        # in a thread: the first run deploys PoCo (tens of seconds) and signals are handled meanwhile; a
        # start cancelled then leaves it to finish, and stop() waits for it (to stop anvil and save)
        self._anvil_step = asyncio.ensure_future(asyncio.to_thread(self._start_anvil))
        await self._run_step("anvil", lambda: asyncio.shield(self._anvil_step))
        await self._run_step("market", self._start_market)
        await self._run_step("gateway", self._start_gateway)
        await self._run_step("sms", self._start_sms)
        await self._run_step("app", self._register_app)
        await self._run_step("wallet", self._prepare_wallet)
        await self._run_step("workerpool", self._start_pool)
        await self._run_step("telegram", self._start_telegram)
        self.env = self._bot_env()
        _write_private(self.data_dir / "bot.env", "".join(f"{k}={v}\n" for k, v in self.env.items()))
        (self.data_dir / "devnet.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    async def stop(self) -> None:
        """Stop everything started, save the chain state, remove devnet.json. Never raises."""
        if self._anvil_step is not None:  # a start cancelled while anvil was starting: let it end first
            await asyncio.gather(self._anvil_step, return_exceptions=True)
            self._anvil_step = None
        builder = self._graph_builder
        if builder is not None and builder.poll() is None:
            builder.terminate()  # its half-written entry is a .tmp folder, never used
            await asyncio.to_thread(builder.wait)
        # the pool before the SMS it reads secrets from
        for part in (self.telegram, self.pool, self.sms, self.gateway, self.market):
            if part is not None:
                with contextlib.suppress(Exception):  # keep stopping the rest
                    await part.stop()
        self.telegram = self.pool = self.sms = self.gateway = self.market = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.anvil is not None:
            if self.config.persist_chain and self.deployment is not None:
                await self._save_chain()
            await asyncio.to_thread(self.anvil.stop)
            self.anvil = None
        (self.data_dir / "devnet.json").unlink(missing_ok=True)

    async def _save_chain(self) -> bool:
        """Save the chain state (anvil still running, every part that sends transactions stopped). On
        failure: a loud line on stderr and the NOT-SAVED marker, so the next start refuses stale books."""
        assert self.anvil is not None and self.deployment is not None
        marker = self.data_dir / NOT_SAVED
        try:
            await asyncio.to_thread(self.anvil.dump_state, self.data_dir / CHAIN_STATE)
            tmp = self.data_dir / f"{DEPLOYMENT}.{os.getpid()}.tmp"
            self.deployment.to_json(tmp)
            tmp.replace(self.data_dir / DEPLOYMENT)
        except Exception as exc:  # noqa: BLE001 - reported, and remembered for the next start
            why = f"{type(exc).__name__}: {exc}"[:300]
            with contextlib.suppress(OSError):
                marker.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {why}\n")
            with contextlib.suppress(OSError, ValueError):  # stderr may be a closed terminal (SIGHUP)
                print(
                    f"devnet: COULD NOT SAVE THE CHAIN STATE to {self.data_dir / CHAIN_STATE}: {why}\n"
                    f"devnet: the next start on {self.data_dir} will refuse its books; use --fresh to start "
                    "over",
                    file=sys.stderr,
                    flush=True,
                )
            log.error("event=chain_state_not_saved data=%s error=%r", self.data_dir, why)
            return False
        marker.unlink(missing_ok=True)
        log.info("event=chain_state_saved path=%s", self.data_dir / CHAIN_STATE)
        return True

    # -- steps ----------------------------------------------------------------------------------------

    def _start_anvil(self) -> None:
        saved, saved_dep = self.data_dir / CHAIN_STATE, self.data_dir / DEPLOYMENT
        if self.config.persist_chain and saved.is_file() and saved_dep.is_file():
            state, self.deployment = saved, Deployment.from_json(saved_dep)
        else:
            state, self.deployment = devchain.deployed_snapshot(self.cache_dir)
        self.anvil = Anvil(load_state=state, port=self.config.anvil_port).start()
        if self.config.persist_chain:  # removed by a successful save only: a SIGKILL/OOM of ours is seen
            (self.data_dir / NOT_SAVED).write_text("not stopped cleanly\n")

    async def _start_market(self) -> None:
        assert self.anvil is not None and self.deployment is not None
        self.market = MarketStandIn(self.deployment.chain_id, self.anvil.rpc_url, self.deployment.hub)
        await self.market.start(self.config.market_port)

    async def _start_gateway(self) -> None:
        # with a kept chain, a kept gateway: deals on chain name their inputs by this gateway's URL, and a
        # task taken up again after a restart must find them there (same content, same port when free)
        keep = self.config.persist_chain
        self.gateway = ResultGateway(store_dir=self.data_dir / "ipfs" if keep else None)
        port = self.config.gateway_port or (self._last_port("gateway.port") if keep else 0)
        await self.gateway.start(port)
        assert self.gateway.url is not None
        (self.data_dir / "gateway.port").write_text(f"{self.gateway.url.rsplit(':', 1)[1]}\n")

    async def _start_sms(self) -> None:
        from devnet.sms import SmsStandIn

        self.sms = SmsStandIn(state_path=self.data_dir / "sms.json")
        await self.sms.start(self.config.sms_port)

    async def _register_app(self) -> None:
        assert self.anvil is not None and self.deployment is not None and self.market is not None
        assert self._session is not None
        self.app_address = await asyncio.to_thread(register_segmentation_app, self.anvil.rpc_url, self.deployment)
        self.app_order = await publish_app_order(
            self._session, self.market.base_url, self.deployment, self.app_address, self.config.app_price
        )
        self.tdx_app_order = await publish_app_order(
            self._session, self.market.base_url, self.deployment, self.app_address, self.config.app_price, tag=TDX_TAG
        )

    async def _prepare_wallet(self) -> None:
        assert self.anvil is not None and self.deployment is not None
        self.keystore, self.password_file, self.bot_address = await asyncio.to_thread(ensure_wallet, self.data_dir)
        rpc = self.anvil.rpc_url
        balance = await asyncio.to_thread(lambda: devchain.web3_for(rpc).eth.get_balance(self.bot_address))
        if balance < self.config.bot_eth_wei // 2:
            await asyncio.to_thread(devchain.fund_eth, rpc, self.bot_address, self.config.bot_eth_wei)
        await asyncio.to_thread(fund_stake, rpc, self.deployment, self.bot_address, self.config.bot_stake_nrlc)

    def _app_command(self) -> tuple[list[str], dict[str, str]]:
        if self.config.app == "test":
            return [sys.executable, "-m", "devnet.testapp"], {}
        if self.config.app != "real":
            raise DevnetError(f"unknown app {self.config.app!r}: use 'real' or 'test'")
        weights = self.config.weights or test_weights(self.cache_dir)
        env = {"MRCNN_WEIGHTS": str(Path(weights).resolve())}
        if self.config.graph_cache:
            env["SEGBOT_GRAPH_CACHE"] = str(self.cache_dir / "graphs")
            self._build_graph(Path(weights).resolve(), self.cache_dir / "graphs")
        return [sys.executable, "-m", "worker"], env

    def _build_graph(self, weights: Path, cache: Path) -> None:
        """Export the worker's inference graph for the bot's worker arguments (config.worker_args) in a
        background process (a no-op when the entry exists; tasks that start before it is done build the
        Keras model as before)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "build-graph.log", "wb")  # noqa: SIM115 - the child writes it; closed below
        try:
            self._graph_builder = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "build-graph",
                    "--weights",
                    str(weights),
                    *graph_arguments(self.config.worker_args),
                    "--cache-dir",
                    str(cache),
                ],
                cwd=REPO_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    async def _start_pool(self) -> None:
        assert self.anvil is not None and self.deployment is not None and self.market is not None
        assert self.gateway is not None
        cmd, env = await asyncio.to_thread(self._app_command)
        await asyncio.to_thread(
            fund_stake, self.anvil.rpc_url, self.deployment, POOL_OWNER.address, self.config.pool_stake_nrlc
        )
        self.pool = Workerpool(
            self.anvil.rpc_url,
            self.deployment,
            POOL_OWNER,
            WORKER,
            self.market.base_url,
            self.gateway,
            cmd,
            workers=self.config.workers,
            price=self.config.pool_price,
            volume=self.config.volume,
            time_scale=self.config.time_scale,
            market=self.market,
            app_env={**env, **self.config.extra_env},
            app_cwd=REPO_DIR,
            sms=self.sms,
        )
        await self.pool.start(control_port=self.config.pool_port)

    async def _start_telegram(self) -> None:
        from devnet.telegram import TelegramStandIn

        token_file = self.data_dir / "telegram.token"
        if not token_file.exists():
            _write_private(token_file, f"{secrets.randbelow(9 * 10**9) + 10**9}:{secrets.token_urlsafe(26)}\n")
        self.bot_token = token_file.read_text().strip()
        self.telegram = TelegramStandIn(data_dir=self.data_dir / "telegram")  # ids survive a restart
        self.telegram.add_bot(self.bot_token, self.config.bot_username)
        await self.telegram.start(self._telegram_port())
        (self.data_dir / "telegram.port").write_text(f"{self.telegram.url.rsplit(':', 1)[1]}\n")

    def _telegram_port(self) -> int:
        """The configured port; else the one of the last run when it is free (the chat page keeps its address
        across restarts, and with it the browser's page), else any free port."""
        if self.config.telegram_port:
            return self.config.telegram_port
        return self._last_port("telegram.port")

    def _last_port(self, name: str) -> int:
        """The port written in <data>/`name` by the last run when it is free, else 0 (any free port)."""
        try:
            last = int((self.data_dir / name).read_text().strip())
        except (OSError, ValueError):
            return 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # as the server binds (aiohttp sets SO_REUSEADDR): the last run's connections in TIME_WAIT
            # must not make its own port look taken
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", last))
            except OSError:
                return 0
        return last

    # -- what runs where ------------------------------------------------------------------------------

    @property
    def telegram_url(self) -> str:
        """Base URL of the Telegram stand-in."""
        return str(self.telegram.url) if self.telegram is not None else ""

    def _bot_env(self) -> dict[str, str]:
        assert self.anvil is not None and self.deployment is not None and self.market is not None
        assert self.gateway is not None and self.pool is not None
        return {
            "TELEGRAM_TOKEN": self.bot_token,
            "TELEGRAM_BASE_URL": f"{self.telegram_url}/bot",
            "TELEGRAM_BASE_FILE_URL": f"{self.telegram_url}/file/bot",
            "NETWORK": "devnet",
            "RPC_URL": self.anvil.rpc_url,
            "CHAIN_ID": str(self.deployment.chain_id),
            "HUB_ADDRESS": self.deployment.hub,
            "RLC_ADDRESS": self.deployment.rlc,
            "MARKET_URL": self.market.base_url,
            "IPFS_GATEWAY": str(self.gateway.url),
            "IPFS_UPLOAD_URL": str(self.gateway.url),  # kubo RPC `POST /api/v0/add`, as iExec's upload node
            "SMS_URL": str(self.sms.base_url) if self.sms is not None else "",
            "APP_ADDRESS": self.app_address,
            "CATEGORY": "0",
            "TAG": "0x" + "00" * 32,
            "TRUST": "0",
            "APP_MAX_PRICE_NRLC": str(self.config.app_price),
            "WORKERPOOL_MAX_PRICE_NRLC": str(self.config.pool_price),
            "WALLET_KEYSTORE": str(self.keystore),
            "WALLET_PASSWORD_FILE": str(self.password_file),
            "DB_PATH": str(self.data_dir / "books.db"),
            "DATA_DIR": str(self.data_dir),
            "INPUTS_LISTEN": "127.0.0.1",
            "URL_ALLOW_LOOPBACK": "true",
            # anvil mines at once and a watcher cycle is 2 RPC calls: follow tasks every 0.5 s, not the
            # default 2 s meant for public chains (it was most of the demo's photo-in -> result-out overhead)
            "POLL_INTERVAL_S": "0.5",
            "WORKER_ARGS": self.config.worker_args,
            "DEMO_RANDOM_WEIGHTS": str(self.config.app == "real" and self.config.weights is None).lower(),
            "TEE_MODE": "on" if self.config.tee else "off",
        }

    def describe(self) -> dict[str, Any]:
        """What runs where (the content of devnet.json): pids, URLs, addresses, control endpoints."""
        assert self.anvil is not None and self.deployment is not None and self.pool is not None
        assert self.gateway is not None and self.market is not None
        return {
            "pid": os.getpid(),
            "started_at": int(time.time()),
            "data_dir": str(self.data_dir),
            "anvil": {"rpc_url": self.anvil.rpc_url, "pid": self.anvil.pid, "chain_id": self.deployment.chain_id},
            "deployment": {
                "hub": self.deployment.hub,
                "rlc": self.deployment.rlc,
                "app_registry": self.deployment.app_registry,
                "workerpool_registry": self.deployment.workerpool_registry,
            },
            "market": {"url": self.market.base_url},
            "gateway": {
                "url": self.gateway.url,
                "control_url": f"{self.gateway.url}/control/faults",
                "upload_url": f"{self.gateway.url}/api/v0/add",
            },
            "sms": {
                "url": self.sms.base_url if self.sms is not None else None,
                "state": str(self.data_dir / "sms.json"),
            },
            "workerpool": {
                "address": self.pool.address,
                "control_url": self.pool.control_url,
                "app": self.config.app,
                "workers": self.config.workers,
            },
            "telegram": {"url": self.telegram_url, "bot_username": self.config.bot_username},
            "app": {
                "address": self.app_address,
                "price_nrlc": self.config.app_price,
                "tags": ["0x" + bytes(32).hex(), "0x" + TDX_TAG.hex()],
            },
            "bot": {
                "address": self.bot_address,
                "keystore": str(self.keystore),
                "env_file": str(self.data_dir / "bot.env"),
                "tee": self.config.tee,
            },
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }
