"""Shared pytest set-up: fixture modules of each area are registered here, the heavy fixtures mark their
tests slow, and the books' fixtures (`ledger_path`, `fresh_ledger`, `fresh_db`) give each test new books."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from ledger import Ledger
from ledger.db import introspect

pytest_plugins: list[str] = [
    "tests.fixtures_telegram",
    "tests.fixtures_worker",
    "tests.fixtures_chain",
    "tests.fixtures_market",
    "tests.fixtures_devnet",
    "tests.fixtures_bot",
    "tests.fixtures_e2e",
]


# Fixtures that start a whole devnet, a workerpool, a bot process or TensorFlow: a test using one is in the slow tier
# whether or not it says so, so that `pytest -m "not slow"` stays the inner loop of a minute or less.
HEAVY_FIXTURES = frozenset(
    {"devnet_module", "botnet", "e2e_devnet", "e2e", "pool_env", "worker_weights_r50", "run_worker"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a heavy fixture (see HEAVY_FIXTURES)."""
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# In CI a skipped test is a test that did not run: the network-namespace (SSRF), browser and SDK tests
# skip only when their tool is missing, and CI installs every tool. The one skip that is not a gap is a
# CPU without native bfloat16 (the hardware decides).
ALLOWED_CI_SKIPS = ("bfloat16",)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CI=true, any skip not in ALLOWED_CI_SKIPS fails the run (reasons printed with -rs)."""
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    gaps = [r for r in skipped if not any(word in str(r.longrepr) for word in ALLOWED_CI_SKIPS)]
    if gaps:
        for report in gaps:
            print(f"\nci: a test was skipped in CI: {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- the books, in sqlite-utils' `fresh_db` style: every test gets its own new file ---------------------------


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """A new books file, created and migrated, then closed: for a test that reopens it or writes it raw."""
    path = tmp_path / "books.db"
    Ledger(path).close()
    return path


@pytest.fixture
def fresh_ledger(ledger_path: Path) -> Iterator[Ledger]:
    """A `Ledger` on new books (a file in the test's temp dir, migrated, empty), closed when the test ends."""
    with Ledger(ledger_path) as book:
        yield book


@pytest.fixture
def fresh_db(ledger_path: Path) -> Iterator[sqlite_utils.Database]:
    """The same books seen as stored, through sqlite-utils on a connection of its own (`db["jobs"].rows`,
    `db["transfers"].columns_dict`): for reading what the ledger wrote, never for writing it."""
    conn = sqlite3.connect(ledger_path)
    try:
        yield introspect(conn)
    finally:
        conn.close()
