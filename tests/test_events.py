"""Lifecycle events: their order, global listeners, failing listeners, LoggingListener.

Every scenario runs on both drivers (``ActionQueue`` and ``AsyncActionQueue``,
the latter through ``asyncio.run``). Nothing really sleeps: every queue gets a
``RecordingSleep`` and, where time matters, a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import actionqueues
from actionqueues import (
    ActionFailed,
    ActionQueue,
    ActionRetryException,
    ActionStarted,
    ActionSucceeded,
    AsyncActionQueue,
    BaseListener,
    LoggingListener,
    QueueFinished,
    QueueRolledBack,
    QueueStarted,
    RetryPolicy,
    RetryScheduled,
    RollbackFailed,
    RollbackReport,
    RollbackStarted,
    RollbackSucceeded,
)
from actionqueues.testing import FakeClock, RecordingSleep

METHODS = (
    "on_queue_started",
    "on_queue_finished",
    "on_action_started",
    "on_retry_scheduled",
    "on_action_succeeded",
    "on_action_failed",
    "on_rollback_started",
    "on_rollback_succeeded",
    "on_rollback_failed",
    "on_queue_rolled_back",
)
KINDS = ("sync", "async")


class Boom(Exception):
    """The error the scripted actions raise."""


class ListenerBoom(Exception):
    """The error a misbehaving listener raises."""


# -- actions ------------------------------------------------------------------


class _Scripted:
    """Logs each call, runs an optional hook, then raises the next scripted error."""

    def __init__(
        self,
        log: list[str],
        name: str,
        *,
        execute: Sequence[BaseException] = (),
        rollback: Sequence[BaseException] = (),
        on_execute: Callable[[], object] | None = None,
    ) -> None:
        self.log = log
        self.name = name
        self.scripts = {"execute": list(execute), "rollback": list(rollback)}
        self.on_execute = on_execute

    def _call(self, method: str) -> None:
        self.log.append(f"{method} {self.name}")
        if method == "execute" and self.on_execute is not None:
            self.on_execute()
        script = self.scripts[method]
        if script:
            raise script.pop(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SyncStep(_Scripted):
    def execute(self) -> None:
        self._call("execute")

    def rollback(self) -> None:
        self._call("rollback")


class AsyncStep(_Scripted):
    async def execute(self) -> None:
        self._call("execute")

    async def rollback(self) -> None:
        self._call("rollback")


# -- drivers ------------------------------------------------------------------


class Driver:
    """Builds and runs a queue of one kind, so that each test covers both."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def queue(self, **kwargs: Any) -> Any:
        kwargs.setdefault("sleep", RecordingSleep())
        if self.kind == "sync":
            return ActionQueue(**kwargs)
        return AsyncActionQueue(**kwargs)

    def step(self, log: list[str], name: str, **kwargs: Any) -> _Scripted:
        cls = SyncStep if self.kind == "sync" else AsyncStep
        return cls(log, name, **kwargs)

    def execute(self, q: Any) -> BaseException | None:
        """Run ``q.execute()``; return what it raised (None if it returned)."""
        try:
            if self.kind == "sync":
                q.execute()
            else:
                asyncio.run(q.execute())
        except Exception as error:
            return error
        return None

    def rollback(self, q: Any) -> RollbackReport:
        report = q.rollback() if self.kind == "sync" else asyncio.run(q.rollback())
        assert isinstance(report, RollbackReport)
        return report


@pytest.fixture(params=KINDS)
def driver(request: pytest.FixtureRequest) -> Driver:
    return Driver(request.param)


# -- listeners ----------------------------------------------------------------


class EventLog:
    """A listener recording ``(method name, step index or None)`` and the events."""

    def __init__(
        self, shared: list[tuple[str, str, int | None]] | None = None, tag: str = ""
    ) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.events: list[Any] = []
        self.shared = shared
        self.tag = tag

    def _record(self, name: str, event: object) -> None:
        index = getattr(event, "index", None)
        self.calls.append((name, index))
        self.events.append(event)
        if self.shared is not None:
            self.shared.append((self.tag, name, index))

    def of(self, cls: type[Any]) -> list[Any]:
        return [event for event in self.events if type(event) is cls]

    def on_queue_started(self, event: QueueStarted) -> None:
        self._record("on_queue_started", event)

    def on_queue_finished(self, event: QueueFinished) -> None:
        self._record("on_queue_finished", event)

    def on_action_started(self, event: ActionStarted) -> None:
        self._record("on_action_started", event)

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        self._record("on_retry_scheduled", event)

    def on_action_succeeded(self, event: ActionSucceeded) -> None:
        self._record("on_action_succeeded", event)

    def on_action_failed(self, event: ActionFailed) -> None:
        self._record("on_action_failed", event)

    def on_rollback_started(self, event: RollbackStarted) -> None:
        self._record("on_rollback_started", event)

    def on_rollback_succeeded(self, event: RollbackSucceeded) -> None:
        self._record("on_rollback_succeeded", event)

    def on_rollback_failed(self, event: RollbackFailed) -> None:
        self._record("on_rollback_failed", event)

    def on_queue_rolled_back(self, event: QueueRolledBack) -> None:
        self._record("on_queue_rolled_back", event)


class RaisingListener(BaseListener):
    """Raises from one ``on_*`` method (every time it is called)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.raised = 0

        def boom(event: object) -> None:
            self.raised += 1
            raise ListenerBoom(f"listener broke in {method}")

        setattr(self, method, boom)


class Partial:
    """Not a listener: has only two of the ``on_*`` methods, and one non-callable."""

    on_rollback_succeeded = "not callable"

    def on_queue_started(self, event: object) -> None:
        raise AssertionError("a refused listener must never be called")

    def on_queue_finished(self, event: object) -> None:
        raise AssertionError("a refused listener must never be called")


@pytest.fixture
def register() -> Iterator[Callable[[Any], None]]:
    """``register(listener)`` adds a global listener, removed again after the test."""
    added: list[Any] = []

    def add(listener: Any) -> None:
        actionqueues.add_listener(listener)
        added.append(listener)

    try:
        yield add
    finally:
        for listener in added:
            actionqueues.remove_listener(listener)


def test_the_listener_protocol_has_exactly_these_methods() -> None:
    names = tuple(name for name in vars(BaseListener) if name.startswith("on_"))
    assert sorted(names) == sorted(METHODS)


# -- the order of events ------------------------------------------------------


def test_events_of_a_successful_run(driver: Driver) -> None:
    log: list[str] = []
    events = EventLog()
    q = driver.queue(listeners=[events])
    steps = [q.add(driver.step(log, name)) for name in "abc"]

    assert driver.execute(q) is None

    assert events.calls == [
        ("on_queue_started", None),
        ("on_action_started", 0),
        ("on_action_succeeded", 0),
        ("on_action_started", 1),
        ("on_action_succeeded", 1),
        ("on_action_started", 2),
        ("on_action_succeeded", 2),
        ("on_queue_finished", None),
    ]
    (started,) = events.of(QueueStarted)
    assert started.queue is q
    assert started.actions == 3
    assert [e.action for e in events.of(ActionStarted)] == steps
    assert [e.action for e in events.of(ActionSucceeded)] == steps
    assert [e.attempts for e in events.of(ActionSucceeded)] == [1, 1, 1]
    assert all(e.queue is q for e in events.events)
    (finished,) = events.of(QueueFinished)
    assert finished.error is None
    assert log == ["execute a", "execute b", "execute c"]


def test_events_of_a_run_with_retries(driver: Driver) -> None:
    log: list[str] = []
    events = EventLog()
    sleep = RecordingSleep()
    flaky = ConnectionError("flaky")
    q = driver.queue(listeners=[events], sleep=sleep, retry=RetryPolicy.fixed(0.5, max_attempts=3))
    a = q.add(driver.step(log, "a", execute=[ActionRetryException(250)]))
    b = q.add(driver.step(log, "b", execute=[flaky]))

    assert driver.execute(q) is None

    assert events.calls == [
        ("on_queue_started", None),
        ("on_action_started", 0),
        ("on_retry_scheduled", 0),
        ("on_action_succeeded", 0),
        ("on_action_started", 1),
        ("on_retry_scheduled", 1),
        ("on_action_succeeded", 1),
        ("on_queue_finished", None),
    ]
    first, second = events.of(RetryScheduled)
    assert (first.action, first.method, first.attempt, first.delay) == (a, "execute", 1, 0.25)
    assert isinstance(first.error, ActionRetryException)
    assert (second.action, second.method, second.attempt, second.delay) == (b, "execute", 1, 0.5)
    assert second.error is flaky
    assert [e.attempts for e in events.of(ActionSucceeded)] == [2, 2]
    assert sleep.calls == [0.25, 0.5]
    assert log == ["execute a", "execute a", "execute b", "execute b"]


def test_events_of_a_failed_run_and_a_rollback_with_one_failing_rollback(
    driver: Driver,
) -> None:
    log: list[str] = []
    events = EventLog()
    sleep = RecordingSleep()
    boom = Boom("c failed")
    first_undo_error, last_undo_error = Boom("undo b, try 1"), Boom("undo b, try 2")
    q = driver.queue(
        listeners=[events],
        sleep=sleep,
        rollback_retry=RetryPolicy.fixed(0.125, max_attempts=2),
    )
    a = q.add(driver.step(log, "a"))
    b = q.add(driver.step(log, "b", rollback=[first_undo_error, last_undo_error]))
    c = q.add(driver.step(log, "c", execute=[boom]))

    assert driver.execute(q) is boom
    assert events.calls == [
        ("on_queue_started", None),
        ("on_action_started", 0),
        ("on_action_succeeded", 0),
        ("on_action_started", 1),
        ("on_action_succeeded", 1),
        ("on_action_started", 2),
        ("on_action_failed", 2),
        ("on_queue_finished", None),
    ]
    (failed,) = events.of(ActionFailed)
    assert (failed.action, failed.error, failed.attempts) == (c, boom, 1)
    (finished,) = events.of(QueueFinished)
    assert finished.error is boom

    events.calls.clear()
    report = driver.rollback(q)

    assert events.calls == [
        ("on_rollback_started", 2),
        ("on_rollback_succeeded", 2),
        ("on_rollback_started", 1),
        ("on_retry_scheduled", 1),
        ("on_rollback_failed", 1),
        ("on_rollback_started", 0),
        ("on_rollback_succeeded", 0),
        ("on_queue_rolled_back", None),
    ]
    (retry,) = events.of(RetryScheduled)
    assert (retry.method, retry.attempt, retry.delay) == ("rollback", 1, 0.125)
    assert retry.error is first_undo_error
    (rollback_failed,) = events.of(RollbackFailed)
    assert rollback_failed.queue is q
    assert rollback_failed.action is b
    assert rollback_failed.error is last_undo_error
    assert rollback_failed.attempts == 2
    assert [e.attempts for e in events.of(RollbackSucceeded)] == [1, 1]
    (rolled_back,) = events.of(QueueRolledBack)
    assert rolled_back.report is report
    assert report.rolled_back == (c, a)
    assert [(f.index, f.action, f.error) for f in report.failures] == [(1, b, last_undo_error)]
    assert sleep.calls == [0.125]
    assert log == [
        "execute a",
        "execute b",
        "execute c",
        "rollback c",
        "rollback b",
        "rollback b",
        "rollback a",
    ]


def test_a_rollback_failing_once_without_retries_reports_one_attempt(driver: Driver) -> None:
    log: list[str] = []
    events = EventLog()
    undo_error = Boom("undo a")
    q = driver.queue(listeners=[events])
    q.add(driver.step(log, "a", rollback=[undo_error]))
    assert driver.execute(q) is None

    report = driver.rollback(q)

    assert events.calls[-3:] == [
        ("on_rollback_started", 0),
        ("on_rollback_failed", 0),
        ("on_queue_rolled_back", None),
    ]
    (rollback_failed,) = events.of(RollbackFailed)
    assert (rollback_failed.error, rollback_failed.attempts) == (undo_error, 1)
    assert report.errors == (undo_error,)


def test_queue_finished_carries_the_raised_error_and_the_injected_clock_duration(
    driver: Driver,
) -> None:
    log: list[str] = []
    clock = FakeClock(100.0)
    events = EventLog()
    boom = Boom("b failed")
    q = driver.queue(listeners=[events], clock=clock)
    q.add(driver.step(log, "a", on_execute=lambda: clock.advance(2.5)))
    q.add(driver.step(log, "b", execute=[boom], on_execute=lambda: clock.advance(1.0)))

    error = driver.execute(q)

    assert error is boom
    (finished,) = events.of(QueueFinished)
    assert finished.error is boom
    assert finished.duration == 3.5
    (succeeded,) = events.of(ActionSucceeded)
    assert succeeded.duration == 2.5


def test_queue_finished_duration_of_a_successful_run_uses_the_injected_clock(
    driver: Driver,
) -> None:
    log: list[str] = []
    clock = FakeClock()
    events = EventLog()
    q = driver.queue(listeners=[events], clock=clock)
    for name, seconds in (("a", 0.25), ("b", 4.0)):
        q.add(driver.step(log, name, on_execute=lambda s=seconds: clock.advance(s)))

    assert driver.execute(q) is None

    (finished,) = events.of(QueueFinished)
    assert (finished.error, finished.duration) == (None, 4.25)
    assert [e.duration for e in events.of(ActionSucceeded)] == [0.25, 4.0]


# -- global listeners ---------------------------------------------------------


def test_a_global_listener_hears_every_queue(
    driver: Driver, register: Callable[[Any], None]
) -> None:
    log: list[str] = []
    events = EventLog()
    built_before = driver.queue()
    built_before.add(driver.step(log, "a"))
    register(events)
    built_after = driver.queue()
    built_after.add(driver.step(log, "b"))

    assert driver.execute(built_before) is None
    assert driver.execute(built_after) is None

    assert [e.queue for e in events.of(QueueStarted)] == [built_before, built_after]
    assert len(events.calls) == 8


def test_own_listeners_are_told_before_global_ones(
    driver: Driver, register: Callable[[Any], None]
) -> None:
    shared: list[tuple[str, str, int | None]] = []
    register(EventLog(shared, "global"))
    q = driver.queue(listeners=[EventLog(shared, "own")])
    q.add(driver.step([], "a"))

    assert driver.execute(q) is None

    assert [tag for tag, _, _ in shared] == ["own", "global"] * 4
    assert [(name, index) for _, name, index in shared[::2]] == [
        ("on_queue_started", None),
        ("on_action_started", 0),
        ("on_action_succeeded", 0),
        ("on_queue_finished", None),
    ]


def test_a_listener_added_twice_is_registered_once(
    driver: Driver, register: Callable[[Any], None]
) -> None:
    events = EventLog()
    register(events)
    register(events)
    q = driver.queue()
    q.add(driver.step([], "a"))

    assert driver.execute(q) is None

    assert events.calls == [
        ("on_queue_started", None),
        ("on_action_started", 0),
        ("on_action_succeeded", 0),
        ("on_queue_finished", None),
    ]
    actionqueues.remove_listener(events)  # one removal undoes both additions
    q = driver.queue()
    q.add(driver.step([], "b"))
    assert driver.execute(q) is None
    assert len(events.calls) == 4


def test_removing_a_listener_stops_its_events(
    driver: Driver, register: Callable[[Any], None]
) -> None:
    events = EventLog()
    register(events)
    actionqueues.remove_listener(events)
    q = driver.queue()
    q.add(driver.step([], "a"))

    assert driver.execute(q) is None

    assert events.calls == []


def test_removing_an_unknown_listener_is_a_no_op(
    driver: Driver, register: Callable[[Any], None]
) -> None:
    events = EventLog()
    register(events)
    actionqueues.remove_listener(EventLog())  # never added
    actionqueues.remove_listener(object())  # type: ignore[arg-type]  # not a listener
    q = driver.queue()
    q.add(driver.step([], "a"))

    assert driver.execute(q) is None

    assert len(events.calls) == 4  # the registered one is still there


def _assert_names_missing(excinfo: pytest.ExceptionInfo[TypeError]) -> None:
    message = str(excinfo.value)
    missing = [m for m in METHODS if m not in ("on_queue_started", "on_queue_finished")]
    for name in missing:
        assert name in message
    assert "on_queue_started" not in message
    assert "on_queue_finished" not in message
    assert "BaseListener" in message


def test_add_listener_refuses_an_object_missing_methods(
    driver: Driver, register: Callable[[Any], None]
) -> None:
    with pytest.raises(TypeError, match="is not a listener") as excinfo:
        register(Partial())
    _assert_names_missing(excinfo)
    with pytest.raises(TypeError, match="on_queue_started"):
        register(object())

    q = driver.queue()  # nothing was registered: Partial would fail the test if called
    q.add(driver.step([], "a"))
    assert driver.execute(q) is None


@pytest.mark.parametrize("queue_class", [ActionQueue, AsyncActionQueue])
def test_a_queue_refuses_an_object_missing_methods(queue_class: type[Any]) -> None:
    with pytest.raises(TypeError, match="is not a listener") as excinfo:
        queue_class(listeners=[EventLog(), Partial()])
    _assert_names_missing(excinfo)


# -- failing listeners --------------------------------------------------------


def _every_event_scenario(driver: Driver, listeners: list[Any]) -> dict[str, Any]:
    """A run that fires all ten events; returns what the caller can observe."""
    log: list[str] = []
    sleep = RecordingSleep()
    boom, undo_error = Boom("c failed"), Boom("undo b")
    q = driver.queue(listeners=listeners, sleep=sleep)
    a = q.add(driver.step(log, "a", execute=[ActionRetryException(10)]))
    b = q.add(driver.step(log, "b", rollback=[undo_error]))
    c = q.add(driver.step(log, "c", execute=[boom]))
    error = driver.execute(q)
    report = driver.rollback(q)
    return {
        "error_is_boom": error is boom,
        "log": log,
        "sleeps": sleep.calls,
        "rolled_back": [{a: "a", b: "b", c: "c"}[x] for x in report.rolled_back],
        "failures": [(f.index, f.error is undo_error) for f in report.failures],
    }


def test_the_every_event_scenario_fires_every_event(driver: Driver) -> None:
    events = EventLog()
    _every_event_scenario(driver, [events])
    assert {name for name, _ in events.calls} == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_a_listener_that_raises_is_logged_and_never_breaks_the_queue(
    driver: Driver, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actionqueues")
    baseline_events = EventLog()
    baseline = _every_event_scenario(driver, [baseline_events])
    assert not [r for r in caplog.records if getattr(r, "aq_event", None) == "listener_failed"]
    caplog.clear()

    bad, after = RaisingListener(method), EventLog()
    outcome = _every_event_scenario(driver, [bad, after])

    assert outcome == baseline
    assert outcome["error_is_boom"]
    assert outcome["rolled_back"] == ["c", "a"]
    assert after.calls == baseline_events.calls  # later listeners still hear everything
    failures = [r for r in caplog.records if getattr(r, "aq_event", None) == "listener_failed"]
    assert len(failures) == bad.raised >= 1
    for record in failures:
        assert record.name == "actionqueues"
        assert record.levelno == logging.ERROR
        assert method in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ListenerBoom)


def test_a_global_listener_that_raises_never_breaks_the_queue(
    driver: Driver, register: Callable[[Any], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actionqueues")
    register(RaisingListener("on_action_started"))
    q = driver.queue()
    q.add(driver.step([], "a"))
    q.add(driver.step([], "b"))

    assert driver.execute(q) is None

    failed = [r for r in caplog.records if getattr(r, "aq_event", None) == "listener_failed"]
    assert len(failed) == 2


# -- LoggingListener ----------------------------------------------------------


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int | None]]:
    return [
        (r.levelname, getattr(r, "aq_event", "?"), getattr(r, "aq_step", None))
        for r in caplog.records
        if r.name == "actionqueues"
    ]


def test_debug_logging_records_a_successful_run(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actionqueues")
    q = driver.queue()
    q.add(driver.step([], "a"))
    q.add(driver.step([], "b"))

    assert driver.execute(q) is None
    report = driver.rollback(q)

    assert report.ok
    assert _records(caplog) == [
        ("DEBUG", "queue_started", None),
        ("DEBUG", "action_started", 0),
        ("DEBUG", "action_succeeded", 0),
        ("DEBUG", "action_started", 1),
        ("DEBUG", "action_succeeded", 1),
        ("DEBUG", "queue_finished", None),
        ("DEBUG", "rollback_started", 1),
        ("DEBUG", "rollback_succeeded", 1),
        ("DEBUG", "rollback_started", 0),
        ("DEBUG", "rollback_succeeded", 0),
        ("DEBUG", "queue_rolled_back", None),
    ]
    for record in caplog.records:
        if record.__dict__["aq_event"] in ("queue_started", "queue_finished", "queue_rolled_back"):
            assert not hasattr(record, "aq_step")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "queue started: 2 steps"
    assert messages[-1] == "queue rolled back: 2 steps undone, 0 failed"


def test_debug_logging_records_retries_failures_and_failed_rollbacks(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actionqueues")
    boom, undo_error = Boom("c failed"), Boom("undo b")
    q = driver.queue()
    q.add(driver.step([], "a", execute=[ActionRetryException(500)]))
    q.add(driver.step([], "b", rollback=[undo_error]))
    q.add(driver.step([], "c", execute=[boom]))

    assert driver.execute(q) is boom
    driver.rollback(q)

    assert _records(caplog) == [
        ("DEBUG", "queue_started", None),
        ("DEBUG", "action_started", 0),
        ("WARNING", "retry_scheduled", 0),
        ("DEBUG", "action_succeeded", 0),
        ("DEBUG", "action_started", 1),
        ("DEBUG", "action_succeeded", 1),
        ("DEBUG", "action_started", 2),
        ("DEBUG", "action_failed", 2),
        ("DEBUG", "queue_finished", None),
        ("DEBUG", "rollback_started", 2),
        ("DEBUG", "rollback_succeeded", 2),
        ("DEBUG", "rollback_started", 1),
        ("ERROR", "rollback_failed", 1),
        ("DEBUG", "rollback_started", 0),
        ("DEBUG", "rollback_succeeded", 0),
        ("DEBUG", "queue_rolled_back", None),
    ]
    by_event = {r.__dict__["aq_event"]: r for r in caplog.records}
    assert by_event["retry_scheduled"].__dict__["aq_delay"] == 0.5
    assert by_event["rollback_failed"].exc_info is not None
    assert by_event["rollback_failed"].exc_info[1] is undo_error
    assert by_event["rollback_failed"].__dict__["aq_action"] == "{}('b')".format(
        "SyncStep" if driver.kind == "sync" else "AsyncStep"
    )
    assert "Boom('c failed')" in by_event["queue_finished"].getMessage()


@pytest.fixture
def logging_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every ``on_*`` of LoggingListener by a spy; return the calls it saw."""
    calls: list[str] = []
    for name in METHODS:

        def spy(self: LoggingListener, event: object, name: str = name) -> None:
            calls.append(name)

        monkeypatch.setattr(LoggingListener, name, spy)
    return calls


def test_the_logging_listener_runs_when_debug_is_enabled(
    driver: Driver, caplog: pytest.LogCaptureFixture, logging_spy: list[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="actionqueues")
    q = driver.queue()
    q.add(driver.step([], "a"))

    assert driver.execute(q) is None

    assert logging_spy == [
        "on_queue_started",
        "on_action_started",
        "on_action_succeeded",
        "on_queue_finished",
    ]


@pytest.mark.parametrize("with_listener", [False, True], ids=["bare", "own-listener"])
def test_without_debug_nothing_is_logged_at_debug_and_the_logging_listener_is_idle(
    driver: Driver,
    caplog: pytest.LogCaptureFixture,
    logging_spy: list[str],
    with_listener: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="actionqueues")
    events = EventLog()
    boom, undo_error = Boom("c failed"), Boom("undo b")
    q = driver.queue(listeners=[events] if with_listener else [])
    q.add(driver.step([], "a", execute=[ActionRetryException(0)]))
    q.add(driver.step([], "b", rollback=[undo_error]))
    q.add(driver.step([], "c", execute=[boom]))

    assert driver.execute(q) is boom
    report = driver.rollback(q)

    assert report.errors == (undo_error,)
    assert logging_spy == []
    assert not [r for r in caplog.records if r.levelno == logging.DEBUG]
    # Retries and failed rollbacks are logged whatever the listeners.
    assert _records(caplog) == [
        ("WARNING", "retry_scheduled", 0),
        ("ERROR", "rollback_failed", 1),
    ]
    failed = caplog.records[-1]
    assert failed.exc_info is not None
    assert failed.exc_info[1] is undo_error
    assert len(events.calls) == (16 if with_listener else 0)


def test_retries_log_a_warning_with_structured_fields(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actionqueues")
    flaky = ConnectionError("flaky")
    q = driver.queue(retry=RetryPolicy.fixed(1.5, max_attempts=2))
    q.add(driver.step([], "a"))
    q.add(driver.step([], "b", execute=[flaky]))

    assert driver.execute(q) is None

    (record,) = caplog.records
    assert (record.name, record.levelno) == ("actionqueues", logging.WARNING)
    fields = record.__dict__
    assert (fields["aq_event"], fields["aq_step"], fields["aq_delay"]) == (
        "retry_scheduled",
        1,
        1.5,
    )
    assert "ConnectionError('flaky')" in record.getMessage()
