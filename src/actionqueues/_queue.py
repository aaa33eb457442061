"""The synchronous driver: :class:`ActionQueue`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ._action import ActionLike
from ._engine import EXECUTE_COMPLETE, ROLLBACK_COMPLETE, QueueCore
from ._errors import ActionRetryException, RollbackError
from ._report import RollbackFailure, RollbackReport

__all__ = ["ActionQueue"]

_A = TypeVar("_A", bound=ActionLike)


class ActionQueue(QueueCore):
    """Runs actions in order; on failure, the caller rolls back what started.

    A queue is single-use: ``add()`` actions, ``execute()`` once, and
    ``rollback()`` at most once after ``execute()`` returned or raised.

    Args:
        sleep: Called with a number of seconds to wait before a retry.
            Defaults to :func:`time.sleep`; tests pass a recorder so they never
            really sleep.
        max_retries: The most times one action's ``execute`` (or ``rollback``)
            may raise :class:`ActionRetryException` and be called again.
            ``None`` (the default, as in 0.8.2) means no cap. Past the cap the
            call fails with :class:`RetryLimitExceeded`.

    Example:
        >>> from actionqueues import Action, ActionQueue
        >>> class Step(Action):
        ...     def __init__(self, log: list[str], name: str) -> None:
        ...         self.log, self.name = log, name
        ...     def execute(self) -> None:
        ...         self.log.append(f"do {self.name}")
        ...     def rollback(self) -> None:
        ...         self.log.append(f"undo {self.name}")
        >>> log: list[str] = []
        >>> q = ActionQueue()
        >>> _ = q.add(Step(log, "a")), q.add(Step(log, "b"))
        >>> q.execute()
        >>> report = q.rollback()
        >>> log, report.ok
        (['do a', 'do b', 'undo b', 'undo a'], True)

    The queue is not thread-safe: drive one queue from one thread.
    """

    __slots__ = ()

    def execute(self) -> None:
        """Run every action's ``execute``, in the order added.

        Each action counts as started just before its ``execute`` is called.
        An exception from ``execute`` (other than
        :class:`ActionRetryException`) stops the queue and propagates
        unchanged; call :meth:`rollback` to undo what started.

        Raises:
            QueueStateError: ``execute()`` was already called.
        """
        actions = self._begin_execute()
        if type(self).execute_with_retries is not ActionQueue.execute_with_retries:
            self._execute_through_override(actions)
            return
        started = 0
        try:
            for action in actions:
                started += 1
                try:
                    action.execute()
                except ActionRetryException as signal:
                    self._call_with_retries(action.execute, action, "execute", signal)
        except BaseException:
            self._started = started
            self._failed = True
            raise
        self._started = started
        self._state = EXECUTE_COMPLETE

    def rollback(self, *, raise_errors: bool = False) -> RollbackReport:
        """Roll back every started action, in reverse order, and report.

        The action whose ``execute`` raised is rolled back too; actions that
        never started are not. A ``rollback`` that raises an ``Exception`` does
        not stop the others: the error is logged on the ``actionqueues``
        logger at ERROR (with its traceback) and listed in the report.
        ``KeyboardInterrupt`` and ``SystemExit`` are never swallowed.

        Args:
            raise_errors: If true, raise :class:`RollbackError` carrying every
                failure once all rollbacks were attempted.

        Returns:
            A :class:`RollbackReport` of what was rolled back and what failed.

        Raises:
            QueueStateError: ``execute()`` has not run yet, is still running,
                or ``rollback()`` was already called.
            RollbackError: ``raise_errors`` is true and a rollback failed.
        """
        self._begin_rollback()
        actions = self._actions
        legacy = type(self).execute_with_retries is not ActionQueue.execute_with_retries
        rolled_back: list[object] = []
        failures: list[RollbackFailure] = []
        for index in range(self._started - 1, -1, -1):
            action = actions[index]
            try:
                if legacy:
                    self.execute_with_retries(action, _call_rollback)
                else:
                    try:
                        action.rollback()
                    except ActionRetryException as signal:
                        self._call_with_retries(action.rollback, action, "rollback", signal)
            except Exception as error:
                failures.append(self._rollback_failed(index, action, error))
            else:
                rolled_back.append(action)
        self._state = ROLLBACK_COMPLETE
        report = RollbackReport(tuple(rolled_back), tuple(failures))
        if raise_errors and failures:
            raise RollbackError(report)
        return report

    def execute_with_retries(self, action: _A, f: Callable[[_A], object]) -> None:
        """Call ``f(action)`` until it stops raising :class:`ActionRetryException`.

        Kept from 0.8.2: sleeps each retry's ``ms_backoff`` with the queue's
        ``sleep`` and honours its ``max_retries``. A subclass that overrides
        this method is called by :meth:`execute` and :meth:`rollback` for every
        action, as in 0.8.2.
        """
        method = _METHOD_NAMES.get(f, "execute_with_retries")
        self._call_with_retries(lambda: f(action), action, method)

    def _execute_through_override(self, actions: list[ActionLike]) -> None:
        try:
            for action in actions:
                self._started += 1
                self.execute_with_retries(action, _call_execute)
        except BaseException:
            self._failed = True
            raise
        self._state = EXECUTE_COMPLETE


def _call_execute(action: ActionLike) -> object:
    return action.execute()


def _call_rollback(action: ActionLike) -> object:
    return action.rollback()


_METHOD_NAMES: dict[object, str] = {_call_execute: "execute", _call_rollback: "rollback"}
