"""The asyncio driver: :class:`AsyncActionQueue`.

It carries out the same engine decisions as :class:`~actionqueues.ActionQueue`
(see ``_engine.py``); the loops differ only by ``await``.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ._action import ActionLike
from ._engine import (
    _NO_OPTIONS,
    QueueCore,
    Retrier,
    _note_rollback,
    count_calls,
    forget_frames,
    logger,
    switches,
)
from ._errors import ActionTimeoutError, RollbackError
from ._events import (
    Listener,
    Method,
)
from ._journal import LeaseLost
from ._report import RollbackFailure, RollbackReport
from ._steps import AsyncFunctionStep, ParallelGroup

__all__ = ["AsyncActionQueue"]

_Q = TypeVar("_Q", bound="AsyncActionQueue")


async def _asyncio_sleep(seconds: float) -> None:
    # Looked up at call time so that patching ``asyncio.sleep`` in a test works.
    await asyncio.sleep(seconds)


class AsyncActionQueue(QueueCore):
    """The asyncio counterpart of :class:`ActionQueue`: ``await q.execute()``.

    Actions may define ``async def execute/rollback`` or plain methods (a
    plain method runs on the event loop thread, so keep it short). Backoff
    sleeps use :func:`asyncio.sleep` and never block the loop. It runs on
    asyncio (trio is not supported).

    Cancellation: if the task running :meth:`execute` is cancelled, the
    action that was running counts as started (its outcome is unknown) and the
    cancellation propagates. A journal commit in flight is finished first
    (then the step whose start it recorded counts as started too).
    :meth:`rollback` is shielded: it runs every rollback to the end even while
    its task is being cancelled, however many times, then re-raises the
    cancellation.

    Timeouts: ``add(action, timeout=seconds)`` bounds each awaited call of
    that action; a call that overruns fails with :class:`ActionTimeoutError`
    (retried if the step's policy retries it), and the action is rolled back
    like any started action.

    It takes the same arguments as :class:`ActionQueue`; ``sleep`` may be a
    plain or an async function.
    With a PostgreSQL ``journal``, its commits are sent over async
    connections (psycopg's ``AsyncConnection``, a small pool per event loop) and
    awaited, so other tasks run meanwhile. With a SQLite ``journal``, each
    commit is made from the event loop's thread and blocks it for the
    commit's duration (about one disk flush per step).

    Example:
        >>> import asyncio
        >>> from actionqueues import AsyncActionQueue
        >>> log: list[str] = []
        >>> async def main() -> None:
        ...     async with AsyncActionQueue() as q:
        ...         async def create() -> int:
        ...             log.append("create")
        ...             return 7
        ...         async def delete(user_id: int) -> None:
        ...             log.append(f"delete {user_id}")
        ...         q.add(create, undo=delete)
        ...         await q.execute()
        ...         raise RuntimeError("the request failed after all")
        >>> try:
        ...     asyncio.run(main())
        ... except RuntimeError:
        ...     pass
        >>> log
        ['create', 'delete 7']
    """

    _sleep = staticmethod(_asyncio_sleep)
    _runs_async = True

    def _set_options(
        self, index: int, action: object, retry: Any, rollback_retry: Any, timeout: Any
    ) -> None:
        if timeout is not None and not (
            inspect.iscoroutinefunction(getattr(action, "execute", None))
            or inspect.iscoroutinefunction(getattr(action, "rollback", None))
        ):
            raise TypeError(
                f"timeout= bounds awaited calls, but {action!r} has neither an async "
                f"execute() nor an async rollback(): a plain call cannot be interrupted"
            )
        super()._set_options(index, action, retry, rollback_retry, timeout)

    def _function_step(self, do: Callable[[], Any], undo: Callable[[Any], object] | None) -> Any:
        # Await what any function returns, not only coroutine functions': a plain
        # ``add(lambda: create_user("alice"))`` must not leave its coroutine unawaited.
        step = super()._function_step(do, undo)
        return step if isinstance(step, AsyncFunctionStep) else AsyncFunctionStep(do, undo)

    # -- execute ------------------------------------------------------------

    async def execute(self) -> None:
        """Run every action's ``execute`` (awaiting coroutines), in the order added.

        Raises:
            QueueStateError: ``execute()`` was already called.
        """
        actions = self._begin_execute()
        listeners = self._listeners_now()
        began = self._run_started(listeners, len(actions))
        recorder = self._recorder
        try:
            for index in range(self._first, len(actions)):
                action = actions[index]
                self._started = index + 1
                if type(action) is ParallelGroup:
                    await self._execute_group(index, action, listeners)
                    continue
                if recorder is not None:
                    try:
                        await recorder.astep_started(index, action)
                    except BaseException:
                        # Not recorded, so not called. Recorded, then cancelled: not
                        # called, but it counts as started (the journal says so), like
                        # a step whose process died there.
                        if recorder.recorded_start != index:
                            self._started = index
                        raise
                start = self._step_started(listeners, index, action)
                try:
                    attempts = await self._call(index, action, "execute", listeners, start)
                except BaseException as error:
                    self._step_failed(listeners, index, action, error)
                    raise
                self._step_succeeded(listeners, index, action, attempts, start)
        except BaseException as error:
            await self._arun_finished(listeners, began, error)
            raise
        await self._arun_finished(listeners, began, None)

    async def _arun_finished(
        self, listeners: tuple[Listener, ...], began: float, error: BaseException | None
    ) -> None:
        recorder = self._recorder
        if recorder is not None:  # the journal's write is awaited here, not in the core
            try:
                await recorder.arun_finished(error)
            except BaseException:
                self._failed = True  # the success could not be recorded: a failed run
                raise
        self._run_finished(listeners, began, error)

    async def _call(
        self,
        index: int,
        action: ActionLike,
        method: Method,
        listeners: tuple[Listener, ...],
        start: float | None = None,
    ) -> int:
        """Call (and await) ``action.<method>()`` until it succeeds or the engine gives up."""
        call = action.execute if method == "execute" else action.rollback
        timeout = None if self._options is _NO_OPTIONS else self.timeout_for(index)
        recorder = self._recorder
        retrier = None
        error: BaseException | None = None
        calls = 0
        try:
            while True:
                if error is not None:
                    if retrier is None:
                        retrier = Retrier(self, index, action, method, listeners, start)
                    try:
                        delay = retrier.after(error)
                        if recorder is not None:
                            await recorder.aretry_scheduled(
                                index, method, retrier.attempt - 1, delay, error
                            )
                    except BaseException:  # given up: the error's traceback holds this frame,
                        error = retrier = None  # so let go of it (no cycle)
                        forget_frames(sys.exc_info()[1])
                        raise
                    if not switches.sleep_off:
                        pause = self._sleep(delay)
                        if pause is not None and inspect.isawaitable(pause):
                            await pause
                    retrier.starting()
                    if recorder is not None:
                        await recorder.aretry_starting(index, method, retrier.attempt)
                try:
                    calls += 1
                    result = call()
                    if result is not None and inspect.isawaitable(result):
                        if timeout is None:
                            await result
                        else:
                            await _with_timeout(result, timeout, action, method)
                except asyncio.CancelledError:
                    raise  # a cancellation is never retried
                except BaseException as exc:
                    error = exc
                    continue
                return 1 if retrier is None else retrier.attempt - retrier.base
        except BaseException as exc:
            count_calls(exc, calls)
            raise

    async def _execute_group(
        self, index: int, group: ParallelGroup, listeners: tuple[Listener, ...]
    ) -> None:
        errors: dict[int, BaseException] = {}
        limit = asyncio.Semaphore(group.max_workers)
        tasks: list[asyncio.Future[None]] = []

        async def run(position: int, member: ActionLike) -> None:
            async with limit:
                if errors:
                    return
                group._mark_started(member)
                start = self._step_started(listeners, index, member)
                try:
                    attempts = await self._call(index, member, "execute", listeners, start)
                except BaseException as error:
                    self._step_failed(listeners, index, member, error)
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    errors[position] = error
                    for task in tasks:
                        task.cancel()  # cancelling itself is harmless: it is finishing
                    return
                self._step_succeeded(listeners, index, member, attempts, start)

        tasks.extend(asyncio.ensure_future(run(p, m)) for p, m in enumerate(group.actions))
        await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise errors[min(errors)]
        for task in tasks:
            if task.cancelled():  # pragma: no cover - cancelled from outside, or a member raised it
                raise asyncio.CancelledError

    # -- rollback -----------------------------------------------------------

    async def rollback(self, *, raise_errors: bool = False) -> RollbackReport:
        """Roll back every started action, in reverse order, shielded from cancellation.

        Same rules as :meth:`ActionQueue.rollback`. If the surrounding task is
        cancelled meanwhile, every rollback still runs to the end; then the
        cancellation is re-raised instead of the report being returned (each
        failed rollback was logged at ERROR, as always).

        Raises:
            QueueStateError: ``execute()`` has not run yet, is still running,
                or ``rollback()`` was already called.
            RollbackError: ``raise_errors`` is true and a rollback failed.
        """
        self._begin_rollback()
        task = asyncio.ensure_future(self._rollback_all())
        cancelled = 0
        while True:
            try:
                report = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done():
                    raise  # pragma: no cover - the inner task itself was cancelled
                cancelled += 1
                logger.warning(
                    "rollback cancelled (%d time(s)); finishing every rollback first",
                    cancelled,
                    extra={"aq_event": "rollback_shielded"},
                )
        if cancelled:
            raise asyncio.CancelledError
        if raise_errors and report.failures:
            raise RollbackError(report)
        return report

    async def _rollback_all(self) -> RollbackReport:
        actions = self._actions
        listeners = self._listeners_now()
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
                    members = action.started[::-1]
                    if action.rollback_concurrently:
                        limit = asyncio.Semaphore(action.max_workers)
                        errors = await asyncio.gather(
                            *(self._bounded_rollback(limit, index, m, listeners) for m in members)
                        )
                    else:
                        errors = [await self._rollback_step(index, m, listeners) for m in members]
                    outcomes = list(zip(members, errors, strict=True))
                else:
                    outcomes = [(action, await self._rollback_step(index, action, listeners))]
                self._record_rollbacks(listeners, index, outcomes, rolled_back, failures)
        except BaseException:
            self._rollback_interrupted(index, rolled_back, failures)
            if self._recorder is not None:
                await self._recorder.arollback_interrupted()
            raise
        if self._recorder is not None:
            try:
                await self._recorder.arollback_done()
            except BaseException:
                self._outcome_interrupted(rolled_back, failures)
                await self._recorder.arollback_interrupted()
                raise
        return self._rollback_done(listeners, rolled_back, failures)

    async def _bounded_rollback(
        self,
        limit: asyncio.Semaphore,
        index: int,
        action: ActionLike,
        listeners: tuple[Listener, ...],
    ) -> BaseException | None:
        async with limit:
            return await self._rollback_step(index, action, listeners)

    async def _rollback_step(
        self, index: int, action: ActionLike, listeners: tuple[Listener, ...]
    ) -> BaseException | None:
        if self._recorder is not None:
            await self._recorder.arollback_started(index, action)
        self._rollback_started(listeners, index, action)
        try:
            attempts = await self._call(index, action, "rollback", listeners, self._clock())
        except LeaseLost:
            raise  # another process finishes the run: stop, this is no failed rollback
        except (Exception, asyncio.CancelledError) as error:
            # The rollback task is shielded, so a CancelledError here came from the
            # action itself: a failed rollback like any other, never a silent stop.
            return error
        self._rollback_succeeded(listeners, index, action, attempts)
        return None

    # -- context manager ------------------------------------------------------

    async def __aenter__(self: _Q) -> _Q:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back if the block raised after ``execute()`` started; never hide the error."""
        if exc is not None and self._should_roll_back_on_exit():
            _note_rollback(exc, await self.rollback())


async def _with_timeout(awaitable: object, timeout: float, action: object, method: str) -> None:
    try:
        if sys.version_info >= (3, 11):
            # Not wait_for: before 3.12 it can swallow a cancellation that comes as the
            # call ends (CPython gh-86296); asyncio.timeout cannot.
            async with asyncio.timeout(timeout):
                await awaitable  # type: ignore[misc]
        else:  # pragma: no cover - 3.10 (its wait_for has that flaw; nothing better there)
            await asyncio.wait_for(awaitable, timeout)  # type: ignore[arg-type]
    except asyncio.TimeoutError as exc:
        if isinstance(exc.__cause__, asyncio.CancelledError):  # wait_for's own timeout
            raise ActionTimeoutError(action, method, timeout) from exc
        raise  # a TimeoutError raised by the action itself
