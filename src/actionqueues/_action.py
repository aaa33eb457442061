"""The action base classes and the structural type every queued action satisfies."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Action", "ActionLike", "AsyncAction"]


class ActionLike(Protocol):
    """Any object with ``execute()`` and ``rollback()`` methods can be queued.

    :class:`Action` is a convenient base class, but it is not required.
    """

    def execute(self) -> object:
        """Do the work; raise to fail, or raise ``ActionRetryException`` to retry."""
        ...

    def rollback(self) -> object:
        """Undo the work; called after a failure, in reverse order of execution."""
        ...


class Action:
    """Base class for one step of a queue: override ``execute`` and ``rollback``.

    Both methods do nothing by default. Keep on the instance whatever
    ``rollback`` will need (for example the primary key of a created row).

    Example:
        >>> class CreateUser(Action):
        ...     def __init__(self, users: dict[int, str], name: str) -> None:
        ...         self.users, self.name, self.user_id = users, name, None
        ...     def execute(self) -> None:
        ...         self.user_id = len(self.users) + 1
        ...         self.users[self.user_id] = self.name
        ...     def rollback(self) -> None:
        ...         if self.user_id is not None:
        ...             del self.users[self.user_id]
    """

    def execute(self) -> None:
        """Execute this action.

        Save state on the object to allow for rollback of side-effects.
        Raise any exception to fail the queue, or ``ActionRetryException``
        to be called again after a backoff.
        """

    def rollback(self) -> None:
        """Roll back the side-effects of this action.

        Called if a later action in the queue fails to execute, if this
        action's own ``execute`` raised (its outcome may be partial), or if the
        caller rolls back a queue that executed successfully.
        """


class AsyncAction:
    """Base class for one step of an async queue: the coroutine counterpart of ``Action``.

    The async counterpart of :class:`Action` for an
    :class:`~actionqueues.AsyncActionQueue`: its ``execute`` and ``rollback``
    are coroutines (``Action``'s are plain, so an ``async def`` override of
    them is a type error). Both do nothing by default. A plain
    ``ActionQueue`` refuses it at ``add()``: nothing there would await it.

    Example:
        >>> import asyncio
        >>> from actionqueues import AsyncActionQueue
        >>> class Subscribe(AsyncAction):
        ...     def __init__(self, lists: set[str], address: str) -> None:
        ...         self.lists, self.address = lists, address
        ...     async def execute(self) -> None:
        ...         await asyncio.sleep(0)  # a network call
        ...         self.lists.add(self.address)
        ...     async def rollback(self) -> None:
        ...         self.lists.discard(self.address)
        >>> subscribed: set[str] = set()
        >>> q = AsyncActionQueue()
        >>> _ = q.add(Subscribe(subscribed, "ada@example.com"))
        >>> asyncio.run(q.execute())
        >>> subscribed
        {'ada@example.com'}
    """

    async def execute(self) -> None:
        """Execute this action (awaited by the queue).

        Save state on the object to allow for rollback of side-effects.
        Raise any exception to fail the queue, or ``ActionRetryException``
        to be called again after a backoff.
        """

    async def rollback(self) -> None:
        """Roll back the side-effects of this action (awaited by the queue).

        Called if a later action in the queue fails to execute, if this
        action's own ``execute`` raised (its outcome may be partial), or if the
        caller rolls back a queue that executed successfully.
        """
