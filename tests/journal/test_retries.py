"""Retries in the journal: attempts and next retry times, failed rollbacks, retry_rollback()."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from actionqueues import (
    ActionFailed,
    ActionQueue,
    AsyncAction,
    AsyncActionQueue,
    BaseListener,
    Journal,
    RetryPolicy,
    StepRecord,
    open_journal,
    register_action,
    retry_rollback,
)
from actionqueues.testing import FakeClock, RecordingSleep

from .conftest import LEASE, OpenOther
from .helpers import WORLD, Put, event_kinds, statuses


@register_action("tests.journal.hangs")
@dataclass
class Hangs(AsyncAction):
    """Its execute() plays its script, then hangs until cancelled."""

    key: str

    async def execute(self) -> None:
        WORLD.call("execute", self.key)
        HUNG[0].set()
        await asyncio.Event().wait()


HUNG: list[asyncio.Event] = []  # the running test's event, set by a Hangs step as it hangs


def policy(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_delay=1.0, multiplier=2.0)


def test_a_retry_commits_when_it_is_scheduled_and_again_when_its_call_starts(
    journal: Journal, clock: FakeClock
) -> None:
    """A retry commits next_retry_at (attempts unchanged), then attempts+1 as its call starts."""
    waiting: list[tuple[float, StepRecord]] = []
    calling: list[StepRecord] = []

    def sleep(seconds: float) -> None:
        waiting.append((seconds, journal.timeline(str(q.run_id)).steps[1]))
        clock.advance(seconds)

    def seen_then(error: BaseException | None) -> Callable[[], None]:
        def outcome() -> None:
            calling.append(journal.timeline(str(q.run_id)).steps[1])
            if error is not None:
                raise error

        return outcome

    q = ActionQueue(journal=journal, retry=policy(), sleep=sleep)
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script(
        "execute",
        "b",
        seen_then(TimeoutError("slow")),
        seen_then(ConnectionError("reset")),
        seen_then(None),
    )
    q.execute()

    assert [delay for delay, _ in waiting] == [1.0, 2.0]
    first, second = waiting[0][1], waiting[1][1]
    # while waiting: the calls started so far, and when the next one is due
    assert (first.status, first.attempts) == ("running", 1)
    assert (second.status, second.attempts) == ("running", 2)
    # each call takes 1 s of the clock: next retry = end of the failed call + the delay
    assert first.started_at is not None
    assert first.next_retry_at == first.started_at + 1 + 1.0
    assert second.next_retry_at == first.started_at + 1 + 1.0 + 1 + 2.0
    # in each call: that call counted, nothing due any more
    assert [(s.attempts, s.next_retry_at) for s in calling] == [(1, None), (2, None), (3, None)]
    assert q.run_id is not None
    done = journal.timeline(q.run_id)
    b = done.steps[1]
    assert (b.status, b.attempts, b.next_retry_at, b.error) == ("succeeded", 3, None, None)
    assert done.steps[0].attempts == 1
    assert done.run.status == "succeeded"
    assert event_kinds(journal, q.run_id) == [(1, "retry"), (1, "retry")]
    assert "attempt 1: TimeoutError: slow; next in 1.000s" in done.events[0].detail
    assert "attempt 2: ConnectionError: reset" in done.events[1].detail
    assert WORLD.count("execute", "b") == 3


def test_a_rollback_retry_counts_its_call_when_it_starts(
    journal: Journal, clock: FakeClock
) -> None:
    """rollback_attempts counts rollback calls started: unchanged while waiting, +1 at the call."""
    waiting: list[StepRecord] = []
    calling: list[StepRecord] = []

    def sleep(seconds: float) -> None:
        waiting.append(journal.timeline(str(q.run_id)).steps[0])
        clock.advance(seconds)

    def refund_fails() -> None:
        calling.append(journal.timeline(str(q.run_id)).steps[0])
        raise ConnectionError("refund api down")

    q = ActionQueue(journal=journal, rollback_retry=policy(3), sleep=sleep)
    q.add(Put("a"))
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.script(
        "rollback",
        "a",
        refund_fails,
        lambda: calling.append(journal.timeline(str(q.run_id)).steps[0]),
    )
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert q.rollback().ok
    assert [(s.rollback_attempts, s.next_retry_at is None) for s in waiting] == [(1, False)]
    assert [(s.rollback_attempts, s.next_retry_at) for s in calling] == [(1, None), (2, None)]
    assert q.run_id is not None
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 2


def test_a_step_that_exhausts_its_retries_records_every_error(journal: Journal) -> None:
    """Attempts used up: the step is failed with its last error, each earlier one in events."""
    sleep = RecordingSleep()
    q = ActionQueue(journal=journal, retry=policy(3), sleep=sleep)
    q.add(Put("a"))
    WORLD.script("execute", "a", *(OSError(f"down #{i}") for i in (1, 2, 3)))
    with pytest.raises(OSError, match="down #3"):
        q.execute()
    assert q.run_id is not None
    timeline = journal.timeline(q.run_id)
    a = timeline.steps[0]
    assert (a.status, a.attempts, a.next_retry_at) == ("failed", 3, None)
    assert a.error == "OSError: down #3"
    assert timeline.run.status == "failed"
    assert [(e.kind, e.detail.split(";")[0]) for e in timeline.events] == [
        ("retry", "attempt 1: OSError: down #1"),
        ("retry", "attempt 2: OSError: down #2"),
        ("failed", "OSError: down #3"),
    ]
    assert sleep.calls == [1.0, 2.0]


def test_rollback_retries_are_recorded(journal: Journal) -> None:
    """A retried rollback commits rollback_attempts and a rollback_retry event per retry."""
    sleep = RecordingSleep()
    q = ActionQueue(journal=journal, rollback_retry=policy(3), sleep=sleep)
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", ValueError("no"))
    WORLD.script("rollback", "a", ConnectionError("refund api down"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert q.rollback().ok
    assert q.run_id is not None
    timeline = journal.timeline(q.run_id)
    assert timeline.run.status == "rolled_back"
    assert [s.rollback_attempts for s in timeline.steps] == [2, 1]
    assert [s.status for s in timeline.steps] == ["rolled_back", "rolled_back"]
    assert timeline.steps[0].next_retry_at is None
    assert event_kinds(journal, q.run_id) == [(None, "failed"), (0, "rollback_retry")]
    assert "ConnectionError: refund api down" in timeline.events[1].detail
    assert sleep.calls == [1.0]


def failing_rollback(journal: Journal) -> tuple[ActionQueue, str]:
    """A run whose step 0 rollback fails 3 times (its policy's limit): it needs attention."""
    q = ActionQueue(
        journal=journal, name="refunds", rollback_retry=policy(3), sleep=RecordingSleep()
    )
    q.add(Put("a"))
    q.add(Put("b"))
    q.add(Put("c"))
    WORLD.script("execute", "c", ValueError("declined"))
    WORLD.script("rollback", "a", *(ConnectionError(f"refund #{i}") for i in (1, 2, 3)))
    with pytest.raises(ValueError, match="declined"):
        q.execute()
    report = q.rollback()
    assert [f.index for f in report.failures] == [0]
    assert q.run_id is not None
    return q, q.run_id


def test_a_rollback_that_still_fails_needs_attention_with_every_error(
    journal: Journal, clock: FakeClock
) -> None:
    """A rollback failing after its retries ends needs_attention; no error is lost."""
    _, run_id = failing_rollback(journal)
    timeline = journal.timeline(run_id)
    run = timeline.run
    assert run.status == "needs_attention"
    assert run.error == "the rollback of step(s) 0 failed"
    assert run.finished_at == clock.now
    assert run.lease_expires_at == 0.0
    assert statuses(journal, run_id) == ["rollback_failed", "rolled_back", "rolled_back"]
    a = timeline.steps[0]
    assert a.rollback_attempts == 3
    assert a.rollback_error == "ConnectionError: refund #3"
    assert a.rollback_finished_at is not None
    errors = " | ".join(e.detail for e in timeline.events)
    for i in (1, 2, 3):
        assert f"ConnectionError: refund #{i}" in errors
    assert event_kinds(journal, run_id) == [
        (None, "failed"),
        (0, "rollback_retry"),
        (0, "rollback_retry"),
        (0, "rollback_failed"),
    ]
    assert WORLD.ledger == {"a": 1}  # the part that could not be undone is still there
    assert journal.runs(status="needs_attention")[0].run_id == run_id


def test_retry_rollback_finishes_a_run_that_needs_attention(journal: Journal) -> None:
    """retry_rollback() rolls back only what is not rolled back yet; the run ends rolled_back."""
    _, run_id = failing_rollback(journal)
    rollbacks_before = len(WORLD.keys_called("rollback"))

    result = retry_rollback(journal, run_id[:8], sleep=RecordingSleep())

    assert (result.run_id, result.name) == (run_id, "refunds")
    assert (result.outcome, result.status, result.error) == ("rolled_back", "rolled_back", None)
    assert WORLD.keys_called("rollback")[rollbacks_before:] == ["a"]
    assert WORLD.ledger == {}
    timeline = journal.timeline(run_id)
    assert timeline.run.status == "rolled_back"
    assert timeline.run.recoveries == 1
    assert statuses(journal, run_id) == ["rolled_back"] * 3
    assert timeline.steps[0].rollback_attempts == 4  # every call counts, across retries
    assert timeline.steps[0].rollback_error is None
    assert [k for _, k in event_kinds(journal, run_id)][-1] == "claimed"


def test_retry_rollback_that_fails_again_still_needs_attention(journal: Journal) -> None:
    """A retried rollback failing through the run's journaled policy stays needs_attention."""
    _, run_id = failing_rollback(journal)
    WORLD.script("rollback", "a", *(ConnectionError(f"refund #{i}") for i in (4, 5, 6)))
    sleep = RecordingSleep()
    result = retry_rollback(journal, run_id, sleep=sleep)
    assert (result.outcome, result.status) == ("needs_attention", "needs_attention")
    assert result.error == "the rollback of step(s) 0 failed"
    assert sleep.calls == [1.0, 2.0]  # the queue's policy(3), from the journal, afresh
    a = journal.timeline(run_id).steps[0]
    assert (a.status, a.rollback_attempts) == ("rollback_failed", 6)
    assert a.rollback_error == "ConnectionError: refund #6"
    assert WORLD.count("rollback", "b") == 1


def test_retry_rollback_with_an_explicit_policy_that_fails_again_needs_attention(
    journal: Journal,
) -> None:
    """retry_rollback(rollback_retry=) overrides the journaled policy: one failure, one call."""
    _, run_id = failing_rollback(journal)
    WORLD.script("rollback", "a", ConnectionError("refund #4"))
    result = retry_rollback(journal, run_id, rollback_retry=policy(1), sleep=RecordingSleep())
    assert (result.outcome, result.status) == ("needs_attention", "needs_attention")
    a = journal.timeline(run_id).steps[0]
    assert (a.status, a.rollback_attempts) == ("rollback_failed", 4)
    assert a.rollback_error == "ConnectionError: refund #4"
    assert WORLD.count("rollback", "a") == 4


def test_retry_rollback_gets_its_own_retry_budget(journal: Journal) -> None:
    """retry_rollback(rollback_retry=...) gets that policy's attempts, whatever failed before."""
    _, run_id = failing_rollback(journal)
    WORLD.script("rollback", "a", ConnectionError("refund #4"))
    counted: list[int] = []

    def sleep(seconds: float) -> None:
        counted.append(journal.timeline(run_id).steps[0].rollback_attempts)

    result = retry_rollback(journal, run_id, rollback_retry=policy(3), sleep=sleep)
    assert result.outcome == "rolled_back"
    assert counted == [4]  # started while waiting: 3 before, 1 now (the next is not yet)
    assert WORLD.count("rollback", "a") == 5
    assert journal.timeline(run_id).steps[0].rollback_attempts == 5


def test_retry_rollback_refuses_a_run_that_does_not_need_attention(journal: Journal) -> None:
    """retry_rollback() on a run that is not needs_attention raises ValueError."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.execute()
    assert q.run_id is not None
    with pytest.raises(
        ValueError,
        match=rf"^run {q.run_id} is succeeded: only a run that needs attention can have its "
        r"rollback retried$",
    ):
        retry_rollback(journal, q.run_id)
    assert journal.timeline(q.run_id).run.status == "succeeded"


def test_retry_rollback_refuses_a_run_being_retried_and_says_by_whom_until_when(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A needs_attention run another process is retrying: ValueError naming it and its lease."""
    _, run_id = failing_rollback(journal)
    their_clock = FakeClock(clock.now)
    assert open_other(clock=their_clock).claim(run_id, statuses=["needs_attention"]) is not None
    until = datetime.datetime.fromtimestamp(their_clock.now + LEASE, datetime.timezone.utc)
    with pytest.raises(ValueError, match="is being retried by recoverer right now") as caught:
        retry_rollback(journal, run_id, sleep=RecordingSleep())
    assert str(caught.value) == (
        f"run {run_id} is being retried by recoverer right now (its lease runs until "
        f"{until.isoformat(timespec='seconds')})"
    )
    assert "+00:00" in str(caught.value)
    run = journal.timeline(run_id).run
    assert (run.status, run.owner) == ("needs_attention", "recoverer")
    assert WORLD.count("rollback", "a") == 3  # nothing called by the refused retry


def test_retry_rollback_of_an_unknown_run_raises_key_error(journal: Journal) -> None:
    """retry_rollback() of an id the journal does not have raises KeyError."""
    with pytest.raises(KeyError, match="no run"):
        retry_rollback(journal, "0123456789abcdef")


def test_retry_rollback_refuses_a_bad_policy(journal: Journal) -> None:
    """retry_rollback(rollback_retry=) must be a RetryPolicy."""
    with pytest.raises(TypeError, match="RetryPolicy"):
        retry_rollback(journal, "whatever", rollback_retry=3)  # type: ignore[arg-type]


def test_retry_rollback_works_with_a_clock_that_starts_at_zero(journal_url: str) -> None:
    """A finished run holds no lease even at time 0 (FakeClock's default start)."""
    with open_journal(journal_url, clock=FakeClock(), heartbeat=False) as journal:
        _, run_id = failing_rollback(journal)
        assert retry_rollback(journal, run_id).outcome == "rolled_back"


def test_a_step_stopped_in_a_backoff_or_cancelled_records_every_call_it_made(
    journal: Journal,
) -> None:
    """A retried step that ends by Ctrl-C in its backoff (sync) or by a cancellation of its
    third call (async): the journal and the failure event count every call it made."""
    failures: list[int] = []

    class Counting(BaseListener):
        def on_action_failed(self, event: ActionFailed) -> None:
            failures.append(event.attempts)

    def interrupted_sleep(seconds: float) -> None:
        if len(WORLD.calls) >= 3:  # after a's call and b's two calls
            raise KeyboardInterrupt

    WORLD.always_fail("execute", "b", ConnectionError("flaky"))
    q = ActionQueue(journal=journal, sleep=interrupted_sleep, listeners=[Counting()])
    q.add(Put("a"))
    q.add(Put("b"), retry=RetryPolicy(max_attempts=5, initial_delay=1.0))
    with pytest.raises(KeyboardInterrupt):
        q.execute()
    assert WORLD.count("execute", "b") == 2
    assert q.run_id is not None
    assert journal.timeline(q.run_id).steps[1].attempts == 2
    assert failures == [2]

    WORLD.reset(None)
    WORLD.script("execute", "h", ConnectionError("flaky"), ConnectionError("flaky"))

    async def main() -> str | None:
        aq = AsyncActionQueue(journal=journal, name="hangs", sleep=RecordingSleep())
        aq.add(Hangs("h"), retry=RetryPolicy(max_attempts=5, initial_delay=1.0))
        HUNG[:] = [asyncio.Event()]
        task = asyncio.ensure_future(aq.execute())
        await HUNG[0].wait()  # its third call hangs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return aq.run_id

    run_id = asyncio.run(main())
    assert run_id is not None
    assert journal.timeline(run_id).steps[0].attempts == 3
