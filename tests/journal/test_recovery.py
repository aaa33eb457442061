"""Recovery: runs whose owner died are claimed once its lease expired, and finished."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from typing import Any

import pytest

from actionqueues import (
    ActionQueue,
    Journal,
    JournalError,
    LeaseLost,
    RetryPolicy,
    recover,
    retry_rollback,
)
from actionqueues import _registry as registry
from actionqueues.testing import FakeClock, RecordingSleep, inject_faults

from .conftest import LEASE, OpenOther
from .helpers import (
    WORLD,
    Account,
    ArmedFault,
    Crash,
    Killer,
    Put,
    charge,
    crashed_run,
    event_kinds,
    notify,
    statuses,
    write_run,
)


def test_an_abandoned_failed_run_waits_for_its_lease_then_is_rolled_back(
    journal: Journal, clock: FakeClock
) -> None:
    """A run whose execute raised and was never rolled back is recovered once its lease expired."""
    q = ActionQueue(journal=journal, name="abandoned")
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        q.execute()
    assert q.run_id is not None
    run_id = q.run_id
    del q
    gc.collect()

    clock.advance(LEASE - 1)
    assert recover(journal).runs == ()  # its lease is still alive
    assert WORLD.ledger == {"a": 1}

    clock.advance(2)
    report = recover(journal)
    assert report.ok
    assert [(r.run_id, r.name, r.outcome, r.status) for r in report.runs] == [
        (run_id, "abandoned", "rolled_back", "rolled_back")
    ]
    assert report.count("rolled_back") == 1
    assert report.count("resumed") == 0
    assert WORLD.ledger == {}
    assert WORLD.keys_called("rollback") == ["b", "a"]
    timeline = journal.timeline(run_id)
    assert timeline.run.status == "rolled_back"
    assert timeline.run.recoveries == 1
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back"]
    assert event_kinds(journal, run_id) == [(None, "failed"), (None, "claimed")]
    assert recover(journal).runs == ()  # nothing left


def test_another_process_does_not_claim_a_run_whose_lease_is_alive(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A second process only claims the run once the dead owner's lease expired on its clock."""
    run_id = crashed_run(journal, "after_execute", nth=2)
    expires = journal.timeline(run_id).run.lease_expires_at
    assert expires is not None
    assert expires >= clock.now + LEASE * 2 / 3  # renewed every third of the lease at least
    their_clock = FakeClock(expires - 1)
    other = open_other(clock=their_clock)
    assert recover(other).runs == ()
    assert other.claim() is None
    assert journal.timeline(run_id).run.owner == "original"

    their_clock.advance(2)
    report = recover(other)
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    timeline = other.timeline(run_id)
    assert timeline.run.owner == "recoverer"
    assert timeline.run.status == "rolled_back"
    claimed = [e for e in timeline.events if e.kind == "claimed"]
    assert len(claimed) == 1
    assert "by recoverer (was original)" in claimed[0].detail


def test_recovery_rolls_back_the_step_that_was_in_flight(
    journal: Journal, open_other: OpenOther
) -> None:
    """A step whose execute ran but whose result was never committed is rolled back too."""
    run_id = crashed_run(journal, "after_execute", nth=2)  # b ran, not recorded as done
    assert statuses(journal, run_id) == ["succeeded", "running", "pending"]
    assert WORLD.ledger == {"a": 1, "b": 1}

    report = recover(open_other())
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.ledger == {}
    assert WORLD.keys_called("rollback") == ["b", "a"]  # c never started: left alone
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]


def test_a_step_recorded_as_started_is_rolled_back_even_if_execute_was_never_called(
    journal: Journal, open_other: OpenOther
) -> None:
    """Recorded but not called (outcome unknown to recovery): its rollback is called anyway."""
    run_id = crashed_run(journal, "after_step_record", nth=2)
    assert WORLD.keys_called("execute") == ["a"]
    recover(open_other())
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]


def test_a_crash_before_the_first_commit_leaves_no_run(journal: Journal) -> None:
    """Dying before the run's first commit records nothing and calls nothing."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    with inject_faults(Killer("before_commit")), pytest.raises(Crash):
        q.execute()
    assert journal.runs() == []
    assert WORLD.calls == []


def test_an_interrupted_rollback_continues_without_redoing_steps(
    journal: Journal, open_other: OpenOther
) -> None:
    """A rollback that died midway is finished; steps already rolled back are not redone."""
    q = ActionQueue(journal=journal, name="half-undone")
    for key in "abcd":
        q.add(Put(key))
    WORLD.script("execute", "d", ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with inject_faults(Killer("after_rollback_record", nth=2)), pytest.raises(Crash):
        q.rollback()  # d rolled back; c recorded as rolling back, then death
    assert q.run_id is not None
    run_id = q.run_id
    del q
    gc.collect()
    assert journal.timeline(run_id).run.status == "rolling_back"
    assert statuses(journal, run_id) == ["succeeded", "succeeded", "rolling_back", "rolled_back"]
    assert WORLD.keys_called("rollback") == ["d"]

    report = recover(open_other())
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.keys_called("rollback") == ["d", "c", "b", "a"]  # d not redone
    assert WORLD.ledger == {}
    timeline = journal.timeline(run_id)
    assert timeline.run.status == "rolled_back"
    assert [s.rollback_attempts for s in timeline.steps] == [1, 1, 2, 1]  # c: 1 before the crash
    assert statuses(journal, run_id) == ["rolled_back"] * 4


def test_a_rollback_that_failed_for_good_before_a_crash_is_not_retried_by_recovery(
    journal: Journal, open_other: OpenOther
) -> None:
    """Recovery leaves a step whose rollback already failed; the run ends needs_attention."""
    q = ActionQueue(journal=journal)
    for key in "abc":
        q.add(Put(key))
    WORLD.script("execute", "c", ValueError("no"))
    WORLD.script("rollback", "b", RuntimeError("cannot undo b"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with inject_faults(Killer("after_rollback_record", nth=3)), pytest.raises(Crash):
        q.rollback()
    assert q.run_id is not None
    run_id = q.run_id
    assert statuses(journal, run_id) == ["rolling_back", "rollback_failed", "rolled_back"]

    report = recover(open_other())
    assert [(r.outcome, r.status) for r in report.runs] == [("needs_attention", "needs_attention")]
    assert report.runs[0].error == "the rollback of step(s) 1 failed"
    assert not report.ok
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    timeline = journal.timeline(run_id)
    assert timeline.steps[1].rollback_error == "RuntimeError: cannot undo b"
    assert statuses(journal, run_id) == ["rolled_back", "rollback_failed", "rolled_back"]


def test_a_rollback_that_fails_during_recovery_needs_attention(
    journal: Journal, open_other: OpenOther
) -> None:
    """Recovery's rollback failing after its retries ends needs_attention with the errors."""
    run_id = crashed_run(journal, "after_execute", nth=2)
    WORLD.always_fail("rollback", "a", ConnectionError("still down"))
    sleep = RecordingSleep()
    report = recover(
        open_other(),
        rollback_retry=RetryPolicy(max_attempts=2, initial_delay=5.0),
        sleep=sleep,
    )
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert sleep.calls == [5.0]
    timeline = journal.timeline(run_id)
    assert timeline.run.status == "needs_attention"
    assert timeline.steps[0].status == "rollback_failed"
    assert timeline.steps[0].rollback_attempts == 2
    assert event_kinds(journal, run_id)[-2:] == [(0, "rollback_retry"), (0, "rollback_failed")]
    assert WORLD.ledger == {"a": 1}


def test_a_resumable_run_is_resumed_forward(journal: Journal, open_other: OpenOther) -> None:
    """A resumable run is finished forward by recovery: the in-flight step runs again."""
    run_id = crashed_run(journal, "after_execute", nth=2, resumable=True)
    assert journal.timeline(run_id).run.resumable

    report = recover(open_other())
    assert [(r.outcome, r.status) for r in report.runs] == [("resumed", "succeeded")]
    assert report.ok
    assert WORLD.keys_called("execute") == ["a", "b", "b", "c"]  # at least once: b twice
    assert WORLD.keys_called("rollback") == []
    assert WORLD.ledger == {"a": 1, "b": 1, "c": 1}
    timeline = journal.timeline(run_id)
    assert timeline.run.status == "succeeded"
    assert timeline.run.finished_at is not None
    assert [s.attempts for s in timeline.steps] == [1, 2, 1]
    assert json.loads(timeline.steps[2].state)["receipt"] == "receipt-c"


def test_a_resumable_run_is_rolled_back_when_resume_is_false(
    journal: Journal, open_other: OpenOther
) -> None:
    """recover(resume=False) rolls back even a resumable run."""
    run_id = crashed_run(journal, "after_execute", nth=2, resumable=True)
    report = recover(open_other(), resume=False)
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]


def test_a_resumable_run_that_had_failed_is_rolled_back(journal: Journal, clock: FakeClock) -> None:
    """A resumable run whose execute raised (status failed) is rolled back, not resumed."""
    q = ActionQueue(journal=journal, resumable=True)
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    clock.advance(LEASE + 1)
    assert [r.outcome for r in recover(journal).runs] == ["rolled_back"]
    assert WORLD.ledger == {}


def test_a_resume_that_fails_is_rolled_back(journal: Journal, open_other: OpenOther) -> None:
    """When a resumed step fails, recovery rolls the whole run back."""
    run_id = crashed_run(journal, "after_step_record", nth=2, resumable=True)
    WORLD.script("execute", "c", ValueError("still failing"))
    report = recover(open_other())
    assert [(r.outcome, r.status) for r in report.runs] == [("rolled_back", "rolled_back")]
    assert WORLD.keys_called("execute") == ["a", "b", "c"]
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    timeline = journal.timeline(run_id)
    assert timeline.steps[2].error == "ValueError: still failing"
    assert statuses(journal, run_id) == ["rolled_back"] * 3


def test_attempts_made_before_a_crash_count_against_the_resumed_step(
    journal: Journal, open_other: OpenOther
) -> None:
    """A resumed step whose retries were used before the crash gets only what is left."""
    policy = RetryPolicy(max_attempts=4, initial_delay=1.0)
    killer = Killer()
    WORLD.script("execute", "b", OSError("1"), OSError("2"), killer.kill)  # dies in call 3
    q = ActionQueue(journal=journal, resumable=True, retry=policy, sleep=RecordingSleep())
    q.add(Put("a"))
    q.add(Put("b"))
    with inject_faults(killer), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    run_id = q.run_id
    assert journal.timeline(run_id).steps[1].attempts == 3

    WORLD.always_fail("execute", "b", OSError("again"))
    report = recover(open_other(), retry=policy, sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.count("execute", "b") == 4  # 3 before the crash, 1 left after it
    b = journal.timeline(run_id).steps[1]
    assert b.attempts == 4
    assert b.error == "OSError: again"


def test_a_resumed_step_that_retries_records_its_total_attempts(
    journal: Journal, open_other: OpenOther
) -> None:
    """Attempts in the journal add up the calls before and after the crash."""
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0)
    killer = Killer()
    WORLD.script("execute", "b", OSError("1"), killer.kill)  # dies in call 2
    q = ActionQueue(journal=journal, resumable=True, retry=policy, sleep=RecordingSleep())
    q.add(Put("b"))
    with inject_faults(killer), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None

    WORLD.script("execute", "b", OSError("3"))  # call 3 fails, call 4 succeeds
    report = recover(open_other(), retry=policy, sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["resumed"]
    assert WORLD.count("execute", "b") == 4
    assert journal.timeline(q.run_id).steps[0].attempts == 4


def test_a_retry_delay_running_at_the_crash_is_waited_out(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """Recovery waits until the recorded next_retry_at, with the injected sleep."""
    policy = RetryPolicy(max_attempts=3, initial_delay=100.0, max_delay=1000.0)
    killer = Killer()

    def sleep(seconds: float) -> None:
        killer.kill()  # dies while waiting for the retry

    WORLD.script("execute", "b", OSError("busy"))
    q = ActionQueue(journal=journal, resumable=True, retry=policy, sleep=sleep)
    q.add(Put("a"))
    q.add(Put("b"))
    with inject_faults(killer), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    b = journal.timeline(q.run_id).steps[1]
    assert b.next_retry_at == clock.now + 100.0

    their_clock = FakeClock(clock.now + LEASE + 1)
    waits = RecordingSleep(their_clock)
    report = recover(open_other(clock=their_clock), retry=policy, sleep=waits)
    assert [r.outcome for r in report.runs] == ["resumed"]
    assert waits.calls == [100.0 - LEASE - 1]
    assert WORLD.count("execute", "b") == 2
    b = journal.timeline(q.run_id).steps[1]
    # attempts count calls started: the one before the crash and the one after it
    assert (b.status, b.attempts, b.next_retry_at) == ("succeeded", 2, None)


def test_a_crash_during_a_retry_delay_costs_no_attempt(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """max_attempts=3 across a crash in a retry delay: exactly 3 calls in all, 3 recorded."""
    policy = RetryPolicy(max_attempts=3, initial_delay=10.0, max_delay=10.0)
    killer = Killer()
    WORLD.always_fail("execute", "a", OSError("flaky"))
    q = ActionQueue(journal=journal, resumable=True, retry=policy, sleep=lambda _: killer.kill())
    q.add(Put("a"))
    with inject_faults(killer), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    a = journal.timeline(q.run_id).steps[0]
    assert (a.attempts, a.next_retry_at) == (1, clock.now + 10.0)

    report = recover(open_other(), retry=policy, sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["rolled_back"]  # the resume failed for good
    assert WORLD.count("execute", "a") == 3
    a = journal.timeline(q.run_id).steps[0]
    assert (a.status, a.attempts, a.error) == ("rolled_back", 3, "OSError: flaky")


def test_a_crash_during_a_rollback_retry_delay_costs_no_rollback_attempt(
    journal: Journal, open_other: OpenOther
) -> None:
    """A crash while a rollback waits to retry: recovery has exactly the attempts left."""
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0)
    killer = Killer()
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.always_fail("rollback", "a", OSError("refund api down"))
    q = ActionQueue(journal=journal, rollback_retry=policy, sleep=lambda _: killer.kill())
    q.add(Put("a"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with inject_faults(killer), pytest.raises(Crash):
        q.rollback()
    assert q.run_id is not None
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 1

    report = recover(open_other(), rollback_retry=policy, sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert WORLD.count("rollback", "a") == 3
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 3


def test_recovery_keeps_its_claim_while_it_waits_out_a_retry_delay(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """Waiting out a delay longer than a lease, the recoverer's heartbeat keeps the run."""
    policy = RetryPolicy(max_attempts=3, initial_delay=100.0, max_delay=100.0)
    killer = Killer()
    WORLD.script("execute", "a", OSError("busy"))
    q = ActionQueue(journal=journal, resumable=True, retry=policy, sleep=lambda _: killer.kill())
    q.add(Put("a"))
    with inject_faults(killer), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None

    their_clock = FakeClock(clock.now + LEASE + 1)
    recoverer = open_other(clock=their_clock)
    third = open_other("third", clock=their_clock)
    beats: list[int] = []
    stolen: list[object] = []

    def sleep(seconds: float) -> None:  # a wait of two leases, with beats as the thread would
        assert seconds == 100.0 - LEASE - 1 > 2 * LEASE
        end = their_clock.now + seconds
        while their_clock.now < end:
            their_clock.advance(min(LEASE / 3, end - their_clock.now))
            beats.append(recoverer.heartbeat())
            stolen.append(third.claim())

    report = recover(recoverer, retry=policy, sleep=sleep)
    assert beats == [1] * len(beats)
    assert stolen == [None] * len(beats)
    assert [r.outcome for r in report.runs] == ["resumed"]
    assert WORLD.count("execute", "a") == 2
    run = journal.timeline(q.run_id).run
    assert (run.owner, run.status, run.recoveries) == ("recoverer", "succeeded", 1)
    assert recoverer.heartbeat() == 0  # finished: no longer tracked


def test_a_crash_during_a_rollback_retry_leaves_fewer_rollback_attempts(
    journal: Journal, open_other: OpenOther
) -> None:
    """Rollback attempts made before a crash count against recovery's rollback policy."""
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0)
    killer = Killer()
    WORLD.script("execute", "b", ValueError("no"))
    WORLD.script("rollback", "a", OSError("1"), killer.kill)  # dies in rollback call 2
    q = ActionQueue(journal=journal, rollback_retry=policy, sleep=RecordingSleep())
    q.add(Put("a"))
    q.add(Put("b"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with inject_faults(killer), pytest.raises(Crash):
        q.rollback()
    assert q.run_id is not None
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 2

    WORLD.always_fail("rollback", "a", OSError("again"))
    report = recover(open_other(), rollback_retry=policy, sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert WORLD.count("rollback", "a") == 3
    assert WORLD.count("rollback", "b") == 1
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 3


def test_a_run_of_an_unknown_action_type_is_marked_and_recovery_moves_on(
    journal: Journal, clock: FakeClock
) -> None:
    """An unknown type: that run needs attention ("unrecoverable"), the next run is recovered."""
    bad = "11111111-1111-4111-8111-111111111111"
    write_run(
        journal,
        bad,
        [("tests.journal.put", '{"key":"x"}', "succeeded"), ("no.such.type", "{}", "running")],
    )
    clock.advance(1)
    good = crashed_run(journal, "after_execute", nth=1, keys="z")
    clock.advance(LEASE + 1)

    report = recover(journal)
    assert [(r.run_id, r.outcome, r.status) for r in report.runs] == [
        (bad, "unrecoverable", "needs_attention"),
        (good, "rolled_back", "rolled_back"),
    ]
    assert not report.ok
    assert report.count("unrecoverable") == 1
    error = report.runs[0].error
    assert error is not None
    assert "unknown action type 'no.such.type'" in error
    timeline = journal.timeline(bad)
    assert timeline.run.status == "needs_attention"
    assert timeline.run.error == error
    assert timeline.run.finished_at is not None
    assert [k for _, k in event_kinds(journal, bad)] == ["claimed", "unrecoverable"]
    assert WORLD.keys_called("rollback") == ["z"]  # nothing of the bad run was called
    assert recover(journal).runs == ()  # the marked run is not claimed again


@pytest.mark.parametrize(
    ("type_name", "state", "message"),
    [
        ("tests.journal.put", '{"key": "x", "colour": "red"}', "unexpected fields"),
        ("tests.journal.put", "{not json", "not valid JSON"),
        ("tests.journal.put", "[1, 2]", "not a JSON object"),
        ("tests.journal.account", '{"owner": "x", "poison": true}', "poisoned state"),
        ("tests.journal.charge", '{"args": 1, "kwargs": {}}', "args must be a list"),
    ],
)
def test_a_run_with_a_state_its_type_refuses_is_marked_unrecoverable(
    journal: Journal, clock: FakeClock, type_name: str, state: str, message: str
) -> None:
    """Invalid journaled state: the run needs attention with an error naming the problem."""
    run_id = "22222222-2222-4222-8222-222222222222"
    write_run(journal, run_id, [(type_name, state, "running")], status="failed")
    clock.advance(LEASE + 1)
    report = recover(journal)
    assert [r.outcome for r in report.runs] == ["unrecoverable"]
    error = journal.timeline(run_id).run.error
    assert error is not None
    assert message in error
    assert type_name in error
    assert WORLD.calls == []


def test_recover_stops_at_its_limit_or_when_told(journal: Journal, clock: FakeClock) -> None:
    """recover(limit=) and should_stop= stop between runs; the rest stays for later."""
    for key in "xyz":
        crashed_run(journal, "after_execute", keys=key)
    clock.advance(LEASE + 1)
    assert len(recover(journal, limit=1).runs) == 1
    assert recover(journal, should_stop=lambda: True).runs == ()
    assert len(recover(journal).runs) == 2
    assert WORLD.ledger == {}


def test_recover_checks_its_arguments(journal: Journal) -> None:
    """recover() refuses a bad limit or policy."""
    with pytest.raises(ValueError, match="limit"):
        recover(journal, limit=0)
    with pytest.raises(TypeError, match="RetryPolicy"):
        recover(journal, retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RetryPolicy"):
        recover(journal, rollback_retry="often")  # type: ignore[arg-type]


def test_recovery_rebuilds_step_functions_and_undoes_with_their_result(
    journal: Journal, open_other: OpenOther
) -> None:
    """A journaled @step is rebuilt from its arguments; its undo gets the recorded result."""
    q = ActionQueue(journal=journal)
    q.add(Account("bob"))
    q.add(charge("bob", 1200, currency="USD"))
    q.add(Put("after"))
    with inject_faults(Killer("after_step_record", nth=3)), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None

    report = recover(open_other())
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.undone == [{"charge_id": "ch_bob", "cents": 1200, "currency": "USD"}]
    assert WORLD.keys_called("rollback") == ["after", "charge:bob", "account:bob"]
    assert WORLD.ledger == {}


@pytest.mark.parametrize("point", ["after_step_record", "after_execute"])
def test_a_step_function_in_flight_at_the_crash_needs_attention_instead_of_an_undo(
    journal: Journal, open_other: OpenOther, point: str
) -> None:
    """A @step whose result was never recorded: no undo, needs_attention naming its key."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(charge("eve", 10))
    q.add(Put("c"))
    with inject_faults(Killer(point, nth=2)), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    run_id = q.run_id
    assert statuses(journal, run_id) == ["succeeded", "running", "pending"]

    report = recover(open_other())
    assert [(r.outcome, r.status) for r in report.runs] == [("needs_attention", "needs_attention")]
    assert report.runs[0].error == "the rollback of step(s) 1 failed"
    assert WORLD.undone == []  # refund() needs the charge's result, which nobody knows
    assert WORLD.keys_called("rollback") == ["a"]  # the other started steps are rolled back
    timeline = journal.timeline(run_id)
    assert statuses(journal, run_id) == ["rolled_back", "rollback_failed", "pending"]
    error = timeline.steps[1].rollback_error
    assert error is not None
    assert "was running when its process died, so its result is unknown" in error
    assert f"idempotency key {run_id}:1" in error
    assert timeline.events[-1].kind == "rollback_failed"
    assert timeline.events[-1].detail == error

    # The operator checked the charge (and refunded it by hand): retrying treats it as done.
    result = retry_rollback(journal, run_id, sleep=RecordingSleep())
    assert (result.outcome, result.status) == ("rolled_back", "rolled_back")
    assert WORLD.undone == []
    assert WORLD.keys_called("rollback") == ["a"]  # a is not rolled back twice
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]
    assert journal.timeline(run_id).steps[1].rollback_error is None


def test_a_step_function_without_undo_in_flight_at_the_crash_is_rolled_back(
    journal: Journal, open_other: OpenOther
) -> None:
    """A @step with nothing to undo does not need attention when it was in flight."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(notify("eve"))
    with inject_faults(Killer("after_execute", nth=2)), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    report = recover(open_other())
    assert [(r.outcome, r.status) for r in report.runs] == [("rolled_back", "rolled_back")]
    assert statuses(journal, q.run_id) == ["rolled_back", "rolled_back"]
    assert WORLD.keys_called("rollback") == ["a"]


def test_a_run_of_a_type_this_process_lacks_is_passed_on_to_a_recoverer_that_has_it(
    journal: Journal, clock: FakeClock, open_other: OpenOther, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling deploy: an old recoverer leaves the new type's run alone; a new one finishes it."""
    run_id = "55555555-5555-4555-8555-555555555555"
    write_run(journal, run_id, [("tests.journal.put", '{"key":"x"}', "running")])
    clock.advance(LEASE + 1)
    with monkeypatch.context() as old_release:
        old_release.delitem(registry._BY_NAME, "tests.journal.put")
        report = recover(journal, pass_on=3)
        assert [(r.run_id, r.outcome, r.status) for r in report.runs] == [
            (run_id, "passed_on", "running")
        ]
        assert not report.ok
        error = report.runs[0].error
        assert error is not None
        assert error.startswith("cannot rebuild the run's steps: unknown action type 'tests.")
        assert "passed on (1 of 3) to a recoverer that can rebuild them" in error
        assert f"claimable again in {LEASE:g} s" in error
        # Held for one lease, with no heartbeat: no recoverer takes it back at once.
        assert recover(journal, pass_on=3).runs == ()
        assert journal.heartbeat() == 0
        clock.advance(LEASE - 1)
        assert recover(open_other(clock=clock), pass_on=3).runs == ()
    timeline = journal.timeline(run_id)
    assert (timeline.run.status, timeline.run.error, timeline.run.recoveries) == (
        "running",
        None,
        1,
    )
    assert [k for _, k in event_kinds(journal, run_id)] == ["claimed", "passed_on"]
    assert WORLD.calls == []  # nothing of the run was called

    clock.advance(2)
    report = recover(open_other("new-release", clock=clock))
    assert [(r.run_id, r.outcome, r.status) for r in report.runs] == [
        (run_id, "rolled_back", "rolled_back")
    ]
    assert WORLD.keys_called("rollback") == ["x"]


def test_a_run_passed_on_pass_on_times_is_marked_at_the_next_claim(
    journal: Journal, clock: FakeClock
) -> None:
    """No recoverer ever registers the type: the claim after the pass_on-th marks the run."""
    run_id = "66666666-6666-4666-8666-666666666666"
    write_run(journal, run_id, [("no.such.type", "{}", "running")])
    for count in (1, 2):
        clock.advance(LEASE + 1)
        (result,) = recover(journal, pass_on=2).runs
        assert (result.outcome, result.status) == ("passed_on", "running")
        assert result.error is not None
        assert f"passed on ({count} of 2)" in result.error
    clock.advance(LEASE + 1)
    (result,) = recover(journal, pass_on=2).runs
    assert (result.outcome, result.status) == ("unrecoverable", "needs_attention")
    assert result.error is not None
    assert result.error.startswith("cannot rebuild the run's steps: unknown action type")
    assert result.error.endswith("(passed on 2 times before)")
    timeline = journal.timeline(run_id)
    assert (timeline.run.status, timeline.run.recoveries) == ("needs_attention", 3)
    assert [k for _, k in event_kinds(journal, run_id)] == [
        "claimed",
        "passed_on",
        "claimed",
        "passed_on",
        "claimed",
        "unrecoverable",
    ]
    clock.advance(LEASE + 1)
    assert recover(journal, pass_on=2).runs == ()


def test_a_run_taken_over_while_it_is_passed_on_is_lost(
    journal: Journal, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass-on write finds another owner (this claim's lease ran out): outcome lost."""
    run_id = "88888888-8888-4888-8888-888888888888"
    write_run(journal, run_id, [("no.such.type", "{}", "running")])
    clock.advance(LEASE + 1)

    def taken(run: str, *args: Any, **kwargs: Any) -> None:
        raise LeaseLost(run, journal.owner, journal.url)

    monkeypatch.setattr(journal, "commit", taken)
    (result,) = recover(journal, pass_on=1).runs
    assert (result.outcome, result.status) == ("lost", "running")
    assert result.error is not None
    assert run_id in result.error


@pytest.mark.parametrize(
    ("state", "cause"),
    [
        ({"key": "x", "region": "eu"}, "unexpected"),  # a field of a newer release
        ({"key": "runtime"}, "configuration for 'runtime' is missing"),  # the class raises
    ],
)
def test_a_state_the_class_refuses_is_passed_on_too(
    journal: Journal, clock: FakeClock, state: dict[str, str], cause: str
) -> None:
    """A state the registered class refuses may be a newer release's: it is passed on too."""
    run_id = "77777777-7777-4777-8777-777777777777"
    kind = "tests.journal.put" if "region" in state else "tests.journal.picky"
    write_run(journal, run_id, [(kind, json.dumps(state), "running")])
    clock.advance(LEASE + 1)
    (result,) = recover(journal, pass_on=1).runs
    assert (result.outcome, result.status) == ("passed_on", "running")
    assert result.error is not None
    assert cause in result.error
    clock.advance(LEASE + 1)
    (result,) = recover(journal, pass_on=1).runs
    assert (result.outcome, result.status) == ("unrecoverable", "needs_attention")
    assert result.error is not None
    assert result.error.endswith("(passed on 1 time before)")
    assert WORLD.calls == []


def test_only_passes_count_against_pass_on_not_other_claims(
    journal: Journal, clock: FakeClock
) -> None:
    """Claims that ended otherwise (given back as a worker stopped, released) spend no pass."""
    run_id = "99999999-9999-4999-8999-999999999999"
    write_run(journal, run_id, [("no.such.type", "{}", "running")])
    clock.advance(LEASE + 1)
    for _ in range(3):
        assert journal.claim(run_id) is not None
        journal.release(run_id)
    assert journal.timeline(run_id).run.recoveries == 3
    (result,) = recover(journal, pass_on=1).runs
    assert result.outcome == "passed_on"
    assert result.error is not None
    assert "passed on (1 of 1)" in result.error


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (True, TypeError), (1.0, TypeError), ("2", TypeError)]
)
def test_pass_on_must_be_an_int_of_at_least_zero(
    journal: Journal, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"pass_on must be an int >= 0, got"):
        recover(journal, pass_on=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "message"),
    [("runtime", "configuration for 'runtime' is missing"), ("assertion", "invariant broken")],
)
def test_a_run_whose_class_raises_any_exception_when_rebuilt_is_marked_and_the_next_recovered(
    journal: Journal, clock: FakeClock, key: str, message: str
) -> None:
    """Whatever the class raises when rebuilt: the run is unrecoverable, the next run recovered."""
    bad = "44444444-4444-4444-8444-444444444444"
    write_run(journal, bad, [("tests.journal.picky", json.dumps({"key": key}), "running")])
    clock.advance(1)
    good = crashed_run(journal, "after_execute", keys="z")
    clock.advance(LEASE + 1)

    report = recover(journal)
    assert [(r.run_id, r.outcome, r.status) for r in report.runs] == [
        (bad, "unrecoverable", "needs_attention"),
        (good, "rolled_back", "rolled_back"),
    ]
    error = report.runs[0].error
    assert error is not None
    assert error.startswith("cannot rebuild the run's steps: ")
    assert message in error
    timeline = journal.timeline(bad)
    assert (timeline.run.status, timeline.run.error) == ("needs_attention", error)
    assert [k for _, k in event_kinds(journal, bad)] == ["claimed", "unrecoverable"]
    assert WORLD.keys_called("rollback") == ["z"]
    assert journal.heartbeat() == 0  # neither run is still tracked


def test_an_unexpected_error_while_finishing_a_run_marks_it_and_recovery_moves_on(
    journal: Journal, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug raising while a run is finished: it needs attention, the next run is recovered."""
    first = crashed_run(journal, "after_execute", keys="a")
    clock.advance(1)
    second = crashed_run(journal, "after_execute", keys="b")
    clock.advance(LEASE + 1)
    raised: list[str] = []

    def bug(point: str) -> None:
        if point == "after_rollback" and not raised:
            raised.append(point)
            raise RuntimeError("a bug in the middle of a rollback")

    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(bug):
        report = recover(journal)
    assert [(r.run_id, r.outcome, r.status) for r in report.runs] == [
        (first, "unrecoverable", "needs_attention"),
        (second, "rolled_back", "rolled_back"),
    ]
    error = report.runs[0].error
    assert error == "recovery failed: RuntimeError('a bug in the middle of a rollback')"
    timeline = journal.timeline(first)
    assert (timeline.run.status, timeline.run.error) == ("needs_attention", error)
    assert [k for _, k in event_kinds(journal, first)][-1] == "unrecoverable"
    failed = [r for r in caplog.records if "recovery failed unexpectedly" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert WORLD.keys_called("rollback") == ["a", "b"]
    assert journal.heartbeat() == 0
    assert recover(journal).runs == ()  # the marked run waits for an operator


@pytest.mark.parametrize("escape", [SystemExit(0), asyncio.CancelledError()])
def test_a_rollback_that_exits_during_recovery_needs_attention_and_recovery_goes_on(
    journal: Journal, open_other: OpenOther, escape: BaseException
) -> None:
    """A rollback raising SystemExit or CancelledError (not an Exception) while recovering:
    that run is marked needs_attention, and recovery goes on with the next run (a worker
    thread would otherwise die on it, then the next worker on the same run)."""
    poisoned = crashed_run(journal, "after_execute", nth=2, keys="ab")
    healthy = crashed_run(journal, "after_execute", nth=2, keys="cd")
    WORLD.script("rollback", "a", escape)
    report = recover(open_other())
    outcomes = {r.run_id: (r.outcome, r.status) for r in report.runs}
    assert outcomes == {
        poisoned: ("unrecoverable", "needs_attention"),
        healthy: ("rolled_back", "rolled_back"),
    }
    assert type(escape).__name__ in str(journal.timeline(poisoned).run.error)
    assert WORLD.ledger == {"a": 1}  # its rollback never finished: a human looks


def test_a_recovery_whose_outcome_cannot_be_written_says_so(
    journal: Journal, open_other: OpenOther
) -> None:
    """Every rollback ran, but the outcome could not be written (nor on the second try):
    the run is reported unrecorded, not rolled back, and the report is not ok."""
    run_id = crashed_run(journal, "after_execute", nth=2, keys="ab")
    failing = ArmedFault(
        lambda: JournalError("database is locked (simulated)", "sqlite://x"), every=True
    )
    WORLD.script("rollback", "a", failing.arm)  # the last rollback: the outcome comes next
    with inject_faults(failing):
        report = recover(open_other())
    [result] = report.runs
    assert (result.outcome, result.status) == ("unrecorded", "rolling_back")
    assert "could not record it" in str(result.error)
    assert not report.ok
    assert WORLD.keys_called("rollback") == ["b", "a"]
    assert journal.timeline(run_id).run.status == "rolling_back"  # recovered again later


def test_ctrl_c_during_recovery_releases_the_run_for_another_process_at_once(
    journal: Journal, open_other: OpenOther
) -> None:
    """KeyboardInterrupt in a rollback stops recover() (it is the operator's), and the run
    it was finishing is released: another process takes it at once, not after the lease."""
    run_id = crashed_run(journal, "after_execute", nth=2, keys="ab")
    WORLD.script("rollback", "b", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        recover(open_other())
    assert journal.timeline(run_id).run.owner is None
    report = recover(open_other())  # the same clock: the lease has not expired
    assert [(r.outcome, r.status) for r in report.runs] == [("rolled_back", "rolled_back")]
    assert WORLD.keys_called("rollback") == ["b", "b", "a"]
