"""Function steps (a function and its compensation) and parallel groups."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, overload

from ._action import ActionLike
from ._errors import bad_argument

__all__ = [
    "AsyncFunctionStep",
    "AsyncStepDefinition",
    "FunctionStep",
    "ParallelGroup",
    "StepDefinition",
    "step",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class FunctionStep(Generic[_T]):
    """An action made of two plain functions: ``do()`` and ``undo(result)``.

    ``execute`` calls ``do()`` and keeps what it returns in :attr:`result`;
    ``rollback`` calls ``undo(result)``. If ``do()`` never returned (it
    raised), there is no result to hand over, so ``undo`` is not called: a
    function step has nothing to compensate until it succeeded. Write an
    :class:`~actionqueues.Action` subclass when a failed call can leave
    something behind that must be undone.

    Attributes:
        result: What ``do()`` returned (None until it did).
        done: Whether ``do()`` returned and ``undo`` has not run since.
    """

    __slots__ = ("bound", "do", "done", "name", "result", "undo")

    def __init__(
        self,
        do: Callable[[], _T],
        undo: Callable[[_T], object] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.do = do
        self.undo = undo
        self.name = name or _name(do)
        self.result: _T | None = None
        self.done = False
        # (definition, args, kwargs) when made by calling a @step definition:
        # what a journal saves to rebuild the step elsewhere.
        self.bound: tuple[StepDefinition[Any, _T], tuple[Any, ...], dict[str, Any]] | None = None

    def execute(self) -> None:
        """Call ``do()`` and keep its result for the rollback."""
        result = self.do()
        if inspect.isawaitable(result):
            refuse_awaitable(result, _name(self.do), "steps")
        self.result = result
        self.done = True

    def rollback(self) -> None:
        """Call ``undo(result)`` if ``do()`` returned and an ``undo`` was given."""
        if self.done and self.undo is not None:
            outcome = self.undo(self.result)  # type: ignore[arg-type]
            if inspect.isawaitable(outcome):
                refuse_awaitable(outcome, _name(self.undo), "steps")
            self.done = False

    def __repr__(self) -> str:
        undo = "none" if self.undo is None else _name(self.undo)
        return f"<{type(self).__name__} {self.name} undo={undo}>"


def refuse_awaitable(awaitable: object, what: str, kind: str) -> NoReturn:
    """Close ``awaitable`` (no "never awaited" warning) and explain the sync queue's refusal."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
    raise TypeError(
        f"{what} returned an awaitable: async {kind} need AsyncActionQueue (await q.execute())"
    )


class AsyncFunctionStep(FunctionStep[_T]):
    """A :class:`FunctionStep` whose functions may be coroutine functions.

    Only an :class:`~actionqueues.AsyncActionQueue` can run it.
    """

    __slots__ = ()

    async def execute(self) -> None:  # type: ignore[override]
        """Call (and await) ``do()`` and keep its result for the rollback."""
        result: Any = self.do()
        if inspect.isawaitable(result):
            result = await result
        self.result = result
        self.done = True

    async def rollback(self) -> None:  # type: ignore[override]
        """Call (and await) ``undo(result)`` if ``do()`` returned."""
        if self.done and self.undo is not None:
            outcome = self.undo(self.result)  # type: ignore[arg-type]
            if inspect.isawaitable(outcome):
                await outcome
            self.done = False


def function_step(
    do: Callable[[], Any], undo: Callable[[Any], object] | None, *, name: str | None = None
) -> FunctionStep[Any]:
    """Wrap ``do``/``undo`` in the step class that can run them (async if either is)."""
    if undo is not None and not callable(undo):
        raise TypeError(f"undo= must be a function taking the step's result, got {undo!r}")
    if inspect.iscoroutinefunction(do) or inspect.iscoroutinefunction(undo):
        return AsyncFunctionStep(do, undo, name=name)
    return FunctionStep(do, undo, name=name)


class StepDefinition(Generic[_P, _T]):
    """A function declared with :func:`step`; call it to make a queueable step.

    ``@definition.compensate`` registers the function that undoes it; it is
    handed the value the step returned.
    """

    def __init__(self, fn: Callable[_P, _T]) -> None:
        self.fn = fn
        self.undo: Callable[[_T], object] | None = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "step")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)

    def compensate(self, undo: Callable[[_T], object]) -> Callable[[_T], object]:
        """Decorator: register ``undo`` as this step's compensation; returns it unchanged."""
        if not callable(undo):
            raise TypeError(f"compensate() needs a function taking the step's result, got {undo!r}")
        self.undo = undo
        return undo

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> FunctionStep[_T]:
        """Bind the arguments: the returned step calls ``fn(*args, **kwargs)`` when executed."""
        fn = self.fn
        made = function_step(lambda: fn(*args, **kwargs), self.undo, name=self.__qualname__)
        made.bound = (self, args, kwargs)
        return made

    def __repr__(self) -> str:
        return f"<step {self.__qualname__}>"


class AsyncStepDefinition(StepDefinition[_P, _T]):
    """A coroutine function declared with :func:`step` (for :class:`AsyncActionQueue`).

    Its compensation, registered with ``@definition.compensate``, may be sync or async.
    """

    def __init__(self, fn: Callable[_P, Awaitable[_T]]) -> None:
        super().__init__(fn)  # type: ignore[arg-type]

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> AsyncFunctionStep[_T]:
        """Bind the arguments: the returned step awaits ``fn(*args, **kwargs)`` when executed."""
        fn = self.fn
        made = AsyncFunctionStep(lambda: fn(*args, **kwargs), self.undo, name=self.__qualname__)
        made.bound = (self, args, kwargs)
        return made


@overload
def step(fn: Callable[_P, Coroutine[Any, Any, _T]]) -> AsyncStepDefinition[_P, _T]: ...
@overload
def step(fn: Callable[_P, _T]) -> StepDefinition[_P, _T]: ...
def step(fn: Callable[_P, Any]) -> StepDefinition[_P, Any]:
    """Declare a function as a step; pair it with ``@<name>.compensate``.

    Example:
        >>> from actionqueues import ActionQueue, step
        >>> users: dict[int, str] = {}
        >>> @step
        ... def create_user(name: str) -> int:
        ...     users[len(users) + 1] = name
        ...     return len(users)
        >>> @create_user.compensate
        ... def delete_user(user_id: int) -> None:
        ...     del users[user_id]
        >>> q = ActionQueue()
        >>> created = q.add(create_user("alice"))
        >>> q.execute()
        >>> created.result, q.rollback().ok, users
        (1, True, {})
    """
    if not callable(fn):
        raise TypeError(f"@step decorates a function, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        return AsyncStepDefinition(fn)
    return StepDefinition(fn)


class ParallelGroup:
    """Actions that run concurrently as one step of a queue.

    Made by ``queue.add_group(actions, ...)``. The sync queue runs members in
    a bounded thread pool, the async queue as tasks. If a member fails, no
    further member is started; the sync queue lets the running ones finish,
    the async queue cancels them (a cancelled member counts as started, its
    outcome being unknown). Then ``execute()`` raises the failure of the
    first failed member in group order.

    On rollback, every started member is rolled back in the reverse of the
    order they started (concurrently when ``rollback_concurrently`` is true;
    the report still lists them in that order), before earlier steps.

    Attributes:
        actions: The members, in the order given.
        max_workers: The most members running at once.
        rollback_concurrently: Whether members roll back concurrently.
        started: The members whose ``execute`` was called, in start order.
    """

    __slots__ = ("_lock", "actions", "max_workers", "rollback_concurrently", "started")

    def __init__(
        self,
        actions: Iterable[ActionLike],
        *,
        max_workers: int = 8,
        rollback_concurrently: bool = False,
    ) -> None:
        self.actions: tuple[ActionLike, ...] = tuple(actions)
        if type(max_workers) is not int or max_workers < 1:
            raise bad_argument(
                max_workers, (int,), f"max_workers must be an int >= 1, got {max_workers!r}"
            )
        self.max_workers = max_workers
        self.rollback_concurrently = bool(rollback_concurrently)
        self.started: list[ActionLike] = []
        self._lock = threading.Lock()

    def _mark_started(self, action: ActionLike) -> None:
        with self._lock:
            self.started.append(action)

    def execute(self) -> None:
        """Groups are run by their queue, not called directly."""
        raise TypeError("a ParallelGroup is run by the queue it was added to")

    rollback = execute

    def __repr__(self) -> str:
        return f"<ParallelGroup of {len(self.actions)} actions, {len(self.started)} started>"
