"""Helpers that act on a devnet chain (sync web3), and the cached snapshot of a deployed PoCo.

    state, deployment = deployed_snapshot()               # built once, then reused from .devnet/
    with Anvil(load_state=state) as anvil:                # a deployed, funded chain in ~0.1 s
        deposit(anvil.rpc_url, deployment, REQUESTER, 10**9)
        app = register_app(anvil.rpc_url, deployment, APP_OWNER, "segbot", "docker.io/x:1", checksum)

These helpers use dev-chain shortcuts (anvil_setBalance, evm_increaseTime, the deployer's RLC, a nonce
read per call): they are for the devnet and tests, never for a real network or a wallet that matters.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from devnet.accounts import ACCOUNTS, DEPLOYER
from devnet.anvil import DEVNET_DIR, Anvil, TransactionFailed, rpc_call
from devnet.deploy import Deployment, TxSender, deploy_poco, hub_abi, registry_abi, rlc_abi

CACHE_ENV = "SEGBOT_DEVNET_CACHE"  # overrides the snapshot cache folder
DEFAULT_CACHE_DIR = DEVNET_DIR.parent / ".devnet"
# Every account but the deployer holds this much RLC (in its wallet, not in the hub) in the snapshot.
SNAPSHOT_RLC_NRLC = 1_000_000 * 10**9
_TRANSFER_TOPIC = keccak(text="Transfer(address,address,uint256)")


@lru_cache(maxsize=32)
def web3_for(rpc_url: str) -> Web3:
    """A sync Web3 on `rpc_url` (one per URL, reused)."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))


def _send(rpc_url: str, account: LocalAccount, to: str, abi: list[Any], function: str, *args: Any) -> Any:
    return TxSender(web3_for(rpc_url), account).call(to, abi, function, *args)


def fund_eth(rpc_url: str, to: str, wei: int) -> None:
    """Set `to`'s ETH balance to `wei` (anvil_setBalance)."""
    rpc_call(rpc_url, "anvil_setBalance", [to, hex(wei)])


def fund_rlc(rpc_url: str, dep: Deployment, to: str, nrlc: int, sender: LocalAccount = DEPLOYER) -> Any:
    """Transfer `nrlc` RLC from `sender` (the deployer holds all RLC) to `to`'s wallet. Returns the receipt."""
    return _send(rpc_url, sender, dep.rlc, rlc_abi(), "transfer", to, nrlc)


def deposit(rpc_url: str, dep: Deployment, account: LocalAccount, nrlc: int) -> Any:
    """Deposit `nrlc` of `account`'s RLC into its hub account (RLC.approveAndCall(hub, nrlc, 0x)).
    Returns the receipt; raises TransactionFailed (e.g. when the wallet holds less RLC)."""
    return _send(rpc_url, account, dep.rlc, rlc_abi(), "approveAndCall", dep.hub, nrlc, b"")


def rlc_balance(rpc_url: str, dep: Deployment, address: str) -> int:
    """RLC in `address`'s wallet, in nRLC."""
    return int(web3_for(rpc_url).eth.contract(address=dep.rlc, abi=rlc_abi()).functions.balanceOf(address).call())


def stake_of(rpc_url: str, dep: Deployment, address: str) -> tuple[int, int]:
    """(free, locked) nRLC of `address`'s hub account."""
    hub = web3_for(rpc_url).eth.contract(address=dep.hub, abi=hub_abi())
    return int(hub.functions.balanceOf(address).call()), int(hub.functions.frozenOf(address).call())


def _minted(receipt: Any, registry: str) -> str:
    """The address of the registry entry minted in `receipt` (ERC-721 tokenId = uint256(address))."""
    for log in receipt["logs"]:
        topics = log["topics"]
        if (
            log["address"].lower() == registry.lower()
            and len(topics) == 4
            and bytes(topics[0]) == _TRANSFER_TOPIC
            and int.from_bytes(bytes(topics[1]), "big") == 0
        ):
            return to_checksum_address(bytes(topics[3])[-20:])
    raise TransactionFailed(f"no registry entry was minted by {registry} in this transaction")


def _bytes32(value: bytes | str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return raw


def register_app(
    rpc_url: str,
    dep: Deployment,
    owner: LocalAccount,
    name: str,
    multiaddr: str | bytes,
    checksum: bytes | str,
    mrenclave: bytes = b"",
) -> str:
    """Register a DOCKER app owned by `owner`; returns its address. `checksum` is 32 bytes (or 0x-hex).
    Raises TransactionFailed if the same app (same arguments) is already registered."""
    if isinstance(multiaddr, str):
        multiaddr = multiaddr.encode()
    receipt = _send(
        rpc_url,
        owner,
        dep.app_registry,
        registry_abi("app"),
        "createApp",
        owner.address,
        name,
        "DOCKER",
        multiaddr,
        _bytes32(checksum),
        mrenclave,
    )
    return _minted(receipt, dep.app_registry)


def register_workerpool(rpc_url: str, dep: Deployment, owner: LocalAccount, description: str) -> str:
    """Register a workerpool owned by `owner`; returns its address."""
    receipt = _send(
        rpc_url,
        owner,
        dep.workerpool_registry,
        registry_abi("workerpool"),
        "createWorkerpool",
        owner.address,
        description,
    )
    return _minted(receipt, dep.workerpool_registry)


def block_timestamp(rpc_url: str) -> int:
    """Timestamp of the latest block (the hub judges deadlines on it)."""
    return int(rpc_call(rpc_url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def mine(rpc_url: str, blocks: int = 1) -> None:
    """Mine `blocks` empty blocks."""
    rpc_call(rpc_url, "anvil_mine", [hex(blocks)])


def increase_time(rpc_url: str, seconds: int) -> int:
    """Move chain time forward by `seconds` and mine a block at that time; returns its timestamp."""
    rpc_call(rpc_url, "evm_increaseTime", [int(seconds)])
    mine(rpc_url)
    return block_timestamp(rpc_url)


def _snapshot_key() -> str:
    digest = hashlib.sha256()
    for path in (
        DEVNET_DIR / "package-lock.json",
        DEVNET_DIR / "deploy.py",
        Path(__file__),
        DEVNET_DIR / "accounts.py",
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build_snapshot(state: Path, deployment_file: Path) -> Deployment:
    with Anvil() as anvil:
        deployment = deploy_poco(anvil.rpc_url)
        for account in ACCOUNTS:
            if account.address != deployment.deployer:
                fund_rlc(anvil.rpc_url, deployment, account.address, SNAPSHOT_RLC_NRLC)
        deployment = dataclasses.replace(deployment, block=web3_for(anvil.rpc_url).eth.block_number)
        anvil.dump_state(state)
    deployment.to_json(deployment_file)
    return deployment


def _prune(cache: Path, min_age_s: float = 3600) -> None:
    """Delete snapshots of older artifacts or code, sparing recent ones that a running session may still
    be loading."""
    now = time.time()
    for stale in cache.glob("poco-*.json"):
        try:
            if now - stale.stat().st_mtime > min_age_s:
                stale.unlink()
        except FileNotFoundError:
            pass


def deployed_snapshot(cache_dir: Path | None = None) -> tuple[Path, Deployment]:
    """Path of an anvil state with PoCo deployed and accounts funded, and its Deployment.

    Built on first use (about 1 s) in `cache_dir` (default: $SEGBOT_DEVNET_CACHE or the repo's .devnet/),
    keyed on a hash of package-lock.json and the devnet's chain code so a change rebuilds it. A lock
    file makes parallel processes wait for one builder. Raises DeployError if the build fails."""
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    cache.mkdir(parents=True, exist_ok=True)
    key = _snapshot_key()
    state = cache / f"poco-{key}.state.json"
    deployment_file = cache / f"poco-{key}.deployment.json"
    with open(cache / "snapshot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if state.is_file() and deployment_file.is_file():
            return state, Deployment.from_json(deployment_file)
        _prune(cache)
        return state, _build_snapshot(state, deployment_file)
