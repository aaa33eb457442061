"""Exceptions raised by actionqueues.

Every error the library raises on its own account derives from one root,
:class:`ActionQueuesError`, and also from the built-in exception of the same
meaning, so that code which catches the built-in keeps working::

    Exception
     └── ActionQueuesError
          ├── ActionRetryException      (raised *by actions*: "call me again")
          ├── QueueStateError           (+ AssertionError: a call the queue's state forbids)
          ├── RetryLimitExceeded        (an action asked to be retried more than allowed)
          ├── RollbackError             (strict rollback: one or more rollbacks failed)
          └── ActionTimeoutError        (+ TimeoutError: an async action overran its timeout)

Exceptions raised by the actions themselves are never wrapped: the caller of
``execute()`` gets the very object the action raised.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._report import RollbackFailure, RollbackReport

__all__ = [
    "ActionQueuesError",
    "ActionRetryException",
    "ActionTimeoutError",
    "QueueStateError",
    "RetryLimitExceeded",
    "RollbackError",
]


class ActionQueuesError(Exception):
    """Root of every exception defined by actionqueues."""


class ActionRetryException(ActionQueuesError):
    """Raised by an action's ``execute`` or ``rollback`` to ask for another call.

    The queue sleeps ``ms_backoff`` milliseconds, then calls the same method of
    the same action again, for as long as it keeps raising this exception
    (or until the queue's ``max_retries`` is reached).

    Args:
        ms_backoff: Milliseconds to wait before the next call; a finite,
            non-negative number. Defaults to 0 (retry at once).

    Raises:
        TypeError: ``ms_backoff`` is not a real number.
        ValueError: ``ms_backoff`` is negative, NaN or infinite.
    """

    ms_backoff: float

    def __init__(self, ms_backoff: float = 0) -> None:
        kind = type(ms_backoff)
        if kind is not int and kind is not float:
            _check_real(ms_backoff)
        if not 0 <= ms_backoff < math.inf:  # also false for NaN
            raise ValueError(
                f"ms_backoff must be a finite number of milliseconds >= 0, got {ms_backoff!r}"
            )
        super().__init__(ms_backoff)
        self.ms_backoff = ms_backoff

    def __str__(self) -> str:
        return f"retry requested after {self.ms_backoff} ms"


def bad_argument(value: object, kinds: tuple[type, ...], message: str) -> Exception:
    """The error for an argument that failed its check, as the README promises.

    TypeError when ``value`` is not of ``kinds`` (a bool is no number here),
    ValueError when it is, but out of range.
    """
    wrong_kind = isinstance(value, bool) or not isinstance(value, kinds)
    return (TypeError if wrong_kind else ValueError)(message)


def _check_real(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"ms_backoff must be a number of milliseconds (int or float), "
            f"got {type(value).__name__} {value!r}"
        )


class QueueStateError(ActionQueuesError, AssertionError):
    """A queue method was called in a state that forbids it.

    For example ``add()`` after ``execute()``, a second ``execute()``, or
    ``rollback()`` before ``execute()``. It subclasses :class:`AssertionError`
    because actionqueues 0.8.2 raised a bare ``AssertionError`` for these, so
    code written for it still catches this one. Unlike 0.8.2's ``assert``, the
    check also runs under ``python -O``.

    Attributes:
        call: The method that was refused, e.g. ``"add"``.
        state: A readable name of the queue's state when it was called.
    """

    def __init__(self, message: str, *, call: str, state: str) -> None:
        super().__init__(message)
        self.call = call
        self.state = state

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, {"call": self.call, "state": self.state}))


class RetryLimitExceeded(ActionQueuesError):
    """An action kept raising :class:`ActionRetryException` past ``max_retries``.

    The last :class:`ActionRetryException` is the ``__cause__``; if it was
    raised while handling a real error (for example inside ``except``, as the
    exception factories are used), that error shows in its ``__context__``.

    Attributes:
        action: The action that asked to be retried once too often.
        method: ``"execute"`` or ``"rollback"``.
        retries: How many retries were made before giving up.
    """

    def __init__(
        self, action: object, method: str, retries: int, limit: str = "the queue's max_retries"
    ) -> None:
        super().__init__(
            f"{method}() of {action!r} still asked to be retried after {retries} "
            f"retr{'y' if retries == 1 else 'ies'} ({limit})"
        )
        self.action = action
        self.method = method
        self.retries = retries
        self._limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.action, self.method, self.retries, self._limit), self.__dict__)


class RollbackError(ActionQueuesError):
    """One or more actions failed to roll back (raised by ``rollback(raise_errors=True)``).

    It is raised only after every started action's rollback was attempted.

    Attributes:
        report: The full :class:`~actionqueues.RollbackReport`.
        failures: The failed rollbacks, in the order they were attempted.
    """

    def __init__(self, report: RollbackReport) -> None:
        failures = report.failures
        details = "; ".join(
            f"step {f.index} ({f.action!r}): {type(f.error).__name__}: {f.error}" for f in failures
        )
        count = len(failures)
        super().__init__(
            f"{count} rollback{'s' if count != 1 else ''} failed "
            f"(every started action's rollback was attempted): {details}"
        )
        self.report = report
        self.failures: tuple[RollbackFailure, ...] = failures

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.report,), self.__dict__)


class ActionTimeoutError(ActionQueuesError, TimeoutError):
    """An async action's call took longer than its ``timeout`` (AsyncActionQueue only).

    It counts as a failure of that call (retryable if the policy says so);
    the action is still rolled back, since its outcome is unknown.

    Attributes:
        action: The action.
        method: ``"execute"`` or ``"rollback"``.
        timeout: The timeout, in seconds.
    """

    def __init__(self, action: object, method: str, timeout: float) -> None:
        super().__init__(f"{method}() of {action!r} timed out after {timeout} s")
        self.action = action
        self.method = method
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.action, self.method, self.timeout), self.__dict__)


def _rebuild(
    cls: type[QueueStateError], args: tuple[object, ...], kwargs: dict[str, str]
) -> object:
    return cls(*args, **kwargs)  # type: ignore[arg-type]
