"""Tests of actionqueues.otel: the OpenTelemetry listener.

Most tests describe a run as a :class:`Script` and play it with a ``driver``:
:func:`drive` sends the events a queue would send to the listener by hand,
:func:`run_real` runs a real ``ActionQueue(listeners=[listener])``. Both must
give the same spans.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

import actionqueues
import actionqueues.otel
from actionqueues import (
    ActionQueue,
    ActionRetryException,
    AsyncActionQueue,
    FunctionStep,
    RollbackFailure,
    RollbackReport,
)
from actionqueues._events import (
    ActionFailed,
    ActionStarted,
    ActionSucceeded,
    Method,
    QueueFinished,
    QueueRolledBack,
    QueueStarted,
    RetryScheduled,
    RollbackFailed,
    RollbackStarted,
    RollbackSucceeded,
)
from actionqueues.otel import OpenTelemetryListener

MISSING_EXTRA = "actionqueues.otel needs the 'otel' extra: pip install 'actionqueues[otel]'"


# -- scripts and drivers ------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What one action does: retries (their delays in seconds), then maybe fails."""

    retries: tuple[float, ...] = ()
    error: Exception | None = None
    rollback_retries: tuple[float, ...] = ()
    rollback_error: Exception | None = None


@dataclass(frozen=True)
class Script:
    """A queue's steps, and whether the caller rolls it back after ``execute()``."""

    steps: tuple[Step, ...]
    rollback: bool = False


class Scripted:
    """An action that follows a :class:`Step` (used by both drivers)."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.calls = {"execute": 0, "rollback": 0}

    def _call(self, method: str, retries: tuple[float, ...], error: Exception | None) -> None:
        done = self.calls[method]
        self.calls[method] += 1
        if done < len(retries):
            raise ActionRetryException(ms_backoff=retries[done] * 1000)
        if error is not None:
            raise error

    def execute(self) -> None:
        self._call("execute", self.step.retries, self.step.error)

    def rollback(self) -> None:
        self._call("rollback", self.step.rollback_retries, self.step.rollback_error)


class FakeQueue:
    """Stands for a queue in hand-made events (weakly referenceable, like a queue)."""


class SlotsQueue:
    """A queue object that cannot be weakly referenced."""

    __slots__ = ()


Driver = Callable[[OpenTelemetryListener, Script], object]


def drive(listener: OpenTelemetryListener, script: Script, queue: object | None = None) -> object:
    """Send ``listener`` the events a queue running ``script`` sends; return the queue."""
    queue = FakeQueue() if queue is None else queue
    actions = [Scripted(step) for step in script.steps]
    listener.on_queue_started(QueueStarted(queue, len(actions)))
    started: list[tuple[int, Scripted]] = []
    error: Exception | None = None
    for index, action in enumerate(actions):
        started.append((index, action))
        listener.on_action_started(ActionStarted(queue, index, action))
        _drive_retries(listener, queue, index, action, "execute", action.step.retries)
        attempts = len(action.step.retries) + 1
        if action.step.error is not None:
            error = action.step.error
            listener.on_action_failed(ActionFailed(queue, index, action, error, attempts))
            break
        listener.on_action_succeeded(ActionSucceeded(queue, index, action, attempts, 0.001))
    listener.on_queue_finished(QueueFinished(queue, error, 0.01))
    if script.rollback:
        rolled_back: list[object] = []
        failures: list[RollbackFailure] = []
        for index, action in reversed(started):
            listener.on_rollback_started(RollbackStarted(queue, index, action))
            step = action.step
            _drive_retries(listener, queue, index, action, "rollback", step.rollback_retries)
            attempts = len(step.rollback_retries) + 1
            if step.rollback_error is not None:
                failures.append(RollbackFailure(index, action, step.rollback_error))
                listener.on_rollback_failed(
                    RollbackFailed(queue, index, action, step.rollback_error, attempts)
                )
            else:
                rolled_back.append(action)
                listener.on_rollback_succeeded(RollbackSucceeded(queue, index, action, attempts))
        report = RollbackReport(tuple(rolled_back), tuple(failures))
        listener.on_queue_rolled_back(QueueRolledBack(queue, report))
    return queue


def _drive_retries(
    listener: OpenTelemetryListener,
    queue: object,
    index: int,
    action: object,
    method: Method,
    delays: Sequence[float],
) -> None:
    for attempt, delay in enumerate(delays, start=1):
        signal = ActionRetryException(ms_backoff=delay * 1000)
        listener.on_retry_scheduled(
            RetryScheduled(queue, index, action, method, attempt, delay, signal)
        )


def run_real(listener: OpenTelemetryListener, script: Script) -> object:
    """Run ``script`` on a real ``ActionQueue(listeners=[listener])``; return the queue."""
    queue = ActionQueue(sleep=lambda seconds: None, listeners=[listener])
    for step in script.steps:
        queue.add(Scripted(step))
    try:
        queue.execute()
    except Exception as error:
        error.__traceback__ = None  # don't keep this frame, and the queue, alive
    if script.rollback:
        queue.rollback()
    return queue


@pytest.fixture(params=[drive, run_real], ids=["fake", "real"])
def driver(request: pytest.FixtureRequest) -> Driver:
    result: Driver = request.param
    return result


# -- span helpers -------------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    span_exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    return span_exporter


@pytest.fixture
def listener(provider: TracerProvider, exporter: InMemorySpanExporter) -> OpenTelemetryListener:
    return OpenTelemetryListener(provider)


@dataclass
class Spans:
    """The finished spans, in the order they started."""

    all: list[ReadableSpan] = field(default_factory=list)

    @classmethod
    def of(cls, exporter: InMemorySpanExporter) -> Spans:
        return cls(sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0))

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.all if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def exception_events(span: ReadableSpan) -> list[dict[str, object]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "exception"]


def states(listener: OpenTelemetryListener) -> dict[int, object]:
    with listener._lock:
        listener._purge()
        return dict(listener._states)


# -- runs -----------------------------------------------------------------------


def test_successful_run_gives_a_queue_span_with_a_child_per_step(
    driver: Driver, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue = driver(listener, Script((Step(), Step())))

    spans = Spans.of(exporter)
    assert [s.name for s in spans.all] == [
        "actionqueues.queue",
        "actionqueues.execute",
        "actionqueues.execute",
    ]
    root = spans.one("actionqueues.queue")
    assert root.parent is None
    assert root.status.status_code is StatusCode.UNSET
    assert attrs(root) == {
        "actionqueues.queue": type(queue).__qualname__,
        "actionqueues.actions": 2,
    }
    for index, step in enumerate(spans.named("actionqueues.execute")):
        assert trace_id(step) == trace_id(root)
        assert parent_id(step) == span_id(root)
        assert step.status.status_code is StatusCode.UNSET
        assert attrs(step) == {
            "actionqueues.step": index,
            "actionqueues.action": "Scripted",
            "actionqueues.attempts": 1,
        }
        assert step.events == ()
    assert root.end_time is not None
    assert all(s.end_time is not None and s.end_time <= root.end_time for s in spans.all)


def test_retries_are_events_of_the_step_span(
    driver: Driver, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    driver(listener, Script((Step(retries=(0.25, 0.5)),)))

    step = Spans.of(exporter).one("actionqueues.execute")
    assert attrs(step)["actionqueues.attempts"] == 3
    assert step.status.status_code is StatusCode.UNSET
    assert [e.name for e in step.events] == ["retry", "retry"]
    first, second = (dict(e.attributes or {}) for e in step.events)
    assert first["actionqueues.attempt"] == 1
    assert first["actionqueues.delay_s"] == 0.25
    assert second["actionqueues.attempt"] == 2
    assert second["actionqueues.delay_s"] == 0.5
    assert str(first["exception.type"]).endswith("ActionRetryException")
    assert first["exception.message"] == str(ActionRetryException(250.0))


def test_failed_step_and_queue_have_error_status_and_the_exception(
    driver: Driver, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    boom = ValueError("boom")
    driver(listener, Script((Step(), Step(retries=(0.0,), error=boom), Step())))

    spans = Spans.of(exporter)
    ok, failed = spans.named("actionqueues.execute")  # the third step never started
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: boom"
    assert attrs(failed)["actionqueues.attempts"] == 2
    assert [e.name for e in failed.events] == ["retry", "exception"]
    (recorded,) = exception_events(failed)
    assert recorded["exception.type"] == "ValueError"
    assert recorded["exception.message"] == "boom"
    root = spans.one("actionqueues.queue")
    assert root.status.status_code is StatusCode.ERROR
    assert [e["exception.message"] for e in exception_events(root)] == ["boom"]
    assert not spans.named("actionqueues.rollback")


def test_rollback_is_a_child_of_the_ended_queue_span(
    driver: Driver, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    undo_failed = OSError("cannot undo")
    script = Script(
        (Step(), Step(rollback_error=undo_failed), Step(error=ValueError("boom")), Step()),
        rollback=True,
    )
    driver(listener, script)

    spans = Spans.of(exporter)
    root = spans.one("actionqueues.queue")
    rollback = spans.one("actionqueues.rollback")
    assert trace_id(rollback) == trace_id(root)
    assert parent_id(rollback) == span_id(root)
    assert root.end_time is not None
    assert rollback.start_time is not None
    assert rollback.start_time >= root.end_time
    assert rollback.status.status_code is StatusCode.ERROR
    assert rollback.status.description == "1 of 3 rollbacks failed"
    assert attrs(rollback) == {"actionqueues.rolled_back": 2, "actionqueues.rollback_failures": 1}

    steps = spans.named("actionqueues.rollback_step")
    assert [attrs(s)["actionqueues.step"] for s in steps] == [2, 1, 0]  # newest first
    for step in steps:
        assert trace_id(step) == trace_id(root)
        assert parent_id(step) == span_id(rollback)
        assert attrs(step)["actionqueues.attempts"] == 1
    assert [s.status.status_code for s in steps] == [
        StatusCode.UNSET,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [e["exception.message"] for e in exception_events(steps[1])] == ["cannot undo"]
    assert steps[1].status.description == "OSError: cannot undo"


def test_rollback_retries_are_events_of_the_rollback_step_span(
    driver: Driver, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    driver(listener, Script((Step(rollback_retries=(0.125,)),), rollback=True))

    spans = Spans.of(exporter)
    (retry,) = spans.one("actionqueues.rollback_step").events
    assert retry.name == "retry"
    assert dict(retry.attributes or {})["actionqueues.delay_s"] == 0.125
    assert attrs(spans.one("actionqueues.rollback_step"))["actionqueues.attempts"] == 2
    assert spans.one("actionqueues.execute").events == ()
    rollback = spans.one("actionqueues.rollback")
    assert rollback.status.status_code is StatusCode.UNSET
    assert attrs(rollback) == {"actionqueues.rolled_back": 1, "actionqueues.rollback_failures": 0}


def test_rollback_of_a_queue_that_started_nothing(
    driver: Driver, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    driver(listener, Script((), rollback=True))

    spans = Spans.of(exporter)
    assert [s.name for s in spans.all] == ["actionqueues.queue", "actionqueues.rollback"]
    rollback = spans.one("actionqueues.rollback")
    assert parent_id(rollback) == span_id(spans.one("actionqueues.queue"))
    assert attrs(rollback) == {"actionqueues.rolled_back": 0, "actionqueues.rollback_failures": 0}


def test_queue_span_is_a_child_of_the_current_span(
    driver: Driver,
    provider: TracerProvider,
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
) -> None:
    with provider.get_tracer("caller").start_as_current_span("caller") as caller:
        driver(listener, Script((Step(),)))

    root = Spans.of(exporter).one("actionqueues.queue")
    assert parent_id(root) == caller.get_span_context().span_id


# -- state ----------------------------------------------------------------------


def test_state_is_dropped_after_rollback(driver: Driver, listener: OpenTelemetryListener) -> None:
    queue = driver(listener, Script((Step(), Step(error=ValueError("boom"))), rollback=True))

    assert states(listener) == {}
    assert listener._unreferenced == {}
    del queue


def test_state_is_kept_until_the_queue_is_collected(
    driver: Driver, listener: OpenTelemetryListener
) -> None:
    queue = driver(listener, Script((Step(), Step())))
    assert list(states(listener)) == [id(queue)]

    del queue
    gc.collect()

    assert states(listener) == {}, "queues must support weak references"


def test_collected_queue_is_forgotten_later_if_the_lock_is_busy(
    listener: OpenTelemetryListener,
) -> None:
    queue = drive(listener, Script((Step(),)))
    with listener._lock:
        del queue
        gc.collect()
        assert len(listener._states) == 1
        assert len(listener._collected) == 1
    listener.on_action_started(ActionStarted(FakeQueue(), 0, Scripted(Step())))  # purges
    assert listener._states == {}
    assert listener._collected == []


def test_a_collected_queue_does_not_forget_a_new_queue_with_its_id(
    listener: OpenTelemetryListener,
) -> None:
    old = drive(listener, Script(()))
    key = id(old)
    newer = drive(listener, Script(()))
    with listener._lock:
        del old
        gc.collect()
        # A new queue reusing the id was tracked before the removal ran.
        listener._states[key] = listener._states[id(newer)]
    assert states(listener).keys() == {key, id(newer)}


def test_unreferenceable_queue_is_tracked_by_id_until_rollback(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue = drive(listener, Script((Step(),)), SlotsQueue())
    assert list(states(listener)) == [id(queue)]
    assert list(listener._unreferenced) == [id(queue)]

    drive(listener, Script((Step(),), rollback=True), queue)  # run again, as a new queue would

    assert states(listener) == {}
    assert listener._unreferenced == {}
    spans = Spans.of(exporter)
    root = spans.named("actionqueues.queue")[-1]
    assert parent_id(spans.one("actionqueues.rollback")) == span_id(root)


def test_only_the_latest_unreferenceable_queues_are_remembered(
    monkeypatch: pytest.MonkeyPatch,
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
) -> None:
    monkeypatch.setattr(actionqueues.otel, "_MAX_UNREFERENCEABLE", 2)
    queues = [drive(listener, Script((Step(),)), SlotsQueue()) for _ in range(3)]

    assert list(listener._unreferenced) == [id(q) for q in queues[1:]]
    assert states(listener).keys() == {id(q) for q in queues[1:]}

    # The forgotten queue's rollback still gets spans, in a trace of its own.
    listener.on_queue_rolled_back(QueueRolledBack(queues[0], RollbackReport((), ())))
    rollback = Spans.of(exporter).one("actionqueues.rollback")
    assert rollback.parent is None
    assert states(listener).keys() == {id(q) for q in queues[1:]}


# -- odd event sequences --------------------------------------------------------


def test_events_of_an_unknown_queue_are_ignored(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue, action, error = FakeQueue(), Scripted(Step()), ValueError("x")
    listener.on_action_started(ActionStarted(queue, 0, action))
    listener.on_retry_scheduled(RetryScheduled(queue, 0, action, "execute", 1, 0.0, error))
    listener.on_action_succeeded(ActionSucceeded(queue, 0, action, 1, 0.0))
    listener.on_action_failed(ActionFailed(queue, 0, action, error, 1))
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))
    listener.on_rollback_succeeded(RollbackSucceeded(queue, 0, action, 1))
    listener.on_rollback_failed(RollbackFailed(queue, 0, action, error, 1))

    assert exporter.get_finished_spans() == ()
    assert states(listener) == {}


def test_events_of_a_step_that_is_not_open_are_ignored(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue, action, error = FakeQueue(), Scripted(Step()), ValueError("x")
    listener.on_queue_started(QueueStarted(queue, 1))
    listener.on_retry_scheduled(RetryScheduled(queue, 0, action, "execute", 1, 0.0, error))
    listener.on_action_succeeded(ActionSucceeded(queue, 0, action, 1, 0.0))
    listener.on_action_failed(ActionFailed(queue, 0, action, error, 1))
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))  # a second one too

    assert [s.name for s in exporter.get_finished_spans()] == ["actionqueues.queue"]


def test_rollback_without_a_recorded_run_starts_its_own_trace(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue, action = FakeQueue(), Scripted(Step())
    listener.on_rollback_started(RollbackStarted(queue, 0, action))
    listener.on_rollback_succeeded(RollbackSucceeded(queue, 0, action, 1))
    listener.on_queue_rolled_back(QueueRolledBack(queue, RollbackReport((action,), ())))

    spans = Spans.of(exporter)
    assert [s.name for s in spans.all] == ["actionqueues.rollback", "actionqueues.rollback_step"]
    assert spans.one("actionqueues.rollback").parent is None
    assert parent_id(spans.one("actionqueues.rollback_step")) == span_id(
        spans.one("actionqueues.rollback")
    )
    assert states(listener) == {}


@pytest.mark.parametrize(
    ("error", "status"),
    [(KeyboardInterrupt(), StatusCode.ERROR), (None, StatusCode.UNSET)],
    ids=["interrupted", "no-error"],
)
def test_steps_left_open_end_with_the_queue(
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
    error: BaseException | None,
    status: StatusCode,
) -> None:
    queue, action = FakeQueue(), Scripted(Step())
    listener.on_queue_started(QueueStarted(queue, 1))
    listener.on_action_started(ActionStarted(queue, 0, action))
    listener.on_queue_finished(QueueFinished(queue, error, 0.0))

    spans = Spans.of(exporter)
    assert spans.one("actionqueues.execute").status.status_code is status
    assert spans.one("actionqueues.queue").status.status_code is status
    if error is not None:
        (recorded,) = exception_events(spans.one("actionqueues.execute"))
        assert recorded["exception.type"] == "KeyboardInterrupt"


def test_rollback_steps_left_open_end_with_the_rollback(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue, action = FakeQueue(), Scripted(Step())
    listener.on_queue_started(QueueStarted(queue, 1))
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))
    listener.on_rollback_started(RollbackStarted(queue, 0, action))
    listener.on_queue_rolled_back(QueueRolledBack(queue, RollbackReport((), ())))

    spans = Spans.of(exporter)
    assert spans.one("actionqueues.rollback_step").end_time is not None
    assert states(listener) == {}


def test_parallel_steps_from_many_threads(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue, members = FakeQueue(), [Scripted(Step()) for _ in range(32)]
    listener.on_queue_started(QueueStarted(queue, 1))
    barrier = threading.Barrier(len(members))

    def member(index: int, action: Scripted) -> None:
        barrier.wait()
        listener.on_action_started(ActionStarted(queue, index, action))
        listener.on_retry_scheduled(
            RetryScheduled(queue, index, action, "execute", 1, 0.0, ValueError(index))
        )
        listener.on_action_succeeded(ActionSucceeded(queue, index, action, 2, 0.0))

    threads = [threading.Thread(target=member, args=item) for item in enumerate(members)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))

    spans = Spans.of(exporter)
    root = spans.one("actionqueues.queue")
    steps = spans.named("actionqueues.execute")
    assert sorted(int(str(attrs(s)["actionqueues.step"])) for s in steps) == list(range(32))
    assert all(parent_id(s) == span_id(root) and len(s.events) == 1 for s in steps)


def test_default_provider_is_the_global_one(driver: Driver) -> None:
    listener = OpenTelemetryListener(tracer_name="my.app")
    driver(listener, Script((Step(), Step(error=ValueError("boom"))), rollback=True))
    assert states(listener) == {}


# -- the optional dependency ----------------------------------------------------


def test_import_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "actionqueues.otel")

    with pytest.raises(ImportError, match=re.escape(MISSING_EXTRA)) as info:
        importlib.import_module("actionqueues.otel")

    assert str(info.value) == MISSING_EXTRA
    assert isinstance(info.value.__cause__, ImportError)


def test_fresh_import_without_opentelemetry_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import actionqueues.otel\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == MISSING_EXTRA


def test_parallel_group_of_a_real_queue(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    members = [Scripted(Step(retries=(0.0,) * (i % 3))) for i in range(12)]
    queue = ActionQueue(sleep=lambda seconds: None, listeners=[listener])
    queue.add_group(members, max_workers=4, rollback_concurrently=True)
    queue.add(Scripted(Step(error=ValueError("boom"))))
    with pytest.raises(ValueError, match="boom"):
        queue.execute()
    queue.rollback()

    spans = Spans.of(exporter)
    root = spans.one("actionqueues.queue")
    rollback = spans.one("actionqueues.rollback")
    executes = spans.named("actionqueues.execute")
    assert [attrs(s)["actionqueues.step"] for s in executes].count(0) == 12
    assert all(parent_id(s) == span_id(root) for s in executes)
    retries = [e for s in executes for e in s.events if e.name == "retry"]
    assert len(retries) == sum(i % 3 for i in range(12))
    assert [s.status.status_code for s in executes].count(StatusCode.ERROR) == 1
    steps = spans.named("actionqueues.rollback_step")
    assert len(steps) == 13
    assert all(parent_id(s) == span_id(rollback) for s in steps)
    assert attrs(rollback) == {"actionqueues.rolled_back": 13, "actionqueues.rollback_failures": 0}
    assert states(listener) == {}


def test_concurrent_rollback_steps_share_one_rollback_span(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue, members = FakeQueue(), [Scripted(Step()) for _ in range(32)]
    listener.on_queue_started(QueueStarted(queue, 1))
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))
    barrier = threading.Barrier(len(members))

    def member(action: Scripted) -> None:
        barrier.wait()
        listener.on_rollback_started(RollbackStarted(queue, 0, action))
        listener.on_rollback_succeeded(RollbackSucceeded(queue, 0, action, 1))

    threads = [threading.Thread(target=member, args=(action,)) for action in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listener.on_queue_rolled_back(QueueRolledBack(queue, RollbackReport(tuple(members), ())))

    spans = Spans.of(exporter)
    rollback = spans.one("actionqueues.rollback")
    steps = spans.named("actionqueues.rollback_step")
    assert len(steps) == 32
    assert all(parent_id(s) == span_id(rollback) for s in steps)


def test_parallel_group_rolling_back_concurrently_on_a_real_queue(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    members = [Scripted(Step(error=ValueError("boom") if i == 5 else None)) for i in range(12)]
    queue = ActionQueue(sleep=lambda seconds: None, listeners=[listener])
    queue.add(Scripted(Step()))
    queue.add_group(members, max_workers=6, rollback_concurrently=True)
    with pytest.raises(ValueError, match="boom"):
        queue.execute()
    queue.rollback()

    spans = Spans.of(exporter)
    rollback = spans.one("actionqueues.rollback")
    steps = spans.named("actionqueues.rollback_step")
    assert len(steps) == len(spans.named("actionqueues.execute"))
    assert all(parent_id(s) == span_id(rollback) for s in steps)
    assert attrs(steps[-1])["actionqueues.step"] == 0
    assert states(listener) == {}


# -- the step span is the current span while the action runs --------------------


class Traced:
    """An action starting a span of its own (named after the call) in each method."""

    def __init__(
        self, tracer: Tracer, label: str, *, fail: bool = False, fail_rollback: bool = False
    ) -> None:
        self.tracer, self.label = tracer, label
        self.fail, self.fail_rollback = fail, fail_rollback
        self.barrier: threading.Barrier | None = None

    def _work(self, method: str, fail: bool) -> None:
        if self.barrier is not None:
            self.barrier.wait(timeout=10)  # the members of a group run at the same time
        with self.tracer.start_as_current_span(f"{method} {self.label}"):
            pass
        if fail:
            raise ValueError(f"{method} {self.label} failed")

    def execute(self) -> None:
        self._work("execute", self.fail)

    def rollback(self) -> None:
        self._work("rollback", self.fail_rollback)


class AsyncTraced(Traced):
    """A :class:`Traced` action with coroutine methods that let other tasks run."""

    async def _work_async(self, method: str, fail: bool) -> None:
        with self.tracer.start_as_current_span(f"{method} {self.label}"):
            await asyncio.sleep(0)  # other group members run meanwhile
        await asyncio.sleep(0)
        if fail:
            raise ValueError(f"{method} {self.label} failed")

    async def execute(self) -> None:  # type: ignore[override]
        await self._work_async("execute", self.fail)

    async def rollback(self) -> None:  # type: ignore[override]
        await self._work_async("rollback", self.fail_rollback)


def traced(cls: type[Traced], tracer: Tracer, label: str, **kwargs: bool) -> Traced:
    """A ``cls`` action of a class named ``label``: its step spans say which it is."""
    action: Traced = type(label, (cls,), {})(tracer, label, **kwargs)
    return action


def parent_of(spans: Spans, name: str) -> ReadableSpan:
    (inner,) = spans.named(name)
    (parent,) = [s for s in spans.all if span_id(s) == parent_id(inner)]
    return parent


def assert_step_parents(spans: Spans, labels: Sequence[str], *, rolled_back: bool) -> None:
    """Each action's own span is a child of its own step span."""
    methods = {"execute": "actionqueues.execute"}
    if rolled_back:
        methods["rollback"] = "actionqueues.rollback_step"
    for label in labels:
        for method, step_name in methods.items():
            parent = parent_of(spans, f"{method} {label}")
            assert (parent.name, attrs(parent)["actionqueues.action"]) == (step_name, label)


def no_current_span() -> bool:
    return not trace.get_current_span().get_span_context().is_valid


@pytest.fixture
def tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("app")


@pytest.fixture
def otel_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The errors OpenTelemetry logged (a failed detach logs one)."""
    caplog.set_level(logging.DEBUG)

    def errors() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING
        ]

    return errors


def test_spans_of_an_action_are_children_of_its_step_span(
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
    tracer: Tracer,
    otel_errors: Callable[[], list[str]],
) -> None:
    with tracer.start_as_current_span("caller") as caller:
        queue = ActionQueue(sleep=lambda seconds: None, listeners=[listener])
        queue.add(traced(Traced, tracer, "A"))
        queue.add(traced(Traced, tracer, "B", fail=True, fail_rollback=True))
        with pytest.raises(ValueError, match="execute B failed"):
            queue.execute()
        assert trace.get_current_span() is caller
        with tracer.start_as_current_span("between"):
            pass
        report = queue.rollback()
        assert trace.get_current_span() is caller
        with tracer.start_as_current_span("after"):
            pass
    assert no_current_span()

    assert len(report.failures) == 1
    spans = Spans.of(exporter)
    assert_step_parents(spans, ["A", "B"], rolled_back=True)
    assert parent_id(spans.one("between")) == span_id(spans.one("caller"))
    assert parent_id(spans.one("after")) == span_id(spans.one("caller"))
    assert otel_errors() == []


def test_spans_of_an_action_without_a_caller_span(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    queue = ActionQueue(listeners=[listener])
    queue.add(traced(Traced, tracer, "A"))
    queue.execute()
    assert no_current_span()
    queue.rollback()
    assert no_current_span()

    assert_step_parents(Spans.of(exporter), ["A"], rolled_back=True)


@pytest.mark.parametrize("concurrently", [True, False], ids=["concurrent", "sequential"])
def test_spans_of_parallel_group_members_in_threads(
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
    tracer: Tracer,
    otel_errors: Callable[[], list[str]],
    concurrently: bool,
) -> None:
    labels = [f"Member{i}" for i in range(6)]
    barrier = threading.Barrier(len(labels))
    members = [
        traced(Traced, tracer, label, fail_rollback=i % 2 == 0) for i, label in enumerate(labels)
    ]
    for member in members:
        member.barrier = barrier
    with tracer.start_as_current_span("caller") as caller:
        queue = ActionQueue(sleep=lambda seconds: None, listeners=[listener])
        queue.add(traced(Traced, tracer, "First", fail_rollback=True))
        queue.add_group(members, max_workers=len(members), rollback_concurrently=concurrently)
        queue.add(traced(Traced, tracer, "Last", fail=True))
        with pytest.raises(ValueError, match="execute Last failed"):
            queue.execute()
        assert trace.get_current_span() is caller
        if not concurrently:
            for member in members:
                member.barrier = None
        report = queue.rollback()
        assert trace.get_current_span() is caller
        with tracer.start_as_current_span("after"):
            pass

    assert len(report.failures) == 4  # First and every other member
    spans = Spans.of(exporter)
    assert_step_parents(spans, ["First", *labels], rolled_back=True)
    assert parent_of(spans, "execute Last").name == "actionqueues.execute"
    assert parent_id(spans.one("after")) == span_id(spans.one("caller"))
    assert otel_errors() == []


@pytest.mark.parametrize("concurrently", [True, False], ids=["concurrent", "sequential"])
def test_spans_of_actions_in_an_async_queue(
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
    tracer: Tracer,
    otel_errors: Callable[[], list[str]],
    concurrently: bool,
) -> None:
    labels = [f"Member{i}" for i in range(4)]

    async def main() -> None:
        with tracer.start_as_current_span("caller") as caller:
            queue = AsyncActionQueue(listeners=[listener])
            queue.add(traced(AsyncTraced, tracer, "First"))
            queue.add_group(
                [
                    traced(AsyncTraced, tracer, label, fail_rollback=i % 2 == 0)
                    for i, label in enumerate(labels)
                ],
                rollback_concurrently=concurrently,
            )
            queue.add(traced(AsyncTraced, tracer, "Last", fail=True))
            with pytest.raises(ValueError, match="execute Last failed"):
                await queue.execute()
            assert trace.get_current_span() is caller
            report = await queue.rollback()
            assert trace.get_current_span() is caller
            assert len(report.failures) == 2
            with tracer.start_as_current_span("after"):
                pass

    asyncio.run(main())

    spans = Spans.of(exporter)
    assert_step_parents(spans, ["First", *labels], rolled_back=True)
    assert parent_of(spans, "execute Last").name == "actionqueues.execute"
    assert parent_id(spans.one("after")) == span_id(spans.one("caller"))
    assert otel_errors() == []


def test_two_listeners_on_one_queue_restore_the_context(
    provider: TracerProvider, exporter: InMemorySpanExporter, tracer: Tracer
) -> None:
    first, second = OpenTelemetryListener(provider), OpenTelemetryListener(provider)
    queue = ActionQueue(listeners=[first, second])
    queue.add(traced(Traced, tracer, "A"))
    queue.execute()
    assert no_current_span()

    spans = Spans.of(exporter)
    steps = spans.named("actionqueues.execute")
    assert len(steps) == 2
    assert parent_id(spans.one("execute A")) == span_id(steps[-1])  # the newer one


def test_a_step_ended_in_a_copied_context_is_detached_where_it_was_attached(
    listener: OpenTelemetryListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="actionqueues.otel")
    queue, first, second = FakeQueue(), Scripted(Step()), Scripted(Step())
    listener.on_queue_started(QueueStarted(queue, 2))
    listener.on_action_started(ActionStarted(queue, 0, first))
    step_span = trace.get_current_span()
    assert step_span.get_span_context().is_valid

    succeeded = ActionSucceeded(queue, 0, first, 1, 0.0)
    contextvars.copy_context().run(listener.on_action_succeeded, succeeded)

    assert trace.get_current_span() is step_span  # the copy could not detach it
    assert "left to the context that attached it" in caplog.text
    listener.on_action_started(ActionStarted(queue, 1, second))
    listener.on_action_succeeded(ActionSucceeded(queue, 1, second, 1, 0.0))
    assert no_current_span()  # detached with the next step that ended here
    listener.on_queue_finished(QueueFinished(queue, None, 0.0))


def test_steps_left_open_are_detached_with_the_queue_or_rollback(
    listener: OpenTelemetryListener,
) -> None:
    queue, action = FakeQueue(), Scripted(Step())
    listener.on_queue_started(QueueStarted(queue, 1))
    listener.on_action_started(ActionStarted(queue, 0, action))
    assert not no_current_span()
    listener.on_queue_finished(QueueFinished(queue, KeyboardInterrupt(), 0.0))
    assert no_current_span()

    listener.on_rollback_started(RollbackStarted(queue, 0, action))
    assert not no_current_span()
    listener.on_queue_rolled_back(QueueRolledBack(queue, RollbackReport((), ())))
    assert no_current_span()


def test_a_detach_error_is_logged_at_debug_and_not_raised(
    monkeypatch: pytest.MonkeyPatch,
    listener: OpenTelemetryListener,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="actionqueues.otel")

    def broken(token: object) -> None:
        raise RuntimeError("no detach")

    monkeypatch.setattr(otel_context, "detach", broken)

    def run() -> None:  # in a copy of the context: what stays attached is dropped with it
        queue = ActionQueue(listeners=[listener])
        queue.add(Scripted(Step()))
        queue.execute()

    contextvars.copy_context().run(run)

    (record,) = [r for r in caplog.records if r.name == "actionqueues.otel"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "could not detach the step span's context"
    assert [s.name for s in Spans.of(exporter).all] == [
        "actionqueues.queue",
        "actionqueues.execute",
    ]


# -- the action attribute of function steps -------------------------------------


def plain_function() -> int:
    return 1


@actionqueues.step
def decorated_step(value: int) -> int:
    return value


class CallableObject:
    def __call__(self) -> None:
        pass


def test_function_steps_are_named_by_their_name(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    queue = ActionQueue(listeners=[listener])
    named: list[FunctionStep[Any]] = [
        queue.add(plain_function),
        queue.add(decorated_step(2)),
        queue.add(lambda: None),
        queue.add(FunctionStep(plain_function, name="charge card")),
    ]
    without_name: list[FunctionStep[Any]] = [
        FunctionStep(plain_function),
        FunctionStep(CallableObject()),
    ]
    for function_step in without_name:
        del function_step.name  # as a step made before steps had names
        queue.add(function_step)
    queue.execute()

    spans = Spans.of(exporter).named("actionqueues.execute")
    assert [attrs(s)["actionqueues.action"] for s in spans] == [
        "plain_function",
        "decorated_step",
        "test_function_steps_are_named_by_their_name.<locals>.<lambda>",
        "charge card",
        "plain_function",
        "CallableObject",
    ]
    assert [s.name for s in named] == [attrs(s)["actionqueues.action"] for s in spans[:4]]
