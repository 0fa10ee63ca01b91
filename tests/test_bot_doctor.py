"""`python -m bot doctor` against the devnet: a good configuration passes, a broken one says what to fix,
a settings file that does not exist is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devnet.up import Devnet

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parent.parent


async def _doctor(net: Devnet, tmp: Path, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    env = {**net.env, "ADMIN_IDS": "910001", **overrides}
    env_file = tmp / "doctor.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items() if v is not None))
    return await _run_doctor(env_file)


async def _run_doctor(env_file: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TELEGRAM_TOKEN", "ADMIN_IDS")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "doctor", "--env-file", str(env_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
    )


async def test_doctor_passes_on_the_devnet(devnet_module: Devnet, tmp_path: Path) -> None:
    proc = await _doctor(devnet_module, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "chain id 31337" in out
    assert "hub contract present" in out
    assert "app orders published" in out
    assert "all checks passed" in out
    assert f"the bot is @{devnet_module.config.bot_username}" in out  # getMe answered with the token
    assert "ADMIN_IDS: 1 admin(s)" in out
    assert devnet_module.bot_token not in out + proc.stderr


async def test_doctor_names_what_is_missing(devnet_module: Devnet, tmp_path: Path) -> None:
    proc = await _doctor(
        devnet_module, tmp_path, APP_ADDRESS="0x" + "12" * 20, WALLET_KEYSTORE=str(tmp_path / "missing.json")
    )
    assert proc.returncode == 1
    assert "APP_ADDRESS is not a deployed app" in proc.stdout
    assert "python -m ledger wallet new" in proc.stdout


async def test_doctor_reports_an_unreachable_rpc(devnet_module: Devnet, tmp_path: Path) -> None:
    proc = await _doctor(devnet_module, tmp_path, RPC_URL="http://127.0.0.1:9/secret-key-path")
    assert proc.returncode == 1
    assert "does not answer" in proc.stdout
    assert "secret-key-path" not in proc.stdout  # RPC URLs are shown redacted


async def test_doctor_refuses_mainnet_without_consent(devnet_module: Devnet, tmp_path: Path) -> None:
    proc = await _doctor(devnet_module, tmp_path, NETWORK="arbitrum")
    assert proc.returncode == 2
    assert "ALLOW_MAINNET" in proc.stderr


async def test_doctor_refuses_a_missing_settings_file(tmp_path: Path) -> None:
    proc = await _run_doctor(tmp_path / "missing.env")
    assert proc.returncode == 2
    assert "missing.env does not exist" in proc.stderr
    assert "all checks passed" not in proc.stdout


async def test_doctor_checks_the_token_and_the_admins(devnet_module: Devnet, tmp_path: Path) -> None:
    wrong = "123456789:" + "x" * 35
    proc = await _doctor(devnet_module, tmp_path, TELEGRAM_TOKEN=wrong, ADMIN_IDS=None)
    assert proc.returncode == 1
    assert "refuses TELEGRAM_TOKEN" in proc.stdout
    assert "ADMIN_IDS is not set" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr


async def test_doctor_refuses_admin_names(devnet_module: Devnet, tmp_path: Path) -> None:
    proc = await _doctor(devnet_module, tmp_path, ADMIN_IDS="@alice")
    assert proc.returncode == 2
    assert "ADMIN_IDS" in proc.stderr
