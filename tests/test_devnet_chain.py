"""The devnet's chain half: anvil as a child process, the PoCo deployment, its snapshot, the helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from devnet import accounts
from devnet.accounts import APP_OWNER, BOT, DEPLOYER, POOL_OWNER, REQUESTER
from devnet.anvil import Anvil, AnvilError, TransactionFailed, rpc_call
from devnet.chain import (
    SNAPSHOT_RLC_NRLC,
    block_timestamp,
    deployed_snapshot,
    deposit,
    fund_eth,
    fund_rlc,
    increase_time,
    mine,
    register_app,
    register_workerpool,
    rlc_balance,
    stake_of,
)
from devnet.deploy import CATEGORIES, DeployError, Deployment, deploy_poco, hub_abi, registry_abi, selectors
from tests.fixtures_chain import ChainEnv

REPO = Path(__file__).resolve().parents[1]
LOUPE_ABI = [
    {
        "type": "function",
        "name": "facetAddress",
        "stateMutability": "view",
        "inputs": [{"name": "selector", "type": "bytes4"}],
        "outputs": [{"name": "", "type": "address"}],
    },
    {
        "type": "function",
        "name": "owner",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
    },
]


@pytest.fixture(scope="module")
def fresh() -> Iterator[tuple[Anvil, Deployment, float]]:
    """An empty anvil with PoCo deployed from nothing (not from the snapshot), and the deploy's duration."""
    with Anvil() as anvil:
        started = time.monotonic()
        deployment = deploy_poco(anvil.rpc_url)
        yield anvil, deployment, time.monotonic() - started


def test_deploy_from_nothing_gives_a_configured_hub(fresh: tuple[Anvil, Deployment, float]) -> None:
    anvil, dep, seconds = fresh
    print(f"deploy_poco took {seconds:.2f} s")
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    hub = w3.eth.contract(address=dep.hub, abi=hub_abi())
    assert hub.functions.domain().call() == ("iExecODB", "5.0.0", 31337, dep.hub)
    assert hub.functions.countCategory().call() == 5
    for index, (name, reference) in enumerate(CATEGORIES):
        assert hub.functions.viewCategory(index).call() == (name, "{}", reference)
    assert hub.functions.token().call() == dep.rlc
    assert hub.functions.appregistry().call() == dep.app_registry
    assert hub.functions.datasetregistry().call() == dep.dataset_registry
    assert hub.functions.workerpoolregistry().call() == dep.workerpool_registry
    assert (hub.functions.name().call(), hub.functions.symbol().call(), hub.functions.decimals().call()) == (
        "Staked RLC",
        "SRLC",
        9,
    )
    assert dep.deployer == DEPLOYER.address and dep.chain_id == 31337
    assert dep.block == w3.eth.block_number
    for kind in ("app", "dataset", "workerpool"):
        registry = w3.eth.contract(address=getattr(dep, f"{kind}_registry"), abi=registry_abi(kind))
        assert registry.functions.initialized().call()
        assert registry.functions.baseURI().call().startswith("https://")


def test_every_hub_function_is_routed_to_a_facet(fresh: tuple[Anvil, Deployment, float]) -> None:
    anvil, dep, _ = fresh
    loupe = Web3(Web3.HTTPProvider(anvil.rpc_url)).eth.contract(address=dep.hub, abi=LOUPE_ABI)
    missing = [
        s for s in selectors(hub_abi()) if loupe.functions.facetAddress(bytes.fromhex(s[2:])).call() == "0x" + "00" * 20
    ]
    # renounceOwnership() is in the interface but in no facet (mudgen's OwnershipFacet lacks it), on
    # PoCo's own deployments too.
    assert missing == ["0x" + Web3.keccak(text="renounceOwnership()")[:4].hex()]
    assert loupe.functions.owner().call() == DEPLOYER.address


def test_snapshot_reloads_with_the_same_code(
    fresh: tuple[Anvil, Deployment, float], poco: tuple[Path, Deployment]
) -> None:
    anvil, dep, _ = fresh
    state, snapshot_dep = poco
    assert (snapshot_dep.hub, snapshot_dep.rlc, snapshot_dep.app_registry, snapshot_dep.workerpool_registry) == (
        dep.hub,
        dep.rlc,
        dep.app_registry,
        dep.workerpool_registry,
    )
    started = time.monotonic()
    with Anvil(load_state=state) as loaded:
        print(f"snapshot load took {time.monotonic() - started:.3f} s")  # measured, not asserted (machine load)
        for address in (dep.hub, dep.rlc, dep.app_registry, dep.dataset_registry, dep.workerpool_registry):
            original = rpc_call(anvil.rpc_url, "eth_getCode", [address, "latest"])
            assert len(original) > 2
            assert rpc_call(loaded.rpc_url, "eth_getCode", [address, "latest"]) == original
        assert int(rpc_call(loaded.rpc_url, "eth_blockNumber"), 16) == snapshot_dep.block


def test_snapshot_accounts_hold_rlc_and_no_stake(chain: ChainEnv) -> None:
    for account in (REQUESTER, BOT, POOL_OWNER, APP_OWNER):
        assert rlc_balance(chain.rpc_url, chain.deployment, account.address) == SNAPSHOT_RLC_NRLC
        assert stake_of(chain.rpc_url, chain.deployment, account.address) == (0, 0)
        assert chain.w3.eth.get_balance(account.address) >= 9_999 * 10**18


def test_accounts_are_anvils_own(chain: ChainEnv) -> None:
    listed = rpc_call(chain.rpc_url, "eth_accounts")
    assert [a.address.lower() for a in accounts.ACCOUNTS] == [a.lower() for a in listed]
    assert accounts.SCHEDULER is accounts.POOL_OWNER


def test_register_app_and_workerpool_return_registered_addresses(chain: ChainEnv) -> None:
    dep = chain.deployment
    checksum = "0x" + "ab" * 32
    app = register_app(chain.rpc_url, dep, APP_OWNER, "segbot", "docker.io/segbot/worker:1", checksum)
    pool = register_workerpool(chain.rpc_url, dep, POOL_OWNER, "devnet pool")
    apps = chain.w3.eth.contract(address=dep.app_registry, abi=registry_abi("app"))
    pools = chain.w3.eth.contract(address=dep.workerpool_registry, abi=registry_abi("workerpool"))
    assert apps.functions.isRegistered(app).call()
    assert apps.functions.ownerOf(int(app, 16)).call() == APP_OWNER.address
    assert pools.functions.isRegistered(pool).call()
    assert pools.functions.ownerOf(int(pool, 16)).call() == POOL_OWNER.address
    assert not apps.functions.isRegistered(pool).call()
    with pytest.raises(TransactionFailed):
        register_app(chain.rpc_url, dep, APP_OWNER, "segbot", "docker.io/segbot/worker:1", checksum)
    with pytest.raises(ValueError, match="32 bytes"):
        register_app(chain.rpc_url, dep, APP_OWNER, "other", "docker.io/x:1", b"short")


def test_deposit_moves_wallet_rlc_into_the_hub(chain: ChainEnv) -> None:
    dep = chain.deployment
    receipt = deposit(chain.rpc_url, dep, REQUESTER, 7 * 10**9)
    assert receipt["status"] == 1
    assert stake_of(chain.rpc_url, dep, REQUESTER.address) == (7 * 10**9, 0)
    assert chain.hub.functions.balanceOf(REQUESTER.address).call() == 7 * 10**9
    assert rlc_balance(chain.rpc_url, dep, REQUESTER.address) == SNAPSHOT_RLC_NRLC - 7 * 10**9
    assert rlc_balance(chain.rpc_url, dep, dep.hub) == 7 * 10**9
    with pytest.raises(TransactionFailed):
        deposit(chain.rpc_url, dep, REQUESTER, SNAPSHOT_RLC_NRLC)  # more than the wallet holds now
    assert stake_of(chain.rpc_url, dep, REQUESTER.address) == (7 * 10**9, 0)


def test_fund_helpers(chain: ChainEnv) -> None:
    stranger = "0x000000000000000000000000000000000000bEEF"
    fund_eth(chain.rpc_url, stranger, 3 * 10**18)
    assert chain.w3.eth.get_balance(stranger) == 3 * 10**18
    fund_rlc(chain.rpc_url, chain.deployment, stranger, 42)
    assert rlc_balance(chain.rpc_url, chain.deployment, stranger) == 42


def test_increase_time_and_mine_move_the_chain(chain: ChainEnv) -> None:
    before = block_timestamp(chain.rpc_url)
    after = increase_time(chain.rpc_url, 10 * 3600)
    assert after - before >= 10 * 3600
    assert block_timestamp(chain.rpc_url) == after
    height = chain.w3.eth.block_number
    mine(chain.rpc_url, 5)
    assert chain.w3.eth.block_number == height + 5


def test_freeze_makes_the_chain_unreachable_and_thaw_restores_it(chain: ChainEnv) -> None:
    chain.anvil.freeze()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        rpc_call(chain.rpc_url, "eth_blockNumber", timeout=0.3)
    chain.anvil.thaw()
    assert int(rpc_call(chain.rpc_url, "eth_chainId", timeout=2), 16) == 31337


def test_stop_of_a_frozen_anvil_and_twice_is_clean(poco: tuple[Path, Deployment]) -> None:
    anvil = Anvil(load_state=poco[0]).start()
    pid = anvil.pid
    anvil.freeze()
    anvil.stop()
    anvil.stop()
    assert not _alive(pid)
    with pytest.raises(AnvilError, match="not running"):
        _ = anvil.pid


def test_dump_state_on_stop_reloads_the_same_chain(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with Anvil(dump_state=state) as anvil:
        fund_eth(anvil.rpc_url, REQUESTER.address, 123)
        mine(anvil.rpc_url, 3)
    with Anvil(load_state=state) as anvil:
        assert int(rpc_call(anvil.rpc_url, "eth_blockNumber"), 16) == 3
        assert int(rpc_call(anvil.rpc_url, "eth_getBalance", [REQUESTER.address, "latest"]), 16) == 123


def test_a_taken_port_is_a_clear_error() -> None:
    with Anvil() as first, pytest.raises(AnvilError, match="did not start"):
        Anvil(port=first.port).start()


def test_missing_state_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnvilError, match="does not exist"):
        Anvil(load_state=tmp_path / "nope.json").start()


def test_deployment_round_trips_through_json(tmp_path: Path, poco: tuple[Path, Deployment]) -> None:
    path = tmp_path / "deployment.json"
    poco[1].to_json(path)
    assert Deployment.from_json(path) == poco[1]
    assert json.loads(path.read_text())["hub"] == poco[1].hub
    path.write_text('{"hub": 1}')
    with pytest.raises(DeployError, match="not a deployment file"):
        Deployment.from_json(path)


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
def test_parallel_snapshot_builders_share_one_build(tmp_path: Path) -> None:
    results: list[tuple[Path, Deployment]] = []
    threads = [threading.Thread(target=lambda: results.append(deployed_snapshot(tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert len(list(tmp_path.glob("*.state.json"))) == 1
    assert results[0][1].hub == "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707"  # as on any fresh chain
    mtime = results[0][0].stat().st_mtime_ns
    assert deployed_snapshot(tmp_path) == results[0]
    assert results[0][0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


CHILD = """
import sys, threading, time
from devnet.anvil import Anvil
holder = []
def start():  # from a thread that ends at once: anvil must survive it, and die with the process
    holder.append(Anvil().start())
thread = threading.Thread(target=start); thread.start(); thread.join()
main = Anvil().start()
print(holder[0].pid, main.pid, flush=True)
time.sleep(60)  # lives until the test kills it (not a synchronisation)
"""


def test_anvil_dies_with_its_owner_process() -> None:
    # `with`: on leaving, the stdout pipe is closed and the child reaped
    with subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            pids = [int(p) for p in child.stdout.readline().split()]
            assert len(pids) == 2 and all(_alive(p) for p in pids)  # the thread's anvil outlived the thread
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            deadline = time.monotonic() + 30  # a bound on a poll, not a wall-clock claim
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(p) for p in pids)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
