"""Shared pytest set-up: fixture modules of each area are registered here."""
from __future__ import annotations

pytest_plugins: list[str] = [
]
