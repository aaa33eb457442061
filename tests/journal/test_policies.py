"""Journaled retry policies: recorded at create, used by recover() and retry_rollback()."""

from __future__ import annotations

import json
import sys

import pytest

from actionqueues import ActionQueue, Journal, RetryPolicy, recover, retry_rollback
from actionqueues.testing import FakeClock, RecordingSleep, inject_faults

from .conftest import LEASE, OpenOther
from .helpers import WORLD, Crash, Killer, Put, event_kinds, statuses, write_run

LIMITS = ("max_attempts", "initial_delay", "multiplier", "max_delay", "jitter", "deadline")


def limits(policy: RetryPolicy) -> dict[str, object]:
    """What the journal keeps of a policy whose retry_on/never_retry are the defaults."""
    return {
        **{name: getattr(policy, name) for name in LIMITS},
        "retry_on": [["builtins", "Exception"]],
        "never_retry": [],
    }


def crashed_in_b(
    journal: Journal,
    *,
    resumable: bool = False,
    retry: RetryPolicy | None = None,
    rollback_retry: RetryPolicy | None = None,
) -> str:
    """A run of Put a, b, c with the queue's policies that dies while b executes."""
    q = ActionQueue(
        journal=journal,
        resumable=resumable,
        retry=retry,
        rollback_retry=rollback_retry,
        sleep=RecordingSleep(),
    )
    for key in "abc":
        q.add(Put(key))
    with inject_faults(Killer("after_execute", nth=2)), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    return q.run_id


def test_each_steps_policies_are_journaled_at_create(journal: Journal) -> None:
    """StepRecord.policies holds each step's execute and rollback limits as JSON (None: none)."""
    queue_retry = RetryPolicy(max_attempts=4, initial_delay=0.5, jitter="full")
    own_rollback = RetryPolicy(max_attempts=7, max_delay=60.0, deadline=300.0)
    q = ActionQueue(journal=journal, retry=queue_retry)
    q.add(Put("a"))
    q.add(Put("b"), rollback_retry=own_rollback)
    q.execute()
    assert q.run_id is not None
    steps = journal.timeline(q.run_id).steps
    assert [s.policies is not None for s in steps] == [True, True]
    assert json.loads(str(steps[0].policies)) == {"execute": limits(queue_retry), "rollback": None}
    assert json.loads(str(steps[1].policies)) == {
        "execute": limits(queue_retry),
        "rollback": limits(own_rollback),
    }
    assert json.loads(str(steps[1].policies))["rollback"]["deadline"] == 300.0

    plain = ActionQueue(journal=journal)
    plain.add(Put("c"))
    plain.execute()
    assert plain.run_id is not None
    assert journal.timeline(plain.run_id).steps[0].policies is None


def test_recovery_retries_a_rollback_with_the_runs_journaled_policy(
    journal: Journal, open_other: OpenOther
) -> None:
    """recover() without rollback_retry= uses the queue's: a rollback failing once is retried."""
    run_id = crashed_in_b(journal, rollback_retry=RetryPolicy(max_attempts=5, initial_delay=2.0))
    WORLD.script("rollback", "a", OSError("503 from billing, try again"))
    sleep = RecordingSleep()
    report = recover(open_other(), sleep=sleep)
    assert [(r.outcome, r.status) for r in report.runs] == [("rolled_back", "rolled_back")]
    assert sleep.calls == [2.0]
    assert WORLD.keys_called("rollback") == ["b", "a", "a"]
    assert WORLD.ledger == {}
    timeline = journal.timeline(run_id)
    assert [s.rollback_attempts for s in timeline.steps] == [2, 1, 0]
    assert statuses(journal, run_id) == ["rolled_back", "rolled_back", "pending"]
    assert (0, "rollback_retry") in event_kinds(journal, run_id)


def test_an_explicit_rollback_policy_overrides_the_journaled_one(
    journal: Journal, open_other: OpenOther
) -> None:
    """recover(rollback_retry=) wins over the journaled policy: one attempt means no retry."""
    run_id = crashed_in_b(journal, rollback_retry=RetryPolicy(max_attempts=5, initial_delay=2.0))
    WORLD.script("rollback", "a", OSError("503 from billing, try again"))
    sleep = RecordingSleep()
    report = recover(open_other(), rollback_retry=RetryPolicy(max_attempts=1), sleep=sleep)
    assert [(r.outcome, r.status) for r in report.runs] == [("needs_attention", "needs_attention")]
    assert sleep.calls == []
    assert WORLD.count("rollback", "a") == 1
    a = journal.timeline(run_id).steps[0]
    assert (a.status, a.rollback_attempts) == ("rollback_failed", 1)
    assert a.rollback_error == "OSError: 503 from billing, try again"


def test_without_any_policy_recovery_does_not_retry(
    journal: Journal, open_other: OpenOther
) -> None:
    """A run journaled without policies is rolled back by recovery with no retries."""
    run_id = crashed_in_b(journal)
    WORLD.script("rollback", "a", OSError("503"))
    report = recover(open_other(), sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert WORLD.count("rollback", "a") == 1
    assert journal.timeline(run_id).steps[0].status == "rollback_failed"


def test_a_resumed_step_retries_with_the_journaled_execute_policy(
    journal: Journal, open_other: OpenOther
) -> None:
    """Resuming forward, the in-flight step gets the queue's execute policy (and its count)."""
    run_id = crashed_in_b(
        journal, resumable=True, retry=RetryPolicy(max_attempts=3, initial_delay=4.0)
    )
    WORLD.script("execute", "b", OSError("flaky"))
    sleep = RecordingSleep()
    report = recover(open_other(), sleep=sleep)
    assert [(r.outcome, r.status) for r in report.runs] == [("resumed", "succeeded")]
    assert sleep.calls == [8.0]  # the backoff goes on from attempt 2 (1 before the crash)
    assert WORLD.keys_called("execute") == ["a", "b", "b", "b", "c"]
    assert [s.attempts for s in journal.timeline(run_id).steps] == [1, 3, 1]


def test_an_explicit_execute_policy_overrides_the_journaled_one(
    journal: Journal, open_other: OpenOther
) -> None:
    """recover(retry=) wins over the journaled execute policy of a resumed run."""
    run_id = crashed_in_b(
        journal, resumable=True, retry=RetryPolicy(max_attempts=3, initial_delay=4.0)
    )
    WORLD.script("execute", "b", OSError("flaky"))
    report = recover(open_other(), retry=RetryPolicy(max_attempts=2), sleep=RecordingSleep())
    assert [(r.outcome, r.status) for r in report.runs] == [("rolled_back", "rolled_back")]
    assert WORLD.count("execute", "b") == 2  # 1 before the crash, 1 left
    assert journal.timeline(run_id).steps[1].error == "OSError: flaky"


def test_retry_rollback_uses_the_journaled_rollback_policy(journal: Journal) -> None:
    """retry_rollback() without rollback_retry= gets the queue's policy's full budget afresh."""
    q = ActionQueue(
        journal=journal,
        rollback_retry=RetryPolicy(max_attempts=2, initial_delay=1.5),
        sleep=RecordingSleep(),
    )
    q.add(Put("a"))
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.script("rollback", "a", OSError("1"), OSError("2"), OSError("3"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert not q.rollback().ok
    assert q.run_id is not None
    sleep = RecordingSleep()
    result = retry_rollback(journal, q.run_id, sleep=sleep)
    assert (result.outcome, result.status) == ("rolled_back", "rolled_back")
    assert sleep.calls == [1.5]
    assert WORLD.count("rollback", "a") == 4
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 4


def test_journaled_policies_keep_their_exception_types(
    journal: Journal, open_other: OpenOther
) -> None:
    """retry_on given as exception types is journaled: recovery does not retry other errors."""
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, retry_on=OSError)
    run_id = crashed_in_b(journal, rollback_retry=policy)
    WORLD.script("rollback", "a", ValueError("declined for good"))
    report = recover(open_other(), sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert WORLD.count("rollback", "a") == 1
    journaled = json.loads(str(journal.timeline(run_id).steps[0].policies))
    assert journaled["rollback"]["retry_on"] == [["builtins", "OSError"]]


def test_a_journaled_never_retry_type_is_never_retried_by_recovery(
    journal: Journal, open_other: OpenOther
) -> None:
    """never_retry types are journaled too, and recovery honours them."""
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, never_retry=PermissionError)
    crashed_in_b(journal, rollback_retry=policy)
    WORLD.script("rollback", "a", PermissionError("forbidden"))
    report = recover(open_other(), sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert WORLD.count("rollback", "a") == 1


def test_a_journaled_predicate_is_not_kept_so_recovery_retries_any_exception(
    journal: Journal, open_other: OpenOther
) -> None:
    """A retry_on predicate is code, not data: recovery retries any Exception within the limits."""
    policy = RetryPolicy(
        max_attempts=2, initial_delay=1.0, retry_on=lambda e: isinstance(e, OSError)
    )
    run_id = crashed_in_b(journal, rollback_retry=policy)
    WORLD.script("rollback", "a", ValueError("not an OSError"))
    report = recover(open_other(), sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.count("rollback", "a") == 2
    journaled = json.loads(str(journal.timeline(run_id).steps[0].policies))
    assert journaled["rollback"]["retry_on"] is None


def test_an_exception_type_this_process_has_not_imported_falls_back_to_any_exception(
    journal: Journal, clock: FakeClock
) -> None:
    """A journaled type whose module is not imported here is never imported: any Exception."""
    run_id = "66666666-6666-4666-8666-666666666666"
    policies = json.dumps(
        {
            "execute": None,
            "rollback": {
                **limits(RetryPolicy(max_attempts=2, initial_delay=1.0)),
                "retry_on": [["no_such_module_for_actionqueues", "Oops"]],
                "never_retry": [["no_such_module_for_actionqueues", "Never"]],
            },
        }
    )
    write_run(journal, run_id, [("tests.journal.put", '{"key":"x"}', "running")], policies=policies)
    WORLD.script("rollback", "x", ValueError("once"))
    clock.advance(LEASE + 1)
    report = recover(journal, sleep=RecordingSleep())
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert WORLD.count("rollback", "x") == 2
    assert "no_such_module_for_actionqueues" not in sys.modules


@pytest.mark.parametrize(
    "policies",
    [
        "{not json",
        '{"execute": null}',
        '{"execute": {"max_attempts": 0}, "rollback": null}',
        '{"execute": {"colour": "red"}, "rollback": null}',
        '{"execute": null, "rollback": {"jitter": "sometimes"}}',
    ],
)
def test_malformed_journaled_policies_make_the_run_unrecoverable(
    journal: Journal, clock: FakeClock, policies: str
) -> None:
    """Policies the journal cannot turn back into RetryPolicy: unrecoverable, nothing called."""
    run_id = "55555555-5555-4555-8555-555555555555"
    write_run(journal, run_id, [("tests.journal.put", '{"key":"x"}', "running")], policies=policies)
    clock.advance(LEASE + 1)
    report = recover(journal, sleep=RecordingSleep())
    assert [(r.outcome, r.status) for r in report.runs] == [("unrecoverable", "needs_attention")]
    error = report.runs[0].error
    assert error is not None
    assert "the step's journaled retry policies are invalid" in error
    assert journal.timeline(run_id).run.error == error
    assert WORLD.calls == []


def test_a_policy_deadline_is_journaled_and_holds_in_recovery(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A rollback deadline that passed before recovery: no retry after the first failure."""
    policy = RetryPolicy(max_attempts=10, initial_delay=1.0, deadline=60.0)
    q = ActionQueue(journal=journal, rollback_retry=policy, sleep=RecordingSleep(clock))
    q.add(Put("a"))
    killer = Killer()
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.script("rollback", "a", OSError("1"), killer.kill)  # dies in rollback call 2
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with inject_faults(killer), pytest.raises(Crash):
        q.rollback()
    assert q.run_id is not None
    WORLD.always_fail("rollback", "a", OSError("still down"))
    sleep = RecordingSleep()
    report = recover(open_other(clock=FakeClock(clock.now + 120)), sleep=sleep)
    assert [r.outcome for r in report.runs] == ["needs_attention"]
    assert sleep.calls == []  # first called 120 s ago: the 60 s deadline is gone
    assert WORLD.count("rollback", "a") == 3
    assert journal.timeline(q.run_id).steps[0].rollback_attempts == 3
