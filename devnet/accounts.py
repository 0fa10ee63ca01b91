"""The devnet's well-known accounts: anvil's default dev mnemonic, one role per index.

These keys are public knowledge (anvil and Hardhat print them at start-up): they are for the local devnet
and tests only. Nothing outside `devnet/` and `tests/` may use them, and they must never hold real money.

Mnemonic "test test test test test test test test test test test junk", path m/44'/60'/0'/0/i:

    index  role
    0      DEPLOYER     deploys RLC and PoCo, owns the hub, holds all RLC at first
    1      APP_OWNER    registers the segmentation app and signs its app orders
    2      POOL_OWNER   owns the workerpool, signs its orders; also the SCHEDULER (PoCo checks that
                        initialize/finalize come from the workerpool's owner)
    3      REQUESTER    a plain requester (tests of the iexec client)
    4      WORKER       contributes results for the devnet workerpool
    5      WORKER_2     a second worker, for trust > 1 tests
    6      BOT          a spare account tests may give the bot as its custodial wallet
    7      ENCLAVE      signs as the enclave of TEE-tagged tasks
    8, 9   SPARE_1/2    unused, for tests that need a stranger
"""

from __future__ import annotations

from eth_account import Account
from eth_account.signers.local import LocalAccount

MNEMONIC = "test test test test test test test test test test test junk"

# The first ten keys derived from MNEMONIC (kept literal: deriving them costs ~100 ms of PBKDF2 at import).
_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)

ACCOUNTS: tuple[LocalAccount, ...] = tuple(Account.from_key(key) for key in _KEYS)

DEPLOYER: LocalAccount = ACCOUNTS[0]
APP_OWNER: LocalAccount = ACCOUNTS[1]
POOL_OWNER: LocalAccount = ACCOUNTS[2]
SCHEDULER: LocalAccount = POOL_OWNER
REQUESTER: LocalAccount = ACCOUNTS[3]
WORKER: LocalAccount = ACCOUNTS[4]
WORKER_2: LocalAccount = ACCOUNTS[5]
BOT: LocalAccount = ACCOUNTS[6]
ENCLAVE: LocalAccount = ACCOUNTS[7]
SPARE_1: LocalAccount = ACCOUNTS[8]
SPARE_2: LocalAccount = ACCOUNTS[9]

__all__ = [
    "ACCOUNTS",
    "APP_OWNER",
    "BOT",
    "DEPLOYER",
    "ENCLAVE",
    "MNEMONIC",
    "POOL_OWNER",
    "REQUESTER",
    "SCHEDULER",
    "SPARE_1",
    "SPARE_2",
    "WORKER",
    "WORKER_2",
]
