"""Lifecycle events, the listener protocol, and global listener registration.

Every queue reports what it does to its listeners: the ones given to the
queue (``ActionQueue(listeners=[...])``) and the global ones
(:func:`add_listener`). A listener is any object with the ``on_*`` methods of
:class:`Listener`; subclass :class:`BaseListener` to override only some. A
listener that raises is logged on the ``actionqueues`` logger and never
breaks the queue. With no listener (and DEBUG logging off) the queue skips
the event machinery entirely.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ._report import RollbackReport

__all__ = [
    "ActionFailed",
    "ActionStarted",
    "ActionSucceeded",
    "BaseListener",
    "Listener",
    "LoggingListener",
    "Method",
    "QueueFinished",
    "QueueRolledBack",
    "QueueStarted",
    "RetryScheduled",
    "RollbackFailed",
    "RollbackStarted",
    "RollbackSucceeded",
    "add_listener",
    "remove_listener",
]

logger = logging.getLogger("actionqueues")

#: Which method of an action an event is about.
Method = Literal["execute", "rollback"]


@dataclass(frozen=True, slots=True)
class QueueStarted:
    """``execute()`` began.

    Attributes:
        queue: The queue.
        actions: How many steps it holds.
    """

    queue: object
    actions: int


@dataclass(frozen=True, slots=True)
class QueueFinished:
    """``execute()`` ended, successfully or not.

    Attributes:
        queue: The queue.
        error: The exception ``execute()`` raised, or None on success.
        duration: Seconds ``execute()`` took, by the queue's clock.
    """

    queue: object
    error: BaseException | None
    duration: float


@dataclass(frozen=True, slots=True)
class ActionStarted:
    """A step is about to have its ``execute`` called (it now counts as started).

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
    """

    queue: object
    index: int
    action: object


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """A call failed and will be retried after ``delay`` seconds.

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
        method: ``"execute"`` or ``"rollback"``.
        attempt: The number of the attempt that failed (1 is the first call).
        delay: Seconds until the next attempt.
        error: The exception of the failed attempt (an
            ``ActionRetryException`` when the action asked for the retry).
    """

    queue: object
    index: int
    action: object
    method: Method
    attempt: int
    delay: float
    error: BaseException


@dataclass(frozen=True, slots=True)
class ActionSucceeded:
    """A step's ``execute`` returned.

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
        attempts: How many calls it took.
        duration: Seconds from the first call to the return, retries included.
    """

    queue: object
    index: int
    action: object
    attempts: int
    duration: float


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """A step's ``execute`` raised for good (no retry left, or not retryable).

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
        error: The exception that ``execute()`` will raise.
        attempts: How many calls were made.
    """

    queue: object
    index: int
    action: object
    error: BaseException
    attempts: int


@dataclass(frozen=True, slots=True)
class RollbackStarted:
    """A started step is about to have its ``rollback`` called.

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
    """

    queue: object
    index: int
    action: object


@dataclass(frozen=True, slots=True)
class RollbackSucceeded:
    """A step's ``rollback`` returned.

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
        attempts: How many calls it took.
    """

    queue: object
    index: int
    action: object
    attempts: int


@dataclass(frozen=True, slots=True)
class RollbackFailed:
    """A step's ``rollback`` raised for good; the rollback goes on with earlier steps.

    Attributes:
        queue: The queue.
        index: The step's position in the queue.
        action: The action.
        error: The exception.
        attempts: How many calls were made.
    """

    queue: object
    index: int
    action: object
    error: BaseException
    attempts: int


@dataclass(frozen=True, slots=True)
class QueueRolledBack:
    """``rollback()`` finished every step.

    Attributes:
        queue: The queue.
        report: What was rolled back and what failed.
    """

    queue: object
    report: RollbackReport


class Listener(Protocol):
    """What a queue calls as it works; every method receives one event object."""

    def on_queue_started(self, event: QueueStarted) -> None:
        """``execute()`` began."""

    def on_queue_finished(self, event: QueueFinished) -> None:
        """``execute()`` ended (``event.error`` is None on success)."""

    def on_action_started(self, event: ActionStarted) -> None:
        """A step is about to execute."""

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        """A call failed and will be retried."""

    def on_action_succeeded(self, event: ActionSucceeded) -> None:
        """A step executed."""

    def on_action_failed(self, event: ActionFailed) -> None:
        """A step failed for good."""

    def on_rollback_started(self, event: RollbackStarted) -> None:
        """A step is about to roll back."""

    def on_rollback_succeeded(self, event: RollbackSucceeded) -> None:
        """A step rolled back."""

    def on_rollback_failed(self, event: RollbackFailed) -> None:
        """A step's rollback failed for good."""

    def on_queue_rolled_back(self, event: QueueRolledBack) -> None:
        """``rollback()`` finished."""


class BaseListener:
    """A :class:`Listener` whose methods do nothing: override the ones you need."""

    def on_queue_started(self, event: QueueStarted) -> None:
        """``execute()`` began."""

    def on_queue_finished(self, event: QueueFinished) -> None:
        """``execute()`` ended (``event.error`` is None on success)."""

    def on_action_started(self, event: ActionStarted) -> None:
        """A step is about to execute."""

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        """A call failed and will be retried."""

    def on_action_succeeded(self, event: ActionSucceeded) -> None:
        """A step executed."""

    def on_action_failed(self, event: ActionFailed) -> None:
        """A step failed for good."""

    def on_rollback_started(self, event: RollbackStarted) -> None:
        """A step is about to roll back."""

    def on_rollback_succeeded(self, event: RollbackSucceeded) -> None:
        """A step rolled back."""

    def on_rollback_failed(self, event: RollbackFailed) -> None:
        """A step's rollback failed for good."""

    def on_queue_rolled_back(self, event: QueueRolledBack) -> None:
        """``rollback()`` finished."""


class LoggingListener(BaseListener):
    """Logs progress at DEBUG on the ``actionqueues`` logger.

    The queue adds it by itself whenever that logger is enabled for DEBUG.
    Retries (WARNING) and failed rollbacks (ERROR) are logged by the queue
    whether or not this listener runs. Each record carries structured fields
    in ``extra``: ``aq_event``, and ``aq_step`` where it applies.
    """

    def _debug(self, event: str, message: str, *args: object, step: int | None = None) -> None:
        extra: dict[str, object] = {"aq_event": event}
        if step is not None:
            extra["aq_step"] = step
        logger.debug(message, *args, extra=extra)

    def on_queue_started(self, event: QueueStarted) -> None:
        """Log that ``execute()`` began."""
        self._debug("queue_started", "queue started: %d steps", event.actions)

    def on_queue_finished(self, event: QueueFinished) -> None:
        """Log how ``execute()`` ended."""
        outcome = "succeeded" if event.error is None else f"failed: {event.error!r}"
        self._debug("queue_finished", "queue %s in %.6f s", outcome, event.duration)

    def on_action_started(self, event: ActionStarted) -> None:
        """Log that a step starts."""
        self._debug("action_started", "step %d (%r) started", event.index, event.action,
                    step=event.index)  # fmt: skip

    def on_action_succeeded(self, event: ActionSucceeded) -> None:
        """Log that a step executed."""
        self._debug("action_succeeded", "step %d succeeded after %d attempt(s)", event.index,
                    event.attempts, step=event.index)  # fmt: skip

    def on_action_failed(self, event: ActionFailed) -> None:
        """Log that a step failed."""
        self._debug("action_failed", "step %d failed: %r", event.index, event.error,
                    step=event.index)  # fmt: skip

    def on_rollback_started(self, event: RollbackStarted) -> None:
        """Log that a step's rollback starts."""
        self._debug("rollback_started", "rolling back step %d (%r)", event.index, event.action,
                    step=event.index)  # fmt: skip

    def on_rollback_succeeded(self, event: RollbackSucceeded) -> None:
        """Log that a step rolled back."""
        self._debug("rollback_succeeded", "step %d rolled back", event.index, step=event.index)

    def on_queue_rolled_back(self, event: QueueRolledBack) -> None:
        """Log the rollback's outcome."""
        report = event.report
        self._debug("queue_rolled_back", "queue rolled back: %d steps undone, %d failed",
                    len(report.rolled_back), len(report.failures))  # fmt: skip


_GLOBAL_LISTENERS: list[Listener] = []
_LOGGING_LISTENER = LoggingListener()


def add_listener(listener: Listener) -> None:
    """Register ``listener`` for every queue, from their next ``execute()``/``rollback()`` on."""
    _check_listener(listener)
    if listener not in _GLOBAL_LISTENERS:
        _GLOBAL_LISTENERS.append(listener)


def remove_listener(listener: Listener) -> None:
    """Unregister a global listener; a listener that is not registered is ignored."""
    if listener in _GLOBAL_LISTENERS:
        _GLOBAL_LISTENERS.remove(listener)


_METHODS = tuple(name for name in vars(BaseListener) if name.startswith("on_"))


def _check_listener(listener: object) -> None:
    missing = [name for name in _METHODS if not callable(getattr(listener, name, None))]
    if missing:
        raise TypeError(
            f"{listener!r} is not a listener: it lacks {', '.join(missing)} "
            f"(subclass actionqueues.BaseListener to get no-op defaults)"
        )


def active_listeners(own: tuple[Listener, ...]) -> tuple[Listener, ...]:
    """The listeners one run reports to: the queue's, the global ones, and logging."""
    listeners = own
    if _GLOBAL_LISTENERS:  # a listener given to the queue and globally hears each event once
        listeners += tuple(g for g in _GLOBAL_LISTENERS if g not in own)
    if logger.isEnabledFor(logging.DEBUG):
        listeners += (_LOGGING_LISTENER,)
    return listeners


def emit(listeners: tuple[Listener, ...], name: str, event: object) -> None:
    """Call ``listener.<name>(event)`` on each listener; log and swallow what they raise."""
    for listener in listeners:
        try:
            getattr(listener, name)(event)
        except Exception:
            logger.exception(
                "listener %r raised in %s; the queue goes on",
                listener,
                name,
                extra={"aq_event": "listener_failed"},
            )
