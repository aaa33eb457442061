"""current_step(): the running step of a journaled queue and its idempotency key."""

from __future__ import annotations

import pytest

from actionqueues import ActionQueue, Journal, RetryPolicy, StepContext, current_step, recover
from actionqueues.testing import RecordingSleep, inject_faults

from .conftest import OpenOther
from .helpers import WORLD, Crash, Killer, Put


def capture(into: list[StepContext]) -> None:
    into.append(current_step())


def test_current_step_describes_the_running_execute_and_rollback(journal: Journal) -> None:
    """Inside execute/rollback, current_step() gives run id, index, method and key."""
    seen: list[StepContext] = []
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(Put("b"))

    def capture_then_fail() -> None:
        capture(seen)
        raise ValueError("no")

    WORLD.script("execute", "b", capture_then_fail)
    WORLD.script("rollback", "b", lambda: capture(seen))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    q.rollback()
    run_id = q.run_id
    assert seen == [
        StepContext(run_id, 1, "execute", f"{run_id}:1"),  # type: ignore[arg-type]
        StepContext(run_id, 1, "rollback", f"{run_id}:1"),  # type: ignore[arg-type]
    ]
    assert [c.idempotency_key for c in WORLD.calls] == [
        f"{run_id}:0",
        f"{run_id}:1",
        f"{run_id}:1",
        f"{run_id}:0",
    ]


def test_every_retry_of_a_step_sees_the_same_key(journal: Journal) -> None:
    """Retried calls share the step's idempotency key."""
    q = ActionQueue(journal=journal, retry=RetryPolicy(max_attempts=3), sleep=RecordingSleep())
    q.add(Put("a"))
    WORLD.script("execute", "a", OSError("1"), OSError("2"))
    q.execute()
    assert [c.idempotency_key for c in WORLD.calls] == [f"{q.run_id}:0"] * 3


def test_current_step_raises_lookup_error_outside_a_journaled_step(journal: Journal) -> None:
    """Outside execute/rollback, or in a queue without a journal, current_step() raises."""
    with pytest.raises(LookupError, match="only available inside"):
        current_step()
    plain = ActionQueue()
    plain.add(Put("a"))
    plain.execute()
    assert WORLD.calls[-1].idempotency_key is None
    q = ActionQueue(journal=journal)
    q.add(Put("b"))
    q.execute()
    with pytest.raises(LookupError):
        current_step()
    q.rollback()
    with pytest.raises(LookupError):
        current_step()


def test_current_step_is_cleared_when_execute_raises(journal: Journal) -> None:
    """After a failed execute(), current_step() raises again in the caller."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    WORLD.script("execute", "a", ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with pytest.raises(LookupError):
        current_step()


def test_recovery_rolls_back_with_the_key_the_original_execute_saw(
    journal: Journal, open_other: OpenOther
) -> None:
    """The idempotency key of a step is the same in the crashed process and in recovery."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(Put("b"))
    with inject_faults(Killer("after_execute", nth=2)), pytest.raises(Crash):
        q.execute()
    run_id = q.run_id
    recover(open_other())
    keys = {(c.method, c.key): c.idempotency_key for c in WORLD.calls}
    assert keys == {
        ("execute", "a"): f"{run_id}:0",
        ("execute", "b"): f"{run_id}:1",
        ("rollback", "b"): f"{run_id}:1",
        ("rollback", "a"): f"{run_id}:0",
    }
