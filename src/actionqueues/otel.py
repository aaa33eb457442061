"""OpenTelemetry tracing for action queues (the ``actionqueues[otel]`` extra).

:class:`OpenTelemetryListener` turns a queue's lifecycle events into spans,
using only the OpenTelemetry API; install an SDK (``opentelemetry-sdk``) and an
exporter to see them. Each run gives this trace::

    actionqueues.queue                 execute(): status ERROR if it raised
    ├── actionqueues.execute           one per step; a "retry" event per retry
    ├── actionqueues.execute
    └── actionqueues.rollback          rollback(), if called: ERROR if a step failed
        ├── actionqueues.rollback_step one per started step, newest first
        └── actionqueues.rollback_step

The queue span is a child of the span that is current when ``execute()`` is
called. The rollback span is a child of the queue span even though that span
has already ended, so one trace shows the run and its rollback. While an
action runs, its step span is the current span, so the spans it creates
itself (an HTTP call, a database query) are children of its step span.

Example:
    Give the listener to a queue (or to every queue with
    :func:`actionqueues.add_listener`)::

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        from actionqueues import ActionQueue
        from actionqueues.otel import OpenTelemetryListener

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        listener = OpenTelemetryListener(provider)  # or OpenTelemetryListener() for the global one

        queue = ActionQueue(listeners=[listener])
        queue.add(CreateUser())
        queue.add(SendWelcomeMail())
        try:
            queue.execute()
        except Exception:
            queue.rollback()

Importing this module without OpenTelemetry installed raises
:class:`ImportError` naming the extra to install.
"""

from __future__ import annotations

import logging
import threading
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING

try:
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, Status, StatusCode
except ImportError as exc:
    raise ImportError(
        "actionqueues.otel needs the 'otel' extra: pip install 'actionqueues[otel]'",
        name=exc.name,
    ) from exc

from ._events import (
    ActionFailed,
    ActionStarted,
    ActionSucceeded,
    BaseListener,
    QueueFinished,
    QueueRolledBack,
    QueueStarted,
    RetryScheduled,
    RollbackFailed,
    RollbackStarted,
    RollbackSucceeded,
)
from ._steps import FunctionStep
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["OpenTelemetryListener"]

_QUEUE_SPAN = "actionqueues.queue"
_EXECUTE_SPAN = "actionqueues.execute"
_ROLLBACK_SPAN = "actionqueues.rollback"
_ROLLBACK_STEP_SPAN = "actionqueues.rollback_step"
_RETRY_EVENT = "retry"

logger = logging.getLogger(__name__)

# The states of queues that cannot be weakly referenced (see _new_state) are kept
# after execute() for at most this many queues, the oldest being dropped first.
_MAX_UNREFERENCEABLE = 1024

# One open execute or rollback_step span: (method, step index, id(action)). The
# action is alive while its span is open, so its id cannot be reused meanwhile.
_StepKey = tuple[str, int, int]


class _Step:
    """One open step span, made the current span in this context until it ends.

    Each context (a thread's, an asyncio task's, a ``contextvars`` copy) keeps
    the steps it attached in :data:`_ATTACHED`, oldest first. A step ending is
    marked ended; its context is detached when nothing newer is attached above
    it, so that contexts are always detached newest first, even when the queue
    reports a group member's rollback failure after the next member started.
    A step that ends in another context (a group member whose failure the
    queue reports from its own thread or task) is detached by its context
    when a step ends there next, or not at all if that context is gone.
    """

    __slots__ = ("ended", "pushed", "span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.ended = False
        self.token = context.attach(trace.set_span_in_context(span))
        self.pushed = _ATTACHED.set((*_ATTACHED.get(), self))


_ATTACHED: ContextVar[tuple[_Step, ...]] = ContextVar("actionqueues_otel_steps", default=())


def _end(step: _Step) -> None:
    """Mark the step ended; detach the ended steps at the top of this context's stack."""
    step.ended = True
    stack = _ATTACHED.get()
    while stack and stack[-1].ended:
        top = stack[-1]
        try:
            _ATTACHED.reset(top.pushed)
        except Exception:
            # Attached in the context this one was copied from: only that one
            # can detach it (and OpenTelemetry's detach would log an error).
            logger.debug("step span context left to the context that attached it")
            return
        try:
            context.detach(top.token)
        except Exception:
            logger.debug("could not detach the step span's context", exc_info=True)
        stack = _ATTACHED.get()


class _QueueState:
    """What the listener remembers about one queue."""

    __slots__ = ("context", "ref", "rollback", "rollback_context", "span", "steps")

    def __init__(self, ref: weakref.KeyedRef[int, object] | None, span: Span | None) -> None:
        self.ref = ref
        # The open queue span (None once it ended) and a context whose current
        # span is the queue span: the parent of the step and rollback spans.
        self.span = span
        self.context: Context | None = None if span is None else trace.set_span_in_context(span)
        self.rollback: Span | None = None
        self.rollback_context: Context | None = None
        self.steps: dict[_StepKey, _Step] = {}


class OpenTelemetryListener(BaseListener):
    """A queue listener that records each run and rollback as OpenTelemetry spans.

    Spans and their attributes:

    * ``actionqueues.queue``, from ``execute()``'s start to its end, with
      ``actionqueues.queue`` (the queue's class name) and ``actionqueues.actions``
      (its number of steps). If ``execute()`` raised, the status is ERROR and the
      exception is recorded. Its status is left unset on success.
    * ``actionqueues.execute``, a child per step executed, with
      ``actionqueues.step`` (its index), ``actionqueues.action`` (the action's
      class name; for a function step, its ``name``) and
      ``actionqueues.attempts`` (calls made). Each retry adds a
      ``retry`` event with ``actionqueues.attempt`` (the failed attempt, 1 for
      the first call), ``actionqueues.delay_s``, ``exception.type`` and
      ``exception.message``. A step that failed has status ERROR and its
      exception recorded.
    * ``actionqueues.rollback``, a child of the queue span, from the first step
      rolled back to the end of ``rollback()``, with
      ``actionqueues.rolled_back`` and ``actionqueues.rollback_failures`` (the
      numbers of steps that rolled back and that failed to); status ERROR if
      any failed.
    * ``actionqueues.rollback_step``, a child of the rollback span per step
      rolled back, with the same attributes, retry events and error handling
      as ``actionqueues.execute``.

    While an action's ``execute()`` or ``rollback()`` runs, its step span is
    the current span (in its thread, or in its task for an async queue), so
    the spans the action starts are children of it. The caller's context is
    restored when the step ends.

    Memory: the listener keeps a little state per queue, from ``execute()``
    until the queue's ``rollback()`` finished, or else until the queue is
    garbage-collected (a finished queue may still be rolled back later, and
    its rollback span needs the queue span's context). A queue class that
    does not support weak references is tracked by ``id()`` instead, and at
    most the 1024 most recently run of such queues are remembered: an older
    one's rollback span is then not linked to its run.

    The listener is thread-safe: one instance can serve many queues, sync and
    async, and the steps of a parallel group reporting from several threads.

    Args:
        tracer_provider: The ``opentelemetry.trace.TracerProvider`` to create
            spans with. Defaults to the global one (as set by
            ``opentelemetry.trace.set_tracer_provider``), looked up when
            spans are created.
        tracer_name: The instrumentation scope name of the tracer.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        tracer_name: str = "actionqueues",
    ) -> None:
        self._tracer: Tracer = trace.get_tracer(
            tracer_name, __version__, tracer_provider=tracer_provider
        )
        self._lock = threading.Lock()
        # id(queue) -> state. A weakly referenceable queue's entry is removed
        # when the queue is collected: _forget() queues the removal and
        # _purge() performs it under the lock.
        self._states: dict[int, _QueueState] = {}
        self._collected: list[weakref.KeyedRef[int, object]] = []
        # ids of finished queues tracked without a weak reference, oldest first.
        self._unreferenced: dict[int, None] = {}

    # -- state ------------------------------------------------------------

    def _forget(self, ref: weakref.KeyedRef[int, object]) -> None:
        # A weakref callback: it may run in any thread at any allocation, even
        # while this thread holds the lock, so it never waits for the lock.
        self._collected.append(ref)
        if self._lock.acquire(blocking=False):
            try:
                self._purge()
            finally:
                self._lock.release()

    def _purge(self) -> None:
        # Called with the lock held.
        while self._collected:
            ref = self._collected.pop()
            state = self._states.get(ref.key)
            if state is not None and state.ref is ref:
                del self._states[ref.key]

    def _new_state(self, queue: object, span: Span | None) -> _QueueState:
        key = id(queue)
        try:
            ref: weakref.KeyedRef[int, object] | None = weakref.KeyedRef(queue, self._forget, key)
        except TypeError:  # a class with __slots__ but no __weakref__
            ref = None
        return _QueueState(ref, span)

    def _state(self, queue: object) -> _QueueState | None:
        with self._lock:
            self._purge()
            return self._states.get(id(queue))

    def _open_step(self, state: _QueueState, key: _StepKey, span: Span) -> None:
        """Record the step's span and make it the current span until the step ends."""
        step = _Step(span)
        with self._lock:
            state.steps[key] = step

    def _span(self, queue: object, key: _StepKey) -> Span | None:
        """The step's open span, if any."""
        with self._lock:
            self._purge()
            state = self._states.get(id(queue))
            step = None if state is None else state.steps.get(key)
        return None if step is None else step.span

    def _close_step(self, queue: object, key: _StepKey) -> Span | None:
        """Forget the step, restore the context it replaced; return its span to end."""
        with self._lock:
            self._purge()
            state = self._states.get(id(queue))
            step = None if state is None else state.steps.pop(key, None)
        if step is None:  # unknown queue or step (listener added mid-run): nothing attached
            return None
        _end(step)
        return step.span

    # -- execute ----------------------------------------------------------

    def on_queue_started(self, event: QueueStarted) -> None:
        """Start the queue span, as a child of the current span."""
        span = self._tracer.start_span(
            _QUEUE_SPAN,
            attributes={
                "actionqueues.queue": type(event.queue).__qualname__,
                "actionqueues.actions": event.actions,
            },
        )
        state = self._new_state(event.queue, span)
        key = id(event.queue)
        with self._lock:
            self._purge()
            self._states[key] = state  # replaces what was known under this id
            self._unreferenced.pop(key, None)

    def on_action_started(self, event: ActionStarted) -> None:
        """Start the step's ``actionqueues.execute`` span."""
        state = self._state(event.queue)
        if state is None:
            return
        span = self._tracer.start_span(
            _EXECUTE_SPAN,
            context=state.context,
            attributes=_step_attributes(event.index, event.action),
        )
        self._open_step(state, ("execute", event.index, id(event.action)), span)

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        """Add a ``retry`` event to the step's execute or rollback_step span."""
        span = self._span(event.queue, (event.method, event.index, id(event.action)))
        if span is None:
            return
        span.add_event(
            _RETRY_EVENT,
            {
                "actionqueues.attempt": event.attempt,
                "actionqueues.delay_s": float(event.delay),
                "exception.type": _type_name(event.error),
                "exception.message": str(event.error),
            },
        )

    def on_action_succeeded(self, event: ActionSucceeded) -> None:
        """End the step's span."""
        span = self._close_step(event.queue, ("execute", event.index, id(event.action)))
        if span is not None:
            span.set_attribute("actionqueues.attempts", event.attempts)
            span.end()

    def on_action_failed(self, event: ActionFailed) -> None:
        """End the step's span with status ERROR and the exception recorded."""
        span = self._close_step(event.queue, ("execute", event.index, id(event.action)))
        if span is not None:
            span.set_attribute("actionqueues.attempts", event.attempts)
            _fail(span, event.error)
            span.end()

    def on_queue_finished(self, event: QueueFinished) -> None:
        """End the queue span, with status ERROR if ``execute()`` raised.

        Step spans still open (a step interrupted without a failure event)
        are ended too, as failed if ``execute()`` raised.
        """
        key = id(event.queue)
        with self._lock:
            self._purge()
            state = self._states.get(key)
            if state is None or state.span is None:
                return
            span, state.span = state.span, None
            steps = list(state.steps.values())
            state.steps.clear()
            # Keep only the queue span's identity for a rollback, not the span.
            state.context = trace.set_span_in_context(NonRecordingSpan(span.get_span_context()))
            if state.ref is None:
                self._unreferenced[key] = None
                while len(self._unreferenced) > _MAX_UNREFERENCEABLE:
                    oldest = next(iter(self._unreferenced))
                    del self._unreferenced[oldest]
                    self._states.pop(oldest, None)
        error = event.error
        for step in steps:
            _end(step)
            if error is not None:
                _fail(step.span, error)
            step.span.end()
        if error is not None:
            _fail(span, error)
        span.end()

    # -- rollback ---------------------------------------------------------

    def _rollback_state(self, queue: object) -> tuple[_QueueState, Span]:
        """The queue's state and its rollback span, started by the first caller.

        Members of a parallel group may roll back concurrently, hence the lock.
        """
        key = id(queue)
        with self._lock:
            self._purge()
            state = self._states.get(key)
            if state is None:
                # Listener added after execute(): the rollback has no run to join.
                state = self._states[key] = self._new_state(queue, None)
            span = state.rollback
            if span is None:
                span = self._tracer.start_span(_ROLLBACK_SPAN, context=state.context)
                state.rollback_context = trace.set_span_in_context(span)
                state.rollback = span
        return state, span

    def on_rollback_started(self, event: RollbackStarted) -> None:
        """Start the rollback span if need be, and the step's rollback_step span."""
        state, _ = self._rollback_state(event.queue)
        span = self._tracer.start_span(
            _ROLLBACK_STEP_SPAN,
            context=state.rollback_context,
            attributes=_step_attributes(event.index, event.action),
        )
        self._open_step(state, ("rollback", event.index, id(event.action)), span)

    def on_rollback_succeeded(self, event: RollbackSucceeded) -> None:
        """End the step's rollback_step span."""
        span = self._close_step(event.queue, ("rollback", event.index, id(event.action)))
        if span is not None:
            span.set_attribute("actionqueues.attempts", event.attempts)
            span.end()

    def on_rollback_failed(self, event: RollbackFailed) -> None:
        """End the step's rollback_step span with status ERROR and the exception."""
        span = self._close_step(event.queue, ("rollback", event.index, id(event.action)))
        if span is not None:
            span.set_attribute("actionqueues.attempts", event.attempts)
            _fail(span, event.error)
            span.end()

    def on_queue_rolled_back(self, event: QueueRolledBack) -> None:
        """End the rollback span with the counts, and forget the queue."""
        state, span = self._rollback_state(event.queue)
        key = id(event.queue)
        with self._lock:
            self._states.pop(key, None)
            self._unreferenced.pop(key, None)
            steps = list(state.steps.values())
            state.steps.clear()
        for step in steps:
            _end(step)
            step.span.end()
        report = event.report
        span.set_attributes(
            {
                "actionqueues.rolled_back": len(report.rolled_back),
                "actionqueues.rollback_failures": len(report.failures),
            }
        )
        if report.failures:
            span.set_status(
                Status(
                    StatusCode.ERROR,
                    f"{len(report.failures)} of "
                    f"{len(report.failures) + len(report.rolled_back)} rollbacks failed",
                )
            )
        span.end()


def _step_attributes(index: int, action: object) -> dict[str, str | int]:
    return {"actionqueues.step": index, "actionqueues.action": _action_name(action)}


def _action_name(action: object) -> str:
    """The action's class name; for a function step, its name (or its function's)."""
    if not isinstance(action, FunctionStep):
        return type(action).__qualname__
    name = getattr(action, "name", None)
    if isinstance(name, str) and name:
        return name
    do = action.do
    qualname = getattr(do, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(do).__qualname__


def _type_name(error: BaseException) -> str:
    """The exception's type as OpenTelemetry's ``record_exception`` names it."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
