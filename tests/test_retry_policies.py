"""Retry policies as the queues apply them: delays, limits, events and logs.

Every test runs against both drivers (``ActionQueue`` and
``AsyncActionQueue``) through the small helpers below, since both carry out
the same engine decisions. No test ever really sleeps: the queues get a
:class:`RecordingSleep` and, where time matters, a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Iterable
from typing import Any, Literal, TypeVar

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    ActionRetryException,
    AsyncActionQueue,
    BaseListener,
    RetryLimitExceeded,
    RetryPolicy,
    RetryScheduled,
    RollbackReport,
)
from actionqueues.testing import FakeClock, RecordingSleep, no_backoff

Kind = Literal["sync", "async"]
AnyQueue = ActionQueue | AsyncActionQueue
_T = TypeVar("_T")

both_queues = pytest.mark.parametrize("kind", ["sync", "async"])


# -- helpers: one test body for both drivers ------------------------------------


def make_queue(kind: Kind, **kwargs: Any) -> AnyQueue:
    """A queue of the given kind; it never sleeps unless the test says how."""
    kwargs.setdefault("sleep", RecordingSleep())
    if kind == "sync":
        return ActionQueue(**kwargs)
    return AsyncActionQueue(**kwargs)


async def _outcome(coro: Coroutine[Any, Any, _T]) -> tuple[_T | None, BaseException | None]:
    # Catch inside the coroutine so that even a KeyboardInterrupt never crosses the loop.
    try:
        return await coro, None
    except BaseException as error:
        return None, error


def _run(coro: Coroutine[Any, Any, _T]) -> _T | None:
    value, error = asyncio.run(_outcome(coro))
    if error is not None:
        raise error
    return value


def execute(q: AnyQueue) -> None:
    """``q.execute()``, awaited on a fresh event loop for the async queue."""
    if isinstance(q, AsyncActionQueue):
        _run(q.execute())
    else:
        q.execute()


def rollback(q: AnyQueue, *, raise_errors: bool = False) -> RollbackReport:
    """``q.rollback()``, awaited on a fresh event loop for the async queue."""
    if isinstance(q, AsyncActionQueue):
        report = _run(q.rollback(raise_errors=raise_errors))
        assert report is not None
        return report
    return q.rollback(raise_errors=raise_errors)


class Flaky(Action):
    """Raises its scripted errors one per call, then succeeds.

    ``takes`` seconds pass on ``clock`` during every call, as if the call
    itself took that long.
    """

    def __init__(
        self,
        execute_errors: Iterable[BaseException] = (),
        rollback_errors: Iterable[BaseException] = (),
        *,
        clock: FakeClock | None = None,
        takes: float = 0.0,
    ) -> None:
        self.execute_errors = list(execute_errors)
        self.rollback_errors = list(rollback_errors)
        self.clock = clock
        self.takes = takes
        self.execute_calls = 0
        self.rollback_calls = 0

    def _tick(self) -> None:
        if self.clock is not None:
            self.clock.advance(self.takes)

    def execute(self) -> None:
        self.execute_calls += 1
        self._tick()
        if self.execute_errors:
            raise self.execute_errors.pop(0)

    def rollback(self) -> None:
        self.rollback_calls += 1
        self._tick()
        if self.rollback_errors:
            raise self.rollback_errors.pop(0)


def connection_errors(count: int) -> list[BaseException]:
    return [ConnectionError(f"attempt {n}") for n in range(1, count + 1)]


class Throttled(Exception):
    """A server's "slow down", carrying the delay it asks for."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


# -- delays ------------------------------------------------------------------


@both_queues
def test_a_queue_policy_retries_matching_errors_with_growing_delays_capped_at_max_delay(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    policy = RetryPolicy(
        max_attempts=5, initial_delay=0.1, multiplier=2, max_delay=0.3, retry_on=ConnectionError
    )
    q = make_queue(kind, sleep=sleep, retry=policy)
    flaky = q.add(Flaky(connection_errors(4)))

    execute(q)

    assert flaky.execute_calls == 5
    assert sleep.calls == [0.1, 0.2, 0.3, 0.3]


@both_queues
@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_jitter_with_a_seeded_random_source_gives_exactly_the_expected_delays(
    kind: Kind, jitter: Literal["full", "equal"]
) -> None:
    sleep = RecordingSleep()
    policy = RetryPolicy(
        max_attempts=5,
        initial_delay=0.1,
        multiplier=2,
        max_delay=0.3,
        jitter=jitter,
        random=random.Random(7).random,
    )
    q = make_queue(kind, sleep=sleep, retry=policy)
    q.add(Flaky(connection_errors(4)))

    execute(q)

    draws = random.Random(7)
    if jitter == "full":
        expected = [draws.random() * base for base in (0.1, 0.2, 0.3, 0.3)]
    else:
        expected = [base / 2 + draws.random() * (base / 2) for base in (0.1, 0.2, 0.3, 0.3)]
    assert sleep.calls == expected
    assert expected == pytest.approx(
        [0.0323832765, 0.0301698348, 0.1952803419, 0.0217308860]
        if jitter == "full"
        else [0.0661916382, 0.1150849174, 0.2476401710, 0.1608654430]
    )


@both_queues
def test_an_error_asking_for_retry_after_five_seconds_is_retried_after_five_seconds(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy(initial_delay=0.1, max_delay=30))
    flaky = q.add(Flaky([Throttled(retry_after=5)]))

    execute(q)

    assert flaky.execute_calls == 2
    assert sleep.calls == [5.0]


@both_queues
def test_a_retry_after_longer_than_max_delay_is_capped_at_max_delay(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy(initial_delay=0.1, max_delay=10))
    q.add(Flaky([Throttled(retry_after=100)]))

    execute(q)

    assert sleep.calls == [10.0]


# -- which policy applies ------------------------------------------------------


@both_queues
def test_a_step_policy_overrides_the_queue_policy_for_that_step_only(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy.fixed(1.0, max_attempts=2))
    own = q.add(Flaky(connection_errors(3)), retry=RetryPolicy.fixed(0.5, max_attempts=4))
    default = q.add(Flaky(connection_errors(1)))

    execute(q)

    assert (own.execute_calls, default.execute_calls) == (4, 2)
    assert sleep.calls == [0.5, 0.5, 0.5, 1.0]


@both_queues
def test_rollback_retry_retries_rollbacks_while_execute_errors_are_not_retried(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, rollback_retry=RetryPolicy.fixed(0.25, max_attempts=3))
    failure = ConnectionError("execute failed")
    flaky = q.add(Flaky([failure], connection_errors(2)))

    with pytest.raises(ConnectionError) as excinfo:
        execute(q)
    assert excinfo.value is failure
    assert flaky.execute_calls == 1

    report = rollback(q)

    assert report.ok
    assert report.rolled_back == (flaky,)
    assert flaky.rollback_calls == 3
    assert sleep.calls == [0.25, 0.25]


@both_queues
def test_a_step_rollback_retry_overrides_the_queue_rollback_retry(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, rollback_retry=RetryPolicy.fixed(1.0, max_attempts=2))
    default = q.add(Flaky((), connection_errors(1)))
    own = q.add(
        Flaky((), connection_errors(2)), rollback_retry=RetryPolicy.fixed(0.5, max_attempts=3)
    )
    execute(q)

    report = rollback(q)

    assert report.rolled_back == (own, default)
    assert sleep.calls == [0.5, 0.5, 1.0]


@both_queues
def test_the_execute_policy_does_not_retry_rollbacks(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy.fixed(1.0, max_attempts=5))
    broken = ConnectionError("rollback failed")
    flaky = q.add(Flaky((), [broken]))
    execute(q)

    report = rollback(q)

    assert report.errors == (broken,)
    assert flaky.rollback_calls == 1
    assert sleep.calls == []


@both_queues
def test_the_rollback_policy_does_not_retry_execute(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, rollback_retry=RetryPolicy.fixed(1.0, max_attempts=5))
    flaky = q.add(Flaky(connection_errors(1)))

    with pytest.raises(ConnectionError):
        execute(q)

    assert flaky.execute_calls == 1
    assert sleep.calls == []


# -- what is not retried --------------------------------------------------------


@both_queues
def test_an_error_not_matching_retry_on_is_raised_at_once(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy(retry_on=ConnectionError))
    error = ValueError("bad input")
    flaky = q.add(Flaky([error]))

    with pytest.raises(ValueError, match="bad input") as excinfo:
        execute(q)

    assert excinfo.value is error
    assert flaky.execute_calls == 1
    assert sleep.calls == []
    assert not hasattr(error, "actionqueues_attempts")


@both_queues
def test_an_error_in_never_retry_is_raised_at_once_even_though_retry_on_matches_it(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    policy = RetryPolicy(retry_on=OSError, never_retry=PermissionError)
    q = make_queue(kind, sleep=sleep, retry=policy)
    error = PermissionError("denied")
    flaky = q.add(Flaky([error]))

    with pytest.raises(PermissionError) as excinfo:
        execute(q)

    assert excinfo.value is error
    assert flaky.execute_calls == 1
    assert sleep.calls == []


@both_queues
def test_a_predicate_retry_on_decides_which_errors_are_retried(kind: Kind) -> None:
    sleep = RecordingSleep()
    policy = RetryPolicy.fixed(0.5, retry_on=lambda e: "transient" in str(e))
    q = make_queue(kind, sleep=sleep, retry=policy)
    permanent = RuntimeError("permanent")
    flaky = q.add(Flaky([RuntimeError("transient"), permanent]))

    with pytest.raises(RuntimeError) as excinfo:
        execute(q)

    assert excinfo.value is permanent
    assert flaky.execute_calls == 2
    assert sleep.calls == [0.5]


@both_queues
def test_keyboard_interrupt_is_never_retried_even_by_a_policy_retrying_everything(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy(max_attempts=None, retry_on=BaseException))
    interrupt = KeyboardInterrupt()
    flaky = q.add(Flaky([interrupt]))

    with pytest.raises(KeyboardInterrupt) as excinfo:
        execute(q)

    assert excinfo.value is interrupt
    assert flaky.execute_calls == 1
    assert sleep.calls == []


# -- giving up --------------------------------------------------------------------


@both_queues
def test_when_attempts_run_out_the_caller_gets_the_last_error_itself_with_its_attempt_history(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy(max_attempts=3, initial_delay=0.1))
    q.add(Flaky())
    errors = connection_errors(3)
    flaky = q.add(Flaky(errors))

    with pytest.raises(ConnectionError) as excinfo:
        execute(q)

    last = excinfo.value
    assert last is errors[2]
    attempts = last.actionqueues_attempts  # type: ignore[attr-defined]
    assert isinstance(attempts, tuple)
    assert all(isinstance(event, RetryScheduled) for event in attempts)
    assert [(e.attempt, e.delay, e.method, e.index) for e in attempts] == [
        (1, 0.1, "execute", 1),
        (2, 0.2, "execute", 1),
    ]
    assert [e.error for e in attempts] == errors[:2]
    assert all(e.error is error for e, error in zip(attempts, errors, strict=False))
    assert all(e.action is flaky and e.queue is q for e in attempts)
    assert sleep.calls == [0.1, 0.2]


@both_queues
def test_the_given_up_error_carries_a_note_naming_its_attempts(kind: Kind) -> None:
    # __notes__ and add_note exist from Python 3.11 on; 3.10 gets the attribute only.
    q = make_queue(kind, retry=RetryPolicy(max_attempts=3))
    q.add(Flaky(connection_errors(3)))

    with pytest.raises(ConnectionError) as excinfo:
        execute(q)

    notes: list[str] = getattr(excinfo.value, "__notes__", [])
    if hasattr(BaseException, "add_note"):
        assert len(notes) == 1
        assert "execute() of step 0 failed after 3 attempts" in notes[0]
        assert "#1: ConnectionError('attempt 1')" in notes[0]
        assert "#2: ConnectionError('attempt 2')" in notes[0]
    else:  # pragma: no cover - Python 3.10
        assert notes == []


@both_queues
def test_a_non_retryable_error_after_retries_is_raised_with_the_earlier_attempts(
    kind: Kind,
) -> None:
    q = make_queue(kind, retry=RetryPolicy(max_attempts=5, retry_on=ConnectionError))
    first = ConnectionError("transient")
    final = ValueError("permanent")
    q.add(Flaky([first, final]))

    with pytest.raises(ValueError, match="permanent") as excinfo:
        execute(q)

    assert excinfo.value is final
    attempts = excinfo.value.actionqueues_attempts  # type: ignore[attr-defined]
    assert [(e.attempt, e.error) for e in attempts] == [(1, first)]


@both_queues
def test_a_rollback_that_runs_out_of_attempts_is_reported_with_its_last_error(kind: Kind) -> None:
    q = make_queue(kind, rollback_retry=RetryPolicy(max_attempts=2, initial_delay=0.5))
    errors = connection_errors(2)
    flaky = q.add(Flaky((), errors))
    execute(q)

    report = rollback(q)

    assert report.errors == (errors[1],)
    assert report.failures[0].action is flaky
    attempts = errors[1].actionqueues_attempts  # type: ignore[attr-defined]
    assert [(e.attempt, e.delay, e.method, e.error) for e in attempts] == [
        (1, 0.5, "rollback", errors[0])
    ]


# -- deadline ---------------------------------------------------------------------


@both_queues
def test_a_deadline_stops_retrying_when_the_next_delay_would_end_past_it(kind: Kind) -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    policy = RetryPolicy(max_attempts=None, initial_delay=0.3, multiplier=2, deadline=1.0)
    q = make_queue(kind, sleep=sleep, clock=clock, retry=policy)
    errors = connection_errors(10)
    flaky = q.add(Flaky(errors))

    with pytest.raises(ConnectionError) as excinfo:
        execute(q)

    # Retry 1 starts at 0.3 s, retry 2 at 0.9 s; retry 3 would start at 2.1 s > 1.0 s.
    assert sleep.calls == [0.3, 0.6]
    assert flaky.execute_calls == 3
    assert excinfo.value is errors[2]


@both_queues
def test_a_retry_starting_exactly_at_the_deadline_is_still_made(kind: Kind) -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    policy = RetryPolicy.fixed(0.5, max_attempts=None, deadline=1.5)
    q = make_queue(kind, sleep=sleep, clock=clock, retry=policy)
    flaky = q.add(Flaky(connection_errors(10)))

    with pytest.raises(ConnectionError):
        execute(q)

    assert sleep.calls == [0.5, 0.5, 0.5]
    assert flaky.execute_calls == 4


@both_queues
def test_the_deadline_counts_from_the_start_of_the_first_call_including_the_calls_duration(
    kind: Kind,
) -> None:
    clock = FakeClock(100.0)
    sleep = RecordingSleep(clock)
    policy = RetryPolicy.fixed(0.25, max_attempts=None, deadline=1.5)
    q = make_queue(kind, sleep=sleep, clock=clock, retry=policy)
    flaky = q.add(Flaky(connection_errors(10), clock=clock, takes=1.0))

    with pytest.raises(ConnectionError):
        execute(q)

    # Call 1 runs 0-1 s, retry at 1.25 s; call 2 fails at 2.25 s, past the deadline.
    assert flaky.execute_calls == 2
    assert sleep.calls == [0.25]


@both_queues
def test_a_rollback_deadline_counts_from_the_start_of_the_first_rollback_call(
    kind: Kind,
) -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    policy = RetryPolicy.fixed(0.25, max_attempts=None, deadline=1.5)
    q = make_queue(kind, sleep=sleep, clock=clock, rollback_retry=policy)
    flaky = q.add(Flaky((), connection_errors(10), clock=clock, takes=1.0))
    execute(q)

    report = rollback(q)

    assert not report.ok
    assert flaky.rollback_calls == 2
    assert sleep.calls == [0.25]


# -- ActionRetryException under a policy -----------------------------------------------


@both_queues
def test_an_action_retry_exception_under_a_policy_waits_its_own_backoff(kind: Kind) -> None:
    """The rule for ``ActionRetryException`` when a policy applies to the step.

    The action asked to be called again, so it is retried whatever the
    policy's ``retry_on`` says, after the exception's own ``ms_backoff`` (the
    policy's delays are not used). The policy's ``max_attempts`` and
    ``deadline`` still bound it: past them the call fails with
    ``RetryLimitExceeded`` ("the retry policy's limits"). Without a policy,
    the queue's ``max_retries`` is the only bound.
    """
    sleep = RecordingSleep()
    policy = RetryPolicy.fixed(7.0, max_attempts=5, retry_on=KeyError)
    q = make_queue(kind, sleep=sleep, retry=policy)
    flaky = q.add(Flaky([ActionRetryException(250), ActionRetryException(0)]))

    execute(q)

    assert flaky.execute_calls == 3
    assert sleep.calls == [0.25, 0.0]


@both_queues
def test_a_policys_max_attempts_limits_action_retry_exceptions_with_retry_limit_exceeded(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy(max_attempts=3))
    signals = [ActionRetryException(100) for _ in range(5)]
    flaky = q.add(Flaky(signals))

    with pytest.raises(RetryLimitExceeded, match=r"the retry policy's limits") as excinfo:
        execute(q)

    assert flaky.execute_calls == 3
    assert sleep.calls == [0.1, 0.1]
    assert excinfo.value.retries == 2
    assert excinfo.value.method == "execute"
    assert excinfo.value.action is flaky
    assert excinfo.value.__cause__ is signals[2]
    assert "after 2 retries" in str(excinfo.value)


@both_queues
def test_a_policys_deadline_limits_action_retry_exceptions_with_retry_limit_exceeded(
    kind: Kind,
) -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    policy = RetryPolicy(max_attempts=None, deadline=1.0)
    q = make_queue(kind, sleep=sleep, clock=clock, retry=policy)
    flaky = q.add(Flaky([ActionRetryException(400) for _ in range(10)]))

    with pytest.raises(RetryLimitExceeded, match=r"the retry policy's limits"):
        execute(q)

    # Retries start at 0.4 s and 0.8 s; the next would start at 1.2 s.
    assert sleep.calls == [0.4, 0.4]
    assert flaky.execute_calls == 3


@both_queues
def test_a_rollback_policy_limits_action_retry_exceptions_of_rollback(kind: Kind) -> None:
    q = make_queue(kind, rollback_retry=RetryPolicy(max_attempts=2))
    flaky = q.add(Flaky((), [ActionRetryException(0) for _ in range(5)]))
    execute(q)

    report = rollback(q)

    assert flaky.rollback_calls == 2
    (error,) = report.errors
    assert isinstance(error, RetryLimitExceeded)
    assert error.method == "rollback"
    assert "the retry policy's limits" in str(error)


@both_queues
def test_without_a_policy_the_queue_max_retries_still_caps_action_retry_exceptions(
    kind: Kind,
) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, max_retries=2)
    flaky = q.add(Flaky([ActionRetryException(10) for _ in range(5)]))

    with pytest.raises(RetryLimitExceeded, match=r"the queue's max_retries") as excinfo:
        execute(q)

    assert excinfo.value.retries == 2
    assert flaky.execute_calls == 3
    assert sleep.calls == [0.01, 0.01]


@both_queues
def test_the_queue_max_retries_applies_even_when_the_policy_would_allow_more(kind: Kind) -> None:
    q = make_queue(kind, max_retries=1, retry=RetryPolicy(max_attempts=10))
    flaky = q.add(Flaky([ActionRetryException(0) for _ in range(5)]))

    with pytest.raises(RetryLimitExceeded, match=r"the queue's max_retries"):
        execute(q)

    assert flaky.execute_calls == 2


# -- no_backoff -----------------------------------------------------------------------


@both_queues
def test_no_backoff_retries_without_calling_the_injected_sleep(kind: Kind) -> None:
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy.fixed(10.0, max_attempts=3))
    flaky = q.add(Flaky(connection_errors(2)))

    with no_backoff():
        execute(q)

    assert flaky.execute_calls == 3
    assert sleep.calls == []


@both_queues
def test_no_backoff_restores_sleeping_when_the_block_ends_even_by_an_error(kind: Kind) -> None:
    with pytest.raises(RuntimeError), no_backoff():
        raise RuntimeError("the block failed")
    sleep = RecordingSleep()
    q = make_queue(kind, sleep=sleep, retry=RetryPolicy.fixed(10.0, max_attempts=3))
    q.add(Flaky(connection_errors(2)))

    execute(q)

    assert sleep.calls == [10.0, 10.0]


@both_queues
def test_no_backoff_blocks_nest_and_only_the_outermost_exit_turns_sleeping_back_on(
    kind: Kind,
) -> None:
    def run_one() -> list[float]:
        sleep = RecordingSleep()
        q = make_queue(kind, sleep=sleep, retry=RetryPolicy.fixed(1.0, max_attempts=2))
        q.add(Flaky(connection_errors(1)))
        execute(q)
        return sleep.calls

    with no_backoff():
        with no_backoff():
            assert run_one() == []
        assert run_one() == []
    assert run_one() == [1.0]


# -- events and logs --------------------------------------------------------------------


class RetryRecorder(BaseListener):
    def __init__(self) -> None:
        self.events: list[RetryScheduled] = []

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        self.events.append(event)


@both_queues
def test_each_retry_reaches_the_queues_listeners_as_a_retry_scheduled_event(kind: Kind) -> None:
    listener = RetryRecorder()
    q = make_queue(
        kind,
        listeners=[listener],
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1),
        rollback_retry=RetryPolicy.fixed(0.5, max_attempts=2),
    )
    execute_errors = connection_errors(2)
    rollback_error = TimeoutError("rollback slow")
    flaky = q.add(Flaky(execute_errors, [rollback_error]))

    execute(q)
    rollback(q)

    assert [(e.method, e.attempt, e.delay, e.error) for e in listener.events] == [
        ("execute", 1, 0.1, execute_errors[0]),
        ("execute", 2, 0.2, execute_errors[1]),
        ("rollback", 1, 0.5, rollback_error),
    ]
    assert all(e.queue is q and e.index == 0 and e.action is flaky for e in listener.events)


@both_queues
def test_each_retry_is_logged_as_a_warning_with_its_structured_fields(
    kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_queue(kind, retry=RetryPolicy(max_attempts=3, initial_delay=0.1))
    q.add(Flaky(connection_errors(2)))

    with caplog.at_level(logging.WARNING, logger="actionqueues"):
        execute(q)

    retries = [r for r in caplog.records if getattr(r, "aq_event", None) == "retry_scheduled"]
    assert len(retries) == 2
    assert all(r.name == "actionqueues" and r.levelno == logging.WARNING for r in retries)
    assert [(r.aq_step, r.aq_delay) for r in retries] == [(0, 0.1), (0, 0.2)]  # type: ignore[attr-defined]
    assert "attempt 1 failed" in retries[0].getMessage()
    assert "retrying in 0.100 s" in retries[0].getMessage()
