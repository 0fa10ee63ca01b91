"""Chain fixtures: a deployed PoCo snapshot per session and a fresh anvil loaded from it per test.

    def test_something(chain):                       # ChainEnv
        chain.rpc_url, chain.deployment.hub, chain.hub.functions.countCategory().call()
        chain.anvil.freeze(); ...; chain.anvil.thaw()

    async def test_async(chain, rpc):                # rpc(): an AsyncWeb3 on it (iexec.tx.connect)
        w3 = rpc(timeout_s=0.5)                      # closed after the test: no unclosed aiohttp session

Every account of devnet.accounts has anvil's ETH and SNAPSHOT_RLC_NRLC RLC in its wallet (the deployer
keeps the rest); no hub account holds stake yet: use devnet.chain.deposit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncWeb3, Web3

from devnet.anvil import Anvil
from devnet.chain import deployed_snapshot
from devnet.deploy import Deployment, hub_abi, rlc_abi
from iexec.tx import close, connect


@dataclass(frozen=True)
class ChainEnv:
    """A running devnet chain with PoCo deployed: what the `chain` fixture yields."""

    anvil: Anvil
    deployment: Deployment
    w3: Web3
    hub: Any  # web3 Contract at deployment.hub with the full hub ABI
    rlc: Any  # web3 Contract of the RLC token

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url


@pytest.fixture(scope="session")
def poco() -> tuple[Path, Deployment]:
    """(snapshot state path, Deployment): built once into .devnet/ and reused across runs."""
    return deployed_snapshot()


@pytest.fixture
def chain(poco: tuple[Path, Deployment]) -> Iterator[ChainEnv]:
    """A fresh anvil loaded from the PoCo snapshot, stopped after the test."""
    state, deployment = poco
    with Anvil(load_state=state) as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url, request_kwargs={"timeout": 10}))
        yield ChainEnv(
            anvil=anvil,
            deployment=deployment,
            w3=w3,
            hub=w3.eth.contract(address=deployment.hub, abi=hub_abi()),
            rlc=w3.eth.contract(address=deployment.rlc, abi=rlc_abi()),
        )


@pytest.fixture
async def rpc(chain: ChainEnv) -> AsyncIterator[Callable[..., AsyncWeb3]]:
    """`rpc(timeout_s=10.0)`: an AsyncWeb3 on the test's chain (`iexec.tx.connect`); every one made is closed
    after the test (its aiohttp session), so the test owns what it opens and nothing is left to the GC."""
    opened: list[AsyncWeb3] = []

    def make(timeout_s: float = 10.0) -> AsyncWeb3:
        opened.append(connect(chain.rpc_url, timeout_s=timeout_s))
        return opened[-1]

    yield make
    for w3 in opened:
        await close(w3)
