"""Registered actions, a ledger of their side effects, and orphaned runs, for the worker tests.

Imported by ``tests/test_worker.py`` and ``tests/test_many_workers.py``, and
by the ``actionqueues worker`` processes they start (``--import
_workers_actions``, with this directory on ``PYTHONPATH``).

- :class:`LedgerStep` is a registered action: ``execute`` applies an effect
  keyed by the step's idempotency key, ``rollback`` undoes it (repeating it is
  harmless) and records the call.
- The ledger is :data:`LEDGER`: a :class:`MemoryLedger` in the test process,
  or, in a process started with ``$AQ_WORKERS_LEDGER`` set, a
  :class:`FileLedger` (an SQLite file the test process reads afterwards),
  which logs each rollback call with the pid and time, and can hold one
  rollback in a **trap** (applied, not yet returned) until the test releases
  it or kills the process.
- :func:`orphans` makes runs whose owner "died": each queue's last started
  step kills it (before or after applying its effect) and nothing it does
  afterwards reaches the journal, as after a SIGKILL.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from actionqueues import Action, ActionQueue, Journal, current_step, register_action
from actionqueues.testing import inject_faults

#: The environment variable naming the ledger file of a worker process.
LEDGER_ENV = "AQ_WORKERS_LEDGER"
#: How long a sprung trap holds a rollback at most (the test kills or releases it first).
TRAP_LIMIT = 120.0


class Crash(BaseException):
    """The simulated death of the process that ran a queue."""


class Ledger(Protocol):
    """Where the actions' side effects are kept."""

    def started(self, key: str) -> None:
        """``execute`` of the step ``key`` (its idempotency key) was called."""

    def apply(self, key: str) -> None:
        """The step's effect is applied."""

    def undo(self, key: str) -> None:
        """The step's effect is undone (a rollback call)."""


@dataclass
class MemoryLedger:
    """The ledger of the test process.

    Attributes:
        effects: Idempotency key -> whether its effect is applied.
        starts: Keys whose ``execute`` was called.
        rollbacks: Key -> how many rollback calls it had.
        calls: (key, thread name) of every rollback call, in order.
        on_rollback: Called with the key at the start of each rollback
            (a test's gate, a clock to advance, a failure to raise).
    """

    effects: dict[str, bool] = field(default_factory=dict)
    starts: set[str] = field(default_factory=set)
    rollbacks: Counter[str] = field(default_factory=Counter)
    calls: list[tuple[str, str]] = field(default_factory=list)
    on_rollback: Callable[[str], object] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, key: str) -> None:
        with self.lock:
            self.starts.add(key)

    def apply(self, key: str) -> None:
        with self.lock:
            self.effects[key] = True

    def undo(self, key: str) -> None:
        if self.on_rollback is not None:
            self.on_rollback(key)
        with self.lock:
            self.effects[key] = False
            self.rollbacks[key] += 1
            self.calls.append((key, threading.current_thread().name))

    def applied(self) -> set[str]:
        """The keys whose effect is applied now."""
        with self.lock:
            return {k for k, on in self.effects.items() if on}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    started INTEGER NOT NULL DEFAULT 0,
    applied INTEGER NOT NULL DEFAULT 0,
    rollbacks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    thread TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS traps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pid INTEGER,
    key TEXT,
    sprung_at REAL,
    released INTEGER NOT NULL DEFAULT 0
);
"""


def _split(key: str) -> tuple[str, int]:
    run_id, _, index = key.rpartition(":")
    return run_id, int(index)


class FileLedger:
    """A ledger in an SQLite file, shared by the test and the worker processes.

    Each rollback call is logged (key, run, step, pid, thread, time) and
    counted. A trap (:meth:`set_trap`) catches the next rollback call (of
    one process, or of any): that call undoes its effect, then blocks until
    the trap is released (or the process is killed), so that its outcome
    never reaches the journal.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._gates: dict[int, sqlite3.Connection] = {}  # the test's side of each trap
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection, and let go of every trap still set."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        for gate in self._gates.values():
            gate.close()
        self._gates.clear()

    def started(self, key: str) -> None:
        run_id, index = _split(key)
        self._conn().execute(
            "INSERT INTO effects (key, run_id, idx, started) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (key) DO UPDATE SET started = 1",
            (key, run_id, index),
        )

    def apply(self, key: str) -> None:
        self._conn().execute("UPDATE effects SET applied = 1 WHERE key = ?", (key,))

    def undo(self, key: str) -> None:
        run_id, index = _split(key)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO effects (key, run_id, idx, rollbacks) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (key) DO UPDATE SET applied = 0, rollbacks = rollbacks + 1",
                (key, run_id, index),
            )
            conn.execute(
                "INSERT INTO log (key, run_id, idx, pid, thread, at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, run_id, index, os.getpid(), threading.current_thread().name, time.time()),
            )
            trap = conn.execute(
                "SELECT id FROM traps WHERE key IS NULL AND (pid IS NULL OR pid = ?) "
                "ORDER BY id LIMIT 1",
                (os.getpid(),),
            ).fetchone()
            if trap is not None:
                conn.execute(
                    "UPDATE traps SET key = ?, sprung_at = ? WHERE id = ?",
                    (key, time.time(), trap[0]),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if trap is not None:
            self._hold(trap[0])

    def _gate(self, trap: int) -> str:
        return f"{self.path}.trap{trap}"

    def _hold(self, trap: int) -> None:
        """Block (this rollback has undone its effect, and not returned) until released.

        The trap's gate is a database the test keeps write-locked until it
        releases the trap: taking its write lock blocks here (SQLite waits up to
        its timeout), without any sleep of ours.
        """
        gate = sqlite3.connect(self._gate(trap), timeout=TRAP_LIMIT, isolation_level=None)
        try:
            gate.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise RuntimeError(
                f"trap {trap} was neither released nor killed in {TRAP_LIMIT} s"
            ) from exc
        finally:
            gate.close()

    # -- the test process's side -------------------------------------------------------

    def set_trap(self, pid: int | None = None) -> int:
        """Catch the next rollback call of process ``pid`` (None: of any); return the trap.

        The trap's gate is locked before the trap is committed: a rollback that
        springs it always finds the gate shut.
        """
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            trap = conn.execute("INSERT INTO traps (pid) VALUES (?)", (pid,)).lastrowid
            assert trap is not None
            gate = sqlite3.connect(self._gate(trap), isolation_level=None, check_same_thread=False)
            gate.execute("BEGIN IMMEDIATE")  # closed by release(), or by this process's end
            self._gates[trap] = gate
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return trap

    def sprung(self, trap: int) -> str | None:
        """The key of the rollback the trap holds, or None if it did not catch one yet."""
        row = self._conn().execute("SELECT key FROM traps WHERE id = ?", (trap,)).fetchone()
        return None if row is None else row[0]

    def release(self, trap: int) -> None:
        """Let the held rollback return."""
        self._conn().execute("UPDATE traps SET released = 1 WHERE id = ?", (trap,))
        gate = self._gates.pop(trap, None)
        if gate is not None:
            gate.execute("ROLLBACK")
            gate.close()


def _ledger_from_environment() -> Ledger:
    path = os.environ.get(LEDGER_ENV)
    return FileLedger(path) if path else MemoryLedger()


#: The ledger the actions of this process write to (tests replace it).
LEDGER: Ledger = _ledger_from_environment()


class _Death(threading.local):
    """Once a thread's process is "dead", its journal transactions never commit (a SIGKILL)."""

    dead = False

    def __call__(self, point: str) -> None:
        if self.dead and point == "before_commit":
            raise Crash

    def die(self) -> None:
        self.dead = True
        raise Crash


_DEATH = _Death()


@register_action("workers_tests.step")
@dataclass
class LedgerStep(Action):
    """Applies an effect keyed by its idempotency key; its rollback undoes it (repeatably).

    ``crash`` kills the process running the queue inside ``execute``:
    ``"before_effect"`` or ``"after_effect"``.
    """

    name: str
    crash: str = ""

    def execute(self) -> None:
        key = current_step().idempotency_key
        LEDGER.started(key)
        if self.crash == "before_effect":
            _DEATH.die()
        LEDGER.apply(key)
        if self.crash == "after_effect":
            _DEATH.die()

    def rollback(self) -> None:
        LEDGER.undo(current_step().idempotency_key)


def orphans(
    journal: Journal, count: int, *, steps: int = 3, name: str = "orphan", threads: int = 1
) -> list[str]:
    """Make ``count`` runs of ``steps`` steps whose owner died; return their ids.

    Run ``i`` started ``steps - 1 + i % 2`` steps (at least one): the last
    one was in flight when the process died, after applying its effect for
    even ``i // 2``, before for odd. Give ``journal`` a clock already past
    its lease (or close it and wait it out) for the runs to be claimable.
    ``threads`` queues run at once (a server's journal commits them together).
    """
    made: list[str] = [""] * count

    def make_closing(indices: range) -> None:
        try:
            make(indices)
        finally:
            close = getattr(LEDGER, "close", None)  # this thread's ledger connection
            if close is not None:
                close()

    def make(indices: range) -> None:
        for i in indices:
            started = started_steps(i, steps)
            mode = "after_effect" if (i // 2) % 2 == 0 else "before_effect"
            queue = ActionQueue(journal=journal, name=name)
            for index in range(steps):
                queue.add(LedgerStep(f"s{index}", mode if index == started - 1 else ""))
            try:
                queue.execute()
            except Crash:
                pass
            else:  # pragma: no cover - the last started step always dies
                raise AssertionError("the orphan's queue did not die")
            finally:
                _DEATH.dead = False
            assert queue.run_id is not None
            made[i] = queue.run_id

    with inject_faults(_DEATH):
        if threads == 1:
            make(range(count))
        else:
            with ThreadPoolExecutor(threads) as pool:
                for done in [
                    pool.submit(make_closing, range(t, count, threads)) for t in range(threads)
                ]:
                    done.result()
    return made


def started_steps(run_index: int, steps: int = 3) -> int:
    """How many steps run number ``run_index`` of :func:`orphans` started."""
    return max(1, min(steps, steps - 1 + run_index % 2))
