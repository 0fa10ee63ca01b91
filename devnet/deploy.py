"""Deploy the real iExec PoCo v6 contracts (npm `@iexec/poco` artifacts) and an RLC token to a local chain.

    deployment = deploy_poco(anvil.rpc_url)         # about 1 s on anvil
    deployment.to_json(path); Deployment.from_json(path)

This mirrors PoCo's `deploy/0_deploy.ts` with plain CREATE, in RLC token mode: the RLC token, DiamondInit
and the Diamond's cut/loupe/ownership facets, the Diamond proxy (the hub), IexecLibOrders_v5 linked into the
facets that need it, the other facets cut into the Diamond, the three registries (initialized, base URI
set), `configure(...)` and the five categories. It only reads the npm artifacts: it never compiles,
downloads or talks to anything but the given RPC URL, and it is meant for dev chains only (the deployer
key becomes the hub's owner).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from devnet.accounts import DEPLOYER
from devnet.anvil import DEVNET_DIR, DeployError, TransactionFailed

POCO_DIR = DEVNET_DIR / "node_modules/@iexec/poco"
RLC_JSON = DEVNET_DIR / "node_modules/rlc-faucet-contract/build/contracts/RLC.json"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

# (name, workClockTimeRef in seconds), PoCo config/config.json; ids are 0..4 in this order.
CATEGORIES: tuple[tuple[str, int], ...] = (("XS", 300), ("S", 1200), ("M", 3600), ("L", 10800), ("XL", 36000))
REGISTRY_BASE_URI = "https://nfts-metadata.iex.ec/{}/"  # PoCo sets one per registry; cosmetic on a devnet

# Token-mode facets, in PoCo's order. IexecEscrowNativeFacet is for native-token chains only.
FACETS = (
    "IexecAccessorsABILegacyFacet",
    "IexecCategoryManagerFacet",
    "IexecConfigurationExtraFacet",
    "IexecConfigurationFacet",
    "IexecEscrowTokenFacet",
    "IexecOrderManagementFacet",
    "IexecPoco1Facet",
    "IexecPoco2Facet",
    "IexecPocoAccessorsFacet",
    "IexecPocoBoostFacet",
    "IexecPocoBoostAccessorsFacet",
    "IexecRelayFacet",
    "IexecERC20Facet",
)
_TIP_WEI = 10**9
_RECEIVE_SELECTOR = "0x00000000"
_FALLBACK_SELECTOR = "0xffffffff"


@dataclass(frozen=True)
class Deployment:
    """Where the PoCo contracts of one chain live. JSON-serialisable."""

    chain_id: int
    hub: str
    rlc: str
    app_registry: str
    dataset_registry: str
    workerpool_registry: str
    deployer: str
    block: int  # the last block of the deployment: scan events from here on

    def to_json(self, path: Path) -> None:
        """Write this deployment as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def from_json(cls, path: Path) -> Deployment:
        """Read a deployment written by to_json. Raises DeployError if the file is not one."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise DeployError(f"{path} is not a deployment file: {exc}") from exc


@cache
def _artifact(relative: str) -> dict[str, Any]:
    path = POCO_DIR / relative
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise DeployError(f"PoCo artifact {path} is missing: run `npm ci` in {DEVNET_DIR}") from exc


def _facet(name: str) -> dict[str, Any]:
    return _artifact(f"artifacts/contracts/facets/{name}.sol/{name}.json")


def hub_abi() -> list[dict[str, Any]]:
    """The hub's full ABI (IexecInterfaceToken: every facet's functions, events and errors)."""
    return list(_artifact("artifacts/contracts/IexecInterfaceToken.sol/IexecInterfaceToken.json")["abi"])


def rlc_abi() -> list[dict[str, Any]]:
    """The RLC token's ABI (ERC-20 with approveAndCall)."""
    return list(_rlc_artifact()["abi"])


_REGISTRIES = {
    "app": ("apps", "AppRegistry"),
    "dataset": ("datasets", "DatasetRegistry"),
    "workerpool": ("workerpools", "WorkerpoolRegistry"),
}


def _registry_artifact(kind: str) -> dict[str, Any]:
    folder, name = _REGISTRIES[kind]
    return _artifact(f"artifacts/contracts/registries/{folder}/{name}.sol/{name}.json")


def registry_abi(kind: str) -> list[dict[str, Any]]:
    """ABI of the 'app', 'dataset' or 'workerpool' registry. Raises KeyError for another kind."""
    return list(_registry_artifact(kind)["abi"])


@cache
def _rlc_artifact() -> dict[str, Any]:
    try:
        return json.loads(RLC_JSON.read_text())
    except OSError as exc:
        raise DeployError(f"RLC artifact {RLC_JSON} is missing: run `npm ci` in {DEVNET_DIR}") from exc


def _canonical_type(param: dict[str, Any]) -> str:
    kind: str = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def _selector(item: dict[str, Any]) -> bytes:
    signature = f"{item['name']}({','.join(_canonical_type(p) for p in item['inputs'])})"
    return keccak(text=signature)[:4]


def _encode_args(item: dict[str, Any], args: tuple[Any, ...]) -> bytes:
    return abi_encode([_canonical_type(p) for p in item["inputs"]], list(args))


def selectors(abi: list[dict[str, Any]]) -> list[str]:
    """4-byte selectors of an ABI's functions, plus PoCo's markers for receive and fallback."""
    found = []
    for item in abi:
        if item["type"] == "function":
            found.append("0x" + _selector(item).hex())
        elif item["type"] == "receive":
            found.append(_RECEIVE_SELECTOR)
        elif item["type"] == "fallback":
            found.append(_FALLBACK_SELECTOR)
    return found


def link(bytecode: str, link_references: dict[str, Any], libraries: dict[str, str]) -> str:
    """Patch the `__$…$__` placeholders of `bytecode` with library addresses, at their recorded offsets."""
    code = bytecode.removeprefix("0x")
    for by_name in link_references.values():
        for name, spots in by_name.items():
            address = libraries[name].removeprefix("0x").lower()
            for spot in spots:
                start, end = 2 * spot["start"], 2 * (spot["start"] + spot["length"])
                code = code[:start] + address + code[end:]
    try:
        bytes.fromhex(code)
    except ValueError as exc:
        raise DeployError(f"bytecode still has unlinked placeholders: {exc}") from exc
    return "0x" + code


class TxSender:
    """Signs and sends one account's transactions one by one, waiting for each receipt.

    Dev chains only: it reads the nonce once and counts from there, so two senders of one account must
    not run at the same time (threads included). Raises TransactionFailed on any error or revert."""

    def __init__(self, w3: Web3, account: LocalAccount) -> None:
        self.w3 = w3
        self.account = account
        try:
            self.nonce = w3.eth.get_transaction_count(account.address, "pending")
            self.chain_id = w3.eth.chain_id
        except (Web3Exception, OSError) as exc:
            raise TransactionFailed(f"the chain did not answer: {exc}") from exc

    def send(self, tx: dict[str, Any], what: str) -> Any:
        tx = {**tx, "from": self.account.address, "nonce": self.nonce, "chainId": self.chain_id}
        try:
            tx.setdefault("gas", int(self.w3.eth.estimate_gas(tx) * 5 // 4))
            # Fixed tip, fee cap from the base fee: anvil's eth_gasPrice follows recent prices, so
            # paying "2 x gasPrice" every time would double it at each block.
            base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
            tx.setdefault("maxPriorityFeePerGas", _TIP_WEI)
            tx.setdefault("maxFeePerGas", 2 * base_fee + _TIP_WEI)
            signed = self.account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            self.nonce += 1
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.01)
        except (Web3Exception, ValueError, OSError) as exc:
            raise TransactionFailed(f"{what} failed: {exc}") from exc
        if receipt["status"] != 1:
            raise TransactionFailed(f"{what} reverted (tx 0x{bytes(tx_hash).hex()})")
        return receipt

    def create(self, bytecode: str, what: str, abi: list[Any] | None = None, args: tuple[Any, ...] = ()) -> str:
        data = bytecode
        if abi is not None:
            constructor = next(item for item in abi if item["type"] == "constructor")
            data += _encode_args(constructor, args).hex()
        receipt = self.send({"data": data}, f"deploying {what}")
        return to_checksum_address(receipt["contractAddress"])

    def call(self, address: str, abi: list[Any], function: str, *args: Any) -> Any:
        item = next(
            i for i in abi if i["type"] == "function" and i["name"] == function and len(i["inputs"]) == len(args)
        )
        data = "0x" + (_selector(item) + _encode_args(item, args)).hex()
        return self.send({"to": address, "data": data}, f"{function} on {address}")


def _deploy_diamond(sender: TxSender) -> str:
    """Diamond with the cut, loupe and ownership facets, initialised by DiamondInit.init()."""
    deployed = "deployments/arbitrumSepolia/{}.json"
    init = sender.create(_artifact(deployed.format("DiamondInit"))["bytecode"], "DiamondInit")
    cuts = []
    for name in ("DiamondCutFacet", "DiamondLoupeFacet", "OwnershipFacet"):
        artifact = _artifact(deployed.format(name))
        address = sender.create(artifact["bytecode"], name)
        cuts.append((address, 0, [bytes.fromhex(s[2:]) for s in selectors(artifact["abi"])]))
    diamond = _artifact("artifacts/contracts/Diamond.sol/Diamond.json")
    init_calldata = keccak(text="init()")[:4]
    return sender.create(
        diamond["bytecode"], "Diamond", diamond["abi"], (cuts, (sender.account.address, init, init_calldata))
    )


def _cut_facets(sender: TxSender, hub: str) -> None:
    """Deploy IexecLibOrders_v5, then every facet (linked when needed) and cut its new selectors in."""
    library = _artifact("artifacts/contracts/libs/IexecLibOrders_v5.sol/IexecLibOrders_v5.json")
    # web3.py rejects this library's ABI (overloads over enum/struct types): deploy its bytecode alone.
    libraries = {"IexecLibOrders_v5": sender.create(library["bytecode"], "IexecLibOrders_v5")}
    cut_abi = _artifact("deployments/arbitrumSepolia/DiamondCutFacet.json")["abi"]
    present = set(selectors(_artifact("deployments/arbitrumSepolia/DiamondCutFacet.json")["abi"]))
    for name in ("DiamondLoupeFacet", "OwnershipFacet"):
        present |= set(selectors(_artifact(f"deployments/arbitrumSepolia/{name}.json")["abi"]))
    for name in FACETS:
        artifact = _facet(name)
        address = sender.create(link(artifact["bytecode"], artifact["linkReferences"], libraries), name)
        new = [s for s in dict.fromkeys(selectors(artifact["abi"])) if s not in present]
        present |= set(new)
        if new:
            cut = [(address, 0, [bytes.fromhex(s[2:]) for s in new])]
            sender.call(hub, cut_abi, "diamondCut", cut, ZERO_ADDRESS, b"")


def _deploy_registries(sender: TxSender) -> tuple[str, str, str]:
    addresses = []
    for kind in ("app", "dataset", "workerpool"):
        artifact = _registry_artifact(kind)
        address = sender.create(artifact["bytecode"], _REGISTRIES[kind][1])
        sender.call(address, artifact["abi"], "initialize", ZERO_ADDRESS)
        sender.call(address, artifact["abi"], "setBaseURI", REGISTRY_BASE_URI.format(kind))
        addresses.append(address)
    return addresses[0], addresses[1], addresses[2]


def deploy_poco(rpc_url: str, deployer: LocalAccount = DEPLOYER) -> Deployment:
    """Deploy RLC + PoCo (token mode, 5 categories) with `deployer`, who owns the hub and holds all RLC.

    Raises DeployError if a transaction fails or an artifact is missing."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        sender = TxSender(w3, deployer)
        rlc = sender.create(_rlc_artifact()["bytecode"], "RLC")
        hub = _deploy_diamond(sender)
        _cut_facets(sender, hub)
        app_registry, dataset_registry, workerpool_registry = _deploy_registries(sender)
        abi = hub_abi()
        sender.call(
            hub,
            abi,
            "configure",
            rlc,
            "Staked RLC",
            "SRLC",
            9,
            app_registry,
            dataset_registry,
            workerpool_registry,
            ZERO_ADDRESS,
        )
        for name, work_clock_time_ref in CATEGORIES:
            sender.call(hub, abi, "createCategory", name, "{}", work_clock_time_ref)
    except (TransactionFailed, Web3Exception, OSError) as exc:
        raise DeployError(f"deploying PoCo to the chain failed: {exc}") from exc
    return Deployment(
        chain_id=sender.chain_id,
        hub=hub,
        rlc=rlc,
        app_registry=app_registry,
        dataset_registry=dataset_registry,
        workerpool_registry=workerpool_registry,
        deployer=deployer.address,
        block=w3.eth.block_number,
    )
