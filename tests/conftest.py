"""Session-wide test settings: say clearly when the PostgreSQL tests did not run."""

from __future__ import annotations

import _pgtest
import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After the run: a line saying whether the PostgreSQL tests ran, and how to run them."""
    reason = _pgtest.unreachable.cache_info().currsize and _pgtest.unreachable()
    if reason:
        terminalreporter.write_sep("=", "PostgreSQL tests were skipped", yellow=True)
        terminalreporter.write_line(f"{reason}.")
        terminalreporter.write_line(f"To run them, {_pgtest.HOW}.")
