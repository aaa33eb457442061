"""Crash-test harness: journaled queues against a ledger of side effects, killed with SIGKILL.

Shared by ``tests/test_crash.py``, ``tests/test_fault_points.py`` and
``scripts/crash_soak.py`` (which puts this directory on ``sys.path``).

The pieces:

- The **journal**: a URL (or a SQLite path). :func:`soak` gives each episode
  a fresh one: a SQLite file of its own, or on PostgreSQL a table prefix of
  its own in the schema the caller gives (``?schema=NAME``).
- The **ledger**: a SQLite file standing for the external systems, whatever
  the journal's backend. Each :class:`LedgerStep`'s ``execute`` inserts its
  effect keyed by its idempotency key (``INSERT OR IGNORE``: a repeated call
  is applied once) and each ``rollback`` marks it undone; both count their
  calls and append to a log.
  Before a run executes, the process announces it (its id and :class:`RunSpec`).
- The **workers**: ``tests/crash_child.py`` is a fork server. The parent
  starts it once with ``sys.executable`` (paying the interpreter start-up and
  imports once), and for each job it forks a worker that recovers leftover runs
  if asked, then runs journaled queues until it is killed: after a delay on the
  real clock (a timer), or by itself at the Nth hit of a fault point (a
  journal point of :data:`actionqueues.testing.FAULT_POINTS`, or a ledger
  point of :data:`ACTION_POINTS` inside an action).
- The **check**: after a kill the parent runs :func:`actionqueues.recover`
  with another owner and a clock past every lease (with the queue's retry
  policies, or the journaled ones); :func:`settle` unblocks the runs that
  need attention (a blocked rollback: see :class:`LedgerStep`) and retries
  their rollback; then :func:`check` verifies the invariant over the journal
  and the ledger.
- :func:`soak` drives all that for N kills and returns a :class:`Tally`.

Why a fork server: a fresh interpreter per kill costs ~0.25 s (importing
actionqueues pulls in asyncio); a fork costs milliseconds. The test process
itself never forks (it has threads); the server is single-threaded when it
forks, and opens no database: each worker opens its own connections (on
PostgreSQL its own connection pool: a pool must never cross a fork).

PostgreSQL: the server session of a SIGKILLed worker ends a moment after the
worker (when the server reads the closed socket), and until then it may hold
its row locks; recovery's ``FOR UPDATE SKIP LOCKED`` would skip such a run.
In production recovery waits for the lease to expire; here the recovery
clock jumps past the lease at once, so the parent waits for the dead
worker's sessions to let go of the journal's tables first
(:func:`wait_for_dead_sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from actionqueues import (
    Action,
    ActionQueue,
    AsyncActionQueue,
    Journal,
    RecoveredRun,
    RecoveryReport,
    RetryPolicy,
    RollbackReport,
    RunTimeline,
    current_step,
    open_journal,
    recover,
    register_action,
    retry_rollback,
)
from actionqueues.testing import FAULT_POINTS, inject_faults

#: Kill points inside the actions, around their ledger writes.
ACTION_POINTS = (
    "in_execute",  # execute() called; the effect is not written yet
    "after_effect",  # execute() wrote its effect to the ledger; it has not returned
    "in_rollback",  # rollback() called; the effect is not undone yet
    "after_undo",  # rollback() undid the effect in the ledger; it has not returned
)
#: Every point a worker can kill itself at.
POINTS: tuple[str, ...] = (*FAULT_POINTS, *ACTION_POINTS)

MAX_ATTEMPTS = 20
OPERATOR = "operator"  # the owner that retries the rollbacks of runs that need attention
CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_child.py")


class Transient(Exception):
    """A failure the retry policies retry."""


class Boom(Exception):
    """A permanent failure: the queue stops and rolls back."""


RETRY = RetryPolicy(
    max_attempts=MAX_ATTEMPTS, initial_delay=0.001, max_delay=0.001, retry_on=Transient
)
ROLLBACK_RETRY = RETRY


def no_sleep(seconds: float) -> None:
    """Backoff without waiting (the delays are still journaled)."""


class OffsetClock:
    """The wall clock moved ``offset`` seconds ahead: past every lease taken before."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


# -- the fault hook of the action points ------------------------------------------


class _Process:
    """This process's settings: the action points' hook, and the kept ledger connections."""

    hook: Callable[[str], object] | None = None
    # A worker keeps its ledger connections open (closing the last connection of a WAL
    # file checkpoints it: slow); the parent opens one per write and closes it.
    kept: dict[str, sqlite3.Connection] | None = None


def hit(point: str) -> None:
    """An action point: call the installed hook (see :func:`hooked`)."""
    hook = _Process.hook
    if hook is not None:
        hook(point)


@contextlib.contextmanager
def hooked(hook: Callable[[str], object]) -> Iterator[None]:
    """Call ``hook(point)`` at every journal point and every action point."""
    previous, _Process.hook = _Process.hook, hook
    try:
        with inject_faults(hook):
            yield
    finally:
        _Process.hook = previous


class Killer:
    """A hook that SIGKILLs this process at the ``nth`` hit of ``point``."""

    def __init__(self, point: str, nth: int) -> None:
        self.point, self.nth, self.seen = point, nth, 0

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.nth:
                os.kill(os.getpid(), signal.SIGKILL)


# -- the ledger -------------------------------------------------------------------

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    applied INTEGER NOT NULL,
    executes INTEGER NOT NULL DEFAULT 0,
    rollbacks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS blocked (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    op TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""


def create_ledger(path: str) -> None:
    """Create an empty ledger file (WAL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(LEDGER_SCHEMA)
    finally:
        conn.close()


@contextlib.contextmanager
def _ledger(path: str) -> Iterator[sqlite3.Connection]:
    kept = _Process.kept
    conn = None if kept is None else kept.get(path)
    if conn is None:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        if kept is not None:
            kept[path] = conn
    try:
        yield conn
    finally:
        if kept is None:
            conn.close()


def _ledger_write(path: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    # One transaction per call; synchronous=NORMAL survives a killed process (not a power cut).
    with _ledger(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")


def _is_blocked(path: str, key: str) -> bool:
    with _ledger(path) as conn:
        return conn.execute("SELECT 1 FROM blocked WHERE key = ?", (key,)).fetchone() is not None


def announce(path: str, run_id: str, spec: RunSpec) -> None:
    """Record that a run is about to execute (before its first journal write).

    The rollbacks of the steps in ``spec.blocked`` fail until :func:`unblock`.
    """
    _ledger_write(
        path,
        [
            ("INSERT INTO runs VALUES (?, ?)", (run_id, spec.to_json())),
            *(("INSERT INTO blocked VALUES (?)", (f"{run_id}:{i}",)) for i in spec.blocked),
        ],
    )


def unblock(path: str, run_id: str) -> None:
    """Let the blocked rollbacks of run ``run_id`` work (an operator fixed the system)."""
    _ledger_write(path, [("DELETE FROM blocked WHERE key LIKE ?", (f"{run_id}:%",))])


def _effect(path: str, op: str) -> None:
    step = current_step()
    applied = 1 if op == "execute" else 0
    counter = "executes" if op == "execute" else "rollbacks"
    key = step.idempotency_key
    _ledger_write(
        path,
        [
            (
                "INSERT OR IGNORE INTO effects (key, run_id, idx, applied) VALUES (?, ?, ?, ?)",
                (key, step.run_id, step.index, applied),
            ),
            (
                f"UPDATE effects SET {counter} = {counter} + 1"
                + (", applied = 0" if op == "rollback" else "")
                + " WHERE key = ?",
                (key,),
            ),
            (
                "INSERT INTO log (run_id, idx, op, pid) VALUES (?, ?, ?, ?)",
                (step.run_id, step.index, f"{op}:{step.method}", os.getpid()),
            ),
        ],
    )


@register_action("crashtest.ledger_step")
@dataclass
class LedgerStep(Action):
    """Writes one effect to the ledger; its rollback undoes it.

    Attributes:
        ledger: The ledger file.
        flaky: ``execute`` raises :class:`Transient` this many times in each
            process before it works (the retry policy retries it).
        rollback_flaky: The same for ``rollback``.
        fail: ``"before"`` / ``"after"``: ``execute`` raises :class:`Boom`
            before / after writing its effect.
        blockable: ``rollback`` raises :class:`Boom` (after its flaky calls)
            while the ledger lists the step as blocked (see :func:`unblock`).
    """

    ledger: str
    flaky: int = 0
    rollback_flaky: int = 0
    fail: str = ""
    blockable: bool = False

    def __post_init__(self) -> None:
        self.calls = 0
        self.rollback_calls = 0

    def execute(self) -> None:
        hit("in_execute")
        self.calls += 1
        if self.calls <= self.flaky:
            raise Transient(f"execute call {self.calls} of {current_step().idempotency_key}")
        if self.fail == "before":
            raise Boom(current_step().idempotency_key)
        _effect(self.ledger, "execute")
        hit("after_effect")
        if self.fail == "after":
            raise Boom(current_step().idempotency_key)

    def rollback(self) -> None:
        hit("in_rollback")
        self.rollback_calls += 1
        if self.rollback_calls <= self.rollback_flaky:
            raise Transient(f"rollback call {self.rollback_calls}")
        key = current_step().idempotency_key
        if self.blockable and _is_blocked(self.ledger, key):
            raise Boom(f"the rollback of {key} is blocked")
        _effect(self.ledger, "rollback")
        hit("after_undo")


@dataclass(frozen=True)
class RunSpec:
    """The shape of one run: its steps, which one fails, which ones are flaky."""

    steps: int
    fail_at: int | None = None
    fail_mode: str = "after"
    resumable: bool = False
    flaky: tuple[int, ...] = ()
    rollback_flaky: tuple[int, ...] = ()
    kind: str = "sync"  # or "async": an AsyncActionQueue runs it
    blocked: tuple[int, ...] = ()  # rollbacks that fail for good until unblock()

    def flaky_at(self, index: int) -> int:
        return self.flaky[index] if index < len(self.flaky) else 0

    def rollback_flaky_at(self, index: int) -> int:
        return self.rollback_flaky[index] if index < len(self.rollback_flaky) else 0

    def actions(self, ledger: str) -> list[LedgerStep]:
        return [
            LedgerStep(
                ledger,
                flaky=self.flaky_at(i),
                rollback_flaky=self.rollback_flaky_at(i),
                fail=self.fail_mode if i == self.fail_at else "",
                blockable=i in self.blocked,
            )
            for i in range(self.steps)
        ]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        data["flaky"] = tuple(data["flaky"])
        data["rollback_flaky"] = tuple(data["rollback_flaky"])
        data["blocked"] = tuple(data.get("blocked", ()))
        return cls(**data)


def random_spec(rng: random.Random) -> RunSpec:
    """1 to 5 steps; 40% fail at a random step; some are flaky; 30% resumable; 20% async.

    10% have a step whose rollback fails until it is unblocked.
    """
    steps = rng.randint(1, 5)
    return RunSpec(
        steps=steps,
        fail_at=rng.randrange(steps) if rng.random() < 0.4 else None,
        fail_mode=rng.choice(("before", "after")),
        resumable=rng.random() < 0.3,
        flaky=tuple(rng.choice((0, 0, 0, 1, 2)) for _ in range(steps)),
        rollback_flaky=tuple(rng.choice((0, 0, 0, 1)) for _ in range(steps)),
        kind="async" if rng.random() < 0.2 else "sync",
        blocked=(rng.randrange(steps),) if rng.random() < 0.1 else (),
    )


def run_queue(journal: Any, ledger: str, spec: RunSpec, name: str) -> None:
    """Run one journaled queue (async if ``spec.kind`` says so); roll it back if it fails."""
    queue_type = AsyncActionQueue if spec.kind == "async" else ActionQueue
    queue = queue_type(
        journal=journal,
        name=name,
        resumable=spec.resumable,
        retry=RETRY,
        rollback_retry=ROLLBACK_RETRY,
        sleep=no_sleep,
    )
    for action in spec.actions(ledger):
        queue.add(action)
    assert queue.run_id is not None
    announce(ledger, queue.run_id, spec)
    if isinstance(queue, AsyncActionQueue):
        report = asyncio.run(_run_async(queue))
    else:
        try:
            queue.execute()
        except (Boom, Transient):
            report = queue.rollback()
        else:
            return
    if report is not None and {f.index for f in report.failures} - set(spec.blocked):
        raise AssertionError(f"run {queue.run_id}: a rollback failed: {report!r}")


async def _run_async(queue: AsyncActionQueue) -> RollbackReport | None:
    try:
        await queue.execute()
    except (Boom, Transient):
        return await queue.rollback()
    return None


class KeptJournals:
    """The parent's journals of one episode, kept open from round to round, per owner.

    For PostgreSQL, where opening a journal costs a connection and the
    migration check (~25 ms, three times a round). Each one's clock is an
    :class:`OffsetClock` whose offset each use sets. The parent never forks.
    """

    def __init__(self) -> None:
        self.journals: dict[tuple[str, str], tuple[Journal, OffsetClock]] = {}
        self._admin: Any = None

    def admin(self, journal_url: str) -> Any:
        """A kept psycopg connection (autocommit) to the server of ``journal_url``."""
        if self._admin is None:
            import psycopg  # only with a PostgreSQL journal

            self._admin = psycopg.connect(_postgres_parts(journal_url)[0], autocommit=True)
        return self._admin

    def get(self, journal_url: str, owner: str, offset: float) -> Journal:
        kept = self.journals.get((journal_url, owner))
        if kept is None:
            clock = OffsetClock(offset)
            journal = open_journal(journal_url, clock=clock, owner=owner, heartbeat=False)
            kept = self.journals[(journal_url, owner)] = (journal, clock)
        kept[1].offset = offset
        return kept[0]

    def close(self) -> None:
        for journal, _ in self.journals.values():
            journal.close()
        self.journals.clear()
        if self._admin is not None:
            self._admin.close()
            self._admin = None


@contextlib.contextmanager
def _opened(
    journal_url: str, owner: str, offset: float, kept: KeptJournals | None
) -> Iterator[Journal]:
    """The journal at ``journal_url`` for ``owner``, opened afresh or kept in ``kept``."""
    if kept is not None:
        yield kept.get(journal_url, owner, offset)
        return
    with open_journal(
        journal_url, clock=OffsetClock(offset), owner=owner, heartbeat=False
    ) as journal:
        yield journal


def recover_journal(
    journal_url: str,
    offset: float,
    owner: str,
    *,
    journaled: bool = False,
    kept: KeptJournals | None = None,
) -> RecoveryReport:
    """Recover every run of the journal at ``journal_url``, with a clock ``offset`` seconds ahead.

    With the run's queue's policies (:data:`RETRY`), or with ``journaled``
    the ones recovery reads from the journal.
    """
    with _opened(journal_url, owner, offset, kept) as journal:
        return _recover(journal, journaled=journaled)


def _recover(journal: Journal, *, journaled: bool) -> RecoveryReport:
    if journaled:
        return recover(journal, sleep=no_sleep)
    return recover(journal, retry=RETRY, rollback_retry=ROLLBACK_RETRY, sleep=no_sleep)


def settle(
    journal_url: str,
    ledger_path: str,
    offset: float,
    owner: str,
    *,
    kept: KeptJournals | None = None,
) -> tuple[list[str], list[RecoveredRun]]:
    """Unblock and retry the rollback of every run that needs attention.

    Returns the violations and what each :func:`retry_rollback` did.

    Such a run must be one with a blocked step whose rollback failed, with its
    errors recorded; after :func:`unblock`, :func:`retry_rollback` must bring it
    to rolled_back.
    """
    specs = read_ledger(ledger_path).specs
    bad: list[str] = []
    done: list[RecoveredRun] = []
    with _opened(journal_url, owner, offset, kept) as journal:
        for info in reversed(journal.runs(status="needs_attention")):  # oldest first
            timeline = journal.timeline(info.run_id)
            spec = specs.get(info.run_id)
            failed = [s for s in timeline.steps if s.status == "rollback_failed"]
            where = f"run {info.run_id} ({spec}) needs attention ({info.error})"
            if spec is None or not failed or {s.index for s in failed} - set(spec.blocked):
                bad.append(f"{where}, but only blocked rollbacks may fail: {timeline.steps}")
                continue
            if not info.error or any(not s.rollback_error for s in failed):
                bad.append(f"{where}: its errors are not recorded: {timeline.steps}")
            unblock(ledger_path, info.run_id)
            retried = retry_rollback(
                journal, info.run_id, rollback_retry=ROLLBACK_RETRY, sleep=no_sleep
            )
            done.append(retried)
            if retried.status != "rolled_back":
                bad.append(f"{where}: retry_rollback after unblock() gave {retried}")
    return bad, done


# -- PostgreSQL journals ----------------------------------------------------------------


def is_postgres(journal_url: str) -> bool:
    """Whether ``journal_url`` is a PostgreSQL journal."""
    return journal_url.lower().startswith(("postgresql://", "postgres://"))


def _postgres_parts(journal_url: str) -> tuple[str, str, str]:
    """The server's URL (without the journal's options), the schema and the table prefix."""
    parts = urllib.parse.urlsplit(journal_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = ("schema", "table_prefix", "pool_size", "connect_timeout")
    options = {k: v for k, v in query if k in ours}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in ours])
    server = urllib.parse.urlunsplit(parts._replace(query=rest))
    return server, options.get("schema", "public"), options.get("table_prefix", "aq_")


def with_table_prefix(journal_url: str, prefix: str) -> str:
    """``journal_url`` (PostgreSQL) with the table prefix ``prefix``: a journal of its own."""
    parts = urllib.parse.urlsplit(journal_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != "table_prefix"] + [("table_prefix", prefix)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"


def wait_for_dead_sessions(journal_url: str, conn: Any = None, timeout: float = 60.0) -> bool:
    """Wait until no other session holds a lock on the journal's tables (PostgreSQL).

    Called after a worker is gone: its server sessions end when the server
    notices the closed sockets, and until then they may hold row locks that
    recovery's ``SKIP LOCKED`` skips. Returns whether it had to wait.
    ``conn``: a psycopg connection (autocommit) to use, or None for a new one.
    """
    server, schema, prefix = _postgres_parts(journal_url)
    if conn is None:
        import psycopg  # only with a PostgreSQL journal

        with psycopg.connect(server, autocommit=True) as new:
            return wait_for_dead_sessions(journal_url, new, timeout)
    row = conn.execute(
        "SELECT string_agg(DISTINCT l.pid::text || ' ' || l.mode || ' ' || c.relname, "
        "', '), array_agg(DISTINCT c.relname) FROM pg_locks l "
        "JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname LIKE %s AND l.pid <> pg_backend_pid() "
        "AND c.relkind = 'r'",
        (schema, _like_prefix(prefix)),
    ).fetchone()
    if row is None or row[0] is None:
        return False
    import psycopg  # only with a PostgreSQL journal

    # Taking the tables' strongest lock waits (on the server) until those sessions are
    # gone; lock_timeout bounds the wait.
    tables = ", ".join(f'"{schema}"."{name}"' for name in row[1])
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{int(timeout * 1000)}ms'")
            conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
    except psycopg.errors.LockNotAvailable as exc:
        raise RuntimeError(
            f"sessions still hold locks on the journal {journal_url} {timeout} s after "
            f"its worker died: {row[0]}"
        ) from exc
    return True


def drop_journal(journal_url: str) -> None:
    """Drop the tables of the journal at ``journal_url`` (PostgreSQL; its schema stays)."""
    import psycopg  # only with a PostgreSQL journal

    server, schema, prefix = _postgres_parts(journal_url)
    with psycopg.connect(server, autocommit=True) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                (schema, _like_prefix(prefix)),
            )
        ]
        if names:
            tables = ", ".join(f'"{schema}"."{name}"' for name in names)
            conn.execute(f"DROP TABLE {tables} CASCADE")


# -- the worker (a forked child of crash_child.py) ----------------------------------


def worker_main(job: dict[str, Any], progress: int) -> None:
    """Run one job, writing progress bytes to ``progress``.

    ``R`` ready (about to open the journal), ``O`` opened, ``C`` recovering
    leftover runs (the recoverer's journal is open), ``Q`` running queues,
    ``.`` a run finished.
    """
    if job.get("stderr"):
        fd = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    logging.getLogger("actionqueues").setLevel(logging.CRITICAL)
    _Process.kept = {}
    rng = random.Random(job["seed"])
    kill = job.get("kill")
    hook: Callable[[str], object] = (lambda point: None) if kill is None else Killer(*kill)
    with hooked(hook):
        os.write(progress, b"R")
        journal = open_journal(job["journal"], lease=job.get("lease", 30.0))
        os.write(progress, b"O")
        if job.get("recover_offset"):
            with open_journal(
                job["journal"],
                clock=OffsetClock(job["recover_offset"]),
                owner=f"recoverer:{os.getpid()}",
                heartbeat=False,
            ) as recoverer:
                os.write(progress, b"C")
                _recover(recoverer, journaled=job.get("journaled", False))
        os.write(progress, b"Q")
        spec = None if job.get("spec") is None else RunSpec.from_json(job["spec"])
        for n in range(job["runs"]):
            run_queue(journal, job["ledger"], spec or random_spec(rng), f"crash-{n}")
            os.write(progress, b".")
        journal.close()


def _supervise(
    pid: int, fd: int, delay: float | None, start: bytes, timeout: float
) -> tuple[bytes, bool]:
    """Collect the worker's progress until it is gone.

    SIGKILL it ``delay`` seconds after it wrote the progress byte ``start``
    (or after ``timeout`` seconds: it hung).
    """
    data = bytearray()
    deadline = time.monotonic() + timeout
    kill_at: float | None = None
    hung = False
    while True:
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at = delay = None
        if now >= deadline and not hung:
            os.kill(pid, signal.SIGKILL)
            hung = True
        until = deadline if kill_at is None else min(deadline, kill_at)
        readable, _, _ = select.select([fd], [], [], max(0.0, until - now))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                return bytes(data), hung
            data += chunk
            if delay is not None and kill_at is None and start in data:
                kill_at = time.monotonic() + delay


def run_forked(job: dict[str, Any]) -> dict[str, Any]:
    """Fork a worker for ``job``, wait until it is gone, and say how it ended."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_end)
        code = 0
        try:
            worker_main(job, write_end)
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stderr.flush()
        os._exit(code)
    os.close(write_end)
    try:
        progress, hung = _supervise(
            pid,
            read_end,
            job.get("delay"),
            job.get("timer_from", "R").encode(),
            job.get("timeout", 120.0),
        )
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {
        "killed": killed and not hung,
        "hung": hung,
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status),
        "progress": progress.decode(),
    }


def serve() -> None:
    """The fork server's loop: one JSON job per stdin line, one JSON result per stdout line.

    It imports psycopg before the first fork of a PostgreSQL job (~0.25 s
    saved per worker); it never connects: each worker opens its own pool.
    """
    for line in sys.stdin:
        job = json.loads(line)
        if is_postgres(job["journal"]):
            import psycopg  # noqa: F401 - imported once, before the forks
            import psycopg_pool  # noqa: F401
        result = run_forked(job)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


class ForkServer:
    """The parent's handle on one ``crash_child.py`` fork server."""

    def __init__(self, stderr_path: str) -> None:
        self._stderr: IO[str] = open(stderr_path, "w")  # noqa: SIM115 - closed in close()
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            [sys.executable, CHILD_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job in a fresh worker; return how it ended (see :func:`run_forked`)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the crash fork server died: {_tail(self.stderr_path)}")
        result: dict[str, Any] = json.loads(line)
        if result["hung"] or not (result["killed"] or result["code"] == 0):
            detail = _tail(job["stderr"]) if job.get("stderr") else ""
            raise RuntimeError(f"crash worker failed ({result}) on job {job}:\n{detail}")
        return result

    def close(self) -> None:
        """Stop the server (it exits at the end of its input)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _tail(path: str, size: int = 4000) -> str:
    try:
        with open(path) as f:
            return f.read()[-size:]
    except OSError as exc:
        return f"({exc})"


# -- reading and checking ------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """One ledger row: a step's effect."""

    key: str
    run_id: str
    idx: int
    applied: bool
    executes: int
    rollbacks: int


@dataclass
class Ledger:
    """What the ledger holds."""

    specs: dict[str, RunSpec]  # announced runs, in order
    effects: dict[str, Effect]
    log: list[tuple[int, str, int, str, int]]  # (seq, run_id, idx, op, pid)


def read_ledger(path: str) -> Ledger:
    conn = sqlite3.connect(path, timeout=60)
    try:
        specs = {
            r: RunSpec.from_json(s)
            for r, s in conn.execute("SELECT run_id, spec FROM runs ORDER BY rowid")
        }
        effects = {
            row[0]: Effect(row[0], row[1], row[2], bool(row[3]), row[4], row[5])
            for row in conn.execute(
                "SELECT key, run_id, idx, applied, executes, rollbacks FROM effects"
            )
        }
        log = [tuple(row) for row in conn.execute("SELECT * FROM log ORDER BY seq")]
    finally:
        conn.close()
    return Ledger(specs, effects, log)


def read_journal(journal_url: str, kept: KeptJournals | None = None) -> dict[str, RunTimeline]:
    with _opened(journal_url, "checker", 0.0, kept) as journal:
        return {info.run_id: journal.timeline(info.run_id) for info in journal.runs()}


@dataclass
class Facts:
    """Counts gathered by :func:`check` (for the tally)."""

    runs: Counter[str] = field(default_factory=Counter)
    recovered: int = 0  # runs claimed by a recovery
    recovered_twice: int = 0  # claimed by 2+ recoveries: a recovery was killed too
    executes_twice: int = 0  # an effect whose execute was called 2+ times (applied once)
    rollbacks_twice: int = 0  # an effect whose rollback was applied 2+ times
    undo_without_effect: int = 0  # a rollback of a step whose execute wrote nothing

    def add(self, other: Facts) -> None:
        self.runs += other.runs
        for name in (
            "recovered",
            "recovered_twice",
            "executes_twice",
            "rollbacks_twice",
            "undo_without_effect",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def check(
    journal_url: str, ledger_path: str, kept: KeptJournals | None = None
) -> tuple[list[str], Facts]:
    """Check the crash invariant; return the violations (empty when it holds) and counts.

    After recovery: every run is succeeded or rolled_back; no run is lost
    (every journal run was announced, an announced run missing from the
    journal left no effect); a succeeded run has every effect applied and
    no rollback; a rolled-back run had every started step rolled back (at
    least once) and no effect left; a step never started has no effect;
    executes never follow a rollback, the last rollback of each step runs in
    reverse order (except a rollback that failed for good: retry_rollback()
    undoes it after the earlier steps); every call that reached the ledger
    was journaled first (ledger calls <= journaled attempts); retry limits
    hold across crashes (retry_rollback() by the :data:`OPERATOR` gives the
    rollbacks a fresh budget each).
    """
    timelines = read_journal(journal_url, kept)
    ledger = read_ledger(ledger_path)
    bad: list[str] = []
    facts = Facts()
    by_run: dict[str, dict[int, Effect]] = {}
    for effect in ledger.effects.values():
        by_run.setdefault(effect.run_id, {})[effect.idx] = effect
        if effect.key != f"{effect.run_id}:{effect.idx}":
            bad.append(f"ledger key {effect.key!r} is not <run_id>:<index> of {effect}")
        if effect.executes >= 2:
            facts.executes_twice += 1
        if effect.rollbacks >= 2:
            facts.rollbacks_twice += 1
        if effect.executes == 0:
            facts.undo_without_effect += 1
    ops: dict[str, list[tuple[int, str]]] = {}
    for _, run_id, idx, op, _ in ledger.log:
        ops.setdefault(run_id, []).append((idx, op))
    for run_id, effects in by_run.items():
        if run_id not in ledger.specs:
            bad.append(f"effects of a run that was never announced: {run_id} {effects}")
    for run_id, spec in ledger.specs.items():
        timeline = timelines.get(run_id)
        effects = by_run.get(run_id, {})
        if timeline is None:
            if effects:
                bad.append(f"run {run_id} ({spec}) is not in the journal but left {effects}")
            continue
        bad.extend(_check_run(timeline, spec, effects, ops.get(run_id, []), facts))
    for run_id in timelines:
        if run_id not in ledger.specs:
            bad.append(f"journal run {run_id} was never announced (a stray or renamed run)")
    return bad, facts


def _check_run(
    timeline: RunTimeline,
    spec: RunSpec,
    effects: dict[int, Effect],
    ops: list[tuple[int, str]],
    facts: Facts,
) -> list[str]:
    run = timeline.run
    status = run.status
    facts.runs[status] += 1
    # retry_rollback() (by the OPERATOR) claims the run too, and gives the rollback
    # policy a fresh budget
    retries = sum(
        e.kind == "claimed" and e.detail.startswith(f"by {OPERATOR} ") for e in timeline.events
    )
    budgets = 1 + retries
    facts.recovered += run.recoveries - retries >= 1
    facts.recovered_twice += run.recoveries - retries >= 2
    where = f"run {run.run_id} ({spec}, recoveries={run.recoveries})"
    bad: list[str] = []

    def fail(message: str) -> None:
        steps = [(s.index, s.status, s.attempts, s.rollback_attempts) for s in timeline.steps]
        bad.append(f"{where}: {message}; journal {status} {steps}; ledger {effects}; log {ops}")

    if status not in ("succeeded", "rolled_back"):
        fail(f"ended {status} (not succeeded or rolled_back): {run.error}")
    if spec.fail_at is not None and status != "rolled_back":
        fail("a step fails for good, yet the run did not roll back")
    if spec.fail_at is None and spec.resumable and status != "succeeded":
        fail("a resumable run that cannot fail did not end succeeded")
    if spec.fail_at is None and status == "rolled_back" and run.recoveries == 0:
        fail("a run that cannot fail was rolled back without a crash")
    if len(timeline.steps) != spec.steps or run.steps != spec.steps:
        fail(f"the journal has {len(timeline.steps)} steps (run.steps={run.steps})")
    if run.started != sum(s.started for s in timeline.steps):
        fail(f"run.started is {run.started}")
    if status in ("succeeded", "rolled_back") and run.finished_at is None:
        fail("a finished run has no finished_at")
    if sum(e.kind == "claimed" for e in timeline.events) != run.recoveries:
        fail(f"{run.recoveries} recoveries but events {timeline.events}")
    for step in timeline.steps:
        effect = effects.get(step.index)
        if step.attempts > MAX_ATTEMPTS or step.rollback_attempts > MAX_ATTEMPTS * budgets:
            fail(f"step {step.index} made more calls than the retry policy allows")
        if effect is not None and (
            effect.executes > step.attempts or effect.rollbacks > step.rollback_attempts
        ):
            fail(f"step {step.index} was called more often than the journal recorded")
        if status in ("succeeded", "rolled_back") and step.next_retry_at is not None:
            fail(f"step {step.index} of a finished run still waits for a retry")
        if step.status == "succeeded" and step.finished_at is None:
            fail(f"step {step.index} succeeded without finished_at")
        if step.status == "rolled_back" and step.rollback_finished_at is None:
            fail(f"step {step.index} rolled back without rollback_finished_at")
        if not step.started:
            if effect is not None:
                fail(f"step {step.index} was never started but has {effect}")
            continue
        if status == "succeeded":
            if step.status != "succeeded":
                fail(f"step {step.index} of a succeeded run is {step.status}")
            if effect is None or not effect.applied or effect.rollbacks:
                fail(f"step {step.index} of a succeeded run has effect {effect}")
        elif status == "rolled_back":
            if step.status != "rolled_back":
                fail(f"step {step.index} of a rolled-back run is {step.status}")
            if effect is None or effect.rollbacks < 1:
                fail(f"step {step.index} was started but its rollback never ran")
            elif effect.applied:
                fail(f"step {step.index}'s effect is still applied after the rollback")
    seen_rollback = False
    last_undo: dict[int, int] = {}
    for position, (idx, op) in enumerate(ops):
        if op.startswith("rollback"):
            seen_rollback = True
            last_undo[idx] = position
        elif seen_rollback:
            fail(f"step {idx} executed after a rollback had begun")
        if op not in ("execute:execute", "rollback:rollback"):
            fail(f"step {idx}: {op} (current_step().method is wrong)")
    # A rollback that failed for good is retried later, by retry_rollback(): after
    # the earlier steps' (the rollback goes on past a failure). The others: in reverse.
    retried = {e.index for e in timeline.events if e.kind == "rollback_failed"}
    order = sorted(set(last_undo) - retried, key=last_undo.__getitem__)
    if order != sorted(order, reverse=True):
        fail(f"the last rollbacks ran in the order {order}, not in reverse")
    return bad


# -- the soak ---------------------------------------------------------------------------


@dataclass
class Tally:
    """What a soak did."""

    seed: int = 0
    backend: str = "sqlite"
    kills: Counter[str] = field(default_factory=Counter)  # by point ("timer" for the timer)
    phases: Counter[str] = field(default_factory=Counter)  # open / recover / run
    survived: int = 0  # workers that ended before their kill point was reached
    rounds: int = 0
    episodes: int = 0
    child_runs: int = 0  # runs the workers finished before being killed
    outcomes: Counter[str] = field(default_factory=Counter)  # of the parent's recoveries
    retried: int = 0  # runs that needed attention, unblocked and retried to rolled_back
    facts: Facts = field(default_factory=Facts)
    violations: list[str] = field(default_factory=list)
    lingering: int = 0  # PostgreSQL: kills after which the dead worker's session held locks
    elapsed: float = 0.0

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def merge(self, other: Tally) -> None:
        self.kills += other.kills
        self.phases += other.phases
        self.survived += other.survived
        self.rounds += other.rounds
        self.episodes += other.episodes
        self.child_runs += other.child_runs
        self.outcomes += other.outcomes
        self.retried += other.retried
        self.facts.add(other.facts)
        self.violations += other.violations
        self.lingering += other.lingering

    def render(self) -> str:
        facts = self.facts
        lines = [
            f"crash soak ({self.backend}): {self.total_kills} SIGKILLs in {self.rounds} rounds "
            f"({self.episodes} journals), {self.elapsed:.1f} s, seed {self.seed}",
            "  kills by point: "
            + ", ".join(f"{p} {self.kills[p]}" for p in ("timer", *POINTS) if self.kills[p]),
            "  kills by phase: " + ", ".join(f"{k} {v}" for k, v in sorted(self.phases.items())),
            f"  workers that outlived their kill point: {self.survived}",
            f"  runs: {sum(facts.runs.values())} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(facts.runs.items()))
            + f"); finished by workers before their kill: {self.child_runs}",
            f"  recovered: {facts.recovered} runs ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
            + f" by the parent; {facts.recovered_twice} claimed twice: a recovery was killed)",
            f"  needed attention (a blocked rollback), then retry_rollback() after the fix: "
            f"{self.retried}",
            f"  at-least-once: rollbacks applied twice {facts.rollbacks_twice}, executes "
            f"called twice {facts.executes_twice} (effect applied once); rollbacks of a step "
            f"that wrote nothing (killed in flight, or failed first) {facts.undo_without_effect}",
            f"  invariant violations: {len(self.violations)}",
        ]
        if self.backend == "postgresql":
            lines.insert(
                3,
                f"  workers whose server session still held locks once they were reaped "
                f"(waited for): {self.lingering}",
            )
        lines += [f"    {v}" for v in self.violations[:20]]
        return "\n".join(lines)


ROUNDS_PER_JOURNAL = 10
DEFER = 0.25  # the chance that a crash is left for the next worker to recover
MAX_NTH = 16
TIMER_MAX = 0.03  # seconds


def _quiet() -> Callable[[], None]:
    logger = logging.getLogger("actionqueues")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    return lambda: logger.setLevel(level)


def soak(
    kills: int, *, seed: int, directory: str, workers: int = 2, journal_url: str | None = None
) -> Tally:
    """SIGKILL workers ``kills`` times in all, recovering and checking after each; tally.

    The ledgers (and, without ``journal_url``, the SQLite journals) go under
    ``directory``. ``journal_url`` is a PostgreSQL journal URL
    (``postgresql://...?schema=NAME``): each episode then journals under a
    table prefix of its own in that schema; the tables of the episodes that
    kept the invariant are dropped, the others kept (the caller drops the schema).
    """
    if journal_url is not None and not is_postgres(journal_url):
        raise ValueError(f"journal_url must be a postgresql:// URL, got {journal_url!r}")
    started = time.perf_counter()
    restore = _quiet()
    try:
        quotas = [kills // workers + (i < kills % workers) for i in range(workers)]
        with ThreadPoolExecutor(workers, thread_name_prefix="crash-soak") as pool:
            futures = [
                pool.submit(
                    _soak_worker,
                    quota,
                    seed * 1000 + i,
                    os.path.join(directory, f"w{i}"),
                    None if journal_url is None else with_table_prefix(journal_url, f"w{i}_"),
                )
                for i, quota in enumerate(quotas)
                if quota
            ]
            tally = Tally(seed=seed, backend="sqlite" if journal_url is None else "postgresql")
            for future in futures:
                tally.merge(future.result())
    finally:
        restore()
    tally.elapsed = time.perf_counter() - started
    return tally


def _soak_worker(quota: int, seed: int, directory: str, journal_base: str | None) -> Tally:
    """One soak thread: episodes of up to ROUNDS_PER_JOURNAL kills each, each on a fresh journal.

    ``journal_base`` is a PostgreSQL URL whose table prefix the episodes extend
    (``w0_`` gives ``w0_j0_``, ``w0_j1_``...), or None for SQLite files.
    """
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    tally = Tally()
    points: list[str] = []
    with ForkServer(os.path.join(directory, "server.err")) as server:
        while tally.total_kills < quota:
            episode = os.path.join(directory, f"j{tally.episodes}")
            if journal_base is None:
                journal = os.path.join(episode, "journal.db")
            else:
                prefix = _postgres_parts(journal_base)[2]
                journal = with_table_prefix(journal_base, f"{prefix}j{tally.episodes}_")
            tally.episodes += 1
            os.makedirs(episode)
            jobs: list[dict[str, Any]] = []
            kept = None if journal_base is None else KeptJournals()
            try:
                violations = _episode(
                    server, rng, episode, journal, kept, quota, tally, points, jobs
                )
            finally:
                if kept is not None:
                    kept.close()
            if violations:
                with open(os.path.join(episode, "jobs.json"), "w") as f:
                    json.dump(jobs, f, indent=1)
                tally.violations += [f"[{episode}/jobs.json, {journal}] {v}" for v in violations]
            else:
                shutil.rmtree(episode)
                if is_postgres(journal):
                    drop_journal(journal)
    return tally


def _episode(
    server: ForkServer,
    rng: random.Random,
    episode: str,
    journal: str,
    kept: KeptJournals | None,
    quota: int,
    tally: Tally,
    points: list[str],
    jobs: list[dict[str, Any]],
) -> list[str]:
    ledger = os.path.join(episode, "ledger.db")
    create_ledger(ledger)
    deferred = False
    violations: list[str] = []
    for round_no in range(ROUNDS_PER_JOURNAL):
        if tally.total_kills >= quota:
            break
        job: dict[str, Any] = {
            "journal": journal,
            "ledger": ledger,
            "stderr": os.path.join(episode, "worker.err"),
            "seed": rng.randrange(2**32),
            "runs": 300,
            "recover_offset": 10_000.0 * (round_no + 1) if deferred else 0,
            # a short lease keeps the heartbeat thread writing while the queues run
            "lease": rng.choice((30.0, 0.03)),
            # half the recoveries use the journaled policies (the same as RETRY: retry_on is kept)
            "journaled": rng.random() < 0.5,
        }
        if tally.rounds % 2:  # timers and fault points take turns
            job["delay"] = rng.uniform(0, TIMER_MAX)
            # from the start (open included); after the open; or as recovery begins
            job["timer_from"] = rng.choice(("C", "O") if deferred else ("R", "O", "O", "O"))
        else:
            if not points:  # every point in turn, in a random order
                points.extend(rng.sample(POINTS, len(POINTS)))
            job["kill"] = [points.pop(), rng.randint(1, MAX_NTH)]
        result = server.run(job)
        if kept is not None:
            tally.lingering += wait_for_dead_sessions(journal, kept.admin(journal))
        tally.rounds += 1
        progress = result["progress"]
        tally.child_runs += progress.count(".")
        if result["killed"]:
            tally.kills["timer" if "delay" in job else job["kill"][0]] += 1
            phase = progress.rstrip(".")[-1:]
            tally.phases[{"R": "open", "O": "open", "C": "recover"}.get(phase, "run")] += 1
        else:
            tally.survived += 1
        last = round_no == ROUNDS_PER_JOURNAL - 1 or tally.total_kills >= quota
        deferred = not last and rng.random() < DEFER
        job["then"] = "deferred" if deferred else "recovered"
        jobs.append(job)
        if not deferred:
            offset = 10_000.0 * (round_no + 1) + 5_000
            report = recover_journal(
                journal, offset, "parent", journaled=job["journaled"], kept=kept
            )
            for recovered in report.runs:
                tally.outcomes[recovered.outcome] += 1
            if not all(
                r.outcome in ("rolled_back", "resumed", "needs_attention") for r in report.runs
            ):
                violations.append(f"recovery was not ok after round {round_no}: {report}")
            settled, retried = settle(journal, ledger, offset, OPERATOR, kept=kept)
            tally.retried += len(retried)
            violations += [f"after round {round_no}: {v}" for v in settled]
            bad, facts = check(journal, ledger, kept)
            violations += [f"after round {round_no}: {v}" for v in bad]
            if last:
                tally.facts.add(facts)
        if violations:
            break
    return violations


def replay(jobs_path: str, directory: str, journal_url: str | None = None) -> list[str]:
    """Run a saved episode's jobs again (timer kills land elsewhere); return the violations.

    On a new SQLite journal under ``directory``, or on the (empty) PostgreSQL
    journal ``journal_url``; the ledger goes under ``directory``.
    """
    with open(jobs_path) as f:
        jobs = json.load(f)
    os.makedirs(directory, exist_ok=True)
    journal = journal_url or os.path.join(directory, "journal.db")
    ledger = os.path.join(directory, "ledger.db")
    create_ledger(ledger)
    bad: list[str] = []
    restore = _quiet()
    try:
        with ForkServer(os.path.join(directory, "server.err")) as server:
            for round_no, job in enumerate(jobs):
                stderr = os.path.join(directory, f"worker{round_no}.err")
                job.update(journal=journal, ledger=ledger, stderr=stderr)
                print(f"round {round_no}: {server.run(job)}")
                if is_postgres(journal):
                    wait_for_dead_sessions(journal)
                if job["then"] == "recovered":
                    offset = 10_000.0 * (round_no + 1) + 5_000
                    journaled = job.get("journaled", False)
                    print(recover_journal(journal, offset, "parent", journaled=journaled))
                    bad += settle(journal, ledger, offset, OPERATOR)[0]
                    bad += check(journal, ledger)[0]
    finally:
        restore()
    return bad


__all__ = [
    "ACTION_POINTS",
    "POINTS",
    "Boom",
    "ForkServer",
    "LedgerStep",
    "RunSpec",
    "Tally",
    "Transient",
    "check",
    "create_ledger",
    "drop_journal",
    "hooked",
    "is_postgres",
    "read_journal",
    "read_ledger",
    "recover_journal",
    "replay",
    "run_queue",
    "serve",
    "settle",
    "soak",
    "unblock",
    "wait_for_dead_sessions",
    "with_table_prefix",
]
