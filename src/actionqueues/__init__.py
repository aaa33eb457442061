"""actionqueues: run sequences of side-effecting actions safely.

Each action has ``execute()`` and ``rollback()``. An :class:`ActionQueue`
runs the actions in order, retries those that raise
:class:`ActionRetryException`, and on a real failure lets the caller roll back
what already ran, in reverse order.
"""

from ._action import Action, ActionLike
from ._errors import (
    ActionQueuesError,
    ActionRetryException,
    QueueStateError,
    RetryLimitExceeded,
    RollbackError,
)
from ._queue import ActionQueue
from ._report import RollbackFailure, RollbackReport
from ._version import __version__
from .exceptionfactory import DoublingBackoffExceptionFactory

__all__ = [
    "Action",
    "ActionLike",
    "ActionQueue",
    "ActionQueuesError",
    "ActionRetryException",
    "DoublingBackoffExceptionFactory",
    "QueueStateError",
    "RetryLimitExceeded",
    "RollbackError",
    "RollbackFailure",
    "RollbackReport",
    "__version__",
]
