"""Client of iExec's Secret Management Service (SMS): the requester's web2 and requester secrets.

Wire format, as the official SDK 9.0.1 speaks it (devnet/node_modules/iexec/src/common/sms/push.js, check.js,
common/utils/api-utils.js) and the SMS answers it (iexec-sms `AppComputeSecretController`):

- web2 secret (e.g. the result encryption key): create `POST /secrets/web2?ownerAddress=<0xChecksummed>&
  secretName=<name>`, update `PUT` on the same URL; exists: `HEAD` on it (2xx = yes, 404 = no).
- requester secret: create `POST /requesters/<0xChecksummed>/secrets/<name>`; exists: `HEAD` on it.
  There is **no update**: the SMS answers 409 Conflict to a second POST, and the SDK refuses before asking.
  A requester secret therefore lives forever under its name; use a fresh name per use.
- body: the secret value as is (`Content-Type: text/plain`); header `Authorization`: the EIP-191
  personal_sign signature (0x hex, 65 bytes) of the 32 bytes keccak256(keccak256("IEXEC_SMS_DOMAIN") ‖
  owner (20 bytes) ‖ keccak256(name) ‖ keccak256(value)). Requester secrets sign the same challenge with
  the requester as owner (the SDK reuses `getChallengeForSetWeb2Secret`).
- statuses: success 2xx (the SMS answers 204 No Content); 401 bad signature; 409 already exists; 400 bad
  name (requester secrets: 1..64 characters of [0-9A-Za-z_-]) or value over 4 KB (413 for app secrets).

This client checks names and sizes before sending, never logs a value or a signature, and raises SmsError
(with `.status`, None when the SMS did not answer) for everything that is not success.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

import aiohttp
from eth_account.messages import encode_defunct
from eth_utils import is_address, keccak, to_checksum_address

from iexec.errors import SmsError

__all__ = ["SmsClient", "SmsError", "sms_challenge", "check_secret_name", "MAX_SECRET_BYTES"]

log = logging.getLogger(__name__)

_DOMAIN_HASH = keccak(b"IEXEC_SMS_DOMAIN")
_NAME = re.compile(r"[0-9A-Za-z_-]{1,64}")
#: The SMS refuses secret values over 4 KB ("Secret size should not exceed 4 Kb").
MAX_SECRET_BYTES = 4096


def sms_challenge(owner: str, name: str, value: str) -> bytes:
    """The 32 bytes an owner signs (personal_sign) to set secret `name` to `value`."""
    return keccak(
        _DOMAIN_HASH
        + bytes.fromhex(to_checksum_address(owner)[2:])
        + keccak(name.encode("utf-8"))
        + keccak(value.encode("utf-8"))
    )


def check_secret_name(name: str) -> str:
    """`name` when the SMS accepts it (1..64 of [0-9A-Za-z_-]); SmsError (status None) otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SmsError(
            f"secret name {str(name)[:80]!r} is invalid: use 1 to 64 characters of letters, digits, '-' and '_'"
        )
    return name


def _check_value(value: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise SmsError("a secret value is a non-empty string")
    raw = value.encode("utf-8")
    if len(raw) > MAX_SECRET_BYTES:
        raise SmsError(f"a secret value is at most {MAX_SECRET_BYTES} bytes (got {len(raw)})")
    return raw


def _address(address: str) -> str:
    if not isinstance(address, str) or not is_address(address):
        raise SmsError(f"not an Ethereum address: {str(address)[:60]!r}")
    return to_checksum_address(address)


class SmsClient:
    """Async client of one SMS at `url` (e.g. https://sms.arbitrum-sepolia-testnet.iex.ec)."""

    def __init__(self, url: str, *, session: aiohttp.ClientSession | None = None, timeout: float = 15.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SmsError(f"SMS url must be http(s): {str(url)[:80]!r}")
        self.url = url.rstrip("/")
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> SmsClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client made it."""
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._own_session = True
        return self._session

    @staticmethod
    def _web2_path(owner: str, name: str) -> str:
        return f"/secrets/web2?ownerAddress={quote(owner, safe='')}&secretName={quote(name, safe='')}"

    @staticmethod
    def _requester_path(address: str, name: str) -> str:
        return f"/requesters/{address}/secrets/{quote(name, safe='')}"

    async def _request(self, method: str, path: str, *, body: bytes | None = None, auth: str | None = None) -> int:
        headers = {}
        if body is not None:
            headers["Content-Type"] = "text/plain"
        if auth is not None:
            headers["Authorization"] = auth
        try:
            async with self._get_session().request(
                method, self.url + path, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SmsError(f"the SMS at {self.url} did not answer: {type(exc).__name__}") from None

    async def _exists(self, path: str, what: str) -> bool:
        status = await self._request("HEAD", path)
        if 200 <= status < 300:
            return True
        if status == 404:
            return False
        raise SmsError(f"the SMS answered {status} when asked whether {what} exists", status)

    async def _push(self, method: str, path: str, account: Any, owner: str, name: str, value: str, kind: str) -> None:
        raw = _check_value(value)
        auth = (
            "0x"
            + bytes(account.sign_message(encode_defunct(primitive=sms_challenge(owner, name, value))).signature).hex()
        )
        status = await self._request(method, path, body=raw, auth=auth)
        log.info("event=sms_push kind=%s name=%s method=%s status=%s", kind, name, method, status)
        if 200 <= status < 300:
            return
        if status == 409:
            raise SmsError(f"{kind} secret {name!r} already exists for {owner} and can't be created again", status)
        if status == 401:
            raise SmsError(f"the SMS refused the signature of {owner} for {kind} secret {name!r}", status)
        if status == 404 and method == "PUT":
            raise SmsError(f"{kind} secret {name!r} does not exist for {owner}: nothing to update", status)
        if status in (400, 413):
            raise SmsError(f"the SMS refused {kind} secret {name!r} (bad name or value too large)", status)
        raise SmsError(f"the SMS answered {status} to {method} of {kind} secret {name!r}", status)

    # -------------------------------------------------------------------------------- web2 secrets

    async def web2_secret_exists(self, owner: str, name: str) -> bool:
        """Whether `owner` has a web2 secret called `name`."""
        owner = _address(owner)
        return await self._exists(self._web2_path(owner, check_secret_name(name)), f"web2 secret {name!r}")

    async def push_web2_secret(self, account: Any, name: str, value: str, *, update: bool = False) -> None:
        """Create (POST) or, with `update`, replace (PUT) the account's web2 secret `name`."""
        owner = to_checksum_address(account.address)
        path = self._web2_path(owner, check_secret_name(name))
        await self._push("PUT" if update else "POST", path, account, owner, name, value, "web2")

    async def set_web2_secret(self, account: Any, name: str, value: str) -> None:
        """Create the web2 secret, or update it when it already exists (as the SDK's forceUpdate)."""
        exists = await self.web2_secret_exists(account.address, name)
        await self.push_web2_secret(account, name, value, update=exists)

    # --------------------------------------------------------------------------- requester secrets

    async def requester_secret_exists(self, address: str, name: str) -> bool:
        """Whether requester `address` has a secret called `name`."""
        address = _address(address)
        return await self._exists(self._requester_path(address, check_secret_name(name)), f"requester secret {name!r}")

    async def push_requester_secret(self, account: Any, name: str, value: str) -> None:
        """Create the account's requester secret `name` (SmsError status 409 when it already exists:
        requester secrets cannot be updated)."""
        owner = to_checksum_address(account.address)
        path = self._requester_path(owner, check_secret_name(name))
        await self._push("POST", path, account, owner, name, value, "requester")

    async def health(self) -> bool:
        """True when the SMS answers a secret lookup (2xx or 404) on its real path."""
        try:
            await self._exists(self._web2_path("0x" + "00" * 20, "health"), "health probe")
        except SmsError:
            return False
        return True
