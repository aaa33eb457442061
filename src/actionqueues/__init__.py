"""actionqueues: run sequences of side-effecting actions safely.

Each action has ``execute()`` and ``rollback()``. An :class:`ActionQueue`
(or, with ``await``, an :class:`AsyncActionQueue`) runs the actions in order,
retries what a :class:`RetryPolicy` or an :class:`ActionRetryException` says
to retry, and on a real failure lets the caller roll back what already ran,
in reverse order.
"""

from ._action import Action, ActionLike, AsyncAction
from ._async import AsyncActionQueue
from ._durable import StepContext, current_step
from ._errors import (
    ActionQueuesError,
    ActionRetryException,
    ActionTimeoutError,
    QueueStateError,
    RetryLimitExceeded,
    RollbackError,
)
from ._events import (
    ActionFailed,
    ActionStarted,
    ActionSucceeded,
    BaseListener,
    Listener,
    LoggingListener,
    QueueFinished,
    QueueRolledBack,
    QueueStarted,
    RetryScheduled,
    RollbackFailed,
    RollbackStarted,
    RollbackSucceeded,
    add_listener,
    remove_listener,
)
from ._journal import (
    Journal,
    JournalError,
    LeaseLost,
    RunEvent,
    RunInfo,
    RunTimeline,
    StepRecord,
    default_journal_url,
    open_journal,
)
from ._policy import RetryPolicy
from ._queue import ActionQueue
from ._recovery import RecoveredRun, RecoveryReport, recover, retry_rollback
from ._registry import UnknownActionType, register_action
from ._report import RollbackFailure, RollbackReport
from ._steps import (
    AsyncFunctionStep,
    AsyncStepDefinition,
    FunctionStep,
    ParallelGroup,
    StepDefinition,
    step,
)
from ._version import __version__
from .exceptionfactory import (
    DoublingBackoffExceptionFactory,
    ExponentialBackoffExceptionFactory,
    FixedBackoffExceptionFactory,
)

__all__ = [
    "Action",
    "ActionFailed",
    "ActionLike",
    "ActionQueue",
    "ActionQueuesError",
    "ActionRetryException",
    "ActionStarted",
    "ActionSucceeded",
    "ActionTimeoutError",
    "AsyncAction",
    "AsyncActionQueue",
    "AsyncFunctionStep",
    "AsyncStepDefinition",
    "BaseListener",
    "DoublingBackoffExceptionFactory",
    "ExponentialBackoffExceptionFactory",
    "FixedBackoffExceptionFactory",
    "FunctionStep",
    "Journal",
    "JournalError",
    "LeaseLost",
    "Listener",
    "LoggingListener",
    "ParallelGroup",
    "QueueFinished",
    "QueueRolledBack",
    "QueueStarted",
    "QueueStateError",
    "RecoveredRun",
    "RecoveryReport",
    "RetryLimitExceeded",
    "RetryPolicy",
    "RetryScheduled",
    "RollbackError",
    "RollbackFailed",
    "RollbackFailure",
    "RollbackReport",
    "RollbackStarted",
    "RollbackSucceeded",
    "RunEvent",
    "RunInfo",
    "RunTimeline",
    "StepContext",
    "StepDefinition",
    "StepRecord",
    "UnknownActionType",
    "__version__",
    "add_listener",
    "current_step",
    "default_journal_url",
    "open_journal",
    "recover",
    "register_action",
    "remove_listener",
    "retry_rollback",
    "step",
]
