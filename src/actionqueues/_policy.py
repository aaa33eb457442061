"""Retry policies: when to call an action again, and how long to wait first.

A :class:`RetryPolicy` is a small immutable value answering three questions
for whoever runs the retries:

* :meth:`~RetryPolicy.is_retryable`: is this error worth another call at all?
* :meth:`~RetryPolicy.delay`: how many seconds to wait before retry number *n*?
* :meth:`~RetryPolicy.allows`: is there budget (attempts and time) left for it?

It never sleeps, reads a clock or keeps state, so the same policy can be shared
by any number of queues and threads, and tested without waiting.
"""

from __future__ import annotations

import math
import numbers
import random as _random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

__all__ = ["Jitter", "RetryPolicy"]

Jitter = Literal["none", "full", "equal"]
"""How a computed delay is randomised.

* ``"none"``: exactly the computed delay.
* ``"full"``: uniformly between 0 and the computed delay.
* ``"equal"``: uniformly between half the computed delay and all of it.
"""

_JITTERS: tuple[Jitter, ...] = ("none", "full", "equal")
_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry a failed call, how long to wait first, and when to stop.

    Delays grow exponentially: retry *n* (1-based) waits
    ``initial_delay * multiplier ** (n - 1)`` seconds, capped at ``max_delay``,
    then randomised according to ``jitter``. An error may dictate its own
    delay through a ``retry_after`` attribute (see :meth:`delay`).

    Args:
        max_attempts: Total number of calls allowed, the first one included;
            ``None`` for no limit. At least 1 (1 means never retry).
        initial_delay: Seconds to wait before the first retry; finite, >= 0.
        multiplier: Factor applied to the delay after each retry; finite, >= 1.
        max_delay: Upper bound, in seconds, for every delay, including one
            asked for through ``retry_after``; finite, >= ``initial_delay``.
        jitter: ``"none"``, ``"full"`` or ``"equal"``; see :data:`Jitter`.
        deadline: Seconds, counted from the start of the first call, after
            which no retry may start (see :meth:`allows`); finite and > 0, or
            ``None`` for no time limit.
        retry_on: Which errors to retry: an exception type, a tuple of
            exception types, or a predicate called with the error that
            returns whether to retry it.
        never_retry: Exception type(s) never retried, whatever ``retry_on``
            says.
        random: A function returning a float in ``[0, 1)``, used for jitter;
            inject a seeded one (e.g. ``random.Random(42).random``) for
            reproducible delays.

    Raises:
        TypeError: An argument has the wrong type, e.g. a ``bool`` or a
            string where a number is expected, or a ``retry_on`` that is not
            an exception type, a tuple of them or a callable.
        ValueError: An argument has the right type but a value out of range.

    Example:
        >>> policy = RetryPolicy(max_attempts=4, initial_delay=0.5, max_delay=1.5)
        >>> [policy.delay(n) for n in (1, 2, 3)]
        [0.5, 1.0, 1.5]
        >>> policy.is_retryable(TimeoutError()), policy.is_retryable(KeyboardInterrupt())
        (True, False)
        >>> policy.allows(attempts_made=3, elapsed=2.0, next_delay=1.5)
        True
        >>> policy.allows(attempts_made=4, elapsed=2.0, next_delay=1.5)
        False
    """

    max_attempts: int | None = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: Jitter = "none"
    deadline: float | None = None
    retry_on: (
        type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
    ) = Exception
    never_retry: type[BaseException] | tuple[type[BaseException], ...] = ()
    random: Callable[[], float] = _random.random

    def __post_init__(self) -> None:
        if self.max_attempts is not None:
            _check_int("max_attempts", self.max_attempts, minimum=1, none_ok=True)
        _check_seconds("initial_delay", self.initial_delay)
        _check_multiplier("multiplier", self.multiplier)
        _check_seconds("max_delay", self.max_delay)
        _check_cap("max_delay", self.max_delay, "initial_delay", self.initial_delay)
        _check_jitter("jitter", self.jitter)
        if self.deadline is not None:
            _check_real("deadline", self.deadline, "None or a number of seconds")
            if not 0 < self.deadline <= _FLOAT_MAX:  # also false for NaN
                raise ValueError(
                    f"deadline must be None or a finite number of seconds > 0, "
                    f"got {self.deadline!r}"
                )
        _check_retry_on(self.retry_on)
        if not _is_exception_types(self.never_retry):
            raise TypeError(
                f"never_retry must be an exception type or a tuple of exception types, "
                f"got {_describe(self.never_retry)}"
            )
        _check_random("random", self.random)

    @classmethod
    def fixed(
        cls,
        delay: float,
        max_attempts: int | None = 3,
        *,
        jitter: Jitter = "none",
        deadline: float | None = None,
        retry_on: (
            type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
        ) = Exception,
        never_retry: type[BaseException] | tuple[type[BaseException], ...] = (),
        random: Callable[[], float] = _random.random,
    ) -> RetryPolicy:
        """A policy that waits the same ``delay`` seconds before every retry.

        Args:
            delay: Seconds to wait before each retry; finite, >= 0.
            max_attempts: Total calls allowed, the first included; ``None``
                for no limit.
            jitter: See :class:`RetryPolicy`.
            deadline: See :class:`RetryPolicy`.
            retry_on: See :class:`RetryPolicy`.
            never_retry: See :class:`RetryPolicy`.
            random: See :class:`RetryPolicy`.

        Returns:
            A policy with ``multiplier=1`` and ``initial_delay == max_delay == delay``.

        Raises:
            TypeError: As for :class:`RetryPolicy`.
            ValueError: As for :class:`RetryPolicy`.

        Example:
            >>> policy = RetryPolicy.fixed(0.25, max_attempts=5)
            >>> [policy.delay(n) for n in (1, 2, 10)]
            [0.25, 0.25, 0.25]
        """
        _check_seconds("delay", delay)
        return cls(
            max_attempts=max_attempts,
            initial_delay=delay,
            multiplier=1.0,
            max_delay=delay,
            jitter=jitter,
            deadline=deadline,
            retry_on=retry_on,
            never_retry=never_retry,
            random=random,
        )

    @classmethod
    def exponential(
        cls,
        initial_delay: float = 0.1,
        multiplier: float = 2.0,
        max_delay: float = 30.0,
        max_attempts: int | None = 3,
        jitter: Jitter = "full",
        *,
        deadline: float | None = None,
        retry_on: (
            type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
        ) = Exception,
        never_retry: type[BaseException] | tuple[type[BaseException], ...] = (),
        random: Callable[[], float] = _random.random,
    ) -> RetryPolicy:
        """A policy with exponentially growing delays and, by default, full jitter.

        Full jitter spreads the retries of many clients that failed together
        over time instead of letting them all retry at once.

        Args:
            initial_delay: See :class:`RetryPolicy`.
            multiplier: See :class:`RetryPolicy`.
            max_delay: See :class:`RetryPolicy`.
            max_attempts: See :class:`RetryPolicy`.
            jitter: See :class:`RetryPolicy`; ``"full"`` unless told otherwise.
            deadline: See :class:`RetryPolicy`.
            retry_on: See :class:`RetryPolicy`.
            never_retry: See :class:`RetryPolicy`.
            random: See :class:`RetryPolicy`.

        Returns:
            The policy.

        Raises:
            TypeError: As for :class:`RetryPolicy`.
            ValueError: As for :class:`RetryPolicy`.

        Example:
            >>> policy = RetryPolicy.exponential(1.0, max_delay=5.0, random=lambda: 0.5)
            >>> [policy.delay(n) for n in (1, 2, 3, 4)]
            [0.5, 1.0, 2.0, 2.5]
        """
        return cls(
            max_attempts=max_attempts,
            initial_delay=initial_delay,
            multiplier=multiplier,
            max_delay=max_delay,
            jitter=jitter,
            deadline=deadline,
            retry_on=retry_on,
            never_retry=never_retry,
            random=random,
        )

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another call.

        Exceptions that do not derive from :class:`Exception` (such as
        ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` and
        ``asyncio.CancelledError``) are never retryable, nor are instances of
        ``never_retry``. Anything else is retryable if it is an instance of
        ``retry_on`` or, when ``retry_on`` is a predicate, if the predicate
        returns a true value for it.

        Args:
            error: The exception the call raised.

        Returns:
            True if the call may be retried.

        Raises:
            Exception: Whatever a ``retry_on`` predicate raises is propagated
                unchanged: a failing predicate is a bug to fix, not a reason to
                retry or to give up silently.
        """
        if not isinstance(error, Exception) or isinstance(error, self.never_retry):
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, (type, tuple)):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def delay(self, retry: int, error: BaseException | None = None) -> float:
        """Seconds to wait before retry number ``retry``.

        The delay is ``initial_delay * multiplier ** (retry - 1)``, capped at
        ``max_delay`` (without overflow however large ``retry`` is), then
        randomised according to ``jitter``.

        If ``error`` has a ``retry_after`` attribute holding a finite,
        non-negative number of seconds (an ``int``, ``float`` or other real
        number, but not a ``bool``) or a non-negative
        :class:`datetime.timedelta`, that delay is used instead, capped at
        ``max_delay`` and without jitter. Any other ``retry_after`` value is
        ignored.

        Args:
            retry: The 1-based number of the retry (1 is the second call).
            error: The exception that made the retry necessary, if any.

        Returns:
            The delay in seconds, between 0 and ``max_delay``.

        Raises:
            TypeError: ``retry`` is not an ``int``, or ``random`` returned
                something other than a number.
            ValueError: ``retry`` is less than 1, or ``random`` returned a
                number outside ``[0, 1]``.
        """
        _check_int("retry", retry, minimum=1)
        if error is not None:
            requested = _retry_after_seconds(error)
            if requested is not None:
                return min(requested, float(self.max_delay))
        base = _backoff(self.initial_delay, self.multiplier, self.max_delay, retry - 1)
        return _jittered(self.jitter, base, self.random)

    def allows(self, attempts_made: int, elapsed: float, next_delay: float) -> bool:
        """Whether the policy's budget allows one more call.

        Args:
            attempts_made: Calls made so far, the first included.
            elapsed: Seconds since the first call started.
            next_delay: Seconds that would be waited before the next call.

        Returns:
            True if fewer than ``max_attempts`` calls were made (or there is no
            limit) and the next call would start no later than ``deadline``
            seconds after the first (or there is no deadline).
        """
        if self.max_attempts is not None and attempts_made >= self.max_attempts:
            return False
        return self.deadline is None or elapsed + next_delay <= self.deadline


# -- shared by RetryPolicy and the exception factories ---------------------------


def _backoff(initial: float, multiplier: float, cap: float, exponent: int) -> float:
    """``min(initial * multiplier ** exponent, cap)`` as a float, never overflowing."""
    if initial == 0 or multiplier == 1:
        return min(float(initial), float(cap))
    try:
        grown = float(initial) * float(multiplier) ** exponent
    except OverflowError:  # the power alone exceeds a float: far beyond any cap
        return float(cap)
    return min(grown, float(cap))  # a product overflowing to inf is capped too


def _jittered(jitter: Jitter, base: float, random: Callable[[], float]) -> float:
    """Apply ``jitter`` to ``base`` using one draw from ``random``."""
    if jitter == "none":
        return base
    draw = random()
    if isinstance(draw, bool) or not isinstance(draw, numbers.Real):
        raise TypeError(f"random() must return a number between 0 and 1, got {_describe(draw)}")
    if not 0 <= draw <= 1:  # also false for NaN
        raise ValueError(f"random() must return a number between 0 and 1, got {draw!r}")
    if jitter == "full":
        return float(draw) * base
    half = base / 2
    return half + float(draw) * half


def _retry_after_seconds(error: BaseException) -> float | None:
    """The delay ``error.retry_after`` asks for, or None if it asks for none we accept."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if value < 0:
        return None
    try:
        seconds = float(value)
    except OverflowError:  # finite, but too large for a float: the cap applies
        return math.inf
    return seconds if math.isfinite(seconds) else None  # NaN and infinity are ignored


def _check_real(name: str, value: object, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected} (int or float), got {_describe(value)}")


def _check_seconds(name: str, value: float, unit: str = "seconds") -> None:
    _check_real(name, value, f"a number of {unit}")
    if not 0 <= value <= _FLOAT_MAX:  # also false for NaN
        raise ValueError(f"{name} must be a finite number of {unit} >= 0, got {value!r}")


def _check_multiplier(name: str, value: float) -> None:
    _check_real(name, value, "a number")
    if not 1 <= value <= _FLOAT_MAX:  # also false for NaN
        raise ValueError(f"{name} must be a finite number >= 1, got {value!r}")


def _check_cap(name: str, value: float, floor_name: str, floor: float) -> None:
    if value < floor:
        raise ValueError(
            f"{name} must be >= {floor_name} ({floor!r}), got {value!r}; "
            f"raise {name} or lower {floor_name}"
        )


def _check_int(name: str, value: object, *, minimum: int, none_ok: bool = False) -> None:
    expected = f"{'None or ' if none_ok else ''}an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_jitter(name: str, value: object) -> None:
    expected = ", ".join(repr(j) for j in _JITTERS)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {expected}, got {_describe(value)}")
    if value not in _JITTERS:
        raise ValueError(f"{name} must be one of {expected}, got {value!r}")


def _check_random(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(
            f"{name} must be a function returning a float in [0, 1), got {_describe(value)}"
        )


def _check_retry_on(value: object) -> None:
    # Classes are callable too, so a class must be an exception type to be accepted.
    if _is_exception_types(value) or (callable(value) and not isinstance(value, type)):
        return
    raise TypeError(
        f"retry_on must be an exception type, a tuple of exception types, or a "
        f"predicate taking the error and returning a bool, got {_describe(value)}"
    )


def _is_exception_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _is_exception_types(value: object) -> bool:
    if isinstance(value, tuple):
        return all(_is_exception_type(item) for item in value)
    return _is_exception_type(value)


def _describe(value: object) -> str:
    if isinstance(value, type):
        return f"class {value.__qualname__}"
    return f"{type(value).__name__} {value!r}"
