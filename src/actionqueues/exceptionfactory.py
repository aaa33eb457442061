"""Exception factories: helpers that raise ``ActionRetryException`` on a schedule.

An action keeps one factory per method (one for ``execute``, another for
``rollback``) and calls :meth:`~DoublingBackoffExceptionFactory.raise_exception`
where it hits an error worth retrying. Every factory has the same contract:
the first ``retries`` calls raise ``ActionRetryException`` (with a backoff
depending on the factory), every later call raises the original exception.

* :class:`DoublingBackoffExceptionFactory`: each backoff double the previous.
* :class:`FixedBackoffExceptionFactory`: the same backoff every time.
* :class:`ExponentialBackoffExceptionFactory`: any multiplier, a cap, and jitter.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from typing import NoReturn

from ._errors import ActionRetryException, bad_argument
from ._policy import (
    Jitter,
    _backoff,
    _check_cap,
    _check_jitter,
    _check_multiplier,
    _check_random,
    _check_seconds,
    _jittered,
)

__all__ = [
    "DoublingBackoffExceptionFactory",
    "ExponentialBackoffExceptionFactory",
    "FixedBackoffExceptionFactory",
]


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
        _check_retries(retries)
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
        _give_up(original_exception, self._max_retries)


class FixedBackoffExceptionFactory:
    """Ask for ``retries`` retries, all with the same backoff, then fail.

    With the defaults the calls to :meth:`raise_exception` raise
    ``ActionRetryException`` with ``ms_backoff`` 500 three times, then the
    original exception on every later call.

    Args:
        retries: How many retries to ask for before failing for good.
        ms_backoff: The backoff before each retry, in milliseconds.

    Raises:
        ValueError: ``retries`` is negative, or ``ms_backoff`` is negative,
            NaN or infinite.
        TypeError: ``retries`` is not an int, or ``ms_backoff`` not a number.

    Example:
        >>> from actionqueues import ActionRetryException
        >>> factory = FixedBackoffExceptionFactory(retries=2, ms_backoff=250)
        >>> original = ConnectionError("reset by peer")
        >>> for _ in range(3):
        ...     try:
        ...         factory.raise_exception(original)
        ...     except ActionRetryException as retry:
        ...         print(retry.ms_backoff)
        ...     except ConnectionError as error:
        ...         print(error is original)
        250
        250
        True
    """

    def __init__(self, retries: int = 3, ms_backoff: float = 500) -> None:
        _check_retries(retries)
        ActionRetryException(ms_backoff)  # validates the backoff the same way
        self._max_retries = retries
        self._executed_retries = 0
        self._ms_backoff = ms_backoff

    def raise_exception(self, original_exception: BaseException | None = None) -> NoReturn:
        """Raise the next ``ActionRetryException``, or fail for good.

        While retries remain, raise ``ActionRetryException`` with the fixed
        backoff. After that, raise ``original_exception`` itself (the very
        object), or a generic ``Exception`` if none was given.
        """
        if self._executed_retries < self._max_retries:
            self._executed_retries += 1
            raise ActionRetryException(self._ms_backoff)
        _give_up(original_exception, self._max_retries)


class ExponentialBackoffExceptionFactory:
    """Ask for ``retries`` retries with capped, jittered exponential backoff, then fail.

    Retry *k* (counting from 0) computes
    ``min(ms_backoff_initial * multiplier ** k, ms_backoff_max)`` and applies
    ``jitter`` to it: ``"none"`` keeps it, ``"full"`` picks uniformly between
    0 and it, ``"equal"`` picks uniformly between half of it and all of it.
    These are the same rules as :class:`~actionqueues.RetryPolicy`'s, in
    milliseconds instead of seconds.

    Args:
        retries: How many retries to ask for before failing for good.
        ms_backoff_initial: The first backoff before jitter, in milliseconds.
        multiplier: Factor applied to the backoff after each retry; >= 1.
        ms_backoff_max: Cap on every backoff, in milliseconds; at least
            ``ms_backoff_initial``.
        jitter: ``"none"``, ``"full"`` or ``"equal"``.
        random: A function returning a float in ``[0, 1)`` used for jitter;
            inject a seeded one (e.g. ``random.Random(42).random``) for
            reproducible backoffs.

    Raises:
        ValueError: ``retries`` is negative, or another argument is out of
            range.
        TypeError: ``retries`` is not an int, a number is expected but
            something else was given, or ``random`` is not callable.

    Example:
        >>> from actionqueues import ActionRetryException
        >>> factory = ExponentialBackoffExceptionFactory(
        ...     retries=4, ms_backoff_initial=100, ms_backoff_max=300, jitter="none"
        ... )
        >>> for _ in range(4):
        ...     try:
        ...         factory.raise_exception()
        ...     except ActionRetryException as retry:
        ...         print(retry.ms_backoff)
        100.0
        200.0
        300.0
        300.0
    """

    def __init__(
        self,
        retries: int = 3,
        ms_backoff_initial: float = 100,
        multiplier: float = 2.0,
        ms_backoff_max: float = 30000,
        jitter: Jitter = "full",
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        _check_retries(retries)
        _check_seconds("ms_backoff_initial", ms_backoff_initial, unit="milliseconds")
        _check_multiplier("multiplier", multiplier)
        _check_seconds("ms_backoff_max", ms_backoff_max, unit="milliseconds")
        _check_cap("ms_backoff_max", ms_backoff_max, "ms_backoff_initial", ms_backoff_initial)
        _check_jitter("jitter", jitter)
        _check_random("random", random)
        self._max_retries = retries
        self._executed_retries = 0
        self._ms_backoff_initial = ms_backoff_initial
        self._multiplier = multiplier
        self._ms_backoff_max = ms_backoff_max
        self._jitter: Jitter = jitter
        self._random = random

    def raise_exception(self, original_exception: BaseException | None = None) -> NoReturn:
        """Raise the next ``ActionRetryException``, or fail for good.

        While retries remain, raise ``ActionRetryException`` with the next
        backoff. After that, raise ``original_exception`` itself (the very
        object), or a generic ``Exception`` if none was given.

        Raises:
            TypeError: ``random`` returned something other than a number.
            ValueError: ``random`` returned a number outside ``[0, 1]``.
        """
        if self._executed_retries < self._max_retries:
            base = _backoff(
                self._ms_backoff_initial,
                self._multiplier,
                self._ms_backoff_max,
                self._executed_retries,
            )
            backoff = _jittered(self._jitter, base, self._random)
            self._executed_retries += 1
            raise ActionRetryException(backoff)
        _give_up(original_exception, self._max_retries)


def _check_retries(retries: object) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise bad_argument(retries, (int,), f"retries must be an int >= 0, got {retries!r}")


def _give_up(original_exception: BaseException | None, retries: int) -> NoReturn:
    if original_exception is not None:
        raise original_exception
    raise Exception(f"gave up after {retries} retries")
