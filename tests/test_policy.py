"""RetryPolicy and the exception factories: validation, delays, retryability, budget."""

from __future__ import annotations

import asyncio
import dataclasses
import doctest
import math
import random
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import actionqueues._policy
import actionqueues.exceptionfactory
from actionqueues import ActionRetryException
from actionqueues._policy import RetryPolicy
from actionqueues.exceptionfactory import (
    ExponentialBackoffExceptionFactory,
    FixedBackoffExceptionFactory,
)

NAN = math.nan
INF = math.inf


def draws(*values: object) -> Callable[[], float]:
    """A random source returning ``values`` in order, then failing the test."""
    it = iter(values)

    def next_draw() -> float:
        value = next(it, None)
        assert value is not None, "random() was called more often than expected"
        return value  # type: ignore[return-value]

    return next_draw


def never_called() -> float:
    raise AssertionError("random() must not be called")


class Throttled(Exception):
    """An error that says how long to wait, like an HTTP 429 with Retry-After."""

    def __init__(self, retry_after: object) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be None or an int >= 1, got 0"),
        ({"max_attempts": -3}, ValueError, "max_attempts must be None or an int >= 1, got -3"),
        (
            {"max_attempts": True},
            TypeError,
            "max_attempts must be None or an int >= 1, got bool True",
        ),
        (
            {"max_attempts": 2.0},
            TypeError,
            "max_attempts must be None or an int >= 1, got float 2.0",
        ),
        (
            {"initial_delay": -0.1},
            ValueError,
            "initial_delay must be a finite number of seconds >= 0, got -0.1",
        ),
        (
            {"initial_delay": NAN},
            ValueError,
            "initial_delay must be a finite number of seconds >= 0, got nan",
        ),
        (
            {"initial_delay": INF},
            ValueError,
            "initial_delay must be a finite number of seconds >= 0, got inf",
        ),
        (
            {"initial_delay": 10**400, "max_delay": 10**400},
            ValueError,
            "initial_delay must be a finite number of seconds >= 0, got 1000",
        ),
        (
            {"initial_delay": True},
            TypeError,
            "initial_delay must be a number of seconds (int or float), got bool True",
        ),
        (
            {"initial_delay": "0.1"},
            TypeError,
            "initial_delay must be a number of seconds (int or float), got str '0.1'",
        ),
        (
            {"initial_delay": Decimal("0.1")},
            TypeError,
            "initial_delay must be a number of seconds (int or float), got Decimal",
        ),
        ({"multiplier": 0.5}, ValueError, "multiplier must be a finite number >= 1, got 0.5"),
        ({"multiplier": 0}, ValueError, "multiplier must be a finite number >= 1, got 0"),
        ({"multiplier": INF}, ValueError, "multiplier must be a finite number >= 1, got inf"),
        ({"multiplier": NAN}, ValueError, "multiplier must be a finite number >= 1, got nan"),
        (
            {"multiplier": False},
            TypeError,
            "multiplier must be a number (int or float), got bool False",
        ),
        (
            {"max_delay": -1},
            ValueError,
            "max_delay must be a finite number of seconds >= 0, got -1",
        ),
        (
            {"max_delay": INF},
            ValueError,
            "max_delay must be a finite number of seconds >= 0, got inf",
        ),
        (
            {"max_delay": None},
            TypeError,
            "max_delay must be a number of seconds (int or float), got NoneType None",
        ),
        (
            {"initial_delay": 0.1, "max_delay": 0.05},
            ValueError,
            "max_delay must be >= initial_delay (0.1), got 0.05; "
            "raise max_delay or lower initial_delay",
        ),
        (
            {"jitter": "random"},
            ValueError,
            "jitter must be one of 'none', 'full', 'equal', got 'random'",
        ),
        (
            {"jitter": "Full"},
            ValueError,
            "jitter must be one of 'none', 'full', 'equal', got 'Full'",
        ),
        (
            {"jitter": None},
            TypeError,
            "jitter must be one of 'none', 'full', 'equal', got NoneType None",
        ),
        (
            {"deadline": 0},
            ValueError,
            "deadline must be None or a finite number of seconds > 0, got 0",
        ),
        (
            {"deadline": -5.0},
            ValueError,
            "deadline must be None or a finite number of seconds > 0, got -5.0",
        ),
        (
            {"deadline": NAN},
            ValueError,
            "deadline must be None or a finite number of seconds > 0, got nan",
        ),
        (
            {"deadline": INF},
            ValueError,
            "deadline must be None or a finite number of seconds > 0, got inf",
        ),
        (
            {"deadline": True},
            TypeError,
            "deadline must be None or a number of seconds (int or float), got bool True",
        ),
        (
            {"deadline": "10"},
            TypeError,
            "deadline must be None or a number of seconds (int or float), got str '10'",
        ),
        (
            {"retry_on": int},
            TypeError,
            "retry_on must be an exception type, a tuple of exception types, or a "
            "predicate taking the error and returning a bool, got class int",
        ),
        (
            {"retry_on": ValueError("not a class")},
            TypeError,
            "retry_on must be an exception type, a tuple of exception types, or a "
            "predicate taking the error and returning a bool, got ValueError",
        ),
        ({"retry_on": (ValueError, int)}, TypeError, "retry_on must be an exception type"),
        ({"retry_on": [ValueError]}, TypeError, "got list [<class 'ValueError'>]"),
        ({"retry_on": ((ValueError,),)}, TypeError, "retry_on must be an exception type"),
        ({"retry_on": ValueError | KeyError}, TypeError, "retry_on must be an exception type"),
        ({"retry_on": None}, TypeError, "retry_on must be an exception type"),
        (
            {"never_retry": lambda error: True},
            TypeError,
            "never_retry must be an exception type or a tuple of exception types, got function",
        ),
        ({"never_retry": [KeyError]}, TypeError, "never_retry must be an exception type"),
        ({"never_retry": str}, TypeError, "got class str"),
        ({"never_retry": None}, TypeError, "never_retry must be an exception type"),
        (
            {"random": 0.5},
            TypeError,
            "random must be a function returning a float in [0, 1), got float 0.5",
        ),
        ({"random": None}, TypeError, "random must be a function returning a float"),
    ],
)
def test_an_invalid_argument_is_refused_with_a_message_naming_it(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 1},
        {"max_attempts": None},
        {"initial_delay": 0, "max_delay": 0},
        {"initial_delay": 2, "max_delay": 2},
        {"multiplier": 1},
        {"initial_delay": Fraction(1, 10), "multiplier": Fraction(3, 2)},
        {"deadline": 1e-9},
        {"deadline": 3600},
        {"retry_on": ()},
        {"retry_on": (TimeoutError, ConnectionError)},
        {"retry_on": BaseException},
        {"retry_on": lambda error: True},
        {"never_retry": (KeyError, IndexError)},
        {"jitter": "equal"},
        {"random": random.Random(0).random},
    ],
)
def test_edge_values_within_the_rules_are_accepted(kwargs: dict[str, Any]) -> None:
    policy = RetryPolicy(**kwargs)
    for name, value in kwargs.items():
        assert getattr(policy, name) is value


def test_the_defaults_are_three_attempts_from_a_tenth_of_a_second_doubling_to_thirty() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.initial_delay == 0.1
    assert policy.multiplier == 2.0
    assert policy.max_delay == 30.0
    assert policy.jitter == "none"
    assert policy.deadline is None
    assert policy.retry_on is Exception
    assert policy.never_retry == ()
    assert policy.random is random.random


# -- immutability ----------------------------------------------------------------


def test_a_policy_cannot_be_changed_after_it_is_made() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 10  # type: ignore[misc]
    # New attributes are refused too, but many CPython versions say so with a
    # TypeError (frozen slotted dataclasses bug, python/cpython#105936).
    with pytest.raises((AttributeError, TypeError)):
        policy.surprise = 1  # type: ignore[attr-defined]
    assert not hasattr(policy, "__dict__")


def test_equal_policies_compare_and_hash_equal() -> None:
    assert RetryPolicy() == RetryPolicy()
    assert hash(RetryPolicy(max_attempts=5)) == hash(RetryPolicy(max_attempts=5))
    assert RetryPolicy(max_attempts=5) != RetryPolicy(max_attempts=6)


def test_replace_makes_a_new_policy_and_validates_it_again() -> None:
    policy = RetryPolicy()
    assert dataclasses.replace(policy, max_attempts=7).max_attempts == 7
    assert policy.max_attempts == 3
    with pytest.raises(ValueError, match="max_attempts must be None or an int >= 1, got 0"):
        dataclasses.replace(policy, max_attempts=0)


# -- delay: the computed schedule ------------------------------------------------


def test_delays_double_from_the_initial_delay_without_jitter() -> None:
    policy = RetryPolicy(max_attempts=None)
    assert [policy.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]


def test_delays_are_capped_at_max_delay() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=3, max_delay=10)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 3.0, 9.0, 10.0, 10.0, 10.0]


def test_delays_are_always_floats() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=2, max_delay=4)
    assert all(type(policy.delay(n)) is float for n in range(1, 5))
    assert type(RetryPolicy.fixed(2).delay(1)) is float


def test_huge_retry_numbers_give_max_delay_instead_of_overflowing() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=1.5, max_delay=20.0)
    assert policy.delay(10_000) == 20.0
    assert policy.delay(10**400) == 20.0


def test_a_product_too_large_for_a_float_is_capped_too() -> None:
    policy = RetryPolicy(initial_delay=1e300, multiplier=1e10, max_delay=1e308)
    assert policy.delay(2) == 1e308


def test_a_multiplier_of_one_keeps_the_initial_delay_for_any_retry() -> None:
    policy = RetryPolicy(initial_delay=0.3, multiplier=1, max_delay=1)
    assert [policy.delay(n) for n in (1, 2, 1000, 10**400)] == [0.3, 0.3, 0.3, 0.3]


def test_a_zero_initial_delay_stays_zero_for_any_retry() -> None:
    policy = RetryPolicy(initial_delay=0, multiplier=10)
    assert [policy.delay(n) for n in (1, 2, 10**400)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("retry", "error", "message"),
    [
        (0, ValueError, "retry must be an int >= 1, got 0"),
        (-1, ValueError, "retry must be an int >= 1, got -1"),
        (True, TypeError, "retry must be an int >= 1, got bool True"),
        (1.0, TypeError, "retry must be an int >= 1, got float 1.0"),
        (None, TypeError, "retry must be an int >= 1, got NoneType None"),
    ],
)
def test_delay_refuses_a_retry_number_that_is_not_a_positive_int(
    retry: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        RetryPolicy().delay(retry)


# -- delay: jitter ---------------------------------------------------------------


def test_no_jitter_never_draws_a_random_number() -> None:
    policy = RetryPolicy(jitter="none", random=never_called)
    assert policy.delay(3) == 0.4


def test_full_jitter_scales_each_delay_by_a_fresh_draw_from_the_seeded_source() -> None:
    policy = RetryPolicy(max_attempts=None, jitter="full", random=random.Random(42).random)
    expected_source = random.Random(42)
    expected = [expected_source.random() * (0.1 * 2.0**k) for k in range(8)]
    assert [policy.delay(n) for n in range(1, 9)] == expected


def test_equal_jitter_keeps_half_and_randomises_the_other_half_from_the_seeded_source() -> None:
    policy = RetryPolicy(max_attempts=None, jitter="equal", random=random.Random(42).random)
    expected_source = random.Random(42)
    expected = []
    for k in range(8):
        half = 0.1 * 2.0**k / 2
        expected.append(half + expected_source.random() * half)
    assert [policy.delay(n) for n in range(1, 9)] == expected


def test_full_jitter_gives_exactly_the_drawn_fraction_of_the_delay() -> None:
    policy = RetryPolicy(initial_delay=1.0, jitter="full", random=draws(0.5, 0.25, 0.0, 1.0))
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 0.5, 0.0, 8.0]


def test_equal_jitter_gives_half_the_delay_plus_the_drawn_fraction_of_the_other_half() -> None:
    policy = RetryPolicy(initial_delay=1.0, jitter="equal", random=draws(0.5, 0.25, 0.0, 1.0))
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.75, 1.25, 2.0, 8.0]


def test_jitter_applies_to_the_capped_delay_and_never_exceeds_max_delay() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=3.0, jitter="full", random=draws(0.5, 1.0))
    assert policy.delay(10) == 1.5
    assert policy.delay(10**400) == 3.0


def test_seeded_jitter_stays_between_the_bounds_of_its_kind() -> None:
    full = RetryPolicy(max_attempts=None, jitter="full", random=random.Random(7).random)
    equal = RetryPolicy(max_attempts=None, jitter="equal", random=random.Random(7).random)
    for n in range(1, 200):
        base = min(0.1 * 2.0 ** (n - 1), 30.0)
        assert 0 <= full.delay(n) <= base
        assert base / 2 <= equal.delay(n) <= base


@pytest.mark.parametrize(
    ("draw", "error", "message"),
    [
        (1.5, ValueError, "random() must return a number between 0 and 1, got 1.5"),
        (-0.1, ValueError, "random() must return a number between 0 and 1, got -0.1"),
        (NAN, ValueError, "random() must return a number between 0 and 1, got nan"),
        ("0.5", TypeError, "random() must return a number between 0 and 1, got str '0.5'"),
        (True, TypeError, "random() must return a number between 0 and 1, got bool True"),
    ],
)
@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_a_random_source_returning_nonsense_is_reported(
    jitter: str, draw: object, error: type[Exception], message: str
) -> None:
    policy = RetryPolicy(jitter=jitter, random=draws(draw))  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(message)):
        policy.delay(1)


# -- delay: retry_after ----------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (2.5, 2.5),
        (3, 3.0),
        (0, 0.0),
        (0.0, 0.0),
        (Fraction(1, 4), 0.25),
        (timedelta(seconds=1.5), 1.5),
        (timedelta(0), 0.0),
        (timedelta(milliseconds=250), 0.25),
    ],
)
def test_an_error_with_retry_after_sets_the_delay_without_jitter(
    retry_after: object, expected: float
) -> None:
    policy = RetryPolicy(jitter="full", random=never_called)
    delay = policy.delay(5, Throttled(retry_after))
    assert delay == expected
    assert type(delay) is float


@pytest.mark.parametrize(
    "retry_after", [120, 30.000001, timedelta(hours=1), timedelta.max, 10**400, Fraction(10**400)]
)
def test_retry_after_is_capped_at_max_delay(retry_after: object) -> None:
    assert RetryPolicy(max_delay=30.0).delay(1, Throttled(retry_after)) == 30.0


@pytest.mark.parametrize(
    "retry_after",
    [
        True,
        False,
        -1,
        -0.001,
        -(10**400),
        NAN,
        INF,
        -INF,
        timedelta(seconds=-1),
        "5",
        b"5",
        None,
        Decimal("2"),
        [5],
        object(),
        lambda: 5,
    ],
)
def test_a_retry_after_that_is_not_a_usable_delay_is_ignored(retry_after: object) -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=2.0)
    assert policy.delay(2, Throttled(retry_after)) == 1.0


def test_an_error_without_retry_after_or_no_error_gets_the_computed_delay() -> None:
    policy = RetryPolicy(initial_delay=0.5)
    assert policy.delay(2, ValueError("no hint")) == 1.0
    assert policy.delay(2, None) == 1.0
    assert policy.delay(2) == 1.0


def test_retry_after_still_requires_a_valid_retry_number() -> None:
    with pytest.raises(ValueError, match="retry must be an int >= 1, got 0"):
        RetryPolicy().delay(0, Throttled(1.0))


# -- is_retryable ----------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), asyncio.CancelledError()],
)
@pytest.mark.parametrize(
    "retry_on", [Exception, BaseException, (BaseException,), lambda error: True]
)
def test_exceptions_that_are_not_exception_subclasses_are_never_retryable(
    error: BaseException, retry_on: Any
) -> None:
    assert RetryPolicy(retry_on=retry_on).is_retryable(error) is False


def test_by_default_every_ordinary_exception_is_retryable() -> None:
    policy = RetryPolicy()
    for error in (ValueError(), OSError(), ActionRetryException(), Throttled(1)):
        assert policy.is_retryable(error) is True


def test_retry_on_an_exception_type_retries_it_and_its_subclasses_only() -> None:
    policy = RetryPolicy(retry_on=ConnectionError)
    assert policy.is_retryable(ConnectionError()) is True
    assert policy.is_retryable(ConnectionResetError()) is True
    assert policy.is_retryable(ValueError()) is False


def test_retry_on_a_tuple_retries_any_of_its_types() -> None:
    policy = RetryPolicy(retry_on=(TimeoutError, ConnectionError))
    assert policy.is_retryable(TimeoutError()) is True
    assert policy.is_retryable(BrokenPipeError()) is True
    assert policy.is_retryable(KeyError()) is False


def test_retry_on_an_empty_tuple_retries_nothing() -> None:
    assert RetryPolicy(retry_on=()).is_retryable(ValueError()) is False


def test_retry_on_a_predicate_decides_by_calling_it_with_the_error() -> None:
    policy = RetryPolicy(retry_on=lambda error: "try again" in str(error))
    assert policy.is_retryable(RuntimeError("busy, try again")) is True
    assert policy.is_retryable(RuntimeError("permission denied")) is False


def test_a_predicate_returning_a_truthy_value_gives_a_real_bool() -> None:
    policy = RetryPolicy(retry_on=lambda error: error.args)  # type: ignore[arg-type,return-value]
    assert policy.is_retryable(ValueError("x")) is True
    assert policy.is_retryable(ValueError()) is False


def test_a_predicate_that_raises_propagates_its_error() -> None:
    def broken(error: BaseException) -> bool:
        raise LookupError("bug in the predicate")

    policy = RetryPolicy(retry_on=broken)
    with pytest.raises(LookupError, match="bug in the predicate"):
        policy.is_retryable(ValueError())


def test_the_predicate_is_not_consulted_for_never_retry_or_base_exceptions() -> None:
    seen: list[BaseException] = []

    def record(error: BaseException) -> bool:
        seen.append(error)
        return True

    policy = RetryPolicy(retry_on=record, never_retry=PermissionError)
    assert policy.is_retryable(PermissionError()) is False
    assert policy.is_retryable(KeyboardInterrupt()) is False
    assert seen == []
    ok = OSError()
    assert policy.is_retryable(ok) is True
    assert seen == [ok]


def test_never_retry_wins_over_retry_on() -> None:
    policy = RetryPolicy(retry_on=OSError, never_retry=FileNotFoundError)
    assert policy.is_retryable(ConnectionError()) is True
    assert policy.is_retryable(FileNotFoundError()) is False


def test_never_retry_accepts_a_tuple_of_types() -> None:
    policy = RetryPolicy(never_retry=(KeyError, TypeError))
    assert policy.is_retryable(KeyError()) is False
    assert policy.is_retryable(TypeError()) is False
    assert policy.is_retryable(IndexError()) is True


# -- allows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts_made", "allowed"), [(0, True), (1, True), (2, True), (3, False), (4, False)]
)
def test_allows_another_call_only_while_fewer_than_max_attempts_were_made(
    attempts_made: int, allowed: bool
) -> None:
    assert RetryPolicy(max_attempts=3).allows(attempts_made, 0.0, 0.0) is allowed


def test_without_max_attempts_any_number_of_calls_is_allowed() -> None:
    assert RetryPolicy(max_attempts=None).allows(10**9, 1e9, 30.0) is True


@pytest.mark.parametrize(
    ("elapsed", "next_delay", "allowed"),
    [
        (0.0, 0.0, True),
        (9.0, 1.0, True),  # starting exactly at the deadline is allowed
        (10.0, 0.0, True),
        (9.0, 1.5, False),
        (10.5, 0.0, False),
        (0.0, 10.000001, False),
    ],
)
def test_allows_another_call_only_if_it_starts_by_the_deadline(
    elapsed: float, next_delay: float, allowed: bool
) -> None:
    policy = RetryPolicy(max_attempts=None, deadline=10)
    assert policy.allows(5, elapsed, next_delay) is allowed


def test_both_limits_must_allow_the_next_call() -> None:
    policy = RetryPolicy(max_attempts=3, deadline=10.0)
    assert policy.allows(2, 1.0, 1.0) is True
    assert policy.allows(3, 1.0, 1.0) is False  # out of attempts, time left
    assert policy.allows(1, 9.5, 1.0) is False  # attempts left, out of time


# -- fixed() and exponential() ---------------------------------------------------


def test_fixed_waits_the_same_delay_before_every_retry() -> None:
    policy = RetryPolicy.fixed(0.25, max_attempts=5)
    assert policy == RetryPolicy(max_attempts=5, initial_delay=0.25, multiplier=1.0, max_delay=0.25)
    assert [policy.delay(n) for n in (1, 2, 3, 10**400)] == [0.25] * 4


def test_fixed_defaults_to_three_attempts_and_no_jitter() -> None:
    policy = RetryPolicy.fixed(1)
    assert (policy.max_attempts, policy.jitter, policy.multiplier) == (3, "none", 1.0)
    assert RetryPolicy.fixed(0).delay(4) == 0.0


def test_fixed_passes_the_other_settings_through() -> None:
    source = draws(0.5)

    def predicate(error: BaseException) -> bool:
        return True

    policy = RetryPolicy.fixed(
        2.0,
        None,
        jitter="full",
        deadline=60,
        retry_on=predicate,
        never_retry=KeyError,
        random=source,
    )
    assert policy.max_attempts is None
    assert (policy.deadline, policy.retry_on, policy.never_retry) == (60, predicate, KeyError)
    assert policy.delay(3) == 1.0


@pytest.mark.parametrize(
    ("delay", "error", "message"),
    [
        (-1, ValueError, "delay must be a finite number of seconds >= 0, got -1"),
        (INF, ValueError, "delay must be a finite number of seconds >= 0, got inf"),
        ("1", TypeError, "delay must be a number of seconds (int or float), got str '1'"),
    ],
)
def test_fixed_refuses_a_bad_delay_by_its_own_name(
    delay: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        RetryPolicy.fixed(delay)


def test_fixed_does_not_take_a_multiplier_or_max_delay() -> None:
    fixed: Any = RetryPolicy.fixed
    with pytest.raises(TypeError, match="multiplier"):
        fixed(1.0, multiplier=2.0)
    with pytest.raises(TypeError, match="max_delay"):
        fixed(1.0, max_delay=2.0)


def test_exponential_defaults_to_full_jitter_and_the_usual_schedule() -> None:
    assert RetryPolicy.exponential() == RetryPolicy(jitter="full")
    policy = RetryPolicy.exponential(random=draws(0.5, 0.5, 0.5))
    assert [policy.delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]


def test_exponential_takes_its_schedule_positionally() -> None:
    policy = RetryPolicy.exponential(1.0, 3.0, 20.0, 6, "none")
    assert (policy.initial_delay, policy.multiplier, policy.max_delay) == (1.0, 3.0, 20.0)
    assert (policy.max_attempts, policy.jitter) == (6, "none")
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 20.0, 20.0]


def test_exponential_passes_the_other_settings_through() -> None:
    policy = RetryPolicy.exponential(
        deadline=5.0, retry_on=TimeoutError, never_retry=(KeyError,), random=never_called
    )
    assert (policy.deadline, policy.retry_on, policy.never_retry) == (
        5.0,
        TimeoutError,
        (KeyError,),
    )
    assert policy.random is never_called


def test_exponential_validates_like_the_constructor() -> None:
    with pytest.raises(ValueError, match=re.escape("max_delay must be >= initial_delay (0.1)")):
        RetryPolicy.exponential(max_delay=0.01)
    with pytest.raises(ValueError, match="jitter must be one of"):
        RetryPolicy.exponential(jitter="sometimes")  # type: ignore[arg-type]


# -- the documentation examples --------------------------------------------------


@pytest.mark.parametrize("module", [actionqueues._policy, actionqueues.exceptionfactory])
def test_the_docstring_examples_run_as_shown(module: Any) -> None:
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0
    assert results.failed == 0


# -- FixedBackoffExceptionFactory -------------------------------------------------


def outcomes(factory: Any, calls: int, original: BaseException | None = None) -> list[object]:
    """What ``calls`` calls of ``factory.raise_exception(original)`` raise, in order."""
    seen: list[object] = []
    for _ in range(calls):
        try:
            factory.raise_exception(original)
        except ActionRetryException as retry:
            seen.append(retry.ms_backoff)
        except Exception as exc:
            seen.append(exc)
    return seen


def test_fixed_factory_defaults_ask_three_times_for_500_ms_then_give_up() -> None:
    seen = outcomes(FixedBackoffExceptionFactory(), 5)
    assert seen[:3] == [500, 500, 500]
    for error in seen[3:]:
        assert type(error) is Exception
        assert str(error) == "gave up after 3 retries"


def test_fixed_factory_raises_the_original_exception_itself_after_its_retries() -> None:
    original = ConnectionResetError("reset by peer")
    seen = outcomes(FixedBackoffExceptionFactory(retries=2, ms_backoff=40), 5, original)
    assert seen[:2] == [40, 40]
    assert all(error is original for error in seen[2:])


def test_fixed_factory_with_zero_retries_fails_at_once() -> None:
    original = KeyError("k")
    assert outcomes(FixedBackoffExceptionFactory(retries=0), 2, original) == [original, original]


def test_fixed_factory_accepts_a_zero_backoff() -> None:
    assert outcomes(FixedBackoffExceptionFactory(retries=2, ms_backoff=0), 2) == [0, 0]


@pytest.mark.parametrize("retries", [-1, 1.5, True, None, "3"])
@pytest.mark.parametrize(
    "factory", [FixedBackoffExceptionFactory, ExponentialBackoffExceptionFactory]
)
def test_factories_refuse_bad_retries(factory: Any, retries: object) -> None:
    error = TypeError if isinstance(retries, bool) or not isinstance(retries, int) else ValueError
    with pytest.raises(error, match=re.escape(f"retries must be an int >= 0, got {retries!r}")):
        factory(retries=retries)


@pytest.mark.parametrize(
    ("ms_backoff", "error", "message"),
    [
        (-5, ValueError, "ms_backoff must be a finite number of milliseconds >= 0, got -5"),
        (NAN, ValueError, "ms_backoff must be a finite number of milliseconds >= 0, got nan"),
        ("5", TypeError, "ms_backoff must be a number of milliseconds (int or float), got str"),
    ],
)
def test_fixed_factory_refuses_a_bad_backoff(
    ms_backoff: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        FixedBackoffExceptionFactory(ms_backoff=ms_backoff)  # type: ignore[arg-type]


# -- ExponentialBackoffExceptionFactory ------------------------------------------


def test_exponential_factory_without_jitter_multiplies_up_to_the_cap() -> None:
    factory = ExponentialBackoffExceptionFactory(
        retries=5, ms_backoff_initial=100, multiplier=3, ms_backoff_max=1000, jitter="none"
    )
    seen = outcomes(factory, 6)
    assert seen[:5] == [100.0, 300.0, 900.0, 1000.0, 1000.0]
    assert str(seen[5]) == "gave up after 5 retries"


def test_exponential_factory_defaults_double_from_100_ms_with_full_jitter() -> None:
    factory = ExponentialBackoffExceptionFactory(random=draws(0.5, 0.5, 0.5))
    assert outcomes(factory, 3) == [50.0, 100.0, 200.0]


def test_exponential_factory_full_jitter_follows_the_seeded_source() -> None:
    factory = ExponentialBackoffExceptionFactory(retries=6, random=random.Random(42).random)
    expected_source = random.Random(42)
    expected = [expected_source.random() * (100.0 * 2.0**k) for k in range(6)]
    assert outcomes(factory, 6) == expected


def test_exponential_factory_equal_jitter_keeps_half_of_each_backoff() -> None:
    factory = ExponentialBackoffExceptionFactory(
        retries=4, jitter="equal", random=draws(0.0, 0.5, 1.0, 0.25)
    )
    assert outcomes(factory, 4) == [50.0, 150.0, 400.0, 500.0]


def test_exponential_factory_raises_the_original_exception_itself_after_its_retries() -> None:
    original = TimeoutError("slow")
    factory = ExponentialBackoffExceptionFactory(retries=2, jitter="none")
    seen = outcomes(factory, 5, original)
    assert seen[:2] == [100.0, 200.0]
    assert all(error is original for error in seen[2:])


def test_exponential_factory_with_many_retries_stays_at_the_cap_without_overflow() -> None:
    factory = ExponentialBackoffExceptionFactory(
        retries=2000, ms_backoff_initial=1, multiplier=10, ms_backoff_max=5000, jitter="none"
    )
    seen = outcomes(factory, 2000)
    assert seen[:5] == [1.0, 10.0, 100.0, 1000.0, 5000.0]
    assert set(seen[4:]) == {5000.0}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"ms_backoff_initial": -1},
            ValueError,
            "ms_backoff_initial must be a finite number of milliseconds >= 0, got -1",
        ),
        (
            {"ms_backoff_initial": "100"},
            TypeError,
            "ms_backoff_initial must be a number of milliseconds (int or float), got str '100'",
        ),
        ({"multiplier": 0.9}, ValueError, "multiplier must be a finite number >= 1, got 0.9"),
        ({"multiplier": None}, TypeError, "multiplier must be a number (int or float)"),
        (
            {"ms_backoff_max": INF},
            ValueError,
            "ms_backoff_max must be a finite number of milliseconds >= 0, got inf",
        ),
        (
            {"ms_backoff_max": 50},
            ValueError,
            "ms_backoff_max must be >= ms_backoff_initial (100), got 50",
        ),
        ({"jitter": "half"}, ValueError, "jitter must be one of 'none', 'full', 'equal'"),
        ({"jitter": 1}, TypeError, "jitter must be one of 'none', 'full', 'equal', got int 1"),
        ({"random": 42}, TypeError, "random must be a function returning a float in [0, 1)"),
    ],
)
def test_exponential_factory_refuses_bad_arguments_by_name(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ExponentialBackoffExceptionFactory(**kwargs)


def test_exponential_factory_reports_a_random_source_returning_nonsense() -> None:
    factory = ExponentialBackoffExceptionFactory(random=draws(2.0))
    with pytest.raises(ValueError, match=re.escape("between 0 and 1, got 2.0")):
        factory.raise_exception()
