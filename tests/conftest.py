"""Shared pytest set-up: fixture modules of each area are registered here."""
from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.fixtures_telegram",
    "tests.fixtures_worker",
    "tests.fixtures_chain",
    "tests.fixtures_market",
    "tests.fixtures_devnet",
    "tests.fixtures_bot",
    "tests.fixtures_e2e",
]
