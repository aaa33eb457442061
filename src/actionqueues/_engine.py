"""The queue's engine: its state machine and every decision, with no I/O.

The drivers (:class:`~actionqueues.ActionQueue` and
:class:`~actionqueues.AsyncActionQueue`) are thin loops that call actions,
sleep and report; everything they ask ("may I add this?", "retry after how
long, or give up?", "what goes in the rollback report?") is answered here,
once, for both. The drivers differ only by ``await``.

States keep the values of 0.8.2's ``aqstatemachine`` constants::

    INIT/ADD ──execute()──> EXECUTE ──(all succeeded)──> EXECUTE_COMPLETE
                               │ (an action raised)              │
                               └────────────rollback()───────────┘
                                                │
                                   ROLLBACK ──> ROLLBACK_COMPLETE
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from ._action import ActionLike, AsyncAction
from ._durable import RunRecorder
from ._errors import ActionRetryException, QueueStateError, RetryLimitExceeded, bad_argument
from ._events import (
    _GLOBAL_LISTENERS,
    ActionFailed,
    ActionStarted,
    ActionSucceeded,
    Listener,
    Method,
    QueueFinished,
    QueueRolledBack,
    QueueStarted,
    RetryScheduled,
    RollbackFailed,
    RollbackStarted,
    RollbackSucceeded,
    _check_listener,
    active_listeners,
    emit,
)
from ._journal import Journal as _Journal
from ._policy import RetryPolicy
from ._registry import dump_state, require_name
from ._report import RollbackFailure, RollbackReport, new_report
from ._steps import (
    AsyncFunctionStep,
    FunctionStep,
    ParallelGroup,
    StepDefinition,
    function_step,
    refuse_awaitable,
)

__all__ = ["Clock", "SleepFn", "logger"]

logger = logging.getLogger("actionqueues")
_debug_enabled = logger.isEnabledFor

#: A function that waits the given number of seconds, like :func:`time.sleep`.
SleepFn = Callable[[float], object]
#: A function returning the current time in seconds, like :func:`time.monotonic`.
Clock = Callable[[], float]

if TYPE_CHECKING:
    from ._journal import Journal

_A = TypeVar("_A", bound=ActionLike)
_T = TypeVar("_T")

INIT = 0
ADD = 1
EXECUTE = 2
ROLLBACK = 3
EXECUTE_COMPLETE = 4
ROLLBACK_COMPLETE = 5

_HINTS = {
    "add": "actions can only be added before execute(); use a new queue for another run",
    "add_group": "actions can only be added before execute(); use a new queue for another run",
    "execute": "a queue executes once; use a new queue to run the actions again",
    "rollback": "rollback() is allowed once, after execute() has returned or raised",
}

# Classes whose execute and rollback are callable class attributes. Checking the
# class once instead of each instance keeps add() cheap; the set is bounded so
# that classes made on the fly (mocks, type() calls) cannot grow it forever.
_ACTION_CLASSES: set[type] = set()
_ACTION_CLASSES_MAX = 4096


def _has_coroutine_methods(cls: type) -> bool:
    """Whether ``cls``'s ``execute`` or ``rollback`` is a coroutine function (async def)."""
    return issubclass(cls, AsyncAction) or any(
        inspect.iscoroutinefunction(getattr(cls, name, None)) for name in ("execute", "rollback")
    )


def _is_action(action: object) -> bool:
    cls = action.__class__
    if callable(getattr(cls, "execute", None)) and callable(getattr(cls, "rollback", None)):
        if issubclass(cls, (AsyncFunctionStep, ParallelGroup)) or _has_coroutine_methods(cls):
            return True  # never cached: add() must look at these every time
        if len(_ACTION_CLASSES) >= _ACTION_CLASSES_MAX:
            _ACTION_CLASSES.clear()
        _ACTION_CLASSES.add(cls)
        return True
    return callable(getattr(action, "execute", None)) and callable(
        getattr(action, "rollback", None)
    )


def _utf8(text: str) -> bool:
    """Whether ``text`` can be stored (a lone surrogate cannot be encoded)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def count_calls(error: BaseException, calls: int) -> None:
    """Note on ``error``, leaving a driver's ``_call``, how many calls it made.

    The attempt history (``actionqueues_attempts``) says it only when the retry
    policy gave up; an interrupt in a backoff, a cancellation or a journal
    error leaves earlier.
    """
    error._actionqueues_calls = calls  # type: ignore[attr-defined]


def _attempts_of(error: BaseException) -> int:
    """How many calls a step made before failing with ``error``."""
    calls = getattr(error, "_actionqueues_calls", None)
    if type(calls) is int:
        return calls
    return len(getattr(error, "actionqueues_attempts", ())) + 1


def _note_rollback(error: BaseException, report: RollbackReport) -> None:
    """Tell, on the error leaving a ``with`` block, what its automatic rollback did."""
    if sys.version_info >= (3, 11):  # pragma: no branch
        failed = "; ".join(f"step {f.index}: {f.error!r}" for f in report.failures)
        error.add_note(
            f"actionqueues: rolled back {len(report.rolled_back)} step(s)"
            + (f"; {len(report.failures)} rollback(s) failed: {failed}" if failed else "")
        )


class _Switches:
    """Process-wide switches flipped by :mod:`actionqueues.testing`."""

    sleep_off = False


switches = _Switches()


def _check_policy(name: str, policy: object) -> None:
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise TypeError(f"{name} must be a RetryPolicy or None, got {policy!r}")


def _check_timeout(timeout: object) -> None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf
    ):
        raise bad_argument(
            timeout,
            (int, float),
            f"timeout must be None or a finite number of seconds > 0, got {timeout!r}",
        )


class StepOptions:
    """Per-step settings given to ``add()``; stored only for steps that have some."""

    __slots__ = ("retry", "rollback_retry", "timeout")

    def __init__(
        self, retry: RetryPolicy | None, rollback_retry: RetryPolicy | None, timeout: float | None
    ) -> None:
        self.retry = retry
        self.rollback_retry = rollback_retry
        self.timeout = timeout


NOTHING_CARRIED: tuple[tuple[object, ...], tuple[RollbackFailure, ...]] = ((), ())
_NO_OPTIONS: dict[int, StepOptions] = {}  # shared, never written: most queues have no options


class Retrier:
    """The retry decisions for one call sequence of one step's method."""

    __slots__ = (
        "action",
        "attempt",
        "base",
        "core",
        "history",
        "index",
        "listeners",
        "method",
        "requested",
        "start",
    )

    def __init__(
        self,
        core: QueueCore,
        index: int,
        action: object,
        method: Method,
        listeners: tuple[Listener, ...],
        start: float | None,
    ) -> None:
        self.core = core
        self.index = index
        self.action = action
        self.method = method
        self.listeners = listeners
        self.start = start
        self.attempt = 1
        self.base = 0  # calls made before this process took over (a recovered run)
        recorder = core._recorder
        if recorder is not None:  # a journaled run: count the attempts made before a crash
            self.attempt, seeded = recorder.seed(index, method, core._clock())
            self.base = self.attempt - 1
            if seeded is not None:
                self.start = seeded
        self.requested = 0  # retries asked for with ActionRetryException (max_retries caps these)
        self.history: list[RetryScheduled] = []

    def after(self, error: BaseException) -> float:
        """Seconds to wait before calling again; or raise to give up.

        Giving up raises ``error`` itself (the last real error, with the
        attempt history attached) or :class:`RetryLimitExceeded` when an
        ``ActionRetryException`` exceeded a limit.
        """
        core = self.core
        attempt = self.attempt
        policy = core.policy_for(self.index, self.method)
        elapsed = 0.0
        if policy is not None and policy.deadline is not None:
            start = self.start
            if start is None:
                start = self.start = core._clock()
            elapsed = core._clock() - start
        if isinstance(error, ActionRetryException):
            self.requested += 1
            limit = core._max_retries
            if limit is not None and self.requested > limit:
                self._give_up(RetryLimitExceeded(self.action, self.method, limit), error)
            delay = float(error.ms_backoff) / 1000.0
            if policy is not None and not policy.allows(attempt, elapsed, delay):
                self._give_up(
                    RetryLimitExceeded(
                        self.action, self.method, attempt - 1, "the retry policy's limits"
                    ),
                    error,
                )
        else:
            if policy is None or not policy.is_retryable(error):
                self._give_up(error)
            delay = policy.delay(attempt, error)
            if not policy.allows(attempt, elapsed, delay):
                self._give_up(error)
        event = RetryScheduled(core, self.index, self.action, self.method, attempt, delay, error)
        self.history.append(event)
        logger.warning(
            "step %d (%r) %s() attempt %d failed with %r; retrying in %.3f s",
            self.index,
            self.action,
            self.method,
            attempt,
            error,
            delay,
            extra={"aq_event": "retry_scheduled", "aq_step": self.index, "aq_delay": delay},
        )
        if self.listeners:
            emit(self.listeners, "on_retry_scheduled", event)
        if core._recorder is not None and not core._runs_async:  # async: the driver records
            core._recorder.retry_scheduled(self.index, self.method, attempt, delay, error)
        self.attempt = attempt + 1
        return delay

    def starting(self) -> None:
        """The retry is due: a journaled run records the call's start before it is made."""
        recorder = self.core._recorder
        if recorder is not None and not self.core._runs_async:  # async: the driver records
            recorder.retry_starting(self.index, self.method, self.attempt)

    def _give_up(self, error: BaseException, cause: BaseException | None = None) -> NoReturn:
        """Raise ``error`` (from ``cause`` if given) with the attempt history attached."""
        history = self.history
        if history:
            error.actionqueues_attempts = tuple(history)  # type: ignore[attr-defined]
            if sys.version_info >= (3, 11):  # pragma: no branch
                tried = "; ".join(f"#{e.attempt}: {e.error!r}" for e in history)
                error.add_note(
                    f"actionqueues: {self.method}() of step {self.index} failed after "
                    f"{self.attempt} attempts (earlier: {tried})"
                )
        if cause is not None:
            raise error from cause
        raise error


# The frames a give-up leaves in the error's traceback; see forget_frames().
_GIVE_UP_CODES = frozenset({Retrier.after.__code__, Retrier._give_up.__code__})


def forget_frames(error: BaseException | None) -> None:
    """Clear the locals of the finished give-up frames in ``error``'s traceback.

    Those frames hold the error itself, so the error, its traceback and the
    queue would form a reference cycle, and a dropped failed queue would live
    (and keep its journal lease) until the cyclic garbage collector runs.
    """
    tb = None if error is None else error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in _GIVE_UP_CODES:
            tb.tb_frame.clear()
        tb = tb.tb_next


class QueueCore:
    """State, validation and decisions shared by every queue driver."""

    # Defaults live on the class, so that a plain ``ActionQueue()`` only sets
    # what differs (this constructor is on every queue's hot path).
    _state = INIT
    _started = 0
    _failed = False
    _max_retries: int | None = None
    _retry: RetryPolicy | None = None
    _rollback_retry: RetryPolicy | None = None
    _listeners: tuple[Listener, ...] = ()
    _options: dict[int, StepOptions] = _NO_OPTIONS
    _general = False  # True when a run needs the general loop (policies, groups, options)
    _interrupted = False  # a BaseException stopped rollback(); rollback() may resume
    # (rolled back, failed) by rollback() runs that a BaseException interrupted
    _carried: tuple[tuple[object, ...], tuple[RollbackFailure, ...]] = NOTHING_CARRIED
    _clock: Clock = time.monotonic
    _sleep: Any
    _runs_async = False  # True for drivers that await (they accept async steps)
    _recorder: RunRecorder | None = None  # the journal's recorder of this run, if journaled
    _first = 0  # the step execute() starts at (recovery resumes a run part-way)
    _skip: frozenset[int] = frozenset()  # steps rollback() leaves alone (recovery)

    def __init__(
        self,
        *,
        sleep: Callable[[float], Any] | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        rollback_retry: RetryPolicy | None = None,
        listeners: Iterable[Listener] = (),
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str | None = None,
        resumable: bool = False,
    ) -> None:
        self._actions: list[ActionLike] = []
        # Instance attributes read faster in add() than the class's defaults.
        self._state = INIT
        # The classes add() admits without a look: none for a journaled queue, whose
        # every step _admit() checks (see _journal_options).
        self._known: set[type] | frozenset[type] = _ACTION_CLASSES
        if (
            sleep is None
            and max_retries is None
            and retry is None
            and rollback_retry is None
            and clock is None
            and journal is None
            and not listeners
        ):
            if name is not None or resumable:
                self._journal_options(journal, name, resumable)
            return
        if journal is not None or name is not None or resumable:
            self._journal_options(journal, name, resumable)
        if sleep is not None:
            if not callable(sleep):
                raise TypeError(
                    f"sleep must be a callable taking seconds (like time.sleep), got {sleep!r}"
                )
            self._sleep = sleep
        if clock is not None:
            if not callable(clock):
                raise TypeError(
                    f"clock must be a callable returning seconds (like time.monotonic), "
                    f"got {clock!r}"
                )
            self._clock = clock
        if max_retries is not None:
            if type(max_retries) is not int or max_retries < 0:  # bool is refused too
                raise bad_argument(
                    max_retries,
                    (int,),
                    f"max_retries must be None (unlimited) or an int >= 0, got {max_retries!r}",
                )
            self._max_retries = max_retries
        if retry is not None or rollback_retry is not None:
            _check_policy("retry", retry)
            _check_policy("rollback_retry", rollback_retry)
            self._retry = retry
            self._rollback_retry = rollback_retry
            self._general = True
        if not isinstance(listeners, Iterable) or hasattr(listeners, "on_queue_started"):
            raise TypeError(
                f"listeners must be a list of listeners, got {listeners!r}; "
                f"write listeners=[your_listener]"
            )
        own = tuple({id(x): x for x in listeners}.values())  # each listener once, in order
        for listener in own:
            _check_listener(listener)
        self._listeners = own

    def _journal_options(self, journal: Journal | None, name: str | None, resumable: bool) -> None:
        if journal is None:
            raise TypeError(
                "name= and resumable= describe a journaled run: pass journal=open_journal(url) too"
            )
        if not isinstance(journal, _Journal):
            raise TypeError(
                f"journal must be a Journal, got {journal!r}: open it once with "
                f"actionqueues.open_journal('sqlite:///runs.db') and share it between queues"
            )
        if name is None:
            name = type(self).__name__
        if not isinstance(name, str) or not name or len(name) > 200 or not _utf8(name):
            raise ValueError(
                f"name must be a non-empty string of at most 200 characters that UTF-8 can "
                f"encode (the run's name), got {name!r}"
            )
        kind = "async" if self._runs_async else "sync"
        self._recorder = RunRecorder(journal, name, kind, bool(resumable))
        self._general = True
        self._known = frozenset()  # every step goes through _admit(), which checks it

    @property
    def run_id(self) -> str | None:
        """The id of this queue's run in its journal (None without a journal)."""
        return None if self._recorder is None else self._recorder.run_id

    @property
    def journal(self) -> Journal | None:
        """The journal this queue records its run in, if any."""
        return None if self._recorder is None else self._recorder.journal

    # -- introspection --------------------------------------------------

    @property
    def actions(self) -> tuple[ActionLike, ...]:
        """The steps added so far, in the order they were added."""
        return tuple(self._actions)

    @property
    def started(self) -> tuple[ActionLike, ...]:
        """The steps whose ``execute`` was called (these are what ``rollback`` undoes).

        Up to date once ``execute()`` has returned or raised; while it runs, a
        queue without listeners or policies updates it only at the end.
        """
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
            if self._interrupted:
                return "was interrupted while rolling back (rollback() resumes it)"
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

    # -- building ---------------------------------------------------------

    @overload
    def add(
        self,
        action: _A,
        *,
        retry: RetryPolicy | None = None,
        rollback_retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> _A: ...
    @overload
    def add(
        self,
        action: Callable[[], Awaitable[_T]],
        *,
        undo: Callable[[_T], object] | None = None,
        retry: RetryPolicy | None = None,
        rollback_retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> AsyncFunctionStep[_T]: ...
    @overload
    def add(
        self,
        action: Callable[[], _T],
        *,
        undo: Callable[[_T], object] | None = None,
        retry: RetryPolicy | None = None,
        rollback_retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> FunctionStep[_T]: ...
    def add(  # the options are keyword-only for type checkers (see the overloads); at
        # run time they are positional-or-keyword because CPython fills keyword-only
        # defaults far more slowly, and add() is on every queue's hot path.
        self,
        action: Any,
        undo: Callable[[Any], object] | None = None,
        retry: RetryPolicy | None = None,
        rollback_retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Queue a step to run after those already added, and return it.

        The step is an action (an object with ``execute()`` and
        ``rollback()``), or a plain function with an optional ``undo``
        function, which is handed what the function returned::

            user = q.add(lambda: create_user("alice"), undo=delete_user)

        Args:
            action: The action, or a function taking no argument.
            undo: With a function: its compensation.
            retry: The retry policy of this step's ``execute`` (overrides the queue's).
            rollback_retry: The retry policy of this step's ``rollback``.
            timeout: Seconds each call may take (``AsyncActionQueue`` only).

        Returns:
            The action itself, or the :class:`FunctionStep` wrapping the function.

        Raises:
            TypeError: ``action`` is neither an action nor a function, or
                ``undo`` is given with an action.
            QueueStateError: the queue has already been executed.
        """
        if self._state > ADD:
            raise self._refused("add")
        if undo is not None or action.__class__ not in self._known:
            action = self._admit(action, undo)
        if retry is not None or rollback_retry is not None or timeout is not None:
            self._set_options(len(self._actions), action, retry, rollback_retry, timeout)
        self._actions.append(action)
        return action

    def _admit(self, action: Any, undo: Callable[[Any], object] | None) -> Any:
        """Check a step add() does not know to be a plain action; wrap functions.

        A journaled queue's every step comes here: it must be one the journal
        can record.
        """
        if undo is None and action.__class__ in _ACTION_CLASSES:
            step = action  # a plain action, known (only the journal's check is left)
        else:
            step = self._admit_new(action, undo)
        if self._recorder is not None:  # refuse what the journal could not record, now
            require_name(step, len(self._actions))
            dump_state(step, len(self._actions))
        return step

    def _admit_new(self, action: Any, undo: Callable[[Any], object] | None) -> Any:
        if isinstance(action, type):
            raise TypeError(
                f"cannot add the class {action.__qualname__}: add an instance of it, "
                f"e.g. q.add({action.__name__}(...))"
            )
        if _is_action(action):
            if undo is not None:
                raise TypeError(
                    f"undo= is for function steps; {action!r} is an action, "
                    f"its rollback() is the compensation"
                )
            if isinstance(action, ParallelGroup):
                raise TypeError(
                    f"{action!r} cannot be added with add(): use queue.add_group(actions, ...)"
                )
            step = action
        else:
            step = self._function_step(self._callable_or_refuse(action), undo)
        if isinstance(step, AsyncFunctionStep) and not self._runs_async:
            raise TypeError(
                f"{step!r} is an async step (a coroutine function: async steps need "
                f"AsyncActionQueue, run with await q.execute())"
            )
        if not self._runs_async and _has_coroutine_methods(type(step)):
            raise TypeError(
                f"{step!r} is an async action (its execute() or rollback() is a coroutine "
                f"function): it needs AsyncActionQueue, run with await q.execute()"
            )
        return step

    @staticmethod
    def _callable_or_refuse(action: Any) -> Callable[[], Any]:
        if not callable(action):
            raise TypeError(
                f"cannot add {action!r} to an action queue: an action needs callable "
                f"execute() and rollback() methods (subclass actionqueues.Action), "
                f"or pass a function (with undo= for its compensation)"
            )
        if isinstance(action, StepDefinition):
            raise TypeError(
                f"{action!r} is a step definition: call it with its arguments, "
                f"e.g. q.add({action.__name__}(...))"
            )
        return action  # type: ignore[no-any-return]

    def _function_step(self, do: Callable[[], Any], undo: Callable[[Any], object] | None) -> Any:
        return function_step(do, undo)

    def _set_options(
        self,
        index: int,
        action: object,
        retry: RetryPolicy | None,
        rollback_retry: RetryPolicy | None,
        timeout: float | None,
    ) -> None:
        _check_policy("retry", retry)
        _check_policy("rollback_retry", rollback_retry)
        _check_timeout(timeout)
        if self._options is _NO_OPTIONS:
            self._options = {}
        self._options[index] = StepOptions(retry, rollback_retry, timeout)
        self._general = True

    def add_group(
        self,
        actions: Iterable[Any],
        *,
        max_workers: int = 8,
        rollback_concurrently: bool = False,
    ) -> ParallelGroup:
        """Queue actions that run concurrently, as one step; return the group.

        See :class:`ParallelGroup` for what happens when a member fails.
        Members may be actions or functions (without compensation).

        Args:
            actions: The members.
            max_workers: The most members running at once.
            rollback_concurrently: Roll members back concurrently.

        Raises:
            TypeError: a member is neither an action nor a function, or
                ``max_workers`` is not an int.
            ValueError: the group is empty, or ``max_workers`` < 1.
            QueueStateError: the queue has already been executed.
        """
        if self._state > ADD:
            raise self._refused("add_group")
        if self._recorder is not None:
            raise TypeError(
                "parallel groups cannot be journaled yet: add the actions one by one to a "
                "journaled queue, or run the group in a queue without a journal"
            )
        members: list[ActionLike] = [self._admit(member, None) for member in actions]
        if not members:
            raise ValueError("a parallel group needs at least one action")
        group = ParallelGroup(
            members, max_workers=max_workers, rollback_concurrently=rollback_concurrently
        )
        self._actions.append(group)
        self._general = True
        return group

    # -- transitions ------------------------------------------------------

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

    # -- reporting (shared by the drivers' general loops) ------------------

    def _run_started(self, listeners: tuple[Listener, ...], steps: int) -> float:
        if self._recorder is not None:
            try:
                self._recorder.run_started(
                    self._actions,
                    [
                        (self.policy_for(i, "execute"), self.policy_for(i, "rollback"))
                        for i in range(len(self._actions))
                    ],
                )
            except TypeError:  # a step's state became non-JSON after add(): nothing ran
                self._state = ADD
                raise
        if listeners:
            emit(listeners, "on_queue_started", QueueStarted(self, steps))
        return self._clock()

    def _run_finished(
        self, listeners: tuple[Listener, ...], began: float, error: BaseException | None
    ) -> None:
        recorder = self._recorder
        if recorder is not None and not self._runs_async:  # async: the driver records
            try:
                recorder.run_finished(error)
            except BaseException:
                self._failed = True  # the success could not be recorded: a failed run
                raise
        if error is None:
            self._state = EXECUTE_COMPLETE
        else:
            self._failed = True
        if listeners:
            emit(listeners, "on_queue_finished", QueueFinished(self, error, self._clock() - began))

    def _step_started(self, listeners: tuple[Listener, ...], index: int, action: object) -> float:
        recorder = self._recorder
        if recorder is not None and not self._runs_async:  # async: the driver records
            try:
                recorder.step_started(index, action)
            except BaseException:
                # Not recorded, so not called: nothing to roll back. Recorded, then
                # interrupted: not called, but it counts as started (the journal says
                # so), like a step whose process died there.
                if recorder.recorded_start != index:
                    self._started = index
                raise
        if listeners:
            emit(listeners, "on_action_started", ActionStarted(self, index, action))
        return self._clock()

    def _step_succeeded(
        self,
        listeners: tuple[Listener, ...],
        index: int,
        action: object,
        attempts: int,
        start: float,
    ) -> None:
        if self._recorder is not None:
            self._recorder.step_succeeded(index, action, attempts)
        if listeners:
            event = ActionSucceeded(self, index, action, attempts, self._clock() - start)
            emit(listeners, "on_action_succeeded", event)

    def _step_failed(
        self, listeners: tuple[Listener, ...], index: int, action: object, error: BaseException
    ) -> None:
        if self._recorder is not None:
            self._recorder.step_failed(index, action, error, _attempts_of(error))
        if listeners:
            event = ActionFailed(self, index, action, error, _attempts_of(error))
            emit(listeners, "on_action_failed", event)

    def _rollback_started(
        self, listeners: tuple[Listener, ...], index: int, action: object
    ) -> None:
        if self._recorder is not None and not self._runs_async:  # async: the driver records
            self._recorder.rollback_started(index, action)
        if listeners:
            emit(listeners, "on_rollback_started", RollbackStarted(self, index, action))

    def _rollback_succeeded(
        self, listeners: tuple[Listener, ...], index: int, action: object, attempts: int
    ) -> None:
        if self._recorder is not None:
            self._recorder.rollback_finished(index, action, None, attempts)
        if listeners:
            emit(
                listeners, "on_rollback_succeeded", RollbackSucceeded(self, index, action, attempts)
            )

    def _record_rollbacks(
        self,
        listeners: tuple[Listener, ...],
        index: int,
        outcomes: Iterable[tuple[object, BaseException | None]],
        rolled_back: list[object],
        failures: list[RollbackFailure],
    ) -> None:
        """File each (action, error or None) of step ``index`` into the report lists."""
        for action, error in outcomes:
            if error is None:
                rolled_back.append(action)
            else:
                failures.append(
                    self._rollback_failed(index, action, error, listeners, _attempts_of(error))
                )

    def _rollback_done(
        self,
        listeners: tuple[Listener, ...],
        rolled_back: Sequence[object],
        failures: Sequence[RollbackFailure],
    ) -> RollbackReport:
        if self._recorder is not None and not self._runs_async:  # async: the driver records
            try:
                self._recorder.rollback_done()
            except BaseException:
                self._outcome_interrupted(rolled_back, failures)
                raise
        self._state = ROLLBACK_COMPLETE
        done, failed = self._carried
        report = new_report(done + tuple(rolled_back), failed + tuple(failures))
        if listeners:
            emit(listeners, "on_queue_rolled_back", QueueRolledBack(self, report))
        return report

    def _should_roll_back_on_exit(self) -> bool:
        """Whether a ``with`` block that raised must roll back: execute() has started."""
        return self._state == EXECUTE_COMPLETE or (self._state == EXECUTE and self._failed)

    def _outcome_interrupted(
        self, rolled_back: Iterable[object], failures: Iterable[RollbackFailure]
    ) -> None:
        """Writing the rollback's outcome raised (Ctrl-C): let rollback() record it again.

        Every step is rolled back, so rollback() again calls none of them: it
        records the outcome and returns the whole report.
        """
        self._rollback_interrupted(-1, rolled_back, failures)

    def _rollback_interrupted(
        self, index: int, rolled_back: Iterable[object], failures: Iterable[RollbackFailure]
    ) -> None:
        """A BaseException escaped rollback() at step ``index``: let rollback() resume there.

        The interrupted step's rollback may have run in part, so it is tried again.
        What was already rolled back, or failed, goes into the resumed run's report.
        """
        done, failed = self._carried
        self._carried = (done + tuple(rolled_back), failed + tuple(failures))
        self._started = index + 1
        self._state = EXECUTE
        self._failed = True
        self._interrupted = True
        # Recorded once the queue can resume, as the async driver does: a write that
        # raises (a second Ctrl-C) still leaves rollback() able to go on from here.
        if self._recorder is not None and not self._runs_async:  # async: the driver records
            self._recorder.rollback_interrupted()

    def _listeners_now(self) -> tuple[Listener, ...]:
        """The listeners of one run; empty (and cheap) when nobody listens."""
        if self._listeners or _GLOBAL_LISTENERS or _debug_enabled(10):  # logging.DEBUG
            return active_listeners(self._listeners)
        return ()

    # -- decisions --------------------------------------------------------

    def policy_for(self, index: int, method: Method) -> RetryPolicy | None:
        """The retry policy of step ``index``'s ``method``: its own, else the queue's."""
        options = self._options.get(index) if self._options else None
        if method == "rollback":
            if options is not None and options.rollback_retry is not None:
                return options.rollback_retry
            return self._rollback_retry
        if options is not None and options.retry is not None:
            return options.retry
        return self._retry

    def timeout_for(self, index: int) -> float | None:
        """The per-call timeout of step ``index`` (None: none)."""
        options = self._options.get(index) if self._options else None
        return None if options is None else options.timeout

    def _rollback_failed(
        self,
        index: int,
        action: object,
        error: BaseException,
        listeners: tuple[Listener, ...] = (),
        attempts: int = 1,
    ) -> RollbackFailure:
        if self._recorder is not None:
            self._recorder.rollback_finished(index, action, error, attempts)
        logger.error(
            "rollback of step %d (%r) failed; continuing with the earlier steps",
            index,
            action,
            exc_info=error,
            extra={"aq_event": "rollback_failed", "aq_step": index, "aq_action": repr(action)},
        )
        if listeners:
            emit(
                listeners,
                "on_rollback_failed",
                RollbackFailed(self, index, action, error, attempts),
            )
        return RollbackFailure(index, action, error)

    def _check_sync_result(self, result: object, action: object, method: str) -> None:
        """Refuse an awaitable returned by an action run in a sync queue."""
        if hasattr(result, "__await__"):
            refuse_awaitable(result, f"{method}() of {action!r}", "actions")
