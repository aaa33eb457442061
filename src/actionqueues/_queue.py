"""The synchronous driver: :class:`ActionQueue`."""

from __future__ import annotations

import contextvars
import functools
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from ._action import ActionLike
from ._engine import (
    EXECUTE_COMPLETE,
    NOTHING_CARRIED,
    ROLLBACK_COMPLETE,
    QueueCore,
    Retrier,
    _note_rollback,
    count_calls,
    forget_frames,
    switches,
)
from ._errors import ActionRetryException, RollbackError
from ._events import (
    Listener,
    Method,
)
from ._journal import LeaseLost
from ._report import RollbackFailure, RollbackReport, new_report
from ._steps import ParallelGroup

__all__ = ["ActionQueue"]

_A = TypeVar("_A", bound=ActionLike)
_Q = TypeVar("_Q", bound="ActionQueue")


def _finish(pool: ThreadPoolExecutor, futures: list[Future[Any]], *, start_more: bool) -> None:
    """Wait for the futures, however often the wait is interrupted; then re-raise that.

    With ``start_more`` false, futures that have not started yet are cancelled.
    """
    if not start_more:
        pool.shutdown(wait=False, cancel_futures=True)
    interrupted: BaseException | None = None
    while True:
        try:
            _wait_all(futures)
            break
        except BaseException as exc:  # a second Ctrl-C must not abandon them
            interrupted = exc
    pool.shutdown()
    if interrupted is not None:
        raise interrupted


def _split(
    newest_first: list[ActionLike], lowest: int, failed: list[RollbackFailure]
) -> tuple[tuple[object, ...], tuple[RollbackFailure, ...]]:
    """Rolled-back actions and failures of steps ``lowest`` and up, given newest first."""
    failed_at = {f.index for f in failed}
    top = lowest + len(newest_first) - 1
    rolled_back = tuple(a for i, a in enumerate(newest_first) if top - i not in failed_at)
    return rolled_back, tuple(failed)


def _wait_all(futures: list[Future[Any]]) -> None:
    # Not concurrent.futures.wait(): it never returns for a future cancelled by
    # shutdown(cancel_futures=True), whose state stays CANCELLED.
    for future in futures:
        if not future.cancelled():
            future.exception()


def _time_sleep(seconds: float) -> None:
    # Looked up at call time so that patching ``time.sleep`` in a test works.
    time.sleep(seconds)


class ActionQueue(QueueCore):
    """Runs actions in order; on failure, the caller rolls back what started.

    A queue is single-use: ``add()`` actions, ``execute()`` once, and
    ``rollback()`` at most once after ``execute()`` returned or raised. As a
    context manager it rolls back by itself when the block raises::

        with ActionQueue() as q:
            q.add(CreateUser())
            q.execute()

    Args:
        sleep: Called with a number of seconds to wait before a retry.
            Defaults to :func:`time.sleep`; tests pass a recorder so they never
            really sleep (see :mod:`actionqueues.testing`).
        max_retries: The most times one action's ``execute`` (or ``rollback``)
            may raise :class:`ActionRetryException` and be called again.
            ``None`` (the default, as in 0.8.2) means no cap. Past the cap the
            call fails with :class:`RetryLimitExceeded`.
        retry: The :class:`RetryPolicy` for every step's ``execute`` (a step's
            own ``add(..., retry=...)`` wins). None: only
            ``ActionRetryException`` retries, as in 0.8.2.
        rollback_retry: The same, for ``rollback``.
        listeners: :class:`Listener` objects told about every event of this
            queue (on top of the global ones, see :func:`add_listener`).
        clock: Returns the time in seconds (default :func:`time.monotonic`);
            used for deadlines and durations.
        journal: A :class:`Journal` (from :func:`open_journal`) that records
            the run durably, so that :func:`recover` can finish it if this
            process dies. Every step must then be registered with
            :func:`register_action`. None (the default): nothing is kept.
        name: The run's name in the journal (default: the class name).
        resumable: Whether recovery may resume the run forward instead of
            rolling it back (its steps must then be safe to re-execute).

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

    _sleep = staticmethod(_time_sleep)
    # Whether a subclass overrides execute_with_retries (0.8.2 called it for
    # every action); worked out once per class, not on every run.
    _legacy_retries = False
    # The step an override of execute_with_retries is called for: (index, listeners, start),
    # and how many calls super().execute_with_retries() made (see _legacy_call).
    _legacy_step: tuple[int, tuple[Listener, ...], float | None] | None = None
    _legacy_attempts = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._legacy_retries = cls.execute_with_retries is not ActionQueue.execute_with_retries

    def _set_options(
        self, index: int, action: object, retry: Any, rollback_retry: Any, timeout: Any
    ) -> None:
        if timeout is not None:
            raise TypeError(
                "timeout= needs AsyncActionQueue: a running thread cannot be interrupted; "
                "give the call its own timeout (e.g. the HTTP client's) instead"
            )
        super()._set_options(index, action, retry, rollback_retry, timeout)

    # -- execute ------------------------------------------------------------

    def execute(self) -> None:
        """Run every action's ``execute``, in the order added.

        Each action counts as started just before its ``execute`` is called.
        An exception from ``execute`` that is not retried stops the queue and
        propagates unchanged; call :meth:`rollback` to undo what started.

        Raises:
            QueueStateError: ``execute()`` was already called.
        """
        actions = self._begin_execute()
        listeners = self._listeners_now()
        if listeners or self._general or self._legacy_retries:
            self._execute_general(actions, listeners)
            return
        started = 0
        try:
            for action in actions:
                started += 1
                try:
                    result = action.execute()
                    if result is not None:
                        self._check_sync_result(result, action, "execute")
                except ActionRetryException as signal:
                    self._call(started - 1, action, "execute", (), signal)
        except BaseException:
            self._started = started
            self._failed = True
            raise
        self._started = started
        self._state = EXECUTE_COMPLETE

    def _execute_general(self, actions: list[ActionLike], listeners: tuple[Listener, ...]) -> None:
        legacy = self._legacy_retries
        began = self._run_started(listeners, len(actions))
        try:
            for index in range(self._first, len(actions)):
                action = actions[index]
                self._started = index + 1
                if type(action) is ParallelGroup:
                    self._execute_group(index, action, listeners)
                    continue
                start = self._step_started(listeners, index, action)
                try:
                    if legacy:
                        attempts = self._legacy_call(index, action, _call_execute, listeners, start)
                    else:
                        attempts = self._call(index, action, "execute", listeners, start=start)
                except BaseException as error:
                    self._step_failed(listeners, index, action, error)
                    raise
                self._step_succeeded(listeners, index, action, attempts, start)
        except BaseException as error:
            self._run_finished(listeners, began, error)
            raise
        self._run_finished(listeners, began, None)

    def _call(
        self,
        index: int,
        action: ActionLike,
        method: Method,
        listeners: tuple[Listener, ...],
        first_error: BaseException | None = None,
        start: float | None = None,
        call: Callable[[], object] | None = None,
    ) -> int:
        """Call ``action.<method>()`` (or ``call``) until it succeeds or the engine gives up.

        Returns how many calls it made.
        """
        if call is None:
            call = action.execute if method == "execute" else action.rollback
        retrier = None
        error = first_error
        calls = 0 if first_error is None else 1
        try:
            while True:
                if error is not None:
                    if retrier is None:
                        retrier = Retrier(self, index, action, method, listeners, start)
                    try:
                        delay = retrier.after(error)
                    except BaseException:  # given up: the error's traceback holds this frame,
                        error = first_error = retrier = None  # so let go of it (no cycle)
                        forget_frames(sys.exc_info()[1])
                        raise
                    if not switches.sleep_off:
                        self._sleep(delay)
                    retrier.starting()
                try:
                    calls += 1
                    result = call()
                except BaseException as exc:
                    error = exc
                    continue
                if result is not None:
                    self._check_sync_result(result, action, method)
                return 1 if retrier is None else retrier.attempt - retrier.base
        except BaseException as exc:
            count_calls(exc, calls)
            raise

    def _execute_group(
        self, index: int, group: ParallelGroup, listeners: tuple[Listener, ...]
    ) -> None:
        failed = threading.Event()
        errors: dict[int, BaseException] = {}

        def run(position: int, member: ActionLike) -> None:
            if failed.is_set():
                return
            group._mark_started(member)
            start = self._step_started(listeners, index, member)
            try:
                attempts = self._call(index, member, "execute", listeners, start=start)
            except BaseException as error:
                errors[position] = error
                failed.set()
                self._step_failed(listeners, index, member, error)
                return
            self._step_succeeded(listeners, index, member, attempts, start)

        workers = min(group.max_workers, len(group.actions))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="actionqueues-group")
        futures = [
            pool.submit(contextvars.copy_context().run, run, position, member)
            for position, member in enumerate(group.actions)
        ]
        try:
            _wait_all(futures)
        except BaseException:
            # Interrupted (Ctrl-C) while members run: start no more, let the running
            # ones finish, so that everything started is known before rollback.
            failed.set()
            _finish(pool, futures, start_more=False)
            raise
        pool.shutdown()
        if errors:
            raise errors[min(errors)]

    # -- rollback -----------------------------------------------------------

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
        listeners = self._listeners_now()
        if listeners or self._general or self._legacy_retries:
            report = self._rollback_general(listeners)
        else:
            report = self._rollback_fast()
        if raise_errors and report.failures:
            raise RollbackError(report)
        return report

    def _rollback_fast(self) -> RollbackReport:
        """Plain actions, no listener, no policy: the 0.8.2 loop, with a report."""
        started = self._actions[: self._started]
        started.reverse()
        failed: list[RollbackFailure] | None = None
        index = len(started)
        try:
            for action in started:
                index -= 1
                try:
                    try:
                        result = action.rollback()
                        if result is not None:
                            self._check_sync_result(result, action, "rollback")
                    except ActionRetryException as signal:
                        self._call(index, action, "rollback", (), signal)
                except Exception as error:
                    if failed is None:
                        failed = []
                    failed.append(self._rollback_failed(index, action, error))
        except BaseException:
            done = started[: len(started) - 1 - index]  # the steps after `index`, newest first
            self._rollback_interrupted(index, *_split(done, index + 1, failed or []))
            raise
        if failed is None and self._carried is NOTHING_CARRIED:
            self._state = ROLLBACK_COMPLETE
            return new_report(tuple(started), ())
        return self._rollback_done((), *_split(started, 0, failed or []))

    def _rollback_general(self, listeners: tuple[Listener, ...]) -> RollbackReport:
        actions = self._actions
        legacy = self._legacy_retries
        rolled_back: list[object] = []
        failures: list[RollbackFailure] = []
        index = self._started
        try:
            skip = self._skip
            for index in range(self._started - 1, -1, -1):
                if skip and index in skip:
                    continue
                action = actions[index]
                if type(action) is ParallelGroup:
                    outcomes = self._rollback_group(index, action, listeners)
                else:
                    outcomes = [(action, self._rollback_step(index, action, listeners, legacy))]
                self._record_rollbacks(listeners, index, outcomes, rolled_back, failures)
        except BaseException:
            self._rollback_interrupted(index, rolled_back, failures)
            raise
        return self._rollback_done(listeners, rolled_back, failures)

    def _rollback_step(
        self, index: int, action: ActionLike, listeners: tuple[Listener, ...], legacy: bool
    ) -> BaseException | None:
        """Roll back one action; return the error it ended with, or None."""
        self._rollback_started(listeners, index, action)
        try:
            if legacy:
                start = self._clock()
                attempts = self._legacy_call(index, action, _call_rollback, listeners, start)
            else:
                attempts = self._call(index, action, "rollback", listeners, start=self._clock())
        except LeaseLost:
            raise  # another process finishes the run: stop, this is no failed rollback
        except Exception as error:
            return error
        self._rollback_succeeded(listeners, index, action, attempts)
        return None

    def _rollback_group(
        self, index: int, group: ParallelGroup, listeners: tuple[Listener, ...]
    ) -> list[tuple[object, BaseException | None]]:
        members = group.started[::-1]
        if group.rollback_concurrently and len(members) > 1:
            workers = min(group.max_workers, len(members))
            pool = ThreadPoolExecutor(workers, thread_name_prefix="actionqueues-group")
            futures = [
                pool.submit(
                    contextvars.copy_context().run, self._rollback_step, index, m, listeners, False
                )
                for m in members
            ]
            # Every rollback runs to the end, even if this thread is interrupted.
            _finish(pool, futures, start_more=True)
            errors = [f.result() for f in futures]
        else:
            errors = [self._rollback_step(index, m, listeners, False) for m in members]
        return list(zip(members, errors, strict=True))

    # -- context manager ------------------------------------------------------

    def __enter__(self: _Q) -> _Q:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back if the block raised after ``execute()`` started; never hide the error."""
        if exc is not None and self._should_roll_back_on_exit():
            _note_rollback(exc, self.rollback())

    # -- 0.8.2 ---------------------------------------------------------------

    def execute_with_retries(self, action: _A, f: Callable[[_A], object]) -> None:
        """Call ``f(action)`` until it stops raising :class:`ActionRetryException`.

        Kept from 0.8.2: sleeps each retry's ``ms_backoff`` with the queue's
        ``sleep`` and honours its ``max_retries``. A subclass that overrides
        this method is called by :meth:`execute` and :meth:`rollback` for every
        action, as in 0.8.2.
        """
        method = _METHOD_NAMES.get(f, "execute_with_retries")
        index, listeners, start = self._legacy_step or (-1, (), None)
        self._legacy_attempts = self._call(
            index,
            action,
            method,  # type: ignore[arg-type]
            listeners,
            start=start,
            call=functools.partial(f, action),
        )

    def _legacy_call(
        self,
        index: int,
        action: ActionLike,
        f: Callable[[ActionLike], object],
        listeners: tuple[Listener, ...],
        start: float,
    ) -> int:
        """Call a subclass's ``execute_with_retries`` for step ``index``; return its calls.

        Its ``super()`` call then retries with the step's policies, records and
        reports as the queue does without the override.
        """
        self._legacy_step = (index, listeners, start)
        self._legacy_attempts = 1
        try:
            self.execute_with_retries(action, f)
        finally:
            self._legacy_step = None
        return self._legacy_attempts


def _call_execute(action: ActionLike) -> object:
    return action.execute()


def _call_rollback(action: ActionLike) -> object:
    return action.rollback()


_METHOD_NAMES: dict[object, Method] = {_call_execute: "execute", _call_rollback: "rollback"}
