"""Client of the iExec market API: read the order books, fetch orders by hash, publish and unpublish.

The API is iexec-market-api (`api/openapi.yaml`): lists answer `{ok, count, orders: [{orderHash, chainId,
publicationTimestamp, signer, status, remaining, order}], nextPage?}` sorted by price, then publication
time, then hash; publishing needs an EIP-712 challenge (`GET /challenge`) signed by the order's signer,
sent as `authorization: <hash>_<signature>_<address>`.

The market is not trusted: every order it returns is parsed, its hash recomputed against the hub's
EIP-712 domain and its signature recovered and compared with the announced signer; a lie is a
MarketReplyError. The client signs only a challenge of the exact expected form, never other typed data a
server sends. Network errors, timeouts, 5xx and 429 are retried under the client's retry policy (iexec.retry;
MarketUnavailable after the bound). This module must never log the authorization header or a key, and
knows nothing of the bot or the ledger.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

import aiohttp
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from iexec.bodies import read_capped
from iexec.errors import BodyTooLarge, MarketError, MarketReplyError, MarketUnavailable, OrderError
from iexec.orders import AppOrder, DatasetOrder, Domain, RequestOrder, WorkerpoolOrder
from iexec.retry import RetryPolicy, retry_async

__all__ = [
    "MarketClient",
    "MarketOrder",
    "Category",
    "challenge_hash",
    "check_challenge",
    "MarketError",
    "MarketUnavailable",
    "MarketReplyError",
    "MarketReplyInvalid",
]

log = logging.getLogger(__name__)

MarketReplyInvalid = MarketReplyError  # the name used in the design notes


class _Transient(Exception):
    """A market answer worth another attempt (network error, timeout, 5xx, 429); its text is the reason."""


OrderT = TypeVar("OrderT", AppOrder, DatasetOrder, WorkerpoolOrder, RequestOrder)

_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_MAX_REPLY = 8 * 1024 * 1024
_CHALLENGE_PREFIX = "Sign this message to log into iExec Gateway: "
_CHALLENGE_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
    ],
    "Challenge": [{"name": "challenge", "type": "string"}],
}
_PATHS = {
    AppOrder: "apporders",
    DatasetOrder: "datasetorders",
    WorkerpoolOrder: "workerpoolorders",
    RequestOrder: "requestorders",
}
_RESOURCE = {AppOrder: "app", DatasetOrder: "dataset", WorkerpoolOrder: "workerpool", RequestOrder: "requester"}


@dataclass(frozen=True)
class MarketOrder(Generic[OrderT]):
    """One published order with the market's metadata; `order` carries its signature."""

    order_hash: str
    chain_id: int
    publication_timestamp: str
    signer: str
    status: str
    remaining: int
    order: OrderT


@dataclass(frozen=True)
class Category:
    """A protocol category: its id, name and reference time (a task's deadlines are multiples of it)."""

    catid: int
    name: str
    description: str
    work_clock_time_ref: int


def check_challenge(typed: Any, chain_id: int) -> dict[str, Any]:
    """The challenge as typed data ready to sign, if it is exactly the market's login challenge.

    Raises MarketReplyError otherwise: a server must not get us to sign an order or anything else.
    """
    try:
        ok = (
            typed["types"] == _CHALLENGE_TYPES
            and typed["primaryType"] == "Challenge"
            and typed["domain"]["name"] == "iExec Gateway"
            and typed["domain"]["version"] == "1"
            and int(typed["domain"]["chainId"]) == chain_id
            and set(typed["domain"]) == {"name", "version", "chainId"}
            and set(typed["message"]) == {"challenge"}
            and isinstance(typed["message"]["challenge"], str)
            and typed["message"]["challenge"].startswith(_CHALLENGE_PREFIX)
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise MarketReplyError("the market's challenge is not a login challenge for this chain; refusing to sign it")
    return {
        "types": _CHALLENGE_TYPES,
        "primaryType": "Challenge",
        "domain": {"name": "iExec Gateway", "version": "1", "chainId": chain_id},
        "message": {"challenge": typed["message"]["challenge"]},
    }


def challenge_hash(typed: dict[str, Any]) -> bytes:
    """The EIP-712 digest of a challenge (chainId as an int or a decimal string)."""
    msg = json.loads(json.dumps(typed))
    msg["domain"]["chainId"] = int(msg["domain"]["chainId"])
    signable = encode_typed_data(full_message=msg)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def _addr(value: str | None) -> str | None:
    if value is None or value == "any":
        return value
    try:
        return to_checksum_address(value)
    except ValueError:
        raise MarketError(f"not an address: {str(value)[:50]!r}") from None


def _tag_hex(tag: int | bytes | str | None) -> str | None:
    if tag is None:
        return None
    if isinstance(tag, int):
        return "0x" + tag.to_bytes(32, "big").hex()
    if isinstance(tag, bytes):
        return "0x" + tag.rjust(32, b"\0").hex()
    return tag


class MarketClient:
    """Async client of one market API for one chain and hub.

    `hub` is the hub address: with `chain_id` it forms the EIP-712 domain every returned order is checked
    against. Pass an aiohttp `session` to share connections (it is then not closed by `close()`). A reply
    body larger than `max_reply` bytes is refused (MarketReplyError) without being read to its end.
    """

    def __init__(
        self,
        base_url: str,
        chain_id: int,
        *,
        hub: str,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        page_size: int = 100,
        max_pages: int = 20,
        max_reply: int = _MAX_REPLY,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise MarketError("market URL must be http(s)")
        if not 10 <= page_size <= 1000:
            raise MarketError("page_size must be between 10 and 1000 (the market's bounds)")
        self.base_url = base_url.rstrip("/")
        self.chain_id = chain_id
        self.domain = Domain(chain_id=chain_id, verifying_contract=hub)
        self._session = session
        self._own_session = session is None
        self.timeout = timeout
        # `retries` retries after the first attempt, waiting `backoff` seconds, then twice as long each time.
        self.retry = RetryPolicy(
            base_delay_s=backoff, max_delay_s=backoff * 2 ** max(0, retries - 1), deadline_s=None, attempts=retries + 1
        )
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_reply = max_reply

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> MarketClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transport ------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _once(
        self, method: str, path: str, params: dict[str, Any], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self._http().request(
            method,
            self.base_url + path,
            params=params,
            json=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
        ) as resp:
            try:
                raw = await read_capped(resp, self.max_reply, f"{method} {path}: reply")
            except BodyTooLarge as exc:
                raise MarketReplyError(str(exc)) from None
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = None
            return resp.status, data

    @overload
    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        allow_404: Literal[False] = False,
    ) -> dict[str, Any]: ...

    @overload
    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        allow_404: bool,
    ) -> dict[str, Any] | None: ...

    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        allow_404: bool = False,
    ) -> dict[str, Any] | None:
        """One API call with retries; returns the JSON object (ok true), or None for an allowed 404."""
        query = {
            "chainId": str(self.chain_id),
            **{
                k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items() if v is not None
            },
        }

        async def attempt() -> dict[str, Any] | None:
            try:
                status, data = await self._once(method, path, query, body, headers or {})
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Transient(str(exc) or type(exc).__name__) from None
            if status >= 500 or status == 429:
                raise _Transient(f"status {status}")
            if status == 404 and allow_404:
                return None
            error = data.get("error") if isinstance(data, dict) else None
            if status != 200:
                raise MarketReplyError(f"market refused {method} {path} ({status}): {str(error)[:300]}")
            if not isinstance(data, dict) or data.get("ok") is not True:
                raise MarketReplyError(f"market reply to {method} {path} is not an ok JSON object")
            return data

        def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
            log.info(
                "event=market_retry method=%s path=%s attempt=%d reason=%s delay=%.2f",
                method,
                path,
                attempt,
                exc,
                delay,
            )

        def give_up(exc: BaseException, attempts: int, waited: float) -> MarketUnavailable:
            return MarketUnavailable(f"market unavailable for {method} {path} after {attempts} attempts: {exc}")

        return await retry_async(
            attempt, self.retry, retry_on=lambda exc: isinstance(exc, _Transient), give_up=give_up, on_retry=on_retry
        )

    # -- parsing --------------------------------------------------------------------------------------

    def _parse(self, cls: type[OrderT], item: Any) -> MarketOrder[OrderT]:
        """A checked MarketOrder from one reply item; raises MarketReplyError on any inconsistency."""
        if not isinstance(item, dict):
            raise MarketReplyError("market order entry is not a JSON object")
        try:
            order = cls.from_market_json(item["order"])
            order_hash = str(item["orderHash"])
            chain_id = int(item["chainId"])
            signer = to_checksum_address(item["signer"])
            remaining = int(item["remaining"])
            status = str(item["status"])
            published = str(item.get("publicationTimestamp", ""))
        except (KeyError, TypeError, ValueError, OrderError) as exc:
            raise MarketReplyError(f"market {cls.__name__} entry has a wrong shape: {exc}") from None
        if not _HASH.fullmatch(order_hash) or chain_id != self.chain_id:
            raise MarketReplyError(f"market {cls.__name__} entry has a bad hash or chain id")
        if "0x" + order.hash(self.domain).hex() != order_hash.lower():
            raise MarketReplyError(f"market {cls.__name__} {order_hash}: the order does not hash to it")
        try:
            recovered = order.signer(self.domain)
        except OrderError:
            raise MarketReplyError(f"market {cls.__name__} {order_hash} carries no valid signature") from None
        if recovered != signer:
            raise MarketReplyError(f"market {cls.__name__} {order_hash} is not signed by its announced signer")
        if isinstance(order, RequestOrder) and signer != order.requester:
            raise MarketReplyError(f"market request order {order_hash} is not signed by its requester")
        if not 0 <= remaining <= order.volume:
            raise MarketReplyError(f"market {cls.__name__} {order_hash} has an impossible remaining volume")
        return MarketOrder(
            order_hash=order_hash.lower(),
            chain_id=chain_id,
            publication_timestamp=published,
            signer=signer,
            status=status,
            remaining=remaining,
            order=order,
        )

    async def _list(self, cls: type[OrderT], params: dict[str, Any], limit: int | None) -> list[MarketOrder[OrderT]]:
        path = "/" + _PATHS[cls]
        found: dict[str, MarketOrder[OrderT]] = {}
        for index in range(self.max_pages):
            data = await self._call("GET", path, {**params, "pageIndex": index, "pageSize": self.page_size})
            items, count = data.get("orders"), data.get("count")
            if not isinstance(items, list) or not isinstance(count, int):
                raise MarketReplyError(f"market reply to GET {path} lacks orders/count")
            for item in items:
                parsed = self._parse(cls, item)
                found.setdefault(parsed.order_hash, parsed)
            if len(items) < self.page_size or len(found) >= count or (limit and len(found) >= limit):
                break
        return list(found.values())[:limit] if limit else list(found.values())

    # -- order books ----------------------------------------------------------------------------------

    async def app_orders(
        self,
        app: str,
        *,
        dataset: str | None = None,
        workerpool: str | None = None,
        requester: str | None = None,
        min_tag: Any = None,
        max_tag: Any = None,
        min_volume: int | None = None,
        strict: bool = False,
        limit: int | None = None,
    ) -> list[MarketOrder[AppOrder]]:
        """Open app orders of `app` usable by the given dataset/workerpool/requester, cheapest first."""
        return await self._list(
            AppOrder,
            {
                "app": _addr(app),
                "dataset": _addr(dataset),
                "workerpool": _addr(workerpool),
                "requester": _addr(requester),
                "minTag": _tag_hex(min_tag),
                "maxTag": _tag_hex(max_tag),
                "minVolume": min_volume,
                "isDatasetStrict": strict,
                "isWorkerpoolStrict": strict,
                "isRequesterStrict": strict,
            },
            limit,
        )

    async def dataset_orders(
        self,
        dataset: str,
        *,
        app: str | None = None,
        workerpool: str | None = None,
        requester: str | None = None,
        min_tag: Any = None,
        max_tag: Any = None,
        limit: int | None = None,
    ) -> list[MarketOrder[DatasetOrder]]:
        """Open dataset orders of `dataset`, cheapest first."""
        return await self._list(
            DatasetOrder,
            {
                "dataset": _addr(dataset),
                "app": _addr(app),
                "workerpool": _addr(workerpool),
                "requester": _addr(requester),
                "minTag": _tag_hex(min_tag),
                "maxTag": _tag_hex(max_tag),
            },
            limit,
        )

    async def workerpool_orders(
        self,
        *,
        category: int | None = None,
        workerpool: str | None = None,
        app: str | None = None,
        dataset: str | None = None,
        requester: str | None = None,
        min_tag: Any = None,
        max_tag: Any = None,
        min_trust: int | None = None,
        min_volume: int | None = None,
        limit: int | None = None,
    ) -> list[MarketOrder[WorkerpoolOrder]]:
        """Open workerpool orders matching the filters, cheapest first."""
        return await self._list(
            WorkerpoolOrder,
            {
                "category": category,
                "workerpool": _addr(workerpool),
                "app": _addr(app),
                "dataset": _addr(dataset),
                "requester": _addr(requester),
                "minTag": _tag_hex(min_tag),
                "maxTag": _tag_hex(max_tag),
                "minTrust": min_trust,
                "minVolume": min_volume,
            },
            limit,
        )

    async def request_orders(
        self,
        *,
        app: str | None = None,
        requester: str | None = None,
        category: int | None = None,
        workerpool: str | None = None,
        limit: int | None = None,
    ) -> list[MarketOrder[RequestOrder]]:
        """Open request orders, highest workerpool price first."""
        return await self._list(
            RequestOrder,
            {"app": _addr(app), "requester": _addr(requester), "category": category, "workerpool": _addr(workerpool)},
            limit,
        )

    async def _get(self, cls: type[OrderT], order_hash: str) -> MarketOrder[OrderT] | None:
        if not _HASH.fullmatch(order_hash):
            raise MarketError(f"not an order hash: {order_hash[:70]!r}")
        data = await self._call("GET", f"/{_PATHS[cls]}/{order_hash}", allow_404=True)
        if data is None:
            return None
        parsed = self._parse(cls, data)
        if parsed.order_hash != order_hash.lower():
            raise MarketReplyError(f"market answered another order than {order_hash}")
        return parsed

    async def get_app_order(self, order_hash: str) -> MarketOrder[AppOrder] | None:
        """The app order with this hash (any status), or None when the market does not know it."""
        return await self._get(AppOrder, order_hash)

    async def get_dataset_order(self, order_hash: str) -> MarketOrder[DatasetOrder] | None:
        """The dataset order with this hash, or None."""
        return await self._get(DatasetOrder, order_hash)

    async def get_workerpool_order(self, order_hash: str) -> MarketOrder[WorkerpoolOrder] | None:
        """The workerpool order with this hash, or None."""
        return await self._get(WorkerpoolOrder, order_hash)

    async def get_request_order(self, order_hash: str) -> MarketOrder[RequestOrder] | None:
        """The request order with this hash, or None."""
        return await self._get(RequestOrder, order_hash)

    # -- publishing -----------------------------------------------------------------------------------

    async def _authorization(self, account: Any) -> str:
        acct = account if hasattr(account, "sign_message") else Account.from_key(account)
        data = await self._call("GET", "/challenge", {"address": acct.address})
        typed = check_challenge(data.get("data"), self.chain_id)
        signature = acct.sign_message(encode_typed_data(full_message=typed)).signature
        return f"0x{challenge_hash(typed).hex()}_0x{bytes(signature).hex()}_{acct.address}"

    async def _publish(self, signed: OrderT, account: Any) -> MarketOrder[OrderT]:
        cls = type(signed)
        if not bytes(signed.sign):
            raise MarketError(f"{cls.__name__} is not signed")
        auth = await self._authorization(account)
        order_hash = "0x" + signed.hash(self.domain).hex()
        try:
            data = await self._call(
                "POST", "/" + _PATHS[cls], body={"order": signed.to_market_json()}, headers={"authorization": auth}
            )
        except MarketReplyError as exc:
            if "already published" not in str(exc):
                raise
            existing = await self._get(cls, order_hash)  # a retried publish that had gone through
            if existing is None:
                raise
            return existing
        parsed = self._parse(cls, data.get("published"))
        if parsed.order_hash != order_hash:
            raise MarketReplyError("market published another order than the one sent")
        log.info("market_published kind=%s order_hash=%s", _PATHS[cls], order_hash)
        return parsed

    async def publish_app_order(self, signed: AppOrder, account: Any) -> MarketOrder[AppOrder]:
        """Publish a signed app order; `account` (the app owner) signs the login challenge."""
        return await self._publish(signed, account)

    async def publish_dataset_order(self, signed: DatasetOrder, account: Any) -> MarketOrder[DatasetOrder]:
        """Publish a signed dataset order; `account` is the dataset owner."""
        return await self._publish(signed, account)

    async def publish_workerpool_order(self, signed: WorkerpoolOrder, account: Any) -> MarketOrder[WorkerpoolOrder]:
        """Publish a signed workerpool order; `account` is the workerpool owner."""
        return await self._publish(signed, account)

    async def publish_request_order(self, signed: RequestOrder, account: Any) -> MarketOrder[RequestOrder]:
        """Publish a signed request order; `account` is the requester. (Matching does not need this.)"""
        return await self._publish(signed, account)

    async def unpublish(self, cls: type[OrderT], order_hash: str, account: Any) -> list[str]:
        """Withdraw one published order of type `cls`; returns the hashes the market unpublished."""
        auth = await self._authorization(account)
        data = await self._call(
            "PUT",
            "/" + _PATHS[cls],
            body={"target": "unpublish_orderHash", "orderHash": order_hash},
            headers={"authorization": auth},
        )
        done = data.get("unpublished")
        if not isinstance(done, list):
            raise MarketReplyError("market reply to unpublish lacks `unpublished`")
        return [str(h) for h in done]

    # -- misc -----------------------------------------------------------------------------------------

    async def categories(self) -> list[Category]:
        """The protocol's categories as the market lists them."""
        data = await self._call("GET", "/categories", {"pageIndex": 0, "pageSize": 1000})
        try:
            return [
                Category(int(c["catid"]), str(c["name"]), str(c["description"]), int(c["workClockTimeRef"]))
                for c in data["categories"]
            ]
        except (KeyError, TypeError, ValueError):
            raise MarketReplyError("market categories have a wrong shape") from None

    async def version(self) -> str:
        """The market API's version string."""
        data = await self._call("GET", "/version")
        if not isinstance(data.get("version"), str):
            raise MarketReplyError("market version reply lacks `version`")
        return data["version"]
