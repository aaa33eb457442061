"""AsyncActionQueue on the PostgreSQL journal: its commits go over async connections.

The backend-independent async tests (``tests/journal/test_async_journal.py``)
run on PostgreSQL too; these check what only the async connections do: the
event loop runs other tasks while a commit is in flight, a lost connection is
replaced, and each loop's pool is closed with it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import _pgtest
import psycopg
import pytest

from actionqueues import (
    AsyncActionQueue,
    Journal,
    JournalError,
    RetryPolicy,
    current_step,
    open_journal,
    recover,
    register_action,
)
from actionqueues._postgres import _MAX_IDLE, PostgresJournal, _AsyncConnections
from actionqueues._recovery import shared_event_loop
from actionqueues.testing import FakeClock, inject_faults

pytestmark = _pgtest.marks()

ORDER: list[str] = []


@register_action("tests.pg_async.step")
@dataclass
class Step:
    n: int

    async def execute(self) -> None:
        ORDER.append(f"do {self.n} as {current_step().idempotency_key.split(':')[1]}")

    async def rollback(self) -> None:
        ORDER.append(f"undo {self.n}")


@pytest.fixture
def url(pg_url: str) -> str:
    """A journal URL on a fresh schema (the ``journal`` fixture opens it)."""
    ORDER.clear()
    return pg_url


def _refuse_sync_connections(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> Any:
        raise AssertionError("the async queue used a blocking connection")

    monkeypatch.setattr(journal._pool, "connection", refuse)  # type: ignore[attr-defined]
    monkeypatch.setattr(journal._pool, "getconn", refuse)  # type: ignore[attr-defined]


def test_an_async_queue_commits_over_async_connections_only(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit of an async run (create, steps, success) uses the loop's async pool."""
    points: list[str] = []

    async def main() -> str | None:
        _refuse_sync_connections(journal, monkeypatch)
        q = AsyncActionQueue(journal=journal, name="async-pg")
        for n in range(3):
            q.add(Step(n))
        with inject_faults(points.append):
            await q.execute()
        monkeypatch.undo()
        await journal.aclose()  # closes this loop's pool, then the journal
        return q.run_id

    run_id = asyncio.run(main())
    assert ORDER == ["do 0 as 0", "do 1 as 1", "do 2 as 2"]
    assert points.count("after_commit") == 4  # N+1 commits
    with open_journal(journal.url, read_only=True) as reader:
        timeline = reader.timeline(str(run_id))
    assert (timeline.run.kind, timeline.run.status) == ("async", "succeeded")
    assert [(s.status, s.attempts) for s in timeline.steps] == [("succeeded", 1)] * 3


def test_the_loop_runs_other_tasks_while_a_commit_waits_for_the_server(
    journal: Journal,
) -> None:
    """A commit blocked on the server (a row lock) lets another task run meanwhile.

    Another session locks the run's step rows, so step 1's start commit waits on the
    server; a task of the same loop sees it waiting there, then releases the
    lock. A commit that blocked the loop would finish only when the server
    ends the locker's session (5 s), and step 1 would run before that task.
    """
    lock = LockTheRun(journal)

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        q.add(lock)
        q.add(Step(1))
        await q.execute()

    asyncio.run(main())
    assert ORDER == ["locked", "saw the commit wait; released the lock", "do 1 as 1"]


def test_a_task_cancelled_during_a_commit_gets_it_done_first(journal: Journal) -> None:
    """Cancelled while step 1's start commit waits: the commit lands, then the cancellation.

    Step 1 was recorded as started but not called: it counts as started (like a
    step whose process died there), so the rollback undoes it too, and the
    journal ends consistent: every started step rolled back.
    """
    lock = LockTheRun(journal)

    async def main() -> AsyncActionQueue:
        q = AsyncActionQueue(journal=journal)
        q.add(lock)
        q.add(Step(1))
        task = asyncio.get_running_loop().create_task(q.execute())
        lock.cancel = task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await q.rollback()).ok
        return q

    q = asyncio.run(main())
    assert ORDER == ["locked", "saw the commit wait; released the lock", "undo 1", "undo lock"]
    timeline = journal.timeline(str(q.run_id))
    assert timeline.run.status == "rolled_back"
    assert [(s.status, s.attempts) for s in timeline.steps] == [
        ("rolled_back", 1),
        ("rolled_back", 1),
    ]
    assert [e.kind for e in timeline.events] == ["failed"]
    assert "CancelledError" in timeline.events[0].detail


@register_action("tests.pg_async.lock_the_run")
class LockTheRun:
    """Step 0: lock the run's step rows in another session; a task releases them once
    the journal's next commit waits for them (cancelling ``cancel`` first, if set)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.tasks: set[asyncio.Task[None]] = set()
        self.cancel: asyncio.Task[None] | None = None

    def to_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LockTheRun:  # pragma: no cover - not recovered
        raise NotImplementedError

    async def execute(self) -> None:
        run_id = current_step().run_id
        schema = self.journal.url.rsplit("schema=", 1)[1]
        locker = psycopg.connect(_pgtest.URL)
        locker.execute("SET idle_in_transaction_session_timeout = '5s'")
        locker.execute(f"SELECT 1 FROM {schema}.aq_steps WHERE run_id = %s FOR UPDATE", (run_id,))
        ORDER.append("locked")

        async def release() -> None:
            with psycopg.connect(_pgtest.URL, autocommit=True) as watcher:
                for _ in range(10_000):  # each look is a query: about a second in all
                    if _pgtest.waits_on_a_lock(watcher, self.journal):
                        break
                    await asyncio.sleep(0)  # let the loop run (no real wait)
                else:
                    raise AssertionError("the journal's commit never waited on the server")
            if self.cancel is not None:
                self.cancel.cancel()
            ORDER.append("saw the commit wait; released the lock")
            locker.close()

        task = asyncio.get_running_loop().create_task(release())
        self.tasks.add(task)

    async def rollback(self) -> None:
        ORDER.append("undo lock")


@pytest.mark.parametrize("nth", [1, 2, 4])
def test_an_async_commit_whose_connection_is_lost_is_resent(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """The run's creation, a step's commit or its success, lost with the connection: resent."""
    resends: list[int] = []

    async def main() -> str | None:
        pool = await journal._apool()  # type: ignore[attr-defined]  # its session dies too
        check = pool.check

        async def counting_check() -> None:
            resends.append(1)
            await check()

        monkeypatch.setattr(pool, "check", counting_check)
        q = AsyncActionQueue(journal=journal)
        for n in range(3):
            q.add(Step(n))
        with inject_faults(_pgtest.kill_before_commit(journal, nth)):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert resends == [1]
    assert ORDER == ["do 0 as 0", "do 1 as 1", "do 2 as 2"]
    timeline = journal.timeline(str(run_id))
    assert timeline.run.status == "succeeded"
    assert [(s.status, s.attempts) for s in timeline.steps] == [("succeeded", 1)] * 3


class _AsyncAnswerLost:
    """Wraps a journal's async statements: the nth is applied, then its answer is "lost"."""

    def __init__(self, journal: Journal, nth: int) -> None:
        self.run = journal._arun_prepared  # type: ignore[attr-defined]
        self.nth = nth
        self.sent = 0

    async def __call__(self, *args: Any) -> Any:
        result = await self.run(*args)
        self.sent += 1
        if self.sent == self.nth:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result


@register_action("tests.pg_async.flaky")
@dataclass
class Flaky:
    """Fails its first call, then works."""

    n: int
    calls: int = 0

    async def execute(self) -> None:
        self.calls += 1
        ORDER.append(f"do {self.n}")
        if self.calls == 1:
            raise ConnectionError("flaky")

    async def rollback(self) -> None:
        ORDER.append(f"undo {self.n}")


@pytest.mark.parametrize(
    ("nth", "what"), [(1, "the run's creation"), (3, "the retry's schedule and its event")]
)
def test_an_async_commit_applied_but_whose_answer_was_lost_is_resent_harmlessly(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, nth: int, what: str
) -> None:
    """The server applied the commit, the answer was lost: the resend changes nothing."""

    async def main() -> str | None:
        lost = _AsyncAnswerLost(journal, nth)
        monkeypatch.setattr(journal, "_arun_prepared", lost)
        q = AsyncActionQueue(journal=journal, retry=RetryPolicy(max_attempts=2), sleep=no_sleep)
        q.add(Step(0))
        q.add(Flaky(1))
        await q.execute()
        assert lost.sent > nth
        return q.run_id

    run_id = asyncio.run(main())
    assert ORDER == ["do 0 as 0", "do 1", "do 1"]
    timeline = journal.timeline(str(run_id))
    assert timeline.run.status == "succeeded"
    assert [(s.status, s.attempts) for s in timeline.steps] == [("succeeded", 1), ("succeeded", 2)]
    assert [(e.kind, e.index) for e in timeline.events] == [("retry", 1)]  # written once


def no_sleep(seconds: float) -> None:
    """The queues' injected sleep: never sleeps."""


def test_async_with_closes_the_journal_and_its_loops_pool(url: str) -> None:
    """``async with open_journal(...)`` closes the running loop's pool on the way out."""

    async def main() -> Any:
        async with open_journal(url, heartbeat=False) as journal:
            q = AsyncActionQueue(journal=journal)
            q.add(Step(0))
            await q.execute()
            pools = list(journal._apools.values())  # type: ignore[attr-defined]
        assert journal.closed
        return pools

    pools = asyncio.run(main())
    assert [pool.closed for pool in pools] == [True]


def test_recovering_async_runs_shares_one_loop_and_its_connections_then_closes_them(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """recover() runs the async runs of one call on one loop: one connection for all of them,
    closed (with the loop) when recover() returns. A worker thread's calls share theirs."""
    with open_journal(url, heartbeat=False) as journal:

        async def abandon() -> None:
            q = AsyncActionQueue(journal=journal)
            q.add(Step(0))
            await q.execute()
            journal.commit(str(q.run_id), {"status": "running"}, [])  # as if it had died

        for _ in range(5):
            asyncio.run(abandon())
    ORDER.clear()
    opened: list[Any] = []
    connect = PostgresJournal._aconnect

    async def recording_connect(journal: PostgresJournal) -> Any:
        opened.append(asyncio.get_running_loop())
        return await connect(journal)

    monkeypatch.setattr(PostgresJournal, "_aconnect", recording_connect)
    with open_journal(url, heartbeat=False, clock=FakeClock(time.time() + 3600)) as recoverer:
        report = recover(recoverer, limit=3)
        assert [r.outcome for r in report.runs] == ["rolled_back"] * 3
        assert ORDER == ["undo 0"] * 3
        assert len(opened) == 1  # one connection, on one loop, for the three runs
        assert opened[0].is_closed()
        assert recoverer._apools == {}  # type: ignore[attr-defined]  # closed with the loop

        with shared_event_loop():  # a worker thread: one loop across its recover() calls
            for _ in range(2):
                (result,) = recover(recoverer, limit=1).runs
                assert result.outcome == "rolled_back"
            assert len(opened) == 2
            assert not opened[1].is_closed()
            assert len(recoverer._apools) == 1  # type: ignore[attr-defined]
        assert opened[1].is_closed()
        assert recoverer._apools == {}  # type: ignore[attr-defined]
    assert ORDER == ["undo 0"] * 5


def test_close_from_async_code_closes_the_loops_pool_soon_after(url: str) -> None:
    """journal.close() called inside a loop schedules the close of that loop's pool."""
    journal = open_journal(url, heartbeat=False)

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        q.add(Step(0))
        await q.execute()
        pools = list(journal._apools.values())  # type: ignore[attr-defined]
        assert len(pools) == 1
        journal.close()
        await asyncio.gather(*journal._closing)  # type: ignore[attr-defined]
        assert pools[0].closed

    asyncio.run(main())


def test_a_loop_ended_by_asyncio_run_closes_its_pool(journal: Journal) -> None:
    """Without aclose(), the pool is closed as asyncio.run shuts its loop down."""
    pools: list[Any] = []

    async def main() -> None:
        await _one_run(journal)
        pools.extend(journal._apools.values())  # type: ignore[attr-defined]

    asyncio.run(main())
    assert [pool.closed for pool in pools] == [True]
    assert journal._apools == {}  # type: ignore[attr-defined]
    asyncio.run(main())  # the next loop gets a pool of its own
    assert [pool.closed for pool in pools] == [True, True]


def test_a_journal_closed_after_its_loop_stopped_closes_that_loops_pool(url: str) -> None:
    """A loop that is not running (nor closed) gets its pool closed by journal.close()."""
    journal = open_journal(url, heartbeat=False)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_one_run(journal))
        pools = list(journal._apools.values())  # type: ignore[attr-defined]
        journal.close()
        assert [pool.closed for pool in pools] == [True]
    finally:
        loop.close()


def test_a_journal_closed_from_another_thread_closes_that_loops_pool(url: str) -> None:
    """A loop running in another thread gets its pool closed there; close() waits for it."""
    journal = open_journal(url, heartbeat=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(_one_run(journal), loop).result(timeout=30)
        pools = list(journal._apools.values())  # type: ignore[attr-defined]
        journal.close()
        assert [pool.closed for pool in pools] == [True]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _one_run(journal: Journal) -> None:
    q = AsyncActionQueue(journal=journal)
    q.add(Step(0))
    await q.execute()


def test_a_commit_the_server_refuses_is_a_journal_error(journal: Journal) -> None:
    """A statement the server rejects (a bad value) is a JournalError, sync or async."""
    run = {"run_id": "r-1", "name": "a", "kind": "async", "status": "running", "resumable": 0}
    journal.create({**run, "steps": 1}, [{"idx": 0, "type": "t", "state": "{}"}], [])
    bad: list[Any] = [("step", 0, {"attempts": "many"})]
    with pytest.raises(JournalError, match=r"cannot write to the journal .*many"):
        journal.commit("r-1", {}, bad, renew=False)
    with pytest.raises(JournalError, match=r"cannot write to the journal .*many"):
        asyncio.run(journal.acommit("r-1", {}, bad, renew=False))
    assert journal.timeline("r-1").steps[0].attempts == 0


def test_async_commits_write_a_nul_as_backslash_x00_too(journal: Journal) -> None:
    """PostgreSQL text cannot hold NUL: the async create and commit write it as \\x00."""
    run = {"run_id": "r-1", "name": "a\x00b", "kind": "async", "status": "running"}
    error = "ValueError: x\x00y"

    async def main() -> None:
        steps = [{"idx": 0, "type": "t", "state": "{}"}]
        await journal.acreate({**run, "resumable": 0, "steps": 1}, steps, [])
        ops: list[Any] = [("step", 0, {"error": error}), ("event", None, "failed", error)]
        await journal.acommit("r-1", {"status": "failed", "error": error}, ops)

    asyncio.run(main())
    timeline = journal.timeline("r-1")
    assert timeline.run.name == "a\\x00b"
    written = "ValueError: x\\x00y"
    assert timeline.run.error == timeline.steps[0].error == timeline.events[0].detail == written


class _DeadPool:
    """An async pool whose every connection is lost."""

    def __init__(self) -> None:
        self.checked = 0

    def connection(self) -> Any:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    async def check(self) -> None:
        self.checked += 1


def test_an_async_commit_lost_twice_is_a_journal_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost, then lost again on the new connection: a JournalError, the run not written."""
    dead = _DeadPool()

    async def dead_pool() -> _DeadPool:
        return dead

    monkeypatch.setattr(journal, "_apool", dead_pool)

    async def main() -> AsyncActionQueue:
        q = AsyncActionQueue(journal=journal)
        q.add(Step(0))
        with pytest.raises(JournalError, match="server closed the connection"):
            await q.execute()
        return q

    q = asyncio.run(main())
    assert dead.checked == 2  # the run's creation, then (still pending) with its failure
    assert ORDER == []  # its start not recorded, the step was not called
    assert journal.runs() == []
    assert q.run_id is not None


def test_an_unreachable_server_for_the_async_pool_is_a_journal_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's pool cannot connect: JournalError naming the server, never its password."""
    monkeypatch.setattr(journal, "_libpq_url", "postgresql://me:secret@127.0.0.1:1/runs")
    monkeypatch.setattr(journal, "connect_timeout", 0.3)

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        q.add(Step(0))
        await q.execute()

    with pytest.raises(JournalError, match="cannot connect to the PostgreSQL journal") as caught:
        asyncio.run(main())
    assert "me:***@127.0.0.1:1/runs" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert ORDER == []


def test_the_loops_connections_are_lent_reused_and_closed() -> None:
    """The per-loop pool: reuses an idle connection; closes one that failed or is in a
    transaction, those that come back after close(), and refuses to lend after it."""
    made: list[Any] = []

    async def connect() -> Any:
        conn = await psycopg.AsyncConnection.connect(_pgtest.URL, autocommit=True)
        made.append(conn)
        return conn

    async def main() -> None:
        pool = _AsyncConnections(connect, 2, "postgresql://example")
        async with pool.connection() as first:
            pass
        async with pool.connection() as again:
            assert again is first
        async with pool.connection() as in_transaction:
            await in_transaction.execute("BEGIN")
        assert in_transaction.closed
        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as failed:
                raise ZeroDivisionError
        assert failed.closed
        async with pool.connection() as lent:
            await pool.close()
            assert not lent.closed
        assert lent.closed
        with pytest.raises(JournalError, match="is closed"):
            async with pool.connection():
                pass
        assert all(conn.closed for conn in made)

    asyncio.run(main())


def test_a_connection_idle_too_long_is_closed_not_lent() -> None:
    """A worker thread's loop lives for days: a connection idle for max_idle is replaced."""
    made: list[Any] = []
    clock = FakeClock(1000.0)

    async def connect() -> Any:
        conn = await psycopg.AsyncConnection.connect(_pgtest.URL, autocommit=True)
        made.append(conn)
        return conn

    async def main() -> None:
        pool = _AsyncConnections(connect, 2, "postgresql://example", clock=clock)
        async with pool.connection() as first:
            pass
        clock.advance(_MAX_IDLE - 1)
        async with pool.connection() as again:
            assert again is first
        clock.advance(_MAX_IDLE)
        async with pool.connection() as fresh:
            assert fresh is not first
        assert first.closed
        # After a burst of two, the one left idle longest is closed at a later lending,
        # even though the newest (lent) one is fresh: the pool shrinks back.
        async with pool.connection() as one, pool.connection() as two:
            assert one is fresh
        clock.advance(_MAX_IDLE / 2)
        async with pool.connection() as again:  # the newest idle one (back last): one
            assert again is one
        clock.advance(_MAX_IDLE / 2)
        async with pool.connection() as last:
            assert last is one
        assert two.closed  # idle since the burst
        assert not one.closed
        await pool.close()
        assert all(conn.closed for conn in made)

    asyncio.run(main())


def test_an_async_commit_aborted_by_a_deadlock_is_sent_again(journal: Journal) -> None:
    """A deadlock with a claim aborts the statement whole: it is sent again, as a sync one."""
    attempts: list[bool] = []

    async def attempt(resent: bool) -> str:
        attempts.append(resent)
        if not resent:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return "written"

    pg: Any = journal
    assert asyncio.run(pg._atwice(attempt, "cannot write to the journal")) == "written"
    assert attempts == [False, True]


def test_async_statements_send_big_states_and_values_psycopg_must_adapt(journal: Journal) -> None:
    """A create larger than the socket's buffer waits until it is written; a Decimal (not
    written as text here) goes through psycopg's execute, its NULs escaped all the same."""
    from decimal import Decimal

    run = {"run_id": "r-1", "name": "a", "kind": "async", "status": "running", "resumable": 0}
    big = json.dumps({"payload": "x" * 16_000_000})
    columns = {"next_retry_at": Decimal("12.5"), "error": "a\x00b"}

    async def main() -> None:
        await journal.acreate({**run, "steps": 1}, [{"idx": 0, "type": "t", "state": big}], [])
        await journal.acommit("r-1", {}, [("step", 0, columns)], renew=False)  # a count
        await journal.acommit("r-1", {"error": "e"}, [("step", 0, {"attempts": Decimal(3)})])

    asyncio.run(main())
    [step] = journal.timeline("r-1").steps
    assert step.state == big
    assert (step.next_retry_at, step.error, step.attempts) == (12.5, "a\\x00b", 3)
    assert journal.timeline("r-1").run.error == "e"  # fenced by the run's row: its owner
