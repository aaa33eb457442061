"""Session-wide test settings: say clearly when the PostgreSQL tests did not run."""

from __future__ import annotations

from collections.abc import Iterator

import _pgtest
import pytest

from actionqueues import Journal, open_journal


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL journal URL on a fresh schema, dropped afterwards."""
    with _pgtest.fresh_schema() as fresh:
        yield fresh


@pytest.fixture
def journal(url: str) -> Iterator[Journal]:
    """A journal on ``url`` (the test module's fixture), without a heartbeat."""
    opened = open_journal(url, heartbeat=False)
    yield opened
    opened.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After the run: a line saying whether the PostgreSQL tests ran, and how to run them."""
    reason = _pgtest.unreachable.cache_info().currsize and _pgtest.unreachable()
    if reason:
        terminalreporter.write_sep("=", "PostgreSQL tests were skipped", yellow=True)
        terminalreporter.write_line(f"{reason}.")
        terminalreporter.write_line(f"To run them, {_pgtest.HOW}.")
