"""A small read-only JSON-RPC client for the devnet's stand-ins: `eth_call` with ABI encoding, the block
number, logs and block timestamps, over one aiohttp session of its own.

The stand-ins must not use our client (iexec.tx) to reach the chain, and web3 8.0.0's stock async provider
leaks its session lock when a call is cancelled (web3.py #3867); this client is neither. It only reads, never
signs or sends a transaction, and talks to the one node URL it is given.

Values come back as eth_abi decodes them (addresses checksummed, bytes32 as bytes, tuples as tuples); a
function with one output returns that output itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from eth_abi import decode, encode
from eth_utils import keccak

__all__ = ["ChainReader", "RpcError", "abi_type", "event_topic"]


class RpcError(Exception):
    """The node answered with a JSON-RPC error (a reverted call included) or an unreadable answer."""


def abi_type(param: Mapping[str, Any]) -> str:
    """The canonical ABI type of one ABI parameter (tuples spelled out as `(t1,t2,...)`, arrays kept)."""
    kind = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + kind[len("tuple") :]
    return kind


def _types(params: Sequence[Mapping[str, Any]]) -> list[str]:
    return [abi_type(p) for p in params]


def selector(entry: Mapping[str, Any]) -> bytes:
    """The 4-byte selector of an ABI function entry."""
    return keccak(text=f"{entry['name']}({','.join(_types(entry['inputs']))})")[:4]


def event_topic(entry: Mapping[str, Any]) -> str:
    """topic0 of an ABI event entry, as 0x-hex."""
    return "0x" + keccak(text=f"{entry['name']}({','.join(_types(entry['inputs']))})").hex()


class ChainReader:
    """Read calls against one node: `await call(address, abi_entry, *args)`, `block_number()`, `logs()`,
    `block_timestamp()`; `await close()` ends its session (idempotent). The session is made at the first
    request, in the loop that makes it."""

    def __init__(self, rpc_url: str, *, timeout_s: float = 30.0) -> None:
        self.rpc_url = rpc_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC request; its `result`, or RpcError."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        async with self._session.post(self.rpc_url, json=body) as response:
            response.raise_for_status()
            answer = await response.json(content_type=None)
        if not isinstance(answer, dict):
            raise RpcError(f"{method}: not a JSON-RPC answer")
        if answer.get("error") is not None:
            error = answer["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise RpcError(f"{method}: {message}")
        if "result" not in answer:
            raise RpcError(f"{method}: no result")
        return answer["result"]

    async def call(self, address: str, entry: Mapping[str, Any], *args: Any) -> Any:
        """`eth_call` of the view function `entry` (an ABI entry) on `address` at the latest block."""
        data = selector(entry) + encode(_types(entry["inputs"]), list(args))
        raw = await self.request("eth_call", [{"to": address, "data": "0x" + data.hex()}, "latest"])
        values = decode(_types(entry["outputs"]), bytes.fromhex(raw.removeprefix("0x")))
        return values[0] if len(values) == 1 else values

    async def block_number(self) -> int:
        return int(await self.request("eth_blockNumber", []), 16)

    async def block_timestamp(self, number: int) -> int:
        block = await self.request("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(block, dict):
            raise RpcError(f"block {number} not found")
        return int(block["timestamp"], 16)

    async def logs(
        self, address: str, entry: Mapping[str, Any], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        """The logs of event `entry` (non-indexed arguments only) emitted by `address` in the block range,
        each as {args: {name: value}, blockNumber, transactionHash}."""
        if any(p.get("indexed") for p in entry["inputs"]):
            raise ValueError(f"{entry['name']}: indexed arguments are not supported")
        found = await self.request(
            "eth_getLogs",
            [
                {
                    "address": address,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(to_block),
                    "topics": [event_topic(entry)],
                }
            ],
        )
        names = [p["name"] for p in entry["inputs"]]
        out = []
        for log in found:
            values = decode(_types(entry["inputs"]), bytes.fromhex(log["data"].removeprefix("0x")))
            out.append(
                {
                    "args": dict(zip(names, values, strict=True)),
                    "blockNumber": int(log["blockNumber"], 16),
                    "transactionHash": log["transactionHash"].lower(),
                }
            )
        return out
