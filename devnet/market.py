"""A stand-in for the iExec market API, for the devnet and the tests.

It speaks the real API's wire format (iexec-market-api `api/openapi.yaml` and `controllers/router.js`):
the same paths, query parameters, paging, sorting, response shapes and error statuses, and it checks what
the real API checks on publish: a challenge-signed `authorization` header, the order signer is the
on-chain owner of the app / dataset / workerpool (or the requester of a request order), the signature is
valid (the hub's `verifySignature`), and the order still has volume (`viewConsumed`). `remaining` is read
from the chain on every answer, so a matched order's volume goes down and a used-up order leaves the lists.

It shares no code with our market client (iexec/market.py, iexec/orders.py): order parsing, EIP-712 hashing
(under the domain the hub's `domain()` returns) and the challenge are devnet/market_orders.py's, chain reads go
through devnet/rpc.py; the official JS SDK is its peer in the tests (tests/test_devnet_market_sdk.py).

Orders live in memory. Faults can be injected (`fail_next`, `fail_mode`) so tests see 5xx answers.
It binds 127.0.0.1 only and must never reach any address but its chain node.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from eth_utils import to_checksum_address

from devnet.deploy import hub_abi
from devnet.loopback import serve_loopback
from devnet.market_orders import (
    challenge_digest,
    challenge_typed_data,
    order_hash,
    parse_order,
    parse_tag,
    recover_signer,
)
from devnet.rpc import ChainReader, RpcError

__all__ = ["MarketStandIn", "challenge_typed_data", "VERSION"]

VERSION = "devnet-standin-1.0.0"
ZERO = "0x0000000000000000000000000000000000000000"
DEFAULT_PAGE_SIZE = 20
MIN_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000

_HUB_ABI = [
    {
        "type": "function",
        "name": name,
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
    }
    for name in ("appregistry", "datasetregistry", "workerpoolregistry")
] + [
    {
        "type": "function",
        "name": "viewConsumed",
        "stateMutability": "view",
        "inputs": [{"name": "id", "type": "bytes32"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "verifySignature",
        "stateMutability": "view",
        "inputs": [
            {"name": "identity", "type": "address"},
            {"name": "hash", "type": "bytes32"},
            {"name": "signature", "type": "bytes"},
        ],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "countCategory",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "viewCategory",
        "stateMutability": "view",
        "inputs": [{"name": "index", "type": "uint256"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "name", "type": "string"},
                    {"name": "description", "type": "string"},
                    {"name": "workClockTimeRef", "type": "uint256"},
                ],
            }
        ],
    },
]
# From the devnet's full hub ABI: what the deal book, the stake check and the EIP-712 domain read.
_HUB_ABI += [e for e in hub_abi() if e.get("name") in ("viewAccount", "viewDeal", "OrdersMatched", "domain")]
_HUB = {e["name"]: e for e in _HUB_ABI}
_REGISTRY_ABI = [
    {
        "type": "function",
        "name": "isRegistered",
        "stateMutability": "view",
        "inputs": [{"name": "", "type": "address"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
]
_OWNABLE_ABI = [
    {
        "type": "function",
        "name": "owner",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
    }
]


class _ApiError(Exception):
    """An error answered as `{ok: false, error}` with an HTTP status, like the real API."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Kind:
    """One order book: its path, EIP-712 struct, price field and who may sign its orders."""

    path: str
    type_name: str  # the EIP-712 struct (IexecLibOrders_v5)
    price: str
    resource: str  # the order field naming the signed-for resource
    registry: str | None  # hub getter of the resource's registry; None for request orders
    descending: bool = False


_OWNER_PARAMS = {"apporders": "appOwner", "datasetorders": "datasetOwner", "workerpoolorders": "workerpoolOwner"}
TEE_BIT = 1  # tag bit 0: the order needs a TEE (TDX tags are 0x...09)

_KINDS = {
    "apporders": _Kind("apporders", "AppOrder", "appprice", "app", "appregistry"),
    "datasetorders": _Kind("datasetorders", "DatasetOrder", "datasetprice", "dataset", "datasetregistry"),
    "workerpoolorders": _Kind(
        "workerpoolorders", "WorkerpoolOrder", "workerpoolprice", "workerpool", "workerpoolregistry"
    ),
    "requestorders": _Kind("requestorders", "RequestOrder", "workerpoolmaxprice", "requester", None, descending=True),
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _address(query: Any, name: str, *, any_ok: bool = False) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if any_ok and value == "any":
        return "any"
    try:
        return to_checksum_address(value)
    except ValueError:
        raise _ApiError(400, f"{name} must be a valid ethereum address") from None


def _int(query: Any, name: str, *, minimum: int = 0) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or int(value) < minimum:
        raise _ApiError(400, f"{name} must be an integer >= {minimum}")
    return int(value)


def _tag(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return parse_tag(value)
    except ValueError:
        raise _ApiError(400, f"{name} must be a bytes32 hex string") from None


def _bool(query: Any, name: str) -> bool:
    return query.get(name, "false").lower() == "true"


def _restrict(value: str, wanted: str | None, strict: bool) -> bool:
    """The real API's restrict filter: no param -> only open orders; param -> open or that address."""
    if wanted == "any":
        return True
    if wanted is None:
        return value == ZERO
    return value == wanted or (value == ZERO and not strict)


class MarketStandIn:
    """The market API stand-in: `await start(port=0)` returns the base URL; `await stop()`.

    Also an async context manager (yields itself; the URL is `.base_url`). Fault injection:
    `fail_next(n, status)` makes the next n requests answer `status`; `fail_mode = 503` makes all do so
    until set back to None. `hits` counts requests per path (for retry tests).
    """

    def __init__(self, chain_id: int, rpc_url: str, hub: str, *, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the market stand-in binds loopback only")
        self.chain_id = chain_id
        self.hub = to_checksum_address(hub)
        self._domain: dict[str, Any] | None = None  # the hub's EIP-712 domain, read at the first publish
        self.host = host
        self.base_url = ""
        self.fail_mode: int | None = None
        self.hits: dict[str, int] = {}
        self._fail_queue: list[int] = []
        self._books: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in _KINDS}
        self._challenges: dict[str, tuple[str, str]] = {}  # hash -> (address, value)
        self._deals: dict[str, dict[str, Any]] = {}  # dealid -> the real API's deal record
        self._deals_scanned = -1  # last block whose OrdersMatched logs are in self._deals
        self._deals_lock = asyncio.Lock()
        self._rpc = ChainReader(rpc_url, timeout_s=30.0)  # its own session, not web3's (web3.py #3867)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next `n` requests with `status` (and an `{ok: false}` body)."""
        self._fail_queue.extend([status] * n)

    async def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:`port` (0 = any free port); returns the base URL."""
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/challenge", self._challenge)
        app.router.add_get("/categories", self._categories)
        app.router.add_get("/categories/{catid}", self._category)
        for kind in _KINDS.values():
            app.router.add_get(f"/{kind.path}", self._lister(kind))
            app.router.add_get(f"/{kind.path}/{{orderHash}}", self._getter(kind))
            app.router.add_post(f"/{kind.path}", self._publisher(kind))
            app.router.add_put(f"/{kind.path}", self._unpublisher(kind))
        app.router.add_get("/deals", self._deals_list)
        app.router.add_get("/deals/{dealid}", self._deal_get)
        self._runner, self.base_url = await serve_loopback(app, port, host=self.host)
        return self.base_url

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._rpc.close()

    async def __aenter__(self) -> MarketStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing -------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        status = self._fail_queue.pop(0) if self._fail_queue else self.fail_mode
        if status is not None:
            return web.json_response({"ok": False, "error": "injected fault"}, status=status)
        try:
            if request.path not in ("/version",) and request.query.get("chainId") != str(self.chain_id):
                raise _ApiError(400, f"chainId must be {self.chain_id}")
            return await handler(request)
        except _ApiError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=exc.status)
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - the real API answers 500 on anything unexpected
            return web.json_response({"ok": False, "error": "Internal error"}, status=500)

    async def _hub_call(self, name: str, *args: Any) -> Any:
        return await self._rpc.call(self.hub, _HUB[name], *args)

    async def _eip712_domain(self) -> dict[str, Any]:
        """The hub's EIP-712 domain (its `domain()`), as the SDK reads it; it must be on our chain id."""
        if self._domain is None:
            name, version, chain_id, verifying = await self._hub_call("domain")
            if chain_id != self.chain_id:
                raise _ApiError(500, f"the hub's domain is on chain {chain_id}, not {self.chain_id}")
            self._domain = {"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifying}
        return self._domain

    async def _consumed(self, order_hash: str) -> int:
        return await self._hub_call("viewConsumed", bytes.fromhex(order_hash[2:]))

    async def _with_remaining(self, record: dict[str, Any]) -> dict[str, Any]:
        remaining = max(record["order"]["volume"] - await self._consumed(record["orderHash"]), 0)
        status = record["status"]
        if status == "open" and remaining == 0:
            status = "filled"
        return {**record, "remaining": remaining, "status": status}

    async def _owner(self, kind: _Kind, resource: str) -> str:
        assert kind.registry is not None
        registry = await self._hub_call(kind.registry)
        if not await self._rpc.call(registry, _REGISTRY_ABI[0], resource):
            raise _ApiError(403, "Resource not deployed")
        return to_checksum_address(await self._rpc.call(resource, _OWNABLE_ABI[0]))

    # -- simple endpoints -----------------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": VERSION})

    async def _challenge(self, request: web.Request) -> web.Response:
        address = _address(request.query, "address")
        if address is None:
            raise _ApiError(400, "address is a required field")
        for _digest, (who, value) in self._challenges.items():
            if who == address:
                return web.json_response({"ok": True, "data": challenge_typed_data(self.chain_id, value)})
        value = secrets.token_urlsafe(24)
        typed = challenge_typed_data(self.chain_id, value)
        self._challenges["0x" + challenge_digest(typed).hex()] = (address, value)
        return web.json_response({"ok": True, "data": typed})

    async def _category_json(self, catid: int) -> dict[str, Any]:
        name, description, ref = await self._hub_call("viewCategory", catid)
        return {
            "catid": catid,
            "chainId": str(self.chain_id),
            "name": name,
            "description": description,
            "workClockTimeRef": ref,
        }

    async def _categories(self, request: web.Request) -> web.Response:
        count = await self._hub_call("countCategory")
        cats = [await self._category_json(i) for i in range(count)]
        low = _int(request.query, "minWorkClockTimeRef")
        high = _int(request.query, "maxWorkClockTimeRef")
        cats = [
            c
            for c in cats
            if (low is None or c["workClockTimeRef"] >= low) and (high is None or c["workClockTimeRef"] <= high)
        ]
        page, skip, limit = _page(request.query, cats)
        return web.json_response(
            {"ok": True, "categories": page, "count": len(cats), **_next_page(len(page), skip, limit)}
        )

    async def _category(self, request: web.Request) -> web.Response:
        catid = request.match_info["catid"]
        count = await self._hub_call("countCategory")
        if not catid.isdigit() or int(catid) >= count:
            raise _ApiError(404, "category not found")
        return web.json_response({"ok": True, **await self._category_json(int(catid))})

    # -- deals (from the chain's OrdersMatched logs, as the real API's event listener records them) ------

    async def _sync_deals(self) -> None:
        """Read the OrdersMatched logs of the blocks not seen yet and record their deals."""
        async with self._deals_lock:
            head = await self._rpc.block_number()
            if head <= self._deals_scanned:
                return
            logs = await self._rpc.logs(self.hub, _HUB["OrdersMatched"], self._deals_scanned + 1, head)
            for matched in logs:
                self._deals["0x" + bytes(matched["args"]["dealid"]).hex()] = await self._deal_record(matched)
            self._deals_scanned = head

    async def _deal_record(self, matched: Any) -> dict[str, Any]:
        args = matched["args"]
        dealid = bytes(args["dealid"])
        deal = await self._hub_call("viewDeal", dealid)
        timestamp = await self._rpc.block_timestamp(matched["blockNumber"])
        # viewDeal: app, dataset, workerpool (pointer, owner, price), trust, category, tag, requester,
        # beneficiary, callback, params, startTime, botFirst, botSize, workerStake, schedulerRewardRatio, sponsor
        resource = [
            {"pointer": to_checksum_address(r[0]), "owner": to_checksum_address(r[1]), "price": r[2]} for r in deal[:3]
        ]
        stamp = datetime.fromtimestamp(timestamp, UTC)
        return {
            "dealid": "0x" + dealid.hex(),
            "chainId": self.chain_id,
            "app": resource[0],
            "dataset": resource[1],
            "workerpool": resource[2],
            "requester": to_checksum_address(deal[6]),
            "beneficiary": to_checksum_address(deal[7]),
            "callback": to_checksum_address(deal[8]),
            **{
                f"{name}Hash": "0x" + bytes(args[f"{name}Hash"]).hex()
                for name in ("app", "dataset", "workerpool", "request")
            },
            "params": deal[9],
            "volume": args["volume"],
            "category": deal[4],
            "tag": "0x" + bytes(deal[5]).hex(),
            "trust": deal[3],
            "startTime": deal[10],
            "botFirst": deal[11],
            "botSize": deal[12],
            "workerStake": deal[13],
            "schedulerRewardRatio": deal[14],
            "blockNumber": matched["blockNumber"],
            "blockTimestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "transactionHash": matched["transactionHash"],
        }

    async def _deals_list(self, request: web.Request) -> web.Response:
        q = request.query
        wanted: list[tuple[Callable[[dict[str, Any]], Any], Any]] = []
        for name, get in (
            ("requester", lambda d: d["requester"]),
            ("beneficiary", lambda d: d["beneficiary"]),
            ("app", lambda d: d["app"]["pointer"]),
            ("dataset", lambda d: d["dataset"]["pointer"]),
            ("workerpool", lambda d: d["workerpool"]["pointer"]),
            ("appOwner", lambda d: d["app"]["owner"]),
            ("datasetOwner", lambda d: d["dataset"]["owner"]),
            ("workerpoolOwner", lambda d: d["workerpool"]["owner"]),
        ):
            value = _address(q, name)
            if value is not None:
                wanted.append((get, value))
        for name, field in (
            ("apporderHash", "appHash"),
            ("datasetorderHash", "datasetHash"),
            ("workerpoolorderHash", "workerpoolHash"),
            ("requestorderHash", "requestHash"),
        ):
            if q.get(name):
                wanted.append((lambda d, f=field: d[f], q[name].lower()))
        category = _int(q, "category")
        if category is not None:
            wanted.append((lambda d: d["category"], category))
        await self._sync_deals()
        deals = [d for d in self._deals.values() if all(get(d) == value for get, value in wanted)]
        deals.sort(key=lambda d: (-d["blockNumber"], d["dealid"]))
        page, skip, limit = _page(q, deals)
        return web.json_response({"ok": True, "deals": page, "count": len(deals), **_next_page(len(page), skip, limit)})

    async def _deal_get(self, request: web.Request) -> web.Response:
        await self._sync_deals()
        deal = self._deals.get(request.match_info["dealid"].lower())
        if deal is None:
            raise _ApiError(404, "deal not found")
        return web.json_response({"ok": True, **deal})

    # -- order books ----------------------------------------------------------------------------------

    def _getter(self, kind: _Kind) -> Callable[[web.Request], Any]:
        async def get(request: web.Request) -> web.Response:
            record = self._books[kind.path].get(request.match_info["orderHash"].lower())
            if record is None:
                raise _ApiError(404, f"{kind.path[:-1]} not found")
            return web.json_response({"ok": True, **await self._with_remaining(record)})

        return get

    def _lister(self, kind: _Kind) -> Callable[[web.Request], Any]:
        async def list_orders(request: web.Request) -> web.Response:
            keep = _FILTERS[kind.path](request.query)
            min_volume = _int(request.query, "minVolume", minimum=1)
            # the real API's owner filter is the order's signer (the resource owner when it was published)
            owner = _address(request.query, _OWNER_PARAMS[kind.path]) if kind.path in _OWNER_PARAMS else None
            candidates = [
                r
                for r in self._books[kind.path].values()
                if r["status"] == "open" and keep(r["order"]) and owner in (None, r["signer"])
            ]
            live = await asyncio.gather(*(self._with_remaining(r) for r in candidates))
            live = [r for r in live if r["remaining"] > 0 and (min_volume is None or r["remaining"] >= min_volume)]
            sign = -1 if kind.descending else 1
            live.sort(key=lambda r: (sign * r["order"][kind.price], r["publicationTimestamp"], r["orderHash"]))
            page, skip, limit = _page(request.query, live)
            return web.json_response(
                {"ok": True, "orders": page, "count": len(live), **_next_page(len(page), skip, limit)}
            )

        return list_orders

    async def _authorized(self, request: web.Request) -> str:
        header = request.headers.get("authorization", "")
        parts = header.split("_")
        if len(parts) != 3:
            raise _ApiError(403, "invalid authorization")
        digest, signature, address = parts
        entry = self._challenges.get(digest.lower())
        try:
            claimed = to_checksum_address(address)
            if entry is None or entry[0] != claimed:
                raise ValueError("unknown challenge")
            typed = challenge_typed_data(self.chain_id, entry[1])
            signer = recover_signer(challenge_digest(typed), signature)
        except ValueError:
            raise _ApiError(403, "invalid authorization") from None
        if signer != claimed:
            raise _ApiError(403, "invalid authorization")
        del self._challenges[digest.lower()]
        return claimed

    def _publisher(self, kind: _Kind) -> Callable[[web.Request], Any]:
        async def publish(request: web.Request) -> web.Response:
            authorized = await self._authorized(request)
            try:
                body = await request.json()
                order = parse_order(kind.type_name, body["order"])
            except (ValueError, KeyError, TypeError) as exc:
                raise _ApiError(400, f"order is not a valid signed {kind.type_name}: {exc}") from None
            digest = order_hash(kind.type_name, order, await self._eip712_domain())
            hash_hex = "0x" + digest.hex()
            existing = self._books[kind.path].get(hash_hex)
            if existing is not None and existing["status"] == "open":
                raise _ApiError(403, "order already published")
            resource = order[kind.resource]
            signer = resource if kind.registry is None else await self._owner(kind, resource)
            if signer != authorized:
                raise _ApiError(403, f"only order signer {signer} can publish an order")
            try:
                ok = await self._hub_call("verifySignature", signer, digest, bytes.fromhex(order["sign"][2:]))
            except RpcError:  # the hub reverts on a malformed signature (wrong length, bad s or v)
                ok = False
            if not ok:
                raise _ApiError(403, "invalid sign")
            if order["volume"] - await self._consumed(hash_hex) <= 0:
                raise _ApiError(403, "order already consumed")
            if kind.path == "requestorders":
                await self._check_requester_stake(order, hash_hex)
                self._check_matchable_app(order)
                self._check_matchable_dataset(order)
            record = {
                "orderHash": hash_hex,
                "chainId": self.chain_id,
                "publicationTimestamp": _now_iso(),
                "signer": signer,
                "status": "open",
                "order": order,
            }
            self._books[kind.path][hash_hex] = record
            return web.json_response({"ok": True, "published": await self._with_remaining(record)})

        return publish

    async def _check_requester_stake(self, order: dict[str, Any], hash_hex: str) -> None:
        """As the real API: the requester's free stake covers every remaining task at the max prices."""
        remaining = order["volume"] - await self._consumed(hash_hex)
        cost = (order["appmaxprice"] + order["datasetmaxprice"] + order["workerpoolmaxprice"]) * remaining
        stake, _locked = await self._hub_call("viewAccount", order["requester"])
        if stake < cost:
            raise _ApiError(
                403, f"requester stake is too low to cover requestorder payment, minimum stake required is {cost} nRLC"
            )

    def _check_matchable_app(self, order: dict[str, Any]) -> None:
        """As the real API: a request order needs a published app order it can pay for (a TEE one for a
        TEE request)."""
        tee = int(order["tag"], 16) & TEE_BIT == TEE_BIT
        prices = [
            r["order"]["appprice"]
            for r in self._books["apporders"].values()
            if r["status"] == "open"
            and r["order"]["app"] == order["app"]
            and r["order"]["workerpoolrestrict"] in (ZERO, order["workerpool"])
            and r["order"]["datasetrestrict"] in (ZERO, order["dataset"])
            and r["order"]["requesterrestrict"] in (ZERO, order["requester"])
            and (not tee or int(r["order"]["tag"], 16) & TEE_BIT == TEE_BIT)
        ]
        if not prices:
            raise _ApiError(403, f"No {'tee enabled ' if tee else ''}apporder published for app {order['app']}")
        if order["appmaxprice"] < min(prices):
            raise _ApiError(
                403, f"appmaxprice for app {order['app']} is too low, actual best price is {min(prices)} nRLC"
            )

    def _check_matchable_dataset(self, order: dict[str, Any]) -> None:
        """As the real API: a request order naming a dataset needs a published dataset order for it."""
        if order["dataset"] == ZERO:
            return
        prices = [
            r["order"]["datasetprice"]
            for r in self._books["datasetorders"].values()
            if r["status"] == "open"
            and r["order"]["dataset"] == order["dataset"]
            and r["order"]["workerpoolrestrict"] in (ZERO, order["workerpool"])
            and r["order"]["apprestrict"] in (ZERO, order["app"])
            and r["order"]["requesterrestrict"] in (ZERO, order["requester"])
        ]
        if not prices:
            raise _ApiError(403, f"No datasetorder published for dataset {order['dataset']}")
        if order["datasetmaxprice"] < min(prices):
            raise _ApiError(
                403,
                f"datasetmaxprice for dataset {order['dataset']} is too low, actual best price is {min(prices)} nRLC",
            )

    def _unpublisher(self, kind: _Kind) -> Callable[[web.Request], Any]:
        async def unpublish(request: web.Request) -> web.Response:
            authorized = await self._authorized(request)
            try:
                body = await request.json()
            except ValueError:
                raise _ApiError(400, "body must be JSON") from None
            target = body.get("target", "unpublish_orderHash")
            mine = sorted(
                (r for r in self._books[kind.path].values() if r["status"] == "open" and r["signer"] == authorized),
                key=lambda r: r["publicationTimestamp"],
            )
            name = kind.path[:-1]
            if target == "unpublish_orderHash":
                wanted = str(body.get("orderHash", "")).lower()
                record = self._books[kind.path].get(wanted)
                if record is None or record["status"] != "open":
                    raise _ApiError(403, f"{name} with orderHash {wanted} is not published")
                if record["signer"] != authorized:
                    raise _ApiError(403, f"only order signer {record['signer']} can unpublish an order")
                chosen = [record]
            elif target in ("unpublish_last", "unpublish_all"):
                resource = _address(body, kind.resource)
                mine = [r for r in mine if r["order"][kind.resource] == resource]
                chosen = mine[-1:] if target == "unpublish_last" else mine[::-1]
                if not chosen:
                    raise _ApiError(
                        403, f"no open {name} published by signer {authorized} for {kind.resource} {resource}"
                    )
            else:
                raise _ApiError(400, "target must be unpublish_orderHash, unpublish_last or unpublish_all")
            for record in chosen:  # the real API deletes unpublished orders: GET by hash answers 404
                del self._books[kind.path][record["orderHash"]]
            return web.json_response({"ok": True, "unpublished": [r["orderHash"] for r in chosen]})

        return unpublish


def _page(query: Any, items: list[Any]) -> tuple[list[Any], int, int]:
    """Slice `items` by pageIndex/pageSize (pageSize 10..1000, default 20) or the legacy `page` offset."""
    if "pageIndex" in query or "pageSize" in query:
        limit = _int(query, "pageSize", minimum=MIN_PAGE_SIZE) or DEFAULT_PAGE_SIZE
        if limit > MAX_PAGE_SIZE:
            raise _ApiError(400, f"pageSize must be <= {MAX_PAGE_SIZE}")
        skip = (_int(query, "pageIndex") or 0) * limit
    else:
        limit, skip = DEFAULT_PAGE_SIZE, _int(query, "page") or 0
    return items[skip : skip + limit], skip, limit


def _next_page(length: int, skip: int, limit: int) -> dict[str, int]:
    return {"nextPage": skip + limit} if length == limit else {}


def _tags_ok(order: dict[str, Any], min_tag: int | None, max_tag: int | None) -> bool:
    tag = int(order["tag"], 16)
    return (min_tag is None or tag & min_tag == min_tag) and (max_tag is None or tag & ~max_tag == 0)


def _restrictions(q: Any, *kinds: str) -> Callable[[dict[str, Any]], bool]:
    """What the app, dataset and workerpool books filter alike: each `<kind>restrict` of an order against the
    query's `<kind>` (an address or "any"; strict with `is<Kind>Strict=true`), and the minTag/maxTag bits."""
    wanted = [(f"{k}restrict", _address(q, k, any_ok=True), _bool(q, f"is{k.capitalize()}Strict")) for k in kinds]
    min_tag, max_tag = _tag(q, "minTag"), _tag(q, "maxTag")
    return lambda o: all(_restrict(o[f], who, strict) for f, who, strict in wanted) and _tags_ok(o, min_tag, max_tag)


def _app_filter(q: Any) -> Callable[[dict[str, Any]], bool]:
    app, owner_ok = _address(q, "app", any_ok=True), _address(q, "appOwner")
    if app is None and owner_ok is None:
        raise _ApiError(400, "app or appOwner is required")
    restricted = _restrictions(q, "dataset", "workerpool", "requester")
    return lambda o: (app in (None, "any") or o["app"] == app) and restricted(o)


def _dataset_filter(q: Any) -> Callable[[dict[str, Any]], bool]:
    ds = _address(q, "dataset", any_ok=True)
    if ds is None and _address(q, "datasetOwner") is None:
        raise _ApiError(400, "dataset or datasetOwner is required")
    restricted = _restrictions(q, "app", "workerpool", "requester")
    return lambda o: (ds in (None, "any") or o["dataset"] == ds) and restricted(o)


def _workerpool_filter(q: Any) -> Callable[[dict[str, Any]], bool]:
    wp = _address(q, "workerpool", any_ok=True)
    restricted = _restrictions(q, "app", "dataset", "requester")
    category, min_trust = _int(q, "category"), _int(q, "minTrust")
    return lambda o: (
        (wp in (None, "any") or o["workerpool"] == wp)
        and (category is None or o["category"] == category)
        and (min_trust is None or min_trust <= 1 or o["trust"] >= min_trust)
        and restricted(o)
    )


def _request_filter(q: Any) -> Callable[[dict[str, Any]], bool]:
    app, ds, rq, ben = (_address(q, n, any_ok=True) for n in ("app", "dataset", "requester", "beneficiary"))
    wp = _address(q, "workerpool", any_ok=True)
    category, max_trust = _int(q, "category"), _int(q, "maxTrust")
    min_tag, max_tag = _tag(q, "minTag"), _tag(q, "maxTag")

    def match(field: str, wanted: str | None, o: dict[str, Any]) -> bool:
        return wanted in (None, "any") or o[field] == wanted

    return lambda o: (
        match("app", app, o)
        and match("dataset", ds, o)
        and match("requester", rq, o)
        and match("beneficiary", ben, o)
        and _restrict(o["workerpool"], wp, False)
        and (category is None or o["category"] == category)
        and (max_trust is None or o["trust"] <= max_trust)
        and _tags_ok(o, min_tag, max_tag)
    )


_FILTERS: dict[str, Callable[[Any], Callable[[dict[str, Any]], bool]]] = {
    "apporders": _app_filter,
    "datasetorders": _dataset_filter,
    "workerpoolorders": _workerpool_filter,
    "requestorders": _request_filter,
}
