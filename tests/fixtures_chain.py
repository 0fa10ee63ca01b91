"""Chain fixtures: a deployed PoCo snapshot per session and a fresh anvil loaded from it per test.

    def test_something(chain):                       # ChainEnv
        chain.rpc_url, chain.deployment.hub, chain.hub.functions.countCategory().call()
        chain.anvil.freeze(); ...; chain.anvil.thaw()

Every account of devnet.accounts has anvil's ETH and SNAPSHOT_RLC_NRLC RLC in its wallet (the deployer
keeps the rest); no hub account holds stake yet: use devnet.chain.deposit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from devnet.anvil import Anvil
from devnet.chain import deployed_snapshot
from devnet.deploy import Deployment, hub_abi, rlc_abi


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
