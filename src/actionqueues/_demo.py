"""``actionqueues demo``: a sign-up across three made-up systems.

Three SQLite tables stand in for the systems a sign-up touches: the user
database, the billing provider and the mailing list. Alice signs up
cleanly. Bob's sign-up hits a billing blip that is retried, then the mailing
list rejects him for good, and everything already done for him is undone.

``actionqueues demo --crash`` is the journaled mode: a child process runs
Carol's sign-up in a journaled queue over the same stand-ins (kept in a
SQLite file both processes open) and kills itself with SIGKILL after the
mailing list was called but before the journal recorded the result. The
parent shows the half-done work, recovers the run as another owner would,
and shows that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, TextIO

from ._action import Action
from ._durable import current_step
from ._events import BaseListener, RetryScheduled
from ._journal import ACTIVE_STATUSES, open_journal
from ._queue import ActionQueue
from ._recovery import recover
from ._registry import register_action
from .exceptionfactory import DoublingBackoffExceptionFactory
from .testing import inject_faults

__all__ = ["crash_child", "run_crash_demo", "run_demo"]

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


# -- the journaled mode: a crash, and the recovery that cleans up after it -----------

#: The child's lease: short, so that the parent's clock only has to move a little.
_CHILD_LEASE = 1.0
#: How far ahead of the wall clock the recovering journal's clock runs (past the lease).
_CLOCK_SKEW = _CHILD_LEASE + 0.5
_RUN_NAME = "demo-signup"
_CAROL = "carol@example.com"


class _Display:
    """Where the journaled actions print: the timeline of the process running them."""

    timeline: _Timeline | None = None

    def event(self, kind: str, system: str, text: str) -> None:
        if self.timeline is not None:
            self.timeline.event(kind, system, text)


_display = _Display()


@contextlib.contextmanager
def _systems(path: str) -> Iterator[sqlite3.Connection]:
    """A connection to the stand-ins' SQLite file, committed and closed on exit."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def _create_systems(path: str) -> None:
    with _systems(path) as db:
        for table in _TABLES:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, "
                f"email TEXT NOT NULL, request_key TEXT UNIQUE)"
            )


@dataclass
class _JournaledSystemAction(Action):
    """Inserts one row, tagged with the step's idempotency key; rollback deletes it.

    The state (the dataclass fields) is what the journal keeps: the stand-ins'
    file, the e-mail and, once execute() returned, the row's id. A rollback
    finds the row by the idempotency key, so it also undoes a call whose
    result the journal never saw (the process died first).
    """

    db: str
    email: str
    row_id: int | None = None

    system: ClassVar[str] = ""
    table: ClassVar[str] = ""

    def execute(self) -> None:
        key = current_step().idempotency_key
        _display.event("dim", self.system, f"calling for {self.email}")
        with _systems(self.db) as db:
            # Applied once per key: a call repeated after a crash changes nothing.
            db.execute(
                f"INSERT OR IGNORE INTO {self.table} (email, request_key) VALUES (?, ?)",
                (self.email, key),
            )
            row = db.execute(
                f"SELECT id FROM {self.table} WHERE request_key = ?", (key,)
            ).fetchone()
        self.row_id = int(row[0])
        _display.event("ok", self.system, f"created {self.table} row {self.row_id}")

    def rollback(self) -> None:
        key = current_step().idempotency_key
        with _systems(self.db) as db:
            row = db.execute(
                f"SELECT id FROM {self.table} WHERE request_key = ?", (key,)
            ).fetchone()
            db.execute(f"DELETE FROM {self.table} WHERE request_key = ?", (key,))
        if row is None:
            _display.event("undo", self.system, "nothing to undo (the call never got through)")
        elif self.row_id is None:
            _display.event(
                "undo",
                self.system,
                f"deleted {self.table} row {row[0]}, found by the step's idempotency key "
                f"(the journal never saw the call's result)",
            )
        else:
            _display.event("undo", self.system, f"deleted {self.table} row {row[0]}")


@register_action("actionqueues.demo.create_user")
@dataclass
class _JournaledCreateUser(_JournaledSystemAction):
    system, table = "user db", "users"


@register_action("actionqueues.demo.create_billing_customer")
@dataclass
class _JournaledCreateBillingCustomer(_JournaledSystemAction):
    system, table = "billing", "billing_customers"


@register_action("actionqueues.demo.subscribe_mailing_list")
@dataclass
class _JournaledSubscribeMailingList(_JournaledSystemAction):
    system, table = "mailing list", "mailing_list"


_JOURNALED_STEPS = (
    _JournaledCreateUser,
    _JournaledCreateBillingCustomer,
    _JournaledSubscribeMailingList,
)


def _kill_self() -> None:  # pragma: no cover - runs in the demo's child process
    """Die at once, as a crash would: no cleanup, no journal write."""
    sigkill = getattr(signal, "SIGKILL", None)
    if sigkill is not None:
        os.kill(os.getpid(), sigkill)
    os._exit(137)  # no SIGKILL (Windows), or it did not land yet


def crash_child(
    journal_url: str,
    systems: str,
    start: float,
    out: TextIO,
    *,
    color: bool = False,
    kill: Callable[[], object] = _kill_self,
) -> int:
    """The child of ``demo --crash``: run Carol's sign-up journaled and die half-way.

    ``kill`` ends the process (SIGKILL) after the mailing list's ``execute``
    returned and before the journal recorded its result. It returns only if
    ``kill`` does (tests), with exit code 1.
    """
    timeline = _Timeline(out, color, time.time)
    timeline.start = start
    _display.timeline = timeline
    journal = open_journal(journal_url, lease=_CHILD_LEASE)
    try:
        queue = ActionQueue(journal=journal, name=_RUN_NAME)
        for step_type in _JOURNALED_STEPS:
            queue.add(step_type(systems, _CAROL))
        run_id = str(queue.run_id)
        timeline.event(
            "dim",
            "journal",
            f"run {run_id[:8]} ({_RUN_NAME}) owned by pid {os.getpid()}, "
            f"lease {_CHILD_LEASE:g} s (renewed while it lives)",
        )
        returned = 0

        def crash_after_the_third_call(point: str) -> None:
            nonlocal returned
            if point != "after_execute":
                return
            returned += 1
            if returned == len(_JOURNALED_STEPS):
                timeline.event(
                    "fail",
                    "process",
                    f"pid {os.getpid()} kills itself (SIGKILL): the mailing list call "
                    f"returned, the journal has not recorded it",
                )
                out.flush()
                kill()

        with inject_faults(crash_after_the_third_call):
            queue.execute()
        timeline.event("fail", "process", "still alive: the crash did not happen")
        return 1
    finally:
        _display.timeline = None
        journal.close()


def _counts_line(path: str, email: str) -> tuple[str, int]:
    with _systems(path) as db:
        counts = {
            table: int(
                db.execute(f"SELECT COUNT(*) FROM {table} WHERE email = ?", (email,)).fetchone()[0]
            )
            for table in _TABLES
        }
    shown = ", ".join(f"{table}: {count}" for table, count in counts.items())
    return f"  {email:<18} {shown}", sum(counts.values())


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The child imports this very copy of actionqueues, installed or not.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def run_crash_demo(
    out: TextIO,
    *,
    color: bool = False,
    journal_url: str | None = None,
    python: str = sys.executable,
) -> int:
    """Run ``demo --crash``, printing its timeline to ``out``; return an exit code.

    Raises:
        ValueError: ``journal_url``'s journal already has active runs (the
            demo recovers every abandoned run of its journal: give it its own).
    """
    from ._cli_runs import Painter, print_timeline  # noqa: PLC0415 - the CLI imports us

    workdir = tempfile.mkdtemp(prefix="actionqueues-demo-")
    systems = os.path.join(workdir, "systems.db")
    url = journal_url or "sqlite:///" + os.path.join(workdir, "runs.db")
    _create_systems(systems)
    with open_journal(url, heartbeat=False) as journal:
        busy = journal.runs(status=ACTIVE_STATUSES, limit=1)
        url = journal.url
    if busy:
        raise ValueError(
            f"the journal {url} has active runs (e.g. {busy[0].run_id}); the crash demo "
            f"recovers every abandoned run of its journal: give it a journal of its own"
        )
    timeline = _Timeline(out, color, time.time)
    paint = timeline.paint

    timeline.title(f"1. {_CAROL} signs up in a journaled queue; the process dies half-way")
    print(f"  {paint('dim', 'journal  ')} {url}", file=out)
    print(f"  {paint('dim', 'stand-ins')} {systems}", file=out)
    out.flush()
    command = [python, "-m", "actionqueues", "demo", "--color", "always" if color else "never"]
    command += ["--crash-child", url, systems, repr(timeline.start)]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=_child_env(),
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        for line in child.stdout:
            out.write(line)
            out.flush()
        problems = child.stderr.read()
    killed = child.returncode in (-getattr(signal, "SIGKILL", 9), 137)
    if not killed:
        timeline.event("fail", "process", f"the child exited with status {child.returncode}")
        print(problems, file=out, end="")
        return 1
    timeline.event("fail", "process", f"child pid {child.pid} is dead (killed by SIGKILL)")

    timeline.title("2. What the dead process left behind")
    line, _ = _counts_line(systems, _CAROL)
    print(line, file=out)
    with open_journal(url, heartbeat=False) as journal:
        (run,) = journal.runs(status=ACTIVE_STATUSES, name=_RUN_NAME)
        steps = journal.timeline(run.run_id).steps
    states = ", ".join(f"step {s.index} {s.status}" for s in steps)
    print(
        f"  journal: run {run.run_id[:8]} is {paint('retry', run.status)} ({states}), "
        f"owned by the dead pid {child.pid}",
        file=out,
    )
    print(
        f"  {paint('fail', 'half-done work')}: a user and a billing customer exist for carol, "
        f"and a mailing-list call whose outcome the journal does not know",
        file=out,
    )

    timeline.title("3. Recovery, from another process")
    print(
        paint(
            "dim",
            f"  A real deployment runs `actionqueues recover` (or actionqueues.recover(journal))\n"
            f"  once the dead owner's lease has expired: 30 s by default, {_CHILD_LEASE:g} s for "
            f"this child.\n  Rather than wait, this demo opens the journal with a clock "
            f"{_CLOCK_SKEW:g} s ahead.",
        ),
        file=out,
    )

    def skewed() -> float:
        return time.time() + _CLOCK_SKEW

    _display.timeline = timeline
    try:
        with open_journal(url, clock=skewed) as journal:
            timeline.event("dim", "recovery", f"claiming abandoned runs as {journal.owner}")
            report = recover(journal)
            final = journal.timeline(run.run_id)
    finally:
        _display.timeline = None
    for result in report.runs:
        kind = "ok" if result.outcome in ("rolled_back", "resumed") else "fail"
        timeline.event(kind, "recovery", f"run {result.run_id[:8]}: {result.outcome}")

    timeline.title("4. What is left behind")
    line, leftovers = _counts_line(systems, _CAROL)
    print(line, file=out)
    clean = leftovers == 0 and final.run.status == "rolled_back"
    verdict = (
        paint("ok", "no rows left behind for carol; the run is rolled back")
        if clean
        else paint("fail", f"{leftovers} rows left behind for carol; run {final.run.status}")
    )
    print(f"\n  {verdict}", file=out)

    timeline.title(f"5. actionqueues runs show {run.run_id[:8]} --journal {url}")
    print_timeline(final, out, Painter(color), now=skewed(), journal=url)
    print(
        paint(
            "dim",
            f"\n  (events after the crash are {_CLOCK_SKEW:g} s late: the recovering "
            f"clock ran ahead)\n  The journal and the stand-ins are kept in {workdir}; "
            f"try: actionqueues runs list --journal {url}",
        ),
        file=out,
    )
    return 0 if clean else 1
