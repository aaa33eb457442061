"""Journal writes that fail: nothing recorded is lost; execute() and rollback() say so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from actionqueues import (
    ActionQueue,
    AsyncActionQueue,
    Journal,
    JournalError,
    LeaseLost,
    RetryPolicy,
    recover,
)
from actionqueues.testing import FakeClock, RecordingSleep, inject_faults

from .conftest import LEASE
from .helpers import WORLD, ArmedFault, AsyncPut, Put, event_kinds, statuses


class FailCommits:
    """An ``inject_faults`` hook failing the listed journal transactions (1 = the first seen)."""

    def __init__(self, *numbers: int, error: Exception | None = None) -> None:
        self.numbers = set(numbers)
        self.error = error
        self.seen = 0

    def __call__(self, point: str) -> None:
        if point == "before_commit":
            self.seen += 1
            if self.seen in self.numbers:
                raise self.error or JournalError("database is locked (simulated)", "sqlite://x")


def write_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in caplog.messages if "in the journal" in m and "could not record" in m]


def failed_abc(journal: Journal) -> ActionQueue:
    """A queue of Put a, b, c whose c failed: the rollback has 4 writes (c, b, a, outcome)."""
    q = ActionQueue(journal=journal, name="abc")
    for key in "abc":
        q.add(Put(key))
    WORLD.script("execute", "c", ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    return q


@pytest.mark.parametrize(
    ("failing", "what"),
    [
        ((2,), "the start of step 1's rollback"),
        ((2, 3), "the start of step 1's rollback"),
        ((1,), "the start of step 2's rollback"),
    ],
)
def test_a_transient_write_failure_during_a_rollback_is_logged_once_and_nothing_is_lost(
    journal: Journal, caplog: pytest.LogCaptureFixture, failing: tuple[int, ...], what: str
) -> None:
    """The rollback goes on; what could not be written is carried by the next write."""
    q = failed_abc(journal)
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(FailCommits(*failing)):
        report = q.rollback()
    assert report.ok
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    logged = write_failures(caplog)
    assert len(logged) == 1
    assert what in logged[0]
    assert "database is locked (simulated)" in logged[0]
    assert q.run_id is not None
    timeline = journal.timeline(q.run_id)
    assert timeline.run.status == "rolled_back"
    assert statuses(journal, q.run_id) == ["rolled_back"] * 3
    assert [s.rollback_attempts for s in timeline.steps] == [1, 1, 1]
    assert all(s.rollback_started_at is not None for s in timeline.steps)
    assert all(s.rollback_finished_at is not None for s in timeline.steps)
    assert journal.heartbeat() == 0


def test_an_async_rollback_goes_on_through_a_failed_write_and_loses_nothing(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """AsyncActionQueue: a rollback write that fails is logged once and carried forward."""

    async def main() -> str | None:
        q = AsyncActionQueue(journal=journal, name="abc")
        for key in "abc":
            q.add(AsyncPut(key))
        WORLD.script("execute", "c", ValueError("no"))
        with pytest.raises(ValueError, match="no"):
            await q.execute()
        with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(FailCommits(2)):
            assert (await q.rollback()).ok
        return q.run_id

    run_id = asyncio.run(main())
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    logged = write_failures(caplog)
    assert len(logged) == 1
    assert "the start of step 1's rollback" in logged[0]
    assert run_id is not None
    assert journal.timeline(run_id).run.status == "rolled_back"
    assert statuses(journal, run_id) == ["rolled_back"] * 3


def test_a_transient_write_failure_in_a_rollback_retry_loses_nothing(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollback retry whose record failed still runs; the retry event reaches the journal."""
    q = ActionQueue(
        journal=journal,
        rollback_retry=RetryPolicy(max_attempts=3, initial_delay=1.0),
        sleep=RecordingSleep(),
    )
    q.add(Put("a"))
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.script("rollback", "a", OSError("flaky"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    # rollback writes: 1 start of a, 2 the retry scheduled, 3 the retry starting, 4 outcome
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(FailCommits(2)):
        assert q.rollback().ok
    assert len(write_failures(caplog)) == 1
    assert "a rollback retry" in write_failures(caplog)[0]
    assert q.run_id is not None
    a = journal.timeline(q.run_id).steps[0]
    assert (a.status, a.rollback_attempts, a.next_retry_at) == ("rolled_back", 2, None)
    assert event_kinds(journal, q.run_id) == [(None, "failed"), (0, "rollback_retry")]


def test_a_journal_that_stays_unwritable_during_a_rollback_leaves_the_run_to_recovery(
    journal: Journal, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every rollback write failing: every rollback is still called, one log, run unfinished."""
    q = failed_abc(journal)
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(FailCommits(*range(1, 9))):
        assert q.rollback().ok
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    assert len(write_failures(caplog)) == 1
    assert "recovery would repeat the rollbacks it cannot see" in write_failures(caplog)[0]
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.status == "failed"
    clock.advance(LEASE + 1)
    report = recover(journal)  # at least once: the rollbacks are called again
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.keys_called("rollback") == ["c", "b", "a", "c", "b", "a"]


def test_a_recovery_whose_last_write_fails_reports_what_the_journal_holds(
    journal: Journal, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The rollback's outcome could not be written once: it is written on a second try,
    and the report says what the journal holds (unrecorded when even that fails)."""
    q = failed_abc(journal)
    q_run = q.run_id
    del q  # abandoned: its owner died after the failure
    clock.advance(LEASE + 1)
    # recovery's commits: the claim (a transaction, no fault point), then the starts of
    # c's, b's and a's rollbacks (1-3), then the outcome (4), then its second try (5)
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(FailCommits(4)):
        report = recover(journal)
    assert [(r.run_id, r.outcome, r.status) for r in report.runs] == [
        (q_run, "rolled_back", "rolled_back")
    ]
    assert "the rollback's outcome" in write_failures(caplog)[0]
    clock.advance(LEASE + 1)
    assert recover(journal).runs == ()  # nothing left for a later recovery


@pytest.mark.parametrize("failing", [3, 4])
def test_a_write_failure_while_recording_an_execute_retry_stops_execute(
    journal: Journal, clock: FakeClock, failing: int
) -> None:
    """The retry's schedule (3) or start (4) not recorded: execute() raises, no retry call."""
    q = ActionQueue(
        journal=journal,
        retry=RetryPolicy(max_attempts=3, initial_delay=1.0),
        sleep=RecordingSleep(),
    )
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", OSError("transient"), OSError("transient"))
    # writes: 1 create + a start, 2 a done + b start, 3 retry scheduled, 4 retry starting, ...
    with inject_faults(FailCommits(failing)), pytest.raises(JournalError, match="simulated"):
        q.execute()
    assert WORLD.count("execute", "b") == 1
    assert q.run_id is not None
    run = journal.timeline(q.run_id).run
    assert run.status == "failed"
    assert run.error is not None
    assert "JournalError" in run.error
    b = journal.timeline(q.run_id).steps[1]
    assert (b.status, b.attempts, b.next_retry_at) == ("failed", 1, None)  # 1 call made
    assert event_kinds(journal, q.run_id) == [(1, "retry"), (None, "failed")]  # carried
    assert q.rollback().ok
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    clock.advance(LEASE + 1)
    assert recover(journal).runs == ()  # nothing is left for recovery to redo


def test_a_step_whose_start_cannot_be_recorded_is_not_called(journal: Journal) -> None:
    """execute() raises before calling a step whose start failed to commit; it stays pending."""
    q = ActionQueue(journal=journal)
    for key in "abc":
        q.add(Put(key))
    with inject_faults(FailCommits(2)), pytest.raises(JournalError, match="simulated"):
        q.execute()
    assert WORLD.keys_called("execute") == ["a"]
    assert q.run_id is not None
    assert statuses(journal, q.run_id) == ["succeeded", "pending", "pending"]
    assert journal.timeline(q.run_id).run.status == "failed"
    assert q.rollback().ok
    assert WORLD.keys_called("rollback") == ["a"]
    assert statuses(journal, q.run_id) == ["rolled_back", "pending", "pending"]


def test_a_failed_first_commit_keeps_the_run_to_create_and_later_writes_succeed(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """The run's first commit fails: nothing runs; the run is created by the next write."""
    q = ActionQueue(journal=journal, name="first")
    q.add(Put("a"))
    q.add(Put("b"))
    hiccup = FailCommits(1, error=RuntimeError("disk hiccup"))
    with caplog.at_level(logging.ERROR, "actionqueues"):
        with inject_faults(hiccup), pytest.raises(RuntimeError, match="disk hiccup"):
            q.execute()
        assert WORLD.calls == []
        assert q.run_id is not None
        timeline = journal.timeline(q.run_id)  # created by the write of the failure
        assert (timeline.run.name, timeline.run.status) == ("first", "failed")
        assert timeline.run.error == "RuntimeError: disk hiccup"
        assert statuses(journal, q.run_id) == ["pending", "pending"]
        assert q.rollback().ok
    assert WORLD.calls == []
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    assert caplog.messages == []  # no write failure was ever mistaken for a takeover
    assert journal.heartbeat() == 0


def test_a_journal_that_cannot_create_the_run_loses_nothing_and_blames_no_one(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """Every create failing: execute() raises JournalError, nothing runs, no LeaseLost anywhere."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(FailCommits(*range(1, 5))):
        with pytest.raises(JournalError, match="simulated") as caught:
            q.execute()
        assert not isinstance(caught.value, LeaseLost)
        assert q.rollback().ok
    assert WORLD.calls == []
    assert journal.runs() == []
    assert not [m for m in caplog.messages if "another process owns the run" in m]
    assert journal.heartbeat() == 0


def abc_queue(journal: Journal, kind: str) -> tuple[Any, Callable[[str], Any]]:
    """A queue (``kind`` sync or async) of Put a, b, c, and a function calling one of its
    methods (an async one in a loop of its own: a KeyboardInterrupt leaves asyncio.run's)."""
    q: Any = ActionQueue(journal=journal, name="abc")
    put: Any = Put
    if kind == "async":
        q, put = AsyncActionQueue(journal=journal, name="abc"), AsyncPut
    for key in "abc":
        q.add(put(key))

    def call(method: str) -> Any:
        result = getattr(q, method)()
        return asyncio.run(result) if kind == "async" else result

    return q, call


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_rollback_interrupted_twice_still_resumes_and_loses_nothing(
    journal: Journal, kind: str
) -> None:
    """Ctrl-C in a rollback, then again while the journal records it: rollback() resumes
    at the interrupted step, in both drivers, and the journal ends with every step undone."""
    second = ArmedFault(KeyboardInterrupt, interrupt_on_arm=True)
    WORLD.script("execute", "c", ValueError("no"))
    WORLD.script("rollback", "b", second.arm)
    q, call = abc_queue(journal, kind)
    with pytest.raises(ValueError, match="no"):
        call("execute")
    with inject_faults(second), pytest.raises(KeyboardInterrupt):
        call("rollback")
    assert "was interrupted while rolling back" in repr(q)
    assert call("rollback").ok
    assert not second.armed  # the second interrupt did hit the journal write
    assert WORLD.keys_called("rollback") == ["c", "b", "b", "a"]
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    assert statuses(journal, q.run_id) == ["rolled_back"] * 3


class InterruptAt:
    """An ``inject_faults`` hook: one KeyboardInterrupt at the ``nth`` time ``point`` is reached."""

    def __init__(self, point: str, nth: int) -> None:
        self.point, self.nth = point, nth

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.nth -= 1
            if self.nth == 0:
                raise KeyboardInterrupt


@pytest.mark.parametrize("point", ["before_commit", "after_commit", "after_step_record"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_step_interrupted_while_its_start_is_recorded_counts_as_started(
    journal: Journal, kind: str, point: str
) -> None:
    """Ctrl-C while the journal records a step's start (it may have landed) or after, before
    the call: the step counts as started in both drivers (as after a crash there), so the
    rollback undoes it too, and the journal ends saying so."""
    q, call = abc_queue(journal, kind)
    with inject_faults(InterruptAt(point, 2)), pytest.raises(KeyboardInterrupt):
        call("execute")
    assert call("rollback").ok
    assert WORLD.keys_called("execute") == ["a"]
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    assert statuses(journal, q.run_id) == ["rolled_back", "rolled_back", "pending"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_rollback_interrupted_while_recording_its_outcome_can_record_it_again(
    journal: Journal, kind: str
) -> None:
    """Ctrl-C while the rollback's outcome is written: rollback() again calls no rollback
    twice, records the outcome and returns the whole report, in both drivers."""
    interrupt = ArmedFault(KeyboardInterrupt)
    WORLD.script("execute", "c", ValueError("no"))
    WORLD.script("rollback", "a", interrupt.arm)  # the last rollback: the outcome comes next
    q, call = abc_queue(journal, kind)
    with pytest.raises(ValueError, match="no"):
        call("execute")
    with inject_faults(interrupt), pytest.raises(KeyboardInterrupt):
        call("rollback")
    report = call("rollback")
    assert report.ok
    assert len(report.rolled_back) == 3
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    assert statuses(journal, q.run_id) == ["rolled_back"] * 3
