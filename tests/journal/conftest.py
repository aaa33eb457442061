"""Fixtures of the journal suite: every test runs once per journal backend.

A backend is a way to get a fresh, empty journal database for one test, as
a URL: an SQLite file in the test's tmp_path, the in-memory ``sqlite://``,
and a fresh schema on the PostgreSQL server of ``tests/_pgtest.py``
(skipped, saying how to run it, when that server is absent; failing
instead under ``ACTIONQUEUES_REQUIRE_POSTGRESQL=1``, as in CI).

The journal under test (``journal``) plays the process that runs queues: its
owner is ``"original"``, its clock a :class:`FakeClock` (``clock``) and its
heartbeat is off, so leases only expire when a test moves a clock.
``open_other`` opens a second journal on the same database, as another
process (the recovering one) would: another owner, and its own FakeClock,
by default already past the original owner's lease. An in-memory database
cannot be opened twice, so tests that need ``open_other`` run only on the
backends that can (see ``pytest_generate_tests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import _pgtest
import pytest

from actionqueues import Journal, open_journal
from actionqueues.testing import FakeClock

from .helpers import WORLD

#: The original owner's lease, in seconds of the FakeClock.
LEASE = 30.0
#: When each test's clock starts (a realistic Unix time).
START = 1_700_000_000.0


@dataclass(frozen=True)
class Backend:
    """How to get an empty journal database for one test.

    Attributes:
        name: The pytest id.
        shared: Whether a second journal opened on the URL sees the same data.
        database: Given the test's tmp_path, a context manager yielding the
            URL of an empty database (and dropping it afterwards).
    """

    name: str
    shared: bool
    database: Callable[[Path], AbstractContextManager[str]]


@contextlib.contextmanager
def _sqlite_file(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'journal' / 'runs.db'}"


@contextlib.contextmanager
def _sqlite_memory(tmp_path: Path) -> Iterator[str]:
    yield "sqlite://"


def _backends() -> list[Backend]:
    return [
        Backend("sqlite-file", True, _sqlite_file),
        Backend("sqlite-memory", False, _sqlite_memory),
        Backend("postgresql", True, _postgresql),
    ]


@contextlib.contextmanager
def _postgresql(tmp_path: Path) -> Iterator[str]:
    with _pgtest.fresh_schema() as url:
        yield url


BACKENDS = _backends()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test on every backend; a test that opens a second journal, on shared ones."""
    if "backend" in metafunc.fixturenames:
        usable = [b for b in BACKENDS if b.shared or "open_other" not in metafunc.fixturenames]
        metafunc.parametrize(
            "backend",
            [
                pytest.param(b, id=b.name, marks=_pgtest.marks() if b.name == "postgresql" else ())
                for b in usable
            ],
        )


@pytest.fixture
def backend() -> Backend:  # pragma: no cover - always parametrized by pytest_generate_tests
    """The journal backend this test runs on."""
    raise AssertionError("parametrized by pytest_generate_tests")


@pytest.fixture
def journal_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty journal database of this test's backend."""
    with backend.database(tmp_path) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    """The original process's wall clock."""
    return FakeClock(START)


@pytest.fixture(autouse=True)
def world(clock: FakeClock) -> Iterator[None]:
    """A fresh external world; each action call takes one second of ``clock``."""
    WORLD.reset(clock)
    yield
    WORLD.reset(None)


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite never sleeps for real: a queue or recovery left with its default sleep fails."""

    def refuse(seconds: float) -> None:
        pytest.fail(f"the real time.sleep was called with {seconds!r}")

    async def refuse_async(seconds: float, result: object = None) -> object:
        pytest.fail(f"the real asyncio.sleep was called with {seconds!r}")

    monkeypatch.setattr(time, "sleep", refuse)
    monkeypatch.setattr(asyncio, "sleep", refuse_async)


@pytest.fixture
def journal(journal_url: str, clock: FakeClock) -> Iterator[Journal]:
    """The journal of the original process (owner "original", no heartbeat thread)."""
    opened = open_journal(journal_url, clock=clock, owner="original", lease=LEASE, heartbeat=False)
    yield opened
    opened.close()


class OpenOther(Protocol):
    """Opens another journal on the test's database, as another process would."""

    def __call__(self, owner: str = "recoverer", *, clock: FakeClock | None = None) -> Journal:
        """``clock`` defaults to a FakeClock just past the original owner's lease."""


@pytest.fixture
def open_other(
    backend: Backend, journal_url: str, journal: Journal, clock: FakeClock
) -> Iterator[OpenOther]:
    """Factory: a second journal on the same database, with another owner and FakeClock."""
    opened: list[Journal] = []
    primary = clock

    def factory(owner: str = "recoverer", *, clock: FakeClock | None = None) -> Journal:
        other = open_journal(
            journal_url,
            owner=owner,
            clock=clock if clock is not None else FakeClock(primary.now + LEASE + 1),
            lease=LEASE,
            heartbeat=False,
        )
        opened.append(other)
        return other

    yield factory
    for other in opened:
        other.close()
