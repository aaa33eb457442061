"""0.8.2 import path: ``from actionqueues.actionqueue import ActionQueue, ActionRetryException``."""

from ._errors import ActionRetryException
from ._queue import ActionQueue

__all__ = ["ActionQueue", "ActionRetryException"]
