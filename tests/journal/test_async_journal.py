"""AsyncActionQueue with a journal: the same records, and recovery of async runs."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import sys
import types
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

from actionqueues import (
    AsyncAction,
    AsyncActionQueue,
    Journal,
    LeaseLost,
    RetryPolicy,
    StepContext,
    current_step,
    recover,
    register_action,
    retry_rollback,
)
from actionqueues.testing import FakeClock, RecordingSleep, inject_faults

from .conftest import LEASE, OpenOther
from .helpers import (
    WORLD,
    AsyncPut,
    Crash,
    Killer,
    Put,
    async_charge,
    event_kinds,
    statuses,
    write_run,
)


def test_an_async_happy_run_is_recorded(journal: Journal) -> None:
    """An async journaled run records kind async, each step, and N+1 commits."""
    points: list[str] = []

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, name="async-signup")
        q.add(AsyncPut("a"))
        q.add(Put("b"))  # a sync action in an async queue
        with inject_faults(points.append):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    timeline = journal.timeline(run_id)
    assert (timeline.run.kind, timeline.run.name, timeline.run.status) == (
        "async",
        "async-signup",
        "succeeded",
    )
    assert [s.type for s in timeline.steps] == ["tests.journal.async_put", "tests.journal.put"]
    assert statuses(journal, run_id) == ["succeeded", "succeeded"]
    assert points.count("after_commit") == 3
    assert WORLD.ledger == {"a": 1, "b": 1}


def test_an_async_failure_and_rollback_are_recorded(journal: Journal) -> None:
    """An async run that fails, retries and is rolled back is recorded like a sync one."""
    sleep = RecordingSleep()

    async def main() -> str | None:
        q = AsyncActionQueue(
            journal=journal, retry=RetryPolicy(max_attempts=2, initial_delay=3.0), sleep=sleep
        )
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        WORLD.script("execute", "b", OSError("1"), OSError("2"))
        with pytest.raises(OSError, match="2"):
            await q.execute()
        report = await q.rollback()
        assert report.ok
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    timeline = journal.timeline(run_id)
    assert timeline.run.status == "rolled_back"
    assert timeline.steps[1].attempts == 2
    assert timeline.steps[1].error == "OSError: 2"
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back"]
    assert event_kinds(journal, run_id) == [(1, "retry"), (None, "failed")]
    assert sleep.calls == [3.0]
    assert WORLD.ledger == {}


def test_a_cancellation_that_arrives_as_a_commit_lands_leaves_the_journal_consistent(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task is cancelled just as step 1's start commit completes (before it resumes).

    The commit landed: step 1 counts as started (not called), so the rollback
    undoes it too and the journal ends with every started step rolled back.
    """
    acommit = journal.acommit
    commits = 0
    target: list[asyncio.Task[None]] = []

    async def cancelling_acommit(*args: Any, **kwargs: Any) -> None:
        nonlocal commits
        await acommit(*args, **kwargs)
        commits += 1
        if commits == 1:  # step 0's result and step 1's start: landed, then cancelled
            # ... before the write resumes: as a server's reply is read, a turn of the loop
            # later (a write that never yields gives a cancellation no moment to come)
            loop = asyncio.get_running_loop()
            reply = loop.create_future()
            loop.call_soon(target[0].cancel)
            loop.call_soon(reply.set_result, None)
            await reply

    monkeypatch.setattr(journal, "acommit", cancelling_acommit)

    run_id = _cancelled_then_rolled_back(journal, target)
    assert WORLD.keys_called("execute") == ["a"]
    assert WORLD.keys_called("rollback") == ["b", "a"]  # b: recorded as started
    assert journal.timeline(run_id).run.status == "rolled_back"
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back"]


def test_current_step_works_in_async_steps(journal: Journal) -> None:
    """current_step() inside an async execute gives that step's context."""
    seen: list[StepContext] = []

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        WORLD.script("execute", "b", lambda: seen.append(current_step()))
        await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert seen == [StepContext(str(run_id), 1, "execute", f"{run_id}:1")]


def test_an_async_run_is_recovered_by_recover(journal: Journal, clock: FakeClock) -> None:
    """recover() (a sync call) finishes an async run with an event loop of its own."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        q.add(AsyncPut("c"))
        with inject_faults(Killer("after_execute", nth=2)), pytest.raises(Crash):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    assert journal.timeline(run_id).run.kind == "async"
    clock.advance(LEASE + 1)
    report = recover(journal)
    assert [(r.run_id, r.outcome) for r in report.runs] == [(run_id, "rolled_back")]
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert WORLD.ledger == {}
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]


def test_a_resumable_async_run_is_resumed_by_another_process(
    journal: Journal, open_other: OpenOther
) -> None:
    """An async resumable run is resumed forward by recovery, with async sleeps injected."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, resumable=True)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        with inject_faults(Killer("after_step_record", nth=2)), pytest.raises(Crash):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    WORLD.script("execute", "b", OSError("flaky"))
    waits: list[float] = []

    async def async_sleep(seconds: float) -> None:
        waits.append(seconds)

    report = recover(
        open_other(), retry=RetryPolicy(max_attempts=3, initial_delay=2.0), sleep=async_sleep
    )
    assert [(r.outcome, r.status) for r in report.runs] == [("resumed", "succeeded")]
    assert waits == [4.0]  # the backoff goes on from attempt 2 (1 before the crash)
    assert WORLD.ledger == {"a": 1, "b": 1}
    assert journal.timeline(run_id).steps[1].attempts == 3  # 1 before the crash, 2 after


def test_a_failed_async_resume_is_rolled_back(journal: Journal, clock: FakeClock) -> None:
    """An async resumable run whose resumed step fails is rolled back by recovery."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, resumable=True)
        for key in "abc":
            q.add(AsyncPut(key))
        with inject_faults(Killer("after_step_record", nth=2)), pytest.raises(Crash):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    WORLD.script("execute", "b", ValueError("still broken"))
    clock.advance(LEASE + 1)
    report = recover(journal)
    assert [(r.outcome, r.status) for r in report.runs] == [("rolled_back", "rolled_back")]
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]


@pytest.mark.parametrize("sleep_kind", ["async", "sync"])
def test_an_async_retry_delay_running_at_the_crash_is_waited_out(
    journal: Journal, clock: FakeClock, sleep_kind: str
) -> None:
    """Recovery of an async run waits until next_retry_at with the injected sleep (async or not)."""
    policy = RetryPolicy(max_attempts=3, initial_delay=100.0, max_delay=1000.0)
    killer = Killer()

    async def dying_sleep(seconds: float) -> None:
        killer.kill()

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, resumable=True, retry=policy, sleep=dying_sleep)
        q.add(AsyncPut("a"))
        WORLD.script("execute", "a", OSError("busy"))
        with inject_faults(killer), pytest.raises(Crash):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    clock.advance(LEASE + 1)
    waits: list[float] = []

    async def async_sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    def sync_sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    sleep = async_sleep if sleep_kind == "async" else sync_sleep
    report = recover(journal, retry=policy, sleep=sleep)
    assert [r.outcome for r in report.runs] == ["resumed"]
    assert waits == [100.0 - LEASE - 1]
    assert WORLD.ledger == {"a": 1}
    assert journal.timeline(run_id).steps[0].attempts == 2  # the calls started, no more


def test_an_async_retry_counts_its_call_when_it_starts(journal: Journal, clock: FakeClock) -> None:
    """An async retry commits attempts+1 (and no next_retry_at) just before its call."""
    seen: list[tuple[int, float | None]] = []

    async def sleep(seconds: float) -> None:
        step = journal.timeline(str(q.run_id)).steps[0]
        seen.append((step.attempts, step.next_retry_at))
        clock.advance(seconds)

    def look() -> None:
        step = journal.timeline(str(q.run_id)).steps[0]
        seen.append((step.attempts, step.next_retry_at))

    q = AsyncActionQueue(
        journal=journal, retry=RetryPolicy(max_attempts=2, initial_delay=3.0), sleep=sleep
    )
    q.add(AsyncPut("a"))
    WORLD.script("execute", "a", OSError("1"), look)
    start = clock.now
    asyncio.run(q.execute())
    assert seen == [(1, start + 1 + 3.0), (2, None)]  # the failed call took 1 s
    assert journal.timeline(str(q.run_id)).steps[0].attempts == 2


def test_recover_refuses_to_run_inside_an_event_loop_and_claims_nothing(
    journal: Journal, clock: FakeClock
) -> None:
    """recover()/retry_rollback() in a running loop: RuntimeError, no claim; to_thread works."""

    async def first() -> str | None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        WORLD.script("execute", "a", ValueError("no"))
        with pytest.raises(ValueError, match="no"):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(first())
    assert run_id is not None
    clock.advance(LEASE + 1)
    before = journal.timeline(run_id)

    async def service_startup() -> list[str]:
        with pytest.raises(RuntimeError, match=r"asyncio\.to_thread\(recover, journal"):
            recover(journal)
        with pytest.raises(RuntimeError, match=r"asyncio\.to_thread\(retry_rollback, journal"):
            retry_rollback(journal, run_id)
        assert journal.timeline(run_id) == before  # not claimed, no lease taken
        report = await asyncio.to_thread(recover, journal)
        return [r.outcome for r in report.runs]

    assert asyncio.run(service_startup()) == ["rolled_back"]
    assert WORLD.keys_called("rollback") == ["a"]
    assert journal.timeline(run_id).run.recoveries == 1


def test_an_async_queue_refuses_state_made_non_json_after_add_and_stays_usable(
    journal: Journal,
) -> None:
    """Async execute() with a step made non-JSON after add(): TypeError, nothing run, usable."""

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        second = q.add(AsyncPut("b"))
        second.receipt = {1, 2}  # type: ignore[assignment]
        with pytest.raises(TypeError, match=r"state of step 1 .* is not JSON data"):
            await q.execute()
        assert WORLD.calls == []
        assert journal.runs() == []
        second.receipt = None
        await q.execute()

    asyncio.run(main())
    assert [r.status for r in journal.runs()] == ["succeeded"]
    assert WORLD.ledger == {"a": 1, "b": 1}


def test_an_async_resume_taken_over_by_another_process_is_lost(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A resumed async run claimed by a third process meanwhile: outcome lost, no rollback."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, resumable=True)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        with inject_faults(Killer("after_step_record", nth=2)), pytest.raises(Crash):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    third = open_other("third", clock=FakeClock(clock.now + 3 * LEASE))
    WORLD.script("execute", "b", third.claim)
    report = recover(open_other())
    assert [r.outcome for r in report.runs] == ["lost"]
    assert WORLD.keys_called("rollback") == []
    assert journal.timeline(run_id).run.owner == "third"


def test_an_async_takeover_during_a_retry_delay_stops_execute_and_rollback(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """Async: a run claimed while a step waits to retry raises LeaseLost; no further call."""
    other = open_other(clock=FakeClock(clock.now + 3 * LEASE))

    async def sleep(seconds: float) -> None:
        assert other.claim() is not None  # paused past its lease meanwhile

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, retry=RetryPolicy(max_attempts=3), sleep=sleep)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        WORLD.script("execute", "a", OSError("transient"))
        with pytest.raises(LeaseLost):
            await q.execute()
        with pytest.raises(LeaseLost):
            await q.rollback()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    assert WORLD.keys_called("execute") == ["a"]
    assert WORLD.keys_called("rollback") == []
    run = journal.timeline(run_id).run
    assert (run.owner, run.status) == ("recoverer", "running")


def test_an_async_step_function_in_flight_at_the_crash_needs_attention(
    journal: Journal, open_other: OpenOther
) -> None:
    """An async @step whose result was never recorded: no undo, needs_attention, then retryable."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(async_charge("eve", 10))
        with inject_faults(Killer("after_execute", nth=2)), pytest.raises(Crash):
            await q.execute()
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    report = recover(open_other())
    assert [(r.outcome, r.status) for r in report.runs] == [("needs_attention", "needs_attention")]
    assert WORLD.undone == []
    assert WORLD.keys_called("rollback") == ["a"]
    error = journal.timeline(run_id).steps[1].rollback_error
    assert error is not None
    assert f"idempotency key {run_id}:1" in error
    result = retry_rollback(journal, run_id)
    assert (result.outcome, result.status) == ("rolled_back", "rolled_back")
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back"]
    assert WORLD.undone == []


def test_an_async_write_gets_a_shielding_task_only_if_the_journal_awaits(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal whose async writes are its blocking ones (SQLite) writes inline: nothing can
    cancel such a write midway. One that awaits (PostgreSQL) gets a task shielding each write
    from cancellation: here 4 (the create, 2 step commits, the outcome)."""
    shielded: list[object] = []
    ensure_future = asyncio.ensure_future

    def counting(coroutine: Any) -> Any:
        shielded.append(coroutine)
        return ensure_future(coroutine)

    monkeypatch.setattr(asyncio, "ensure_future", counting)

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        for key in "abc":
            q.add(AsyncPut(key))
        await q.execute()

    asyncio.run(main())
    awaits = type(journal).acommit is not Journal.acommit
    assert len(shielded) == (4 if awaits else 0)
    assert WORLD.ledger == {"a": 1, "b": 1, "c": 1}


def test_a_write_runs_in_a_task_of_its_own_so_its_own_timeout_stays_its_own(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal write that times out by itself (its own timeout cancels the current task,
    as asyncio.timeout() does) fails with its TimeoutError; the queue's task is never
    cancelled by it, and the failed write is not taken for a cancellation of the run."""
    calls: list[str] = []

    async def timing_out_acommit(*args: Any, **kwargs: Any) -> None:
        calls.append("write")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        reply = loop.create_future()
        loop.call_soon(task.cancel)  # the write's own deadline
        try:
            await reply
        except asyncio.CancelledError:
            raise TimeoutError("the write's own deadline passed") from None

    monkeypatch.setattr(journal, "acommit", timing_out_acommit)

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        with pytest.raises(TimeoutError, match="own deadline"):
            await q.execute()
        task = asyncio.current_task()
        assert task is not None
        if sys.version_info >= (3, 11):
            assert task.cancelling() == 0

    asyncio.run(main())
    assert calls[0] == "write"
    assert WORLD.keys_called("execute") == ["a"]


@types.coroutine
def _bare_yield() -> Generator[None, None, None]:
    """What ``asyncio.sleep(0)`` yields: no future, one turn of the loop."""
    yield


def test_cancellations_at_every_await_of_a_write_wait_for_it_then_one_is_raised(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled during a bare yield and during a future of step 1's start commit (twice):
    the commit still lands whole, then one CancelledError ends the run, which rolls back."""
    acommit = journal.acommit
    writes: list[str] = []
    target: list[asyncio.Task[None]] = []

    async def interrupted_acommit(*args: Any, **kwargs: Any) -> None:
        if not writes:  # step 0's result and step 1's start
            loop = asyncio.get_running_loop()
            loop.call_soon(target[0].cancel)
            await _bare_yield()
            writes.append("after the bare yield")
            reply = loop.create_future()
            loop.call_soon(target[0].cancel)
            loop.call_soon(target[0].cancel)
            loop.call_soon(loop.call_soon, reply.set_result, None)
            await reply
            writes.append("after the future")
        await acommit(*args, **kwargs)
        writes.append("landed")

    monkeypatch.setattr(journal, "acommit", interrupted_acommit)

    run_id = _cancelled_then_rolled_back(journal, target)
    assert writes[:3] == ["after the bare yield", "after the future", "landed"]
    assert WORLD.keys_called("execute") == ["a"]
    assert WORLD.keys_called("rollback") == ["b", "a"]  # b's start landed
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back"]


@pytest.mark.parametrize("outcome", ["cancelled", "failed"])
def test_a_write_whose_awaited_future_fails_gets_its_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """Not the task but what the write awaits is cancelled, or fails: the write gets that
    error, nothing of it is written, and it stays pending (as with a task of its own)."""
    acommit = journal.acommit
    calls: list[str] = []
    error: type[BaseException] = asyncio.CancelledError if outcome == "cancelled" else OSError

    async def aborted_acommit(*args: Any, **kwargs: Any) -> None:
        if not calls:
            calls.append("aborted")
            reply = asyncio.get_running_loop().create_future()
            if outcome == "cancelled":
                asyncio.get_running_loop().call_soon(reply.cancel)
            else:
                asyncio.get_running_loop().call_soon(reply.set_exception, OSError("reset"))
            try:
                await reply
            except error:
                calls.append(f"{outcome} inside")
                raise
        await acommit(*args, **kwargs)

    monkeypatch.setattr(journal, "acommit", aborted_acommit)

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        with pytest.raises(error):
            await q.execute()
        assert (await q.rollback()).ok
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    assert calls == ["aborted", f"{outcome} inside"]
    assert WORLD.keys_called("execute") == ["a"]
    assert statuses(journal, run_id)[0] == "rolled_back"


def test_a_write_that_awaits_something_not_a_future_gets_a_clear_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal write yielding what asyncio cannot wait for: a RuntimeError inside it."""

    @types.coroutine
    def odd() -> Generator[int, None, None]:
        yield 42

    async def odd_acommit(*args: Any, **kwargs: Any) -> None:
        await odd()

    monkeypatch.setattr(journal, "acommit", odd_acommit)

    async def main() -> None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        await q.execute()

    with pytest.raises(RuntimeError, match="bad yield: 42"):
        asyncio.run(main())


_SEEN: list[str] = []
_LEFT: list[asyncio.Task[None]] = []
_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("tests_journal_var", default="unset")


@register_action("tests.journal.litterer")
@dataclass
class Litterer(AsyncAction):
    """Its rollback sets a context variable and leaves two tasks waiting forever behind."""

    key: str

    async def execute(self) -> None:
        pass

    async def rollback(self) -> None:
        _SEEN.append(f"{self.key} sees {_VAR.get()}")
        _VAR.set(self.key)
        loop = asyncio.get_running_loop()

        async def forever(fails: bool) -> None:
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                _SEEN.append(f"{self.key}'s task cancelled")
                if fails:
                    raise ValueError(f"{self.key}'s task failed as it was cancelled") from None
                raise

        _LEFT.extend((loop.create_task(forever(False)), loop.create_task(forever(True))))


def test_each_recovered_async_run_ends_as_under_asyncio_run(
    journal: Journal, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Async runs share recovery's loop, yet each ends as asyncio.run() ends one: the tasks it
    left are cancelled (an error of theirs goes to the loop's handler), and a context
    variable it set is not seen by the next run."""
    _SEEN.clear()
    _LEFT.clear()
    for key in "xy":
        write_run(
            journal,
            f"{key * 8}-0000-4000-8000-000000000000",
            [("tests.journal.litterer", json.dumps({"key": key}), "running")],
            kind="async",
        )
    clock.advance(LEASE + 1)
    caplog.set_level(logging.ERROR, logger="asyncio")
    report = recover(journal)
    assert [r.outcome for r in report.runs] == ["rolled_back", "rolled_back"]
    first, second = (r.run_id[0] for r in report.runs)
    assert [
        f"{first} sees unset",
        f"{first}'s task cancelled",
        f"{first}'s task cancelled",
        f"{second} sees unset",
        f"{second}'s task cancelled",
        f"{second}'s task cancelled",
    ] == _SEEN
    assert len(_LEFT) == 4
    assert all(task.done() for task in _LEFT)
    handled = [r for r in caplog.records if "left by a recovered run" in r.getMessage()]
    assert len(handled) == 2
    assert {str(r.exc_info[1]) for r in handled if r.exc_info} == {
        f"{k}'s task failed as it was cancelled" for k in "xy"
    }


def _cancelled_then_rolled_back(journal: Journal, target: list[asyncio.Task[None]]) -> str:
    """Run AsyncPut a, b in a task (put in ``target``, for the test's journal to cancel):
    it must end cancelled; then roll it back. Returns the run's id."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal)
        q.add(AsyncPut("a"))
        q.add(AsyncPut("b"))
        task = asyncio.get_running_loop().create_task(q.execute())
        target.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await q.rollback()).ok
        return q.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    return run_id


_INTERRUPTS: list[str] = []


@register_action("tests.journal.interrupter")
@dataclass
class Interrupter(AsyncAction):
    """Its first rollback is interrupted by a real SIGINT (the operator's Ctrl-C)."""

    async def execute(self) -> None:
        pass

    async def rollback(self) -> None:
        WORLD.call("rollback", "interrupter")
        if not _INTERRUPTS:
            _INTERRUPTS.append("sent")
            os.kill(os.getpid(), signal.SIGINT)
            reply = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(reply.set_result, None)
            await reply  # the signal lands here, or before


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_in_a_recovered_async_run_stops_recovery_and_releases_the_run(
    journal: Journal, clock: FakeClock
) -> None:
    """A real SIGINT while recovery's loop runs an async run's rollback: recover() raises
    KeyboardInterrupt. On 3.11+ the run's task is cancelled first (asyncio.run()'s Ctrl-C):
    its rollbacks are finished and recorded; on 3.10 the run is released unfinished."""
    _INTERRUPTS.clear()
    run_id = "abcdefab-0000-4000-8000-000000000000"
    write_run(
        journal,
        run_id,
        [
            ("tests.journal.async_put", json.dumps({"key": "a"}), "succeeded"),
            ("tests.journal.interrupter", "{}", "running"),
        ],
        kind="async",
    )
    clock.advance(LEASE + 1)
    with pytest.raises(KeyboardInterrupt):
        recover(journal)
    assert _INTERRUPTS == ["sent"]
    run = journal.timeline(run_id).run
    if sys.version_info >= (3, 11):
        # As in any async rollback that is cancelled: every rollback is finished first
        # (and recorded), then the interrupt ends recovery; nothing is left half done.
        assert (run.status, run.owner) == ("rolled_back", None)
        assert WORLD.keys_called("rollback") == ["interrupter", "a"]
        assert recover(journal).runs == ()
    else:  # asyncio.run() of 3.10 raises it where it lands: the run is released, unfinished
        assert (run.status, run.owner) == ("rolling_back", None)
        (result,) = recover(journal).runs  # at once: no lease to wait out
        assert (result.outcome, result.status) == ("rolled_back", "rolled_back")
        assert WORLD.keys_called("rollback")[-2:] == ["interrupter", "a"]
