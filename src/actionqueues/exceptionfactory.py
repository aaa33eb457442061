"""Exception factories: helpers that raise ``ActionRetryException`` on a schedule.

An action keeps one factory per method (one for ``execute``, another for
``rollback``) and calls :meth:`~DoublingBackoffExceptionFactory.raise_exception`
where it hits an error worth retrying.
"""

from __future__ import annotations

import math
from typing import NoReturn

from ._errors import ActionRetryException

__all__ = ["DoublingBackoffExceptionFactory"]


class DoublingBackoffExceptionFactory:
    """Ask for ``retries`` retries, each backoff double the one before, then fail.

    With the defaults the calls to :meth:`raise_exception` raise
    ``ActionRetryException`` with ``ms_backoff`` 500, 1000 and 2000, then the
    original exception on every later call.

    Args:
        retries: How many retries to ask for before failing for good.
        ms_backoff_initial: The first backoff, in milliseconds.

    Example:
        >>> from actionqueues import ActionRetryException
        >>> factory = DoublingBackoffExceptionFactory(retries=2, ms_backoff_initial=100)
        >>> for _ in range(2):
        ...     try:
        ...         factory.raise_exception()
        ...     except ActionRetryException as retry:
        ...         print(retry.ms_backoff)
        100
        200
    """

    def __init__(self, retries: int = 3, ms_backoff_initial: float = 500) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        ActionRetryException(ms_backoff_initial)  # validates the backoff the same way
        if retries and ms_backoff_initial and math.log2(ms_backoff_initial) + retries - 1 >= 1024:
            raise ValueError(
                f"ms_backoff_initial={ms_backoff_initial!r} doubled over {retries} retries "
                f"overflows a float; use fewer retries or a smaller initial backoff"
            )
        self._max_retries = retries
        self._executed_retries = 0
        self._ms_backoff = ms_backoff_initial

    def raise_exception(self, original_exception: BaseException | None = None) -> NoReturn:
        """Raise the next ``ActionRetryException``, or fail for good.

        While retries remain, raise ``ActionRetryException`` with the current
        backoff and double it. After that, raise ``original_exception`` itself
        (the very object), or a generic ``Exception`` if none was given.
        """
        if self._executed_retries < self._max_retries:
            backoff = self._ms_backoff
            self._executed_retries += 1
            self._ms_backoff = backoff * 2
            raise ActionRetryException(backoff)
        if original_exception is not None:
            raise original_exception
        raise Exception(f"gave up after {self._max_retries} retries")
