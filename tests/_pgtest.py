"""The PostgreSQL server the tests use, and a fresh schema per test.

The server is ``postgresql://postgres@127.0.0.1:5432/test`` unless
``ACTIONQUEUES_TEST_POSTGRESQL`` names another. When it cannot be reached,
the PostgreSQL tests are skipped with a message saying how to run them,
unless ``ACTIONQUEUES_REQUIRE_POSTGRESQL=1`` (set by ``.ci/run``): then they
fail.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
URL = os.environ.get("ACTIONQUEUES_TEST_POSTGRESQL") or DEFAULT_URL
REQUIRED = os.environ.get("ACTIONQUEUES_REQUIRE_POSTGRESQL") == "1"
HOW = (
    "start PostgreSQL on 127.0.0.1:5432 (database test, user postgres, trust auth) or set "
    "ACTIONQUEUES_TEST_POSTGRESQL=postgresql://user@host:port/database; "
    "ACTIONQUEUES_REQUIRE_POSTGRESQL=1 makes them fail instead of skipping"
)


@functools.cache
def unreachable() -> str | None:
    """Why the server cannot be used, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    try:
        with psycopg.connect(URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"cannot connect to {URL}: {str(exc).strip().splitlines()[0]}"
    return None


def marks() -> list[pytest.MarkDecorator]:
    """Marks for a PostgreSQL test: skipped (saying how to run it) when the server is absent."""
    reason = unreachable()
    if reason is None or REQUIRED:
        return []
    return [pytest.mark.skip(reason=f"PostgreSQL tests skipped: {reason}; to run them, {HOW}")]


@contextlib.contextmanager
def fresh_schema(prefix: str = "aqt") -> Iterator[str]:
    """A journal URL on a schema of its own, dropped afterwards."""
    import psycopg

    reason = unreachable()
    if reason is not None:
        pytest.fail(f"PostgreSQL is required (ACTIONQUEUES_REQUIRE_POSTGRESQL=1): {reason}")
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in URL else "?"
    try:
        yield f"{URL}{separator}schema={schema}"
    finally:
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def terminate_sessions(journal: Any) -> int:
    """Terminate the server sessions of ``journal``'s pools (named after its owner)."""
    import psycopg

    with psycopg.connect(URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (_session_name(journal),),
        ).fetchall()
    return len(rows)


def kill_before_commit(journal: Any, nth: int) -> Callable[[str], None]:
    """A fault hook terminating ``journal``'s sessions just before its nth commit."""
    hits = 0

    def hook(point: str) -> None:
        nonlocal hits
        if point == "before_commit":
            hits += 1
            if hits == nth:
                terminate_sessions(journal)

    return hook


def waits_on_a_lock(watcher: Any, journal: Any) -> bool:
    """Whether one of ``journal``'s connections waits on a lock now (one look, over
    ``watcher``, a connection of the test's own)."""
    row = watcher.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = %s AND wait_event_type = 'Lock'",
        (_session_name(journal),),
    ).fetchone()
    return bool(row and row[0])


def _session_name(journal: Any) -> str:
    """The ``application_name`` of ``journal``'s connections (as the journal sets it)."""
    return str(journal._connection_options["application_name"])
