"""`python -m bot doctor`: check a configuration against the network and say what is missing, plainly.

Each check prints one line (ok / warn / FAIL and what to do). Exit code 0 when nothing failed. Never prints
a secret: RPC URLs are shown redacted, the wallet's password and key and the bot token are never shown.

Checked: the settings file (`--env-file`: a missing one is refused before the doctor runs), ADMIN_IDS, the
Telegram token (`getMe` on TELEGRAM_BASE_URL), the RPC and chain id, the hub, the wallet's gas and hub
stake, the app, the market's orders (app orders whose tag fits the mode: the TEE bit in TEE mode, none in
standard mode; workerpool orders whose tag covers them) and, in TEE mode, the SMS and the bot's result key
in it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.logs import redact_url
from bot.settings import Settings


@dataclass
class Check:
    level: str  # "ok", "warn", "FAIL"
    what: str

    def __str__(self) -> str:
        return f"[{self.level:>4}] {self.what}"


async def _telegram_check(settings: Settings, out: Callable[[Check], None]) -> None:
    """getMe with the token on TELEGRAM_BASE_URL: the token is valid and the Bot API answers."""
    from telegram import Bot
    from telegram.error import InvalidToken, TelegramError

    if settings.telegram_token is None or not settings.telegram_token.get_secret_value():
        out(Check("FAIL", "TELEGRAM_TOKEN is not set: the bot cannot talk to Telegram (ask @BotFather)"))
        return
    token = settings.telegram_token.get_secret_value()
    where = redact_url(settings.telegram_base_url)
    try:
        async with Bot(
            token, base_url=settings.telegram_base_url, base_file_url=settings.telegram_base_file_url
        ) as bot:
            me = bot.bot  # initialize() called getMe
    except InvalidToken:
        out(Check("FAIL", f"Telegram ({where}) refuses TELEGRAM_TOKEN: check it with @BotFather"))
        return
    except (TelegramError, OSError) as exc:
        why = str(exc).replace(token, "<token>")[:200]
        out(Check("FAIL", f"Telegram ({where}) does not answer getMe: {type(exc).__name__}: {why}"))
        return
    out(Check("ok", f"Telegram token valid: the bot is @{me.username} (id {me.id})"))


def _admin_check(settings: Settings, out: Callable[[Check], None]) -> None:
    """ADMIN_IDS names at least one numeric Telegram id (the settings refuse anything else)."""
    if not settings.admin_ids:
        out(
            Check(
                "FAIL",
                "ADMIN_IDS is not set: nobody can fund users, refund or deposit; put your numeric "
                "Telegram id there (comma-separated for several)",
            )
        )
        return
    out(Check("ok", f"ADMIN_IDS: {len(settings.admin_ids)} admin(s), numeric ids"))


async def _checks(settings: Settings, out: Callable[[Check], None]) -> None:
    from iexec.tx import close, connect

    _admin_check(settings, out)
    await _telegram_check(settings, out)

    w3 = connect(settings.resolved_network.rpc_url)
    try:
        await _checks_on(settings, out, w3)
    finally:
        await close(w3)


async def _checks_on(settings: Settings, out: Callable[[Check], None], w3: Any) -> None:
    from bot.chain_gateway import usable_offers
    from iexec.hub import Hub
    from iexec.market import MarketClient
    from iexec.orders import Tag, tag_to_int

    net = settings.resolved_network
    try:
        chain_id = await w3.eth.chain_id
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        out(Check("FAIL", f"RPC {redact_url(net.rpc_url)} does not answer ({type(exc).__name__}); set RPC_URL"))
        return
    out(
        Check(
            "ok" if chain_id == net.chain_id else "FAIL",
            f"RPC {redact_url(net.rpc_url)} answers, chain id {chain_id} (expected {net.chain_id})",
        )
    )
    code = await w3.eth.get_code(net.hub)
    if not code:
        out(Check("FAIL", f"no contract at the hub address {net.hub}: wrong network or HUB_ADDRESS"))
        return
    out(Check("ok", f"hub contract present at {net.hub}"))
    hub = Hub(None, net.hub, w3=w3)
    address = _wallet_address(settings, out)
    if address:
        eth = await w3.eth.get_balance(address)
        stake = await hub.view_account(address)
        out(
            Check(
                "ok" if eth >= settings.low_gas_wei else "FAIL",
                f"wallet {address} holds {eth / 10**18:.6f} ETH for gas"
                + ("" if eth >= settings.low_gas_wei else ": send it some (testnet faucet)"),
            )
        )
        enough = stake.stake >= settings.max_price_nrlc
        out(
            Check(
                "ok" if enough else "FAIL",
                f"hub stake {stake.stake / 10**9:g} RLC (locked {stake.locked / 10**9:g})"
                + ("" if enough else ": deposit RLC into the hub (/deposit or `iexec account deposit`)"),
            )
        )
    if not settings.app_address or not await w3.eth.get_code(settings.app_address):
        out(Check("FAIL", "APP_ADDRESS is not a deployed app: deploy worker/iexec.json with the iExec SDK"))
        return
    out(Check("ok", f"app {settings.app_address} is deployed"))
    market = MarketClient(net.market_url, net.chain_id, hub=net.hub)
    try:
        apps = await market.app_orders(settings.app_address)
        pools = await market.workerpool_orders(category=settings.category)
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        out(Check("FAIL", f"market {net.market_url} does not answer: {exc}"))
        return
    finally:
        await market.close()
    mode = "TEE (TDX)" if settings.tee else "standard"
    out(Check("ok", f"mode: {mode} tasks, request tag {_tag_hex(settings.request_tag)} (TEE_MODE={settings.tee_mode})"))
    fitting = [a for a in apps if _app_fits(a.order.tag, settings.request_tag)]
    if not apps:
        out(
            Check(
                "FAIL",
                "0 app orders published for our app: publish one (`iexec app publish`; SDK 9 gives "
                "it the TDX tag 0x...09)",
            )
        )
    elif not fitting:
        tags = ", ".join(sorted({_tag_hex(a.order.tag) for a in apps}))
        fix = (
            "publish a TDX app order (`iexec app publish`, tag 0x...09), or set TEE_MODE=off"
            if settings.tee
            else "publish an app order without the TEE bit (`iexec app publish --tag 0x0`), "
            "or set TEE_MODE=on (auto on arbitrum-sepolia and arbitrum)"
        )
        out(
            Check(
                "FAIL",
                f"{len(apps)} app orders published for our app, none with a tag for {mode} tasks "
                f"(they have {tags}): a {mode} request cannot be matched with them; {fix}",
            )
        )
    else:
        out(Check("ok", f"{len(apps)} app orders published for our app, {len(fitting)} with a tag for {mode} tasks"))
    usable = [p for p in pools if p.order.workerpoolprice <= settings.workerpool_max_price_nrlc]
    out(
        Check(
            "ok" if usable else "FAIL",
            f"{len(pools)} workerpool orders in category {settings.category}, {len(usable)} within the maximum price",
        )
    )
    offers = usable_offers(
        [a.order for a in apps],
        [p.order for p in pools],
        settings.request_tag,
        app_max_price=settings.app_max_price_nrlc,
        workerpool_max_price=settings.workerpool_max_price_nrlc,
    )
    if usable and fitting and not offers:
        tee_pools = [p for p in pools if tag_to_int(p.order.tag) & Tag.TEE]
        hint = (
            "every workerpool order requires TEE (TDX) tasks: set TEE_MODE=on"
            if not settings.tee and len(tee_pools) == len(pools)
            else "no workerpool order's tag covers our app order and request tags (or the prices are too high)"
        )
        out(Check("FAIL", f"no app + workerpool order pair can be matched for {mode} tasks: {hint}"))
    elif offers:
        out(Check("ok", f"{len(offers)} app + workerpool order pairs can be matched for {mode} tasks"))
    if settings.tee:
        await _tee_checks(settings, out, address)


def _tag_hex(tag: Any) -> str:
    from iexec.orders import tag_to_int

    return hex(tag_to_int(tag))


def _app_fits(app_tag: Any, request_tag: Any) -> bool:
    """An app order a request with `request_tag` can use: no bit the request lacks, and the same TEE bit."""
    from iexec.orders import Tag, tag_to_int

    app, wanted = tag_to_int(app_tag), tag_to_int(request_tag)
    return not app & ~wanted and bool(app & Tag.TEE) == bool(wanted & Tag.TEE)


async def _tee_checks(settings: Settings, out: Callable[[Check], None], address: str | None) -> None:
    """TEE mode: the SMS answers, and it holds our wallet's result-encryption key."""
    from iexec.sms import SmsClient
    from iexec.tee import RESULT_KEY_SECRET

    url = settings.resolved_sms_url
    if not url:
        out(Check("FAIL", "TEE mode needs the SMS (Secret Management Service): set SMS_URL"))
        return
    async with SmsClient(url) as sms:
        if not await sms.health():
            out(
                Check(
                    "FAIL",
                    f"the SMS at {redact_url(url)} does not answer: the bot cannot start in TEE mode (check SMS_URL)",
                )
            )
            return
        out(Check("ok", f"the SMS at {redact_url(url)} answers"))
        if address is None:
            return
        try:
            pushed = await sms.web2_secret_exists(address, RESULT_KEY_SECRET)
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            out(Check("FAIL", f"the SMS does not say whether our result key is there: {exc}"))
            return
    if pushed:
        out(Check("ok", f"the SMS holds the wallet's result encryption key ({RESULT_KEY_SECRET})"))
    else:
        out(
            Check(
                "warn",
                f"the SMS does not hold the wallet's result encryption key yet: the bot pushes it "
                f"at its first start in TEE mode (key file {settings.result_key_path})",
            )
        )


def _wallet_address(settings: Settings, out: Callable[[Check], None]) -> str | None:
    from ledger.wallet import wallet_address

    try:
        address = wallet_address(settings.wallet_keystore)
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        out(
            Check(
                "FAIL", f"wallet keystore {settings.wallet_keystore}: {exc} (create one: python -m ledger wallet new)"
            )
        )
        return None
    out(Check("ok", f"wallet keystore {settings.wallet_keystore} ({address})"))
    return address


def run_doctor(settings: Settings, printer: Callable[[str], Any] = print, env_file: str | None = None) -> int:
    """Run every check, print them, return the exit code (1 when something failed)."""
    found: list[Check] = []

    def out(check: Check) -> None:
        found.append(check)
        printer(str(check))

    if env_file is not None:
        out(
            Check("ok", f"settings file {env_file}")
            if Path(env_file).is_file()
            else Check("warn", f"no settings file {env_file}: settings come from the environment only")
        )
    printer(f"network {settings.resolved_network.name} (chain id {settings.resolved_network.chain_id})")
    asyncio.run(_checks(settings, out))
    failed = [c for c in found if c.level == "FAIL"]
    printer("all checks passed" if not failed else f"{len(failed)} problem(s) to fix")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_doctor(Settings()))
