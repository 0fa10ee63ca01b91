"""Input intake: download an image that a user gave as a URL, without letting the URL reach our network.

What it is for: `fetch_image(url)` returns the bytes of a public image, or raises `InputRejected` with a
message that can be shown to the user as is. The defences, in the order a request meets them:

- the URL: http or https only, no user name or password in it, a sane length, no legacy numeric IPv4 form
  (`http://0x7f.1/`, `http://2130706433/`) and no IP literal outside the public address space;
- every address the host name resolves to is checked by the connector's own resolver, i.e. the addresses
  that are checked are the only ones the connection may use (no DNS-rebinding window), and the peer address
  of every socket is checked once more just before it connects;
- redirects are followed by hand, at most `max_redirects`, each target checked like the first URL;
- the size limit is enforced while streaming (Content-Length is checked first but not trusted), the whole
  download has one deadline, and the bytes must be an image of an accepted format (not a web page) and of a
  shape that can be sent back (judged from the header, on the image threads: never on the event loop).

`DownloadLimiter` bounds how many downloads run at once: `per_user` for one user (default 2) and `overall`
for everyone (default 16). A user's further downloads wait their turn, in order; beyond `max_waiting` of
them (default 8) a new one is refused at once with a message (`DownloadsBusy`), so that 60 links sent in a
burst neither open 60 connections nor pile up work that the per-user job limits would refuse afterwards.
The pipeline takes a slot around each download (links and Telegram files alike).

The address rules are an explicit table (`address_denial`), not `ipaddress.is_global`, which calls some
special ranges global. Only loopback and private networks (RFC 1918, ULA) can be allowed, and only through
an explicit setting (devnet and tests); link-local (cloud metadata), multicast, reserved, unspecified,
shared (CGNAT) and the IPv6 forms that embed an IPv4 address are always refused.

What it must never do: connect to a refused address, use proxies from the environment, keep cookies, or log
a URL's path or query (they may carry a user's secret): logs show the host only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bot import images
from bot.errors import DownloadsBusy, InputRejected
from bot.settings import Settings

log = logging.getLogger(__name__)


# --- the address table -------------------------------------------------------------------------------------

_LOOPBACK = "a loopback address"
_PRIVATE = "a private network address"

_V4_LOOPBACK = ip_network("127.0.0.0/8")
_V4_PRIVATE = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_V4_DENIED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "an unspecified address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("169.254.0.0/16", "a link-local address"),  # includes the cloud metadata 169.254.169.254
        ("192.0.0.0/24", "a reserved protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),  # includes the broadcast 255.255.255.255
    )
)

_V6_LOOPBACK = IPv6Address("::1")
_V6_PRIVATE = ip_network("fc00::/7")  # unique local addresses
_V6_GLOBAL_UNICAST = ip_network("2000::/3")
_V6_DENIED: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "an unspecified address"),
        ("::ffff:0:0/96", "an IPv4-mapped address"),
        ("::/96", "an IPv4-compatible address"),
        ("64:ff9b::/96", "a NAT64 address"),
        ("64:ff9b:1::/48", "a NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo address"),
        ("2001::/23", "a reserved protocol address"),
        ("2001:db8::/32", "a documentation address"),
        ("2002::/16", "a 6to4 address"),  # deprecated (RFC 7526); it would also reach the embedded IPv4
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a segment-routing address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)


def address_denial(
    address: str | IPv4Address | IPv6Address, *, allow_loopback: bool = False, allow_private: bool = False
) -> str | None:
    """Why the bot must not connect to `address` (a short phrase), or None when it may.

    Raises ValueError when `address` is not an IP address. IPv6 addresses must lie in the global unicast
    range 2000::/3 and outside the special ranges above; an IPv6 form that embeds an IPv4 address
    (mapped, compatible, NAT64, 6to4, Teredo) is refused whatever it embeds.
    """
    ip = ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, IPv4Address):
        if ip in _V4_LOOPBACK:
            return None if allow_loopback else _LOOPBACK
        if any(ip in net for net in _V4_PRIVATE):
            return None if allow_private else _PRIVATE
        return next((reason for net, reason in _V4_DENIED if ip in net), None)
    if ip.scope_id:
        ip = IPv6Address(str(ip).split("%", 1)[0])
    if ip == _V6_LOOPBACK:
        return None if allow_loopback else _LOOPBACK
    if ip in _V6_PRIVATE:
        return None if allow_private else _PRIVATE
    reason = next((reason for net, reason in _V6_DENIED if ip in net), None)
    if reason is None and ip not in _V6_GLOBAL_UNICAST:
        reason = "a reserved address"
    return reason


# --- the fetch policy --------------------------------------------------------------------------------------

#: built-in limits, used when no settings are given (bot.images mirrors the worker's limits)
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
_CHUNK = 64 * 1024
_USER_AGENT = "segbot-intake/1 (+image fetch for a Telegram user)"


@dataclass(frozen=True)
class FetchPolicy:
    """The limits of one download. `FetchPolicy()` is the safe default: nothing local is reachable."""

    max_bytes: int = images.DEFAULT_MAX_BYTES
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    max_aspect: float = images.DEFAULT_MAX_ASPECT
    min_side: int = images.DEFAULT_MIN_SIDE
    timeout: float = DEFAULT_TIMEOUT_S
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    allow_loopback: bool = False
    allow_private: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("max_bytes and max_pixels must be positive")
        if not (0 < self.timeout <= 600 and 0 < self.connect_timeout <= 600):
            raise ValueError("timeouts must be positive and at most 600 s")
        if not 0 <= self.max_redirects <= 10:
            raise ValueError("max_redirects must be between 0 and 10")
        if self.min_side < 1 or (self.max_aspect and self.max_aspect < 1):
            raise ValueError("min_side must be at least 1 and max_aspect at least 1 (or 0: unchecked)")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **options: Any) -> FetchPolicy:
        """The policy of `settings` (None: the built-in defaults), then `options` on top.

        Raises TypeError for an unknown option, ValueError for an out-of-range value.
        """
        return cls.of(settings, **options)

    @classmethod
    def of(cls, limits: FetchPolicy | Settings | None = None, **options: Any) -> FetchPolicy:
        """`limits` as a policy (a policy itself, the settings' policy, or the defaults for None), with
        `options` replacing single fields. Raises TypeError for an unknown option, ValueError for an
        out-of-range value."""
        if isinstance(limits, FetchPolicy):
            policy = limits
        elif limits is None:
            policy = cls()
        else:
            policy = cls(
                max_bytes=limits.max_image_bytes,
                max_pixels=limits.max_image_pixels,
                max_aspect=limits.max_image_aspect,
                min_side=limits.min_image_side,
                timeout=limits.url_fetch_timeout,
                max_redirects=limits.url_max_redirects,
                allow_loopback=limits.url_allow_loopback,
                allow_private=limits.url_allow_private,
            )
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown fetch option(s): {', '.join(sorted(unknown))}")
        return replace(policy, **options) if options else policy

    def image_limits(self) -> images.ImageLimits:
        """The image checks of a download (bytes, pixels, shape): what `bot.images` judges from the header."""
        return images.ImageLimits(
            max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_aspect=self.max_aspect, min_side=self.min_side
        )

    def denial(self, address: str | IPv4Address | IPv6Address) -> str | None:
        """`address_denial` under this policy."""
        return address_denial(address, allow_loopback=self.allow_loopback, allow_private=self.allow_private)


# --- URL checks --------------------------------------------------------------------------------------------

_NOT_A_LINK = "That does not look like a web link. Send a link that starts with http:// or https://."
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


def _refused_address(reason: str) -> InputRejected:
    return InputRejected(
        f"That link points to {reason}, not to a public web server, so I will not fetch it. "
        "Send a link to an image on a public website."
    )


def check_url(url: str | URL, policy: FetchPolicy | None = None) -> URL:
    """The parsed URL if the bot may try to fetch it; raises InputRejected otherwise.

    Only IP literals can be judged here: resolved addresses are checked again at connect time.
    """
    policy = policy or FetchPolicy()
    if isinstance(url, str):
        url = url.strip()
        if len(url) > MAX_URL_LENGTH:
            raise InputRejected("That link is too long.")
        try:
            url = URL(url)
        except (ValueError, TypeError):
            raise InputRejected(_NOT_A_LINK) from None
    if len(str(url)) > MAX_URL_LENGTH:
        raise InputRejected("That link is too long.")
    if not url.is_absolute() or url.scheme.lower() not in ("http", "https"):
        raise InputRejected(_NOT_A_LINK if not url.scheme else "I only fetch http:// and https:// links.")
    if url.raw_user or url.raw_password:
        raise InputRejected(
            "Links with a user name or password in them are not accepted. Send a public link to the image."
        )
    host = (url.host or "").rstrip(".").lower()
    try:
        port = url.port
    except ValueError:
        raise InputRejected(_NOT_A_LINK) from None
    if not host or "%" in host or port == 0:
        raise InputRejected(_NOT_A_LINK)
    if (host == "localhost" or host.endswith(".localhost")) and not policy.allow_loopback:
        raise _refused_address(_LOOPBACK)
    _check_host_literal(host, policy)
    return url


def _check_host_literal(host: str, policy: FetchPolicy) -> None:
    """Refuse IP literals outside the policy and the legacy numeric forms that resolvers accept."""
    try:
        literal: IPv4Address | IPv6Address | None = ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        reason = policy.denial(literal)
        if reason:
            raise _refused_address(reason)
        return
    if all(_NUMERIC_LABEL.fullmatch(label) for label in host.split(".")):
        try:
            legacy = IPv4Address(socket.inet_aton(host))
        except OSError:
            raise InputRejected(_NOT_A_LINK) from None
        reason = policy.denial(legacy)
        if reason:
            raise _refused_address(reason)
        raise InputRejected("Write the address in the usual form (like 93.184.216.34) or use a host name.")


# --- connect-time checks -----------------------------------------------------------------------------------


class _AddressRefused(OSError):
    """Raised inside aiohttp's connector when a resolved address is refused; carries the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _GuardedResolver(AbstractResolver):
    """Resolves with the system resolver and refuses the whole name if ANY of its addresses is refused."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            reason = self._policy.denial(address)
            if reason:
                log.info("url refused host=%s reason=%r", host, reason)
                raise _AddressRefused(reason)
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        """Nothing to release: getaddrinfo runs in the loop's executor."""


def _guarded_socket_factory(policy: FetchPolicy) -> Callable[[Any], socket.socket]:
    """Defence in depth: every socket the connector opens is checked against the policy just before it
    connects, whatever path the address came by (resolver or IP literal)."""

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        reason = policy.denial(str(sockaddr[0]))
        if reason:
            raise _AddressRefused(reason)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


# --- the download ------------------------------------------------------------------------------------------

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PAGE_TYPES = ("text/", "application/xhtml", "application/json", "application/xml", "application/javascript")


async def fetch_image(url: str, limits: FetchPolicy | Settings | None = None, **options: Any) -> bytes:
    """Download the image at `url` and return its bytes (still to be checked with `bot.images.check_image`).

    `limits` is a `FetchPolicy` or the bot's Settings (`FetchPolicy.from_settings`: MAX_IMAGE_BYTES,
    URL_FETCH_TIMEOUT, URL_ALLOW_LOOPBACK, ...); None means the built-in safe defaults, which refuse every
    local address. `options` override single fields of `FetchPolicy` (e.g. `max_bytes=...`). Raises
    InputRejected, whose text is meant for the user.
    """
    policy = FetchPolicy.of(limits, **options)
    target = check_url(url, policy)
    host = target.host
    try:
        async with asyncio.timeout(policy.timeout):
            async with _session(policy) as session:
                data = await _follow(session, target, policy)
    except TimeoutError:
        log.info("url refused host=%s reason=timeout", host)
        raise InputRejected(
            "The image took too long to download. Send the image itself, or a link to a faster server."
        ) from None
    await _check_is_image(data, policy)
    log.info("url fetched host=%s bytes=%d", host, len(data))
    return data


def _session(policy: FetchPolicy) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=_GuardedResolver(policy),
        socket_factory=_guarded_socket_factory(policy),
        use_dns_cache=False,
        force_close=True,
        limit=2,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # no proxy from the environment: it would be the one connecting
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,  # a compressed body is not inflated (no zip bomb); it fails the image check
        timeout=aiohttp.ClientTimeout(total=None, connect=policy.connect_timeout),
        headers={"User-Agent": _USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
    )


async def _follow(session: aiohttp.ClientSession, target: URL, policy: FetchPolicy) -> bytes:
    """GET `target`, following at most `policy.max_redirects` redirects, each one checked again."""
    for _hop in range(policy.max_redirects + 1):
        try:
            async with session.get(target, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    target = _redirect_target(resp, policy)
                    continue
                if resp.status != 200:
                    raise InputRejected(
                        f"The server answered {resp.status} {resp.reason or ''}".rstrip()
                        + " instead of the image. Check the link, or send the image itself."
                    )
                _check_content_type(resp)
                data = await _read_limited(resp, policy.max_bytes)
        except aiohttp.ClientConnectorError as exc:
            raise _connect_error(exc) from None
        except aiohttp.ClientError:
            raise InputRejected("The download failed. Check the link, or send the image itself.") from None
        return data
    raise InputRejected(f"That link redirects more than {policy.max_redirects} times. Send a direct link to the image.")


def _redirect_target(resp: aiohttp.ClientResponse, policy: FetchPolicy) -> URL:
    location = resp.headers.get("Location", "")
    if not location:
        raise InputRejected("The server redirected without saying where. Send a direct link to the image.")
    try:
        target = resp.url.join(URL(location))
    except (ValueError, TypeError):
        raise InputRejected("The server redirected to an invalid link.") from None
    return check_url(target, policy)


def _connect_error(exc: aiohttp.ClientConnectorError) -> InputRejected:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _AddressRefused):
            return _refused_address(cause.reason)
        cause = getattr(cause, "os_error", None) or cause.__cause__
    if isinstance(exc, aiohttp.ClientSSLError):
        return InputRejected("The secure connection to that server failed (its certificate is not valid).")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return InputRejected("I could not find that server. Check the link.")
    return InputRejected("I could not connect to that server. Check the link, or send the image itself.")


def _check_content_type(resp: aiohttp.ClientResponse) -> None:
    ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype.startswith(_PAGE_TYPES):
        raise InputRejected(
            "That link leads to a web page, not to an image file. Open the image itself "
            "and send its address (it usually ends in .jpg or .png), or send the image."
        )


async def _read_limited(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    too_big = InputRejected(
        f"That image is too large: the limit is {max_bytes // (1024 * 1024)} MB. Send a smaller one."
    )
    declared = resp.headers.get("Content-Length", "")
    if re.fullmatch(r"[0-9]{1,20}", declared) and int(declared) > max_bytes:
        raise too_big
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        buf += chunk
        if len(buf) > max_bytes:
            raise too_big
    return bytes(buf)


async def _check_is_image(data: bytes, policy: FetchPolicy) -> None:
    """The header says an accepted image of a deliverable shape (on the image threads: a GIF's frames are
    counted there, and a page of HTML is sniffed there too)."""
    await images.identify_async(data, policy.image_limits())


# --- how many downloads at once ----------------------------------------------------------------------------

DEFAULT_DOWNLOADS_PER_USER = 2
DEFAULT_DOWNLOADS_OVERALL = 16
DEFAULT_DOWNLOADS_WAITING = 8


class _UserDownloads:
    __slots__ = ("entered", "gate")

    def __init__(self, per_user: int) -> None:
        self.gate = asyncio.Semaphore(per_user)
        self.entered = 0  # running and waiting


class DownloadLimiter:
    """At most `per_user` downloads of one user and `overall` downloads in all at once; a user's next ones
    wait in turn (a waiting user holds no overall slot), and more than `max_waiting` waiting are refused.

    One limiter per event loop (the pipeline owns one). Use: `async with limiter.slot(user): ...`.
    """

    def __init__(
        self,
        per_user: int = DEFAULT_DOWNLOADS_PER_USER,
        overall: int = DEFAULT_DOWNLOADS_OVERALL,
        max_waiting: int = DEFAULT_DOWNLOADS_WAITING,
    ) -> None:
        if per_user <= 0 or overall <= 0 or max_waiting < 0:
            raise ValueError("download limits must be positive (max_waiting may be 0)")
        self.per_user, self.overall, self.max_waiting = per_user, overall, max_waiting
        self._overall = asyncio.Semaphore(overall)
        self._users: dict[Any, _UserDownloads] = {}

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DownloadLimiter:
        """The limiter of the settings (MAX_DOWNLOADS_PER_USER, MAX_DOWNLOADS, MAX_DOWNLOADS_WAITING_PER_USER);
        None: the built-in defaults."""
        if settings is None:
            return cls()
        return cls(settings.max_downloads_per_user, settings.max_downloads, settings.max_downloads_waiting_per_user)

    def pending(self, user: Any) -> int:
        """The user's downloads running or waiting now."""
        state = self._users.get(user)
        return state.entered if state else 0

    @contextlib.asynccontextmanager
    async def slot(self, user: Any) -> AsyncIterator[None]:
        """Wait for a download slot of `user` (then one of everyone's). Raises DownloadsBusy at once when
        the user already has `per_user + max_waiting` downloads running or waiting."""
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _UserDownloads(self.per_user)
        if state.entered >= self.per_user + self.max_waiting:
            log.info("event=download_refused user=%s pending=%d", user, state.entered)
            raise DownloadsBusy(
                f"You have {state.entered} pictures still downloading or waiting for their turn. "
                "Wait until they are through, then send this one again."
            )
        state.entered += 1
        try:
            async with state.gate, self._overall:
                yield
        finally:
            state.entered -= 1
            if state.entered == 0 and self._users.get(user) is state:
                del self._users[user]
