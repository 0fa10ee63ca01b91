"""The bot's settings: one pydantic-settings object read from the environment and `.env`.

Every field has an environment variable of the same name in upper case (`TELEGRAM_TOKEN`, `NETWORK`, ...);
`.env.example` lists them all with a comment. Secrets are `SecretStr`: printing the settings, logging them
or putting them in an error message never shows them. The network preset comes from `iexec.networks`; the
real-money preset is refused unless `ALLOW_MAINNET=true`.

TEE mode (`TEE_MODE`, resolved by `tee`): every request order carries the network's TEE tag (TDX, 0x...09),
the photo is published encrypted, its key goes to the SMS as a requester secret and the result comes back
encrypted to the bot's RSA key (`result_key_path`). `auto` follows the preset (on where the network's
workerpools run TDX only); the devnet runs both kinds, so it is off there unless `TEE_MODE=on`.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from iexec.networks import Network, resolve_network
from iexec.orders import Tag, tag_from_bits, tag_to_int
from ledger.amounts import parse_rlc

NRLC_PER_RLC = 10**9
#: IPFS_UPLOAD_URL value that keeps the encrypted photo on the bot's own input server.
IPFS_UPLOAD_OFF = ("none", "off")


class Settings(BaseSettings):
    """Everything the bot can be told. Amounts are integers in nRLC (1 RLC = 10^9 nRLC)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    # Telegram
    telegram_token: SecretStr | None = None
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    admin_ids: Annotated[tuple[int, ...], NoDecode] = ()
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_secret: SecretStr | None = None
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443

    # Chain and market
    network: str = "devnet"
    allow_mainnet: bool = False
    rpc_url: str = ""
    chain_id: int | None = None
    hub_address: str = ""
    rlc_address: str = ""
    market_url: str = ""
    ipfs_gateway: str = ""
    # TEE (TDX) mode: auto (on where the preset's workerpools run TDX), on, off
    tee_mode: Literal["auto", "on", "off"] = "auto"
    sms_url: str = ""
    # Where the encrypted photo goes in TEE mode: an IPFS node's API (kubo /api/v0/add); empty = the preset's
    # upload node; "none" = the bot's own input server. Standard mode never uploads (the photo is plain).
    ipfs_upload_url: str = ""
    # The bot's RSA key for result encryption (encrypted with the wallet password); empty = beside the keystore
    result_key_file: Path | None = None
    max_fee_gwei: int = Field(default=50, gt=0)

    # The app and what a job may cost
    app_address: str = ""
    category: int = Field(default=0, ge=0)
    tag: str = "0x" + "00" * 32
    trust: int = Field(default=0, ge=0)
    app_max_price_nrlc: int = Field(default=100_000_000, ge=0)
    workerpool_max_price_nrlc: int = Field(default=200_000_000, ge=0)
    fee_nrlc: int = Field(default=10_000_000, ge=0)
    # Albums (2-10 photos sent together, one task): each photo adds this to the price; a failed photo of an
    # album gets back its share (`album_share_nrlc`). ALBUM_QUIET_S: how long the album's photos are awaited
    # after the last one arrived.
    album_photo_fee_nrlc: int = Field(default=5_000_000, ge=0)
    album_quiet_s: float = Field(default=1.5, gt=0, le=30)
    worker_args: str = "--max-dim 1024 --min-confidence 0.7"
    # The worker runs Mask R-CNN with random weights (a demo): /start says the shapes mean nothing
    demo_random_weights: bool = False

    # Wallet and books
    wallet_keystore: Path = Path("data/wallet.json")
    wallet_password: SecretStr | None = None
    wallet_password_file: Path | None = None
    db_path: Path = Path("data/books.db")
    data_dir: Path = Path("data")

    # Input publishing: the worker fetches the user's photo here
    inputs_listen: str = "127.0.0.1"
    inputs_port: int = 0
    inputs_public_url: str = ""

    # Timing
    match_timeout_s: int = Field(default=300, gt=0)
    start_warning_s: int = Field(default=600, gt=0)
    poll_interval_s: float = Field(default=2.0, gt=0)

    # Per-user limits
    max_jobs_in_flight: int = Field(default=3, gt=0)
    #: pictures of one user that wait in line (reserved) beyond `max_jobs_in_flight` running; then refused
    max_queued_per_user: int = Field(default=10, ge=0)
    max_jobs_per_hour: int = Field(default=20, gt=0)
    max_daily_spend_nrlc: int = Field(default=5 * NRLC_PER_RLC, gt=0)

    # Input checks (at least as strict as the worker's)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=25_000_000, gt=0)
    max_image_aspect: float = Field(default=20.0, ge=1, le=20)  # Telegram refuses photos beyond 20:1
    min_image_side: int = Field(default=32, ge=1)
    max_downloads_per_user: int = Field(default=2, gt=0)
    max_downloads: int = Field(default=16, gt=0)
    max_downloads_waiting_per_user: int = Field(default=8, ge=0)
    url_fetch_timeout: float = Field(default=15.0, gt=0)
    url_max_redirects: int = Field(default=3, ge=0)
    url_allow_loopback: bool = False
    url_allow_private: bool = False

    # Operations
    log_level: str = "INFO"
    low_gas_wei: int = Field(default=10**16, ge=0)
    low_stake_nrlc: int = Field(default=NRLC_PER_RLC, ge=0)

    # Users fund themselves (/link): RLC sent from a linked address to the bot's wallet becomes credit
    # The smallest transfer credited by itself, in RLC ("0.1"); smaller ones are held for an admin (/unclaimed)
    min_deposit_rlc: str = "0.1"
    # Seconds between two deposit watcher cycles
    deposit_poll_s: float = Field(default=5.0, gt=0)
    # Blocks on top of a transfer before it is credited; unset = the network preset's (devnet 0)
    deposit_confirmations: int | None = Field(default=None, ge=0)

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: object) -> object:
        """Admins are numeric Telegram ids, comma- or space-separated; usernames are refused."""
        if isinstance(value, str):
            parts = [p for p in value.replace(",", " ").split() if p]
            for p in parts:
                if not re.fullmatch(r"-?[0-9]{1,16}", p):  # ASCII only: isdigit() takes "٣٤٥"
                    raise ValueError(f"ADMIN_IDS must be numeric Telegram user ids, not {p!r}")
            return tuple(int(p) for p in parts)
        if isinstance(value, int):
            return (value,)
        return value

    @field_validator("min_deposit_rlc", mode="before")
    @classmethod
    def _check_min_deposit(cls, value: object) -> object:
        """MIN_DEPOSIT_RLC is an amount of RLC (at most 9 decimals), at least 1 nRLC."""
        text = str(value).strip()
        if parse_rlc(text) <= 0:
            raise ValueError("MIN_DEPOSIT_RLC must be more than 0")
        return text

    @field_validator("deposit_confirmations", mode="before")
    @classmethod
    def _empty_confirmations(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("result_key_file", mode="before")
    @classmethod
    def _empty_path(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.mode == "webhook":
            if self.webhook_secret is None or not self.webhook_secret.get_secret_value():
                raise ValueError("webhook mode needs WEBHOOK_SECRET (Telegram sends it back on every update)")
            if not self.webhook_url.startswith("https://") and not self.webhook_url.startswith("http://127."):
                raise ValueError("WEBHOOK_URL must be an https:// URL")
        self.resolved_network  # noqa: B018 - raises for an unknown or unconsented network
        if not self.tee and tag_to_int(self.tag) & Tag.TEE:
            raise ValueError(
                "TAG has the TEE bit but TEE mode is off: set TEE_MODE=on (a TEE deal needs the "
                "encrypted-input path) or clear the TEE bit of TAG"
            )
        return self

    @cached_property
    def resolved_network(self) -> Network:
        """The network preset with this configuration's overrides applied."""
        return resolve_network(
            self.network,
            allow_mainnet=self.allow_mainnet,
            rpc_url=self.rpc_url,
            chain_id=self.chain_id,
            hub=self.hub_address,
            rlc=self.rlc_address,
            market_url=self.market_url,
            ipfs_gateway=self.ipfs_gateway,
        )

    @property
    def tee(self) -> bool:
        """True when jobs run as TDX tasks (TEE_MODE=on, or auto on a network whose preset has a TEE tag)."""
        if self.tee_mode == "auto":
            return bool(getattr(self.resolved_network, "tee_tag", ""))
        return self.tee_mode == "on"

    @property
    def request_tag(self) -> bytes:
        """The tag of every request order: TAG, plus the network's TEE tag in TEE mode (never without the
        TEE bit there, whatever TAG says)."""
        tag = tag_to_int(self.tag)
        if self.tee:
            tee_tag = getattr(self.resolved_network, "tee_tag", "") or tag_from_bits(tdx=True)
            tag |= tag_to_int(tee_tag) | Tag.TEE
        return int(tag).to_bytes(32, "big")

    @property
    def resolved_sms_url(self) -> str:
        """SMS_URL, else the preset's SMS ("" when neither has one)."""
        return (self.sms_url or getattr(self.resolved_network, "sms_url", "") or "").rstrip("/")

    @property
    def resolved_ipfs_upload(self) -> str:
        """The IPFS API the encrypted photo is uploaded to in TEE mode ("" = the bot's own input server)."""
        value = self.ipfs_upload_url.strip()
        if value.lower() in IPFS_UPLOAD_OFF:
            return ""
        return (value or self.resolved_network.ipfs_upload or "").rstrip("/")

    @property
    def result_key_path(self) -> Path:
        """RESULT_KEY_FILE, else `result-key.pem` beside the wallet keystore."""
        return self.result_key_file or Path(self.wallet_keystore).parent / "result-key.pem"

    @property
    def min_deposit_nrlc(self) -> int:
        """MIN_DEPOSIT_RLC in nRLC."""
        return parse_rlc(self.min_deposit_rlc)

    @property
    def resolved_deposit_confirmations(self) -> int:
        """DEPOSIT_CONFIRMATIONS, else the network preset's (a transfer is credited once this deep)."""
        if self.deposit_confirmations is not None:
            return self.deposit_confirmations
        return self.resolved_network.deposit_confirmations

    @property
    def max_price_nrlc(self) -> int:
        """What one job reserves: the maximum app and workerpool prices plus the fee."""
        return self.app_max_price_nrlc + self.workerpool_max_price_nrlc + self.fee_nrlc

    def album_price_nrlc(self, photos: int) -> int:
        """What an album of `photos` pictures reserves: one job's maximum price plus the per-photo fee each."""
        return self.max_price_nrlc + photos * self.album_photo_fee_nrlc

    def wallet_password_value(self) -> str | None:
        """The keystore password from WALLET_PASSWORD or WALLET_PASSWORD_FILE (None: ask at a prompt)."""
        if self.wallet_password is not None:
            return self.wallet_password.get_secret_value()
        if self.wallet_password_file is not None:
            return self.wallet_password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return None
