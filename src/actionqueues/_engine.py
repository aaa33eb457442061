"""The queue's engine: its state machine and every decision, with no I/O.

The drivers (:class:`~actionqueues.ActionQueue` today, an async queue later)
are thin loops that call actions, sleep and record; everything they ask
("may I add?", "how long until the next retry?", "what does the rollback
report say?") is answered here, once, for all of them.

States keep the values of 0.8.2's ``aqstatemachine`` constants::

    INIT/ADD ──execute()──> EXECUTE ──(all succeeded)──> EXECUTE_COMPLETE
                               │ (an action raised)              │
                               └────────────rollback()───────────┘
                                                │
                                   ROLLBACK ──> ROLLBACK_COMPLETE
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ._action import ActionLike
from ._errors import ActionRetryException, QueueStateError, RetryLimitExceeded
from ._report import RollbackFailure

__all__ = ["SleepFn", "logger"]

logger = logging.getLogger("actionqueues")

#: A function that waits the given number of seconds, like :func:`time.sleep`.
SleepFn = Callable[[float], object]

_A = TypeVar("_A", bound=ActionLike)

INIT = 0
ADD = 1
EXECUTE = 2
ROLLBACK = 3
EXECUTE_COMPLETE = 4
ROLLBACK_COMPLETE = 5

_HINTS = {
    "add": "actions can only be added before execute(); use a new ActionQueue for another run",
    "execute": "a queue executes once; use a new ActionQueue to run the actions again",
    "rollback": "rollback() is allowed once, after execute() has returned or raised",
}


# Classes whose execute and rollback are callable class attributes. Checking the
# class once instead of each instance keeps add() cheap; the set is bounded so
# that classes made on the fly (mocks, type() calls) cannot grow it forever.
_ACTION_CLASSES: set[type] = set()
_ACTION_CLASSES_MAX = 4096


def _is_action(action: object) -> bool:
    cls = action.__class__
    if callable(getattr(cls, "execute", None)) and callable(getattr(cls, "rollback", None)):
        if len(_ACTION_CLASSES) >= _ACTION_CLASSES_MAX:
            _ACTION_CLASSES.clear()
        _ACTION_CLASSES.add(cls)
        return True
    return callable(getattr(action, "execute", None)) and callable(
        getattr(action, "rollback", None)
    )


def _default_sleep(seconds: float) -> None:
    # Looked up at call time so that patching ``time.sleep`` in a test works.
    time.sleep(seconds)


class QueueCore:
    """State, validation and decisions shared by every queue driver."""

    __slots__ = ("_actions", "_failed", "_max_retries", "_sleep", "_started", "_state")

    def __init__(self, *, sleep: SleepFn | None = None, max_retries: int | None = None) -> None:
        if sleep is not None and not callable(sleep):
            raise TypeError(
                f"sleep must be a callable taking seconds (like time.sleep), got {sleep!r}"
            )
        if max_retries is not None and (
            type(max_retries) is not int or max_retries < 0  # bool is refused too
        ):
            raise ValueError(
                f"max_retries must be None (unlimited) or an int >= 0, got {max_retries!r}"
            )
        self._actions: list[ActionLike] = []
        self._state = INIT
        self._started = 0
        self._failed = False
        self._sleep: SleepFn = _default_sleep if sleep is None else sleep
        self._max_retries = max_retries

    # -- introspection --------------------------------------------------

    @property
    def actions(self) -> tuple[ActionLike, ...]:
        """The actions added so far, in the order they were added."""
        return tuple(self._actions)

    @property
    def started(self) -> tuple[ActionLike, ...]:
        """The actions whose ``execute`` was called (these are what ``rollback`` undoes)."""
        return tuple(self._actions[: self._started])

    @property
    def max_retries(self) -> int | None:
        """The most retries one action's ``execute`` or ``rollback`` may ask for (None: no cap)."""
        return self._max_retries

    def __len__(self) -> int:
        return len(self._actions)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {len(self._actions)} actions, "
            f"{self._started} started, {self._state_name()}>"
        )

    def _state_name(self) -> str:
        state = self._state
        if state <= ADD:
            return "has not been executed yet"
        if state == EXECUTE:
            return "failed during execute()" if self._failed else "is executing"
        if state == EXECUTE_COMPLETE:
            return "has executed successfully"
        if state == ROLLBACK:
            return "is rolling back"
        return "has been rolled back"

    def _refused(self, call: str) -> QueueStateError:
        state = self._state_name()
        return QueueStateError(
            f"{type(self).__name__}.{call}() is not allowed: the queue {state}; {_HINTS[call]}",
            call=call,
            state=state,
        )

    # -- transitions ------------------------------------------------------

    def add(self, action: _A) -> _A:
        """Queue ``action`` to run after those already added, and return it.

        Raises:
            TypeError: ``action`` has no callable ``execute`` or ``rollback``.
            QueueStateError: the queue has already been executed.
        """
        if self._state > ADD:
            raise self._refused("add")
        if action.__class__ not in _ACTION_CLASSES and not _is_action(action):
            raise TypeError(
                f"cannot add {action!r} to an action queue: an action needs callable "
                f"execute() and rollback() methods (subclass actionqueues.Action)"
            )
        self._actions.append(action)
        return action

    def _begin_execute(self) -> list[ActionLike]:
        if self._state > ADD:
            raise self._refused("execute")
        self._state = EXECUTE
        return self._actions

    def _begin_rollback(self) -> None:
        state = self._state
        if not (state == EXECUTE_COMPLETE or (state == EXECUTE and self._failed)):
            raise self._refused("rollback")
        self._state = ROLLBACK

    # -- decisions --------------------------------------------------------

    def _retry_delay(
        self, action: object, method: str, signal: ActionRetryException, retries: int
    ) -> float:
        """Seconds to wait before retry number ``retries`` (1-based) of ``method``.

        Raises RetryLimitExceeded (caused by ``signal``) past ``max_retries``.
        """
        limit = self._max_retries
        if limit is not None and retries > limit:
            raise RetryLimitExceeded(action, method, limit) from signal
        return signal.ms_backoff / 1000.0

    def _call_with_retries(
        self,
        call: Callable[[], object],
        action: object,
        method: str,
        signal: ActionRetryException | None = None,
    ) -> None:
        """Call ``call()`` until it stops raising ActionRetryException.

        ``signal`` is the retry request of a first call the driver already made.
        """
        retries = 0
        if signal is None:
            try:
                call()
            except ActionRetryException as exc:
                signal = exc
            else:
                return
        sleep = self._sleep
        while True:
            retries += 1
            sleep(self._retry_delay(action, method, signal, retries))
            try:
                call()
            except ActionRetryException as exc:
                signal = exc
            else:
                return

    @staticmethod
    def _rollback_failed(index: int, action: object, error: Exception) -> RollbackFailure:
        logger.error(
            "rollback of step %d (%r) failed; continuing with the earlier steps",
            index,
            action,
            exc_info=error,
            extra={"aq_event": "rollback_failed", "aq_step": index, "aq_action": repr(action)},
        )
        return RollbackFailure(index, action, error)
