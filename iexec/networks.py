"""Network presets: where iExec lives on each chain the bot can use.

Each preset is a frozen value; every field can be overridden by the bot's settings. The mainnet preset
(arbitrum) moves real money: `resolve_network` refuses it unless the caller passes `allow_mainnet=True`.
This module must never read the environment itself: the caller decides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


class NetworkError(ValueError):
    """The network name is unknown, or the mainnet preset was asked for without explicit consent."""


@dataclass(frozen=True)
class Network:
    """Addresses and endpoints of one iExec deployment."""

    name: str
    chain_id: int
    rpc_url: str
    hub: str
    rlc: str
    market_url: str
    ipfs_gateway: str
    ipfs_upload: str = ""
    explorer: str = ""
    default_workerpool: str = ""
    real_money: bool = False
    #: Tag the public workerpools of this network require (bytes32 hex); "" means standard tasks.
    workerpool_tag: str = ""
    #: The Secret Management Service of this deployment (the SDK's `smsURL`); "" = none known.
    sms_url: str = ""
    #: Tag of TEE tasks on this network (bytes32 hex, TDX = 0x...09); "" means no TEE tasks by default.
    tee_tag: str = ""
    #: Blocks that must sit on top of a user's RLC transfer to the hot wallet before it is credited
    #: (iexec.deposits): a transfer in block N is final once the head is at N + deposit_confirmations.
    deposit_confirmations: int = 0

    def with_overrides(self, **values: Any) -> Network:
        """A copy with the non-empty values of `values` replacing the preset's."""
        return replace(self, **{k: v for k, v in values.items() if v not in (None, "")})


#: The SDK's TDX_DEFAULT_TAG (bits tee + tdx), `common/utils/constant.js`.
TDX_TAG = "0x" + "00" * 31 + "09"

# SMS urls are the SDK 9.0.1's (`common/utils/config.js`). Devnet addresses are not fixed: `python -m devnet
# up` deploys PoCo and writes the real addresses to the devnet env file. These are the addresses a fresh
# anvil gives the recipe of devnet/deploy.py.
DEVNET = Network(
    name="devnet",
    chain_id=31337,
    rpc_url="http://127.0.0.1:8545",
    hub="0x5FC8d32690cc91D4c39d9d3abcBD16989F875707",
    rlc="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    market_url="http://127.0.0.1:3000",
    ipfs_gateway="http://127.0.0.1:8088",
    sms_url="http://127.0.0.1:13300",
    # anvil mines one block per transaction and nothing else mines: waiting for blocks on top would hold a
    # deposit until the bot's next transaction. Tests that play a reorg set their own depth.
    deposit_confirmations=0,
)

ARBITRUM_SEPOLIA = Network(
    name="arbitrum-sepolia",
    chain_id=421614,
    rpc_url="https://sepolia-rollup.arbitrum.io/rpc",
    hub="0xB2157BF2fAb286b2A4170E3491Ac39770111Da3E",
    rlc="0x9923eD3cbd90CD78b910c475f9A731A6e0b8C963",
    market_url="https://api-market.arbitrum-sepolia-testnet.iex.ec",
    ipfs_gateway="https://ipfs-gateway.arbitrum-sepolia-testnet.iex.ec",
    ipfs_upload="https://ipfs-upload.arbitrum-sepolia-testnet.iex.ec",
    explorer="https://explorer.iex.ec/arbitrum-sepolia-testnet",
    default_workerpool="0x2956f0cb779904795a5f30d3b3ea88b714c3123f",
    sms_url="https://sms.arbitrum-sepolia-testnet.iex.ec",
    tee_tag=TDX_TAG,
    # Arbitrum makes a block about every 0.25 s while there is traffic, ordered by one sequencer: 20 blocks
    # is a few seconds, enough against a sequencer-feed hiccup; testnet RLC has no value, quick credit wins.
    deposit_confirmations=20,
)

ARBITRUM = Network(
    name="arbitrum",
    chain_id=42161,
    rpc_url="https://arb1.arbitrum.io/rpc",
    hub="0x098bFCb1E50ebcA0BaA92C12eA0c3F045A1aD9f0",
    rlc="0xe649e6a1F2afc63ca268C2363691ceCAF75CF47C",
    market_url="https://api.market.arbitrum-mainnet.iex.ec",
    ipfs_gateway="https://ipfs-gateway.arbitrum-mainnet.iex.ec",
    ipfs_upload="https://ipfs-upload.arbitrum-mainnet.iex.ec",
    explorer="https://explorer.iex.ec/arbitrum-mainnet",
    default_workerpool="0x8ef2ec3ef9535d4b4349bfec7d8b31a580e60244",
    real_money=True,
    sms_url="https://sms.arbitrum-mainnet.iex.ec",
    tee_tag=TDX_TAG,
    # Real money: ~1200 blocks at ~4 blocks/s is about 5 minutes, the order of the interval at which the
    # sequencer posts its batches to Ethereum; after that a reorg needs an Ethereum reorg as well. An operator
    # who wants Ethereum finality (~15-20 min more) raises it.
    deposit_confirmations=1200,
)

PRESETS: dict[str, Network] = {n.name: n for n in (DEVNET, ARBITRUM_SEPOLIA, ARBITRUM)}


def resolve_network(name: str, *, allow_mainnet: bool = False, **overrides: Any) -> Network:
    """The preset called `name` with `overrides` applied.

    Raises NetworkError for an unknown name, and for a real-money preset unless `allow_mainnet` is true.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise NetworkError(f"unknown network {name!r}; choose one of: {', '.join(PRESETS)}") from None
    if preset.real_money and not allow_mainnet:
        raise NetworkError(f"network {name!r} spends real RLC from a hot wallet; set ALLOW_MAINNET=true to accept that")
    return preset.with_overrides(**overrides)
