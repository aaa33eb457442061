"""0.8.2 import path: ``from actionqueues.actionqueue import ActionQueue, ActionRetryException``.

0.8.2's module also exposed ``time`` and ``AQStateMachine``; both stay, so
that tests which patch ``actionqueues.actionqueue.time.sleep`` keep working
(the queue looks ``time.sleep`` up at call time).
"""

import time

from ._errors import ActionRetryException
from ._queue import ActionQueue
from .aqstatemachine import AQStateMachine

__all__ = ["AQStateMachine", "ActionQueue", "ActionRetryException", "time"]
