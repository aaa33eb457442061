"""Helpers for testing code that uses actionqueues, without ever sleeping.

- :class:`FakeClock` is a clock you move by hand.
- :class:`RecordingSleep` records each requested sleep and moves a
  :class:`FakeClock` instead of waiting; it works as the ``sleep=`` of both
  :class:`~actionqueues.ActionQueue` and
  :class:`~actionqueues.AsyncActionQueue`.
- :func:`no_backoff` turns every backoff sleep of every queue off while it is
  active: use it around code that builds its own queues.
- :func:`inject_faults` calls your function at each named point of a
  journaled run (:data:`FAULT_POINTS`, e.g. ``"after_execute"``: the action
  ran, its result is not committed yet), so a test can crash the process
  exactly there and check what recovery does.

Example, with pytest::

    import pytest
    from actionqueues import ActionQueue, RetryPolicy
    from actionqueues.testing import FakeClock, RecordingSleep, no_backoff

    def test_retries_back_off_exponentially():
        clock = FakeClock()
        sleep = RecordingSleep(clock)
        q = ActionQueue(sleep=sleep, clock=clock, retry=RetryPolicy(max_attempts=3))
        ...
        assert sleep.calls == [0.1, 0.2]

For tests of code that builds its own queues, turn the waits off instead, in
a module of its own (under :func:`no_backoff` even an injected
``RecordingSleep`` is skipped, so it records nothing)::

    @pytest.fixture(autouse=True)
    def _no_backoff():
        with no_backoff():
            yield
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._engine import switches
from ._journal import FAULT_POINTS, set_fault_hook

__all__ = ["FAULT_POINTS", "FakeClock", "RecordingSleep", "inject_faults", "no_backoff"]


class FakeClock:
    """A clock that only moves when told to; call it for the current time.

    Args:
        start: The time it starts at, in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        """Return the current fake time, in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (a finite number >= 0)."""
        if not 0 <= seconds < math.inf:
            raise ValueError(
                f"a clock moves forward by a finite number of seconds, got {seconds!r}"
            )
        self.now += seconds


class RecordingSleep:
    """A ``sleep`` that records the requested delays and returns at once.

    Args:
        clock: If given, each sleep advances it by the delay, so that
            deadlines measured with that clock behave as if time had passed.

    Attributes:
        calls: The delays requested, in seconds, in order.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        """Record ``seconds`` (and advance the clock) instead of sleeping."""
        self.calls.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)

    @property
    def total(self) -> float:
        """The sum of every recorded delay, in seconds."""
        return math.fsum(self.calls)


@contextmanager
def no_backoff() -> Iterator[None]:
    """Skip every backoff sleep of every queue while the block runs.

    Retries still happen, and are still counted, reported and logged; only
    the waiting is skipped. Blocks may nest; the previous setting is
    restored on exit.
    """
    previous = switches.sleep_off
    switches.sleep_off = True
    try:
        yield
    finally:
        switches.sleep_off = previous


@contextmanager
def inject_faults(hook: Callable[[str], object]) -> Iterator[None]:
    """Call ``hook(point)`` at every named fault point of journaled runs in this process.

    The points are listed in :data:`FAULT_POINTS`; ``hook`` may raise, or
    end the process (``os.kill(os.getpid(), signal.SIGKILL)``) to simulate a
    crash at exactly that point. The previous hook is restored on exit.

    Example:
        >>> from actionqueues.testing import inject_faults
        >>> seen: list[str] = []
        >>> with inject_faults(seen.append):
        ...     pass  # run a journaled queue here
    """
    if not callable(hook):
        raise TypeError(f"inject_faults() needs a function taking the point's name, got {hook!r}")
    previous = set_fault_hook(hook)  # type: ignore[arg-type]
    try:
        yield
    finally:
        set_fault_hook(previous)
