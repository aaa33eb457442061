"""``actionqueues demo``: a sign-up across three made-up systems.

Three SQLite tables stand in for the systems a sign-up touches: the user
database, the billing provider and the mailing list. Alice signs up
cleanly. Bob's sign-up hits a billing blip that is retried, then the mailing
list rejects him for good, and everything already done for him is undone.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TextIO

from ._action import Action
from ._events import BaseListener, RetryScheduled
from ._queue import ActionQueue
from .exceptionfactory import DoublingBackoffExceptionFactory

__all__ = ["run_demo"]

_COLORS = {"ok": "32", "retry": "33", "fail": "31", "undo": "35", "title": "1", "dim": "2"}
_TABLES = ("users", "billing_customers", "mailing_list")


class _Timeline:
    """Prints one line per event, with the time since the start."""

    def __init__(self, out: TextIO, color: bool, clock: Callable[[], float]) -> None:
        self.out, self.color, self.clock = out, color, clock
        self.start = clock()

    def paint(self, kind: str, text: str) -> str:
        return f"\033[{_COLORS[kind]}m{text}\033[0m" if self.color else text

    def event(self, kind: str, system: str, text: str) -> None:
        elapsed = f"{(self.clock() - self.start) * 1000:7.1f} ms"
        marks = {"ok": "✔", "retry": "↻", "fail": "✘", "undo": "↩", "dim": "·"}
        mark = self.paint(kind, marks[kind])
        print(f"  {self.paint('dim', elapsed)}  {mark} {system:<13} {text}", file=self.out)

    def title(self, text: str) -> None:
        print(f"\n{self.paint('title', text)}", file=self.out)


class _TimelineListener(BaseListener):
    """Shows the queue's own retry decisions on the timeline."""

    def __init__(self, timeline: _Timeline) -> None:
        self.timeline = timeline

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        self.timeline.event(
            "retry",
            "queue",
            f"attempt {event.attempt} asked for a retry: "
            f"backing off {event.delay * 1000:.0f} ms, then calling again",
        )


class _SystemAction(Action):
    """Inserts one row into a table on execute, deletes it on rollback."""

    system = ""
    table = ""

    def __init__(self, db: sqlite3.Connection, timeline: _Timeline, email: str) -> None:
        self.db, self.timeline, self.email = db, timeline, email
        self.row_id: int | None = None

    def execute(self) -> None:
        self.timeline.event("dim", self.system, f"calling for {self.email}")
        self.check()
        cursor = self.db.execute(f"INSERT INTO {self.table} (email) VALUES (?)", (self.email,))
        self.db.commit()
        self.row_id = cursor.lastrowid
        self.timeline.event("ok", self.system, f"created {self.table} row {self.row_id}")

    def check(self) -> None:
        """Raise here to simulate the remote system failing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.email}>"

    def rollback(self) -> None:
        if self.row_id is None:
            self.timeline.event("undo", self.system, "nothing to undo (the call never succeeded)")
            return
        self.db.execute(f"DELETE FROM {self.table} WHERE id = ?", (self.row_id,))
        self.db.commit()
        self.timeline.event("undo", self.system, f"deleted {self.table} row {self.row_id}")
        self.row_id = None


class _CreateUser(_SystemAction):
    system, table = "user db", "users"


class _CreateBillingCustomer(_SystemAction):
    system, table = "billing", "billing_customers"

    def __init__(
        self, db: sqlite3.Connection, timeline: _Timeline, email: str, *, blips: int = 0
    ) -> None:
        super().__init__(db, timeline, email)
        self.blips = blips
        self.retries = DoublingBackoffExceptionFactory(retries=3, ms_backoff_initial=100)

    def check(self) -> None:
        if self.blips:
            self.blips -= 1
            try:
                raise ConnectionError("503 Service Unavailable")
            except ConnectionError as exc:
                self.timeline.event("retry", self.system, f"{exc}: will retry")
                self.retries.raise_exception(original_exception=exc)


class _SubscribeMailingList(_SystemAction):
    system, table = "mailing list", "mailing_list"

    def __init__(
        self, db: sqlite3.Connection, timeline: _Timeline, email: str, *, reject: bool = False
    ) -> None:
        super().__init__(db, timeline, email)
        self.reject = reject

    def check(self) -> None:
        if self.reject:
            self.timeline.event("fail", self.system, "422: address is on the suppression list")
            raise ValueError(f"mailing list rejected {self.email}")


def _counts(db: sqlite3.Connection, email: str) -> dict[str, int]:
    return {
        table: db.execute(f"SELECT COUNT(*) FROM {table} WHERE email = ?", (email,)).fetchone()[0]
        for table in _TABLES
    }


def run_demo(
    out: TextIO,
    *,
    color: bool = False,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Run the sign-up demo, printing its timeline to ``out``; return an exit code."""
    db = sqlite3.connect(":memory:")
    for table in _TABLES:
        db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
    timeline = _Timeline(out, color, clock)

    listener = _TimelineListener(timeline)

    timeline.title("1. alice@example.com signs up: every system answers")
    alice = ActionQueue(sleep=sleep, listeners=[listener])
    for step in (_CreateUser, _CreateBillingCustomer, _SubscribeMailingList):
        alice.add(step(db, timeline, "alice@example.com"))
    alice.execute()
    timeline.event("ok", "queue", "sign-up complete")

    timeline.title("2. bob@example.com signs up: billing blips, the mailing list refuses")
    bob = ActionQueue(sleep=sleep, listeners=[listener])
    bob.add(_CreateUser(db, timeline, "bob@example.com"))
    bob.add(_CreateBillingCustomer(db, timeline, "bob@example.com", blips=1))
    bob.add(_SubscribeMailingList(db, timeline, "bob@example.com", reject=True))
    try:
        bob.execute()
    except ValueError as exc:
        timeline.event("fail", "queue", f"execute() raised {type(exc).__name__}: {exc}")
        timeline.event("undo", "queue", "rolling back every started step, newest first")
        report = bob.rollback()
        timeline.event("ok", "queue", f"rolled back {len(report.rolled_back)} steps, 0 failed")
    else:  # pragma: no cover - the scenario always fails
        raise AssertionError("bob's sign-up was meant to fail")

    timeline.title("3. What is left behind")
    leftovers = 0
    for email in ("alice@example.com", "bob@example.com"):
        counts = _counts(db, email)
        shown = ", ".join(f"{table}: {count}" for table, count in counts.items())
        print(f"  {email:<18} {shown}", file=out)
        if email.startswith("bob"):
            leftovers = sum(counts.values())
    verdict = (
        timeline.paint("ok", "no rows left behind for bob")
        if leftovers == 0
        else timeline.paint("fail", f"{leftovers} rows left behind for bob")
    )
    print(f"\n  {verdict}", file=out)
    db.close()
    return 0 if leftovers == 0 else 1
