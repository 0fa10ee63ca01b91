"""Settings and network presets: what an operator types is read, checked and never leaked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.settings import Settings
from iexec.networks import ARBITRUM_SEPOLIA, NetworkError, resolve_network


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]  # a pydantic-settings option


def test_defaults_are_the_devnet_and_reserve_max_prices_plus_fee() -> None:
    s = make()
    assert s.resolved_network.name == "devnet"
    assert s.resolved_network.chain_id == 31337
    assert s.max_price_nrlc == s.app_max_price_nrlc + s.workerpool_max_price_nrlc + s.fee_nrlc


def test_secrets_never_show_in_repr_or_str() -> None:
    s = make(telegram_token="123456789:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", wallet_password="hunter2")
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "AAAAAAAAAAAA" not in text
        assert "hunter2" not in text
    assert s.wallet_password_value() == "hunter2"


def test_admin_ids_are_numeric_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_IDS", "11, 22 33")
    assert Settings(_env_file=None).admin_ids == (11, 22, 33)  # type: ignore[call-arg]  # a pydantic-settings option
    monkeypatch.setenv("ADMIN_IDS", "11,@alice")
    with pytest.raises(ValidationError, match="numeric Telegram user ids"):
        Settings(_env_file=None)  # type: ignore[call-arg]  # a pydantic-settings option


def test_mainnet_needs_explicit_consent() -> None:
    with pytest.raises(ValidationError, match="ALLOW_MAINNET"):
        make(network="arbitrum")
    assert make(network="arbitrum", allow_mainnet=True).resolved_network.chain_id == 42161


def test_unknown_network_is_refused() -> None:
    with pytest.raises(NetworkError, match="unknown network"):
        resolve_network("bellecour")


def test_overrides_replace_preset_values_and_empty_means_preset() -> None:
    s = make(network="arbitrum-sepolia", rpc_url="https://rpc.example/key", market_url="")
    assert s.resolved_network.rpc_url == "https://rpc.example/key"
    assert s.resolved_network.market_url == ARBITRUM_SEPOLIA.market_url
    assert s.resolved_network.hub == ARBITRUM_SEPOLIA.hub


def test_webhook_mode_refused_without_secret() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        make(mode="webhook", webhook_url="https://bot.example/hook")
    s = make(mode="webhook", webhook_url="https://bot.example/hook", webhook_secret="s3cret-token")
    assert s.mode == "webhook"


def test_password_file_is_read(tmp_path) -> None:  # type: ignore[no-untyped-def]  # tmp_path: pytest's fixture
    f = tmp_path / "pw"
    f.write_text("from-a-file\n")
    assert make(wallet_password_file=f).wallet_password_value() == "from-a-file"
    assert make().wallet_password_value() is None


def test_env_example_lists_every_setting() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert {f.upper() for f in Settings.model_fields} == names
