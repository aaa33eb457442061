"""Tests of actionqueues.testing: FakeClock, RecordingSleep and no_backoff."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    ActionRetryException,
    AsyncActionQueue,
    BaseListener,
    RetryPolicy,
    RetryScheduled,
)
from actionqueues.testing import FakeClock, RecordingSleep, no_backoff


class Flaky(Action):
    """Fails its first ``failures`` calls of ``execute`` with ``error``."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def execute(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error if self.error is not None else ConnectionError(self.calls)


class AsyncFlaky(Flaky):
    async def execute(self) -> None:  # type: ignore[override]
        super().execute()


def run(kind: str, q: Any) -> None:
    if kind == "sync":
        q.execute()
    else:
        asyncio.run(q.execute())


def rollback(kind: str, q: Any) -> Any:
    return q.rollback() if kind == "sync" else asyncio.run(q.rollback())


def make_queue(kind: str, *failures: int, **kwargs: Any) -> tuple[Any, list[Flaky]]:
    q = ActionQueue(**kwargs) if kind == "sync" else AsyncActionQueue(**kwargs)
    cls = Flaky if kind == "sync" else AsyncFlaky
    actions = [q.add(cls(n)) for n in failures]
    return q, actions


KINDS = ("sync", "async")


# -- FakeClock ----------------------------------------------------------------


def test_fake_clock_starts_at_zero_by_default() -> None:
    clock = FakeClock()
    assert clock() == 0.0
    assert isinstance(clock(), float)


def test_fake_clock_starts_where_told_as_a_float() -> None:
    clock = FakeClock(12)
    assert clock() == 12.0
    assert isinstance(clock(), float)
    assert clock.now == 12.0


def test_fake_clock_only_moves_when_advanced() -> None:
    clock = FakeClock(1.5)
    assert clock() == clock() == 1.5
    clock.advance(2)
    assert clock() == 3.5
    clock.advance(0)
    assert clock() == 3.5
    clock.advance(0.25)
    assert clock() == 3.75


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_fake_clock_refuses_to_move_back_or_by_a_non_finite_amount(seconds: float) -> None:
    clock = FakeClock(10)
    with pytest.raises(ValueError, match="finite number of seconds"):
        clock.advance(seconds)
    assert clock() == 10.0


# -- RecordingSleep -----------------------------------------------------------


def test_recording_sleep_records_and_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def real_sleep(seconds: float) -> None:
        pytest.fail(f"the real sleep was called with {seconds}")

    monkeypatch.setattr(time, "sleep", real_sleep)
    sleep = RecordingSleep()
    assert sleep.calls == []
    assert sleep.total == 0.0
    sleep(0.5)
    sleep(0)
    sleep(2)
    assert sleep.calls == [0.5, 0, 2]
    assert sleep.total == 2.5
    assert sleep.clock is None


def test_recording_sleep_total_is_exact() -> None:
    sleep = RecordingSleep()
    for _ in range(10):
        sleep(0.1)
    assert sleep.total == 1.0  # math.fsum: not 0.9999999999999999


def test_recording_sleep_advances_its_clock() -> None:
    clock = FakeClock(100)
    sleep = RecordingSleep(clock)
    sleep(0.25)
    sleep(1.75)
    assert clock() == 102.0
    assert sleep.calls == [0.25, 1.75]
    assert sleep.clock is clock


def test_recording_sleep_with_a_clock_refuses_a_negative_delay() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    with pytest.raises(ValueError, match="finite"):
        sleep(-1)
    assert clock() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_recording_sleep_is_the_sleep_of_both_queue_kinds(kind: str) -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    policy = RetryPolicy(max_attempts=4, initial_delay=0.5, multiplier=3, max_delay=10)
    q, (first, second) = make_queue(kind, 2, 1, sleep=sleep, clock=clock, retry=policy)

    run(kind, q)

    assert sleep.calls == [0.5, 1.5, 0.5]
    assert sleep.total == 2.5
    assert clock() == 2.5
    assert (first.calls, second.calls) == (3, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_recording_sleep_moves_the_clock_that_deadlines_are_measured_with(kind: str) -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    # Delays 1, 2, 4, ...: after waiting 1 + 2 s, a 4 s wait would pass the 5 s deadline.
    policy = RetryPolicy(max_attempts=None, initial_delay=1, multiplier=2, deadline=5)
    q, (action,) = make_queue(kind, 100, sleep=sleep, clock=clock, retry=policy)

    with pytest.raises(ConnectionError):
        run(kind, q)

    assert sleep.calls == [1, 2]
    assert action.calls == 3
    assert clock() == 3.0


@pytest.mark.parametrize("kind", KINDS)
def test_recording_sleep_records_action_retry_backoffs(kind: str) -> None:
    sleep = RecordingSleep()
    q = ActionQueue(sleep=sleep) if kind == "sync" else AsyncActionQueue(sleep=sleep)
    retries = [ActionRetryException(250), ActionRetryException(0), ActionRetryException(1500)]

    def step() -> None:
        if retries:
            raise retries.pop(0)

    q.add(step)
    run(kind, q)

    assert sleep.calls == [0.25, 0.0, 1.5]


# -- no_backoff ---------------------------------------------------------------


@pytest.fixture
def forbid_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``time.sleep`` and ``asyncio.sleep`` fail the test if anything calls them."""

    def sync_sleep(seconds: float) -> None:
        pytest.fail(f"the real sleep was called with {seconds!r}")

    async def async_sleep(seconds: float, result: object = None) -> object:
        pytest.fail(f"asyncio.sleep({seconds!r}) was called")

    monkeypatch.setattr(time, "sleep", sync_sleep)
    monkeypatch.setattr(asyncio, "sleep", async_sleep)


@pytest.fixture
def spy_real_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make ``time.sleep`` and ``asyncio.sleep`` record instead of waiting."""
    calls: list[float] = []

    async def async_sleep(seconds: float, result: object = None) -> object:
        calls.append(seconds)
        return result

    monkeypatch.setattr(time, "sleep", calls.append)
    monkeypatch.setattr(asyncio, "sleep", async_sleep)
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_queues_with_the_default_sleep_really_sleep_outside_no_backoff(
    kind: str, spy_real_sleep: list[float]
) -> None:
    """The control for the tests below: the patched sleep is the one queues call."""
    q, _ = make_queue(kind, 2, retry=RetryPolicy.fixed(0.75, max_attempts=3))
    run(kind, q)
    assert spy_real_sleep == [0.75, 0.75]


class Retries(BaseListener):
    def __init__(self) -> None:
        self.events: list[RetryScheduled] = []

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        self.events.append(event)


@pytest.mark.usefixtures("forbid_real_sleep")
@pytest.mark.parametrize("kind", KINDS)
def test_no_backoff_skips_the_default_sleep_but_still_retries(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actionqueues")
    listener = Retries()
    q, (first, second) = make_queue(
        kind, 2, 1, retry=RetryPolicy.fixed(30, max_attempts=3), listeners=[listener]
    )
    started = time.monotonic()

    with no_backoff():
        run(kind, q)

    assert time.monotonic() - started < 5
    assert (first.calls, second.calls) == (3, 2)
    assert [(e.index, e.attempt, e.delay) for e in listener.events] == [
        (0, 1, 30.0),
        (0, 2, 30.0),
        (1, 1, 30.0),
    ]
    warnings = [r for r in caplog.records if r.__dict__.get("aq_event") == "retry_scheduled"]
    assert len(warnings) == 3


@pytest.mark.usefixtures("forbid_real_sleep")
@pytest.mark.parametrize("kind", KINDS)
def test_no_backoff_skips_action_retry_backoffs_and_the_rollback_sleep(kind: str) -> None:
    q = ActionQueue() if kind == "sync" else AsyncActionQueue()
    retries = [ActionRetryException(60_000)]
    undo_retries = [ActionRetryException(60_000), ActionRetryException(60_000)]

    def do() -> None:
        if retries:
            raise retries.pop(0)

    def undo(result: None) -> None:
        if undo_retries:
            raise undo_retries.pop(0)

    q.add(do, undo=undo)
    with no_backoff():
        run(kind, q)
        report = rollback(kind, q)

    assert report.ok
    assert (retries, undo_retries) == ([], [])


@pytest.mark.parametrize("kind", KINDS)
def test_no_backoff_skips_an_injected_sleep_too(kind: str) -> None:
    sleep = RecordingSleep()
    q, (action,) = make_queue(kind, 2, sleep=sleep, retry=RetryPolicy.fixed(1, max_attempts=3))
    with no_backoff():
        run(kind, q)
    assert sleep.calls == []  # "every backoff sleep of every queue"
    assert action.calls == 3


def _sleeps(kind: str) -> list[float]:
    """The sleeps a queue retrying once after 0.5 s asks its RecordingSleep for."""
    sleep = RecordingSleep()
    q, _ = make_queue(kind, 1, sleep=sleep, retry=RetryPolicy.fixed(0.5, max_attempts=2))
    run(kind, q)
    return sleep.calls


@pytest.mark.parametrize("kind", KINDS)
def test_no_backoff_nests_and_restores(kind: str) -> None:
    assert _sleeps(kind) == [0.5]
    with no_backoff():
        assert _sleeps(kind) == []
        with no_backoff():
            assert _sleeps(kind) == []
        assert _sleeps(kind) == []  # the inner block restored "off", not "on"
    assert _sleeps(kind) == [0.5]


@pytest.mark.parametrize("kind", KINDS)
def test_no_backoff_restores_when_the_block_raises(kind: str) -> None:
    seen: list[list[float]] = []

    def inner() -> None:
        with no_backoff():
            raise RuntimeError("inner")

    def outer() -> None:
        with no_backoff():
            with pytest.raises(RuntimeError, match="inner"):
                inner()
            seen.append(_sleeps(kind))  # still off: the inner block restored "off"
            raise RuntimeError("outer")

    with pytest.raises(RuntimeError, match="outer"):
        outer()
    assert seen == [[]]
    assert _sleeps(kind) == [0.5]


def test_no_backoff_restores_when_a_queue_inside_fails() -> None:
    q, _ = make_queue("sync", 5, retry=RetryPolicy.fixed(1, max_attempts=2))
    with pytest.raises(ConnectionError), no_backoff():
        q.execute()
    assert _sleeps("sync") == [0.5]


# -- the module docstring's example, as real tests ------------------------------


def test_retries_back_off_exponentially() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    q = ActionQueue(sleep=sleep, clock=clock, retry=RetryPolicy(max_attempts=3))
    action = q.add(Flaky(2))
    q.execute()
    assert sleep.calls == [0.1, 0.2]
    assert action.calls == 3
    assert clock() == pytest.approx(0.3)


class TestWithTheNoBackoffFixture:
    """The docstring's autouse fixture, for code that builds its own queues."""

    @pytest.fixture(autouse=True)
    def _no_backoff(self) -> Iterator[None]:
        with no_backoff():
            yield

    @pytest.mark.usefixtures("forbid_real_sleep")
    def test_code_that_builds_its_own_queue_never_sleeps(self) -> None:
        def code_under_test() -> list[str]:
            log: list[str] = []
            pending = [ActionRetryException(60_000)]

            def create() -> str:
                log.append("create")
                if pending:
                    raise pending.pop(0)
                return "row"

            q = ActionQueue()  # the default sleep: time.sleep
            q.add(create, undo=lambda row: log.append(f"delete {row}"))
            q.execute()
            q.rollback()
            return log

        assert code_under_test() == ["create", "create", "delete row"]

    @pytest.mark.usefixtures("forbid_real_sleep")
    def test_retries_of_a_policy_happen_without_waiting(self) -> None:
        q = ActionQueue(retry=RetryPolicy(max_attempts=4, initial_delay=10))
        action = q.add(Flaky(3))
        q.execute()
        assert action.calls == 4

    def test_a_recording_sleep_records_nothing_under_it(self) -> None:
        """Under the fixture an injected RecordingSleep is skipped too."""
        sleep = RecordingSleep()
        q = ActionQueue(sleep=sleep, retry=RetryPolicy(max_attempts=3))
        q.add(Flaky(2))
        q.execute()
        assert sleep.calls == []
