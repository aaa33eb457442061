"""What a journaled queue records: runs, steps, timestamps, commits, and the rollback."""

from __future__ import annotations

import json

import pytest

from actionqueues import ActionQueue, Journal, QueueStateError
from actionqueues.testing import FakeClock, inject_faults

from .conftest import LEASE, START
from .helpers import WORLD, Account, Put, charge, event_kinds, state_of, statuses


def test_a_happy_run_records_each_step_and_succeeds(journal: Journal, clock: FakeClock) -> None:
    """A run that succeeds ends succeeded, with every step's attempts, times and state."""
    q = ActionQueue(journal=journal, name="signup")
    q.add(Put("user", 7))
    q.add(Account("alice"))
    q.add(charge("alice", 500))
    q.execute()

    assert q.run_id is not None
    assert q.journal is journal
    timeline = journal.timeline(q.run_id)
    run = timeline.run
    assert (run.run_id, run.name, run.kind, run.status) == (q.run_id, "signup", "sync", "succeeded")
    assert (run.steps, run.started, run.error, run.recoveries) == (3, 3, None, 0)
    assert run.owner == "original"
    assert not run.resumable
    assert run.lease_expires_at == 0.0  # a finished run holds no lease
    assert run.created_at == START
    assert run.finished_at == run.updated_at == clock.now == START + 3
    assert [s.type for s in timeline.steps] == [
        "tests.journal.put",
        "tests.journal.account",
        "tests.journal.charge",
    ]
    assert all(s.status == "succeeded" and s.attempts == 1 for s in timeline.steps)
    assert all(s.error is None and s.next_retry_at is None for s in timeline.steps)
    assert all(s.rollback_attempts == 0 and s.rollback_started_at is None for s in timeline.steps)
    times: list[float] = [run.created_at]
    for s in timeline.steps:
        assert s.started_at is not None
        assert s.finished_at is not None
        times += [s.started_at, s.finished_at]
    times.append(run.finished_at)
    assert times == sorted(times)
    assert [s.finished_at for s in timeline.steps] == [START + 1, START + 2, START + 3]
    assert timeline.events == ()
    assert WORLD.ledger == {"user": 7, "account:alice": 42, "charge:alice": 500}


def test_the_state_after_execute_is_recorded(journal: Journal) -> None:
    """Each step's state is saved as JSON after its execute (dataclass fields, to_state, result)."""
    q = ActionQueue(journal=journal)
    q.add(Put("user", 7))
    q.add(Account("alice"))
    q.add(charge("alice", 500, currency="USD"))
    q.execute()
    assert q.run_id is not None
    assert state_of(journal, q.run_id, 0) == {
        "key": "user",
        "value": 7,
        "receipt": "receipt-user",
        "undone": False,
    }
    assert state_of(journal, q.run_id, 1) == {"owner": "alice", "account_id": 42}
    assert state_of(journal, q.run_id, 2) == {
        "args": ["alice", 500],
        "kwargs": {"currency": "USD"},
        "done": True,
        "result": {"charge_id": "ch_alice", "cents": 500, "currency": "USD"},
    }


def test_a_queue_without_a_name_is_named_after_its_class(journal: Journal) -> None:
    """The run's name defaults to the queue's class name."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.execute()
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.name == "ActionQueue"


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_a_happy_run_of_n_steps_costs_n_plus_one_commits(journal: Journal, steps: int) -> None:
    """Step k's result and step k+1's start share a commit: N steps, N+1 commits."""
    q = ActionQueue(journal=journal)
    for i in range(steps):
        q.add(Put(f"k{i}"))
    points: list[str] = []
    with inject_faults(points.append):
        q.execute()
    assert points.count("after_commit") == steps + 1
    assert points.count("before_commit") == steps + 1


def test_each_step_is_recorded_as_started_before_its_execute_is_called(journal: Journal) -> None:
    """When execute() runs, the journal already says the step is running."""
    q = ActionQueue(journal=journal)
    seen: list[list[str]] = []
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", lambda: seen.append(statuses(journal, str(q.run_id))))
    q.execute()
    assert seen == [["succeeded", "running"]]


def test_a_failed_execute_then_rollback_is_recorded(journal: Journal, clock: FakeClock) -> None:
    """execute() raising leaves the run failed; rollback() then rolls it back, all recorded."""
    q = ActionQueue(journal=journal, name="order")
    for key in "abcd":
        q.add(Put(key))
    WORLD.script("execute", "c", ValueError("card declined"))
    with pytest.raises(ValueError, match="card declined"):
        q.execute()
    assert q.run_id is not None
    run_id = q.run_id

    failed = journal.timeline(run_id)
    assert failed.run.status == "failed"
    assert failed.run.error == "ValueError: card declined"
    assert failed.run.started == 3
    assert failed.run.lease_expires_at == clock.now + LEASE  # still owned: rollback may follow
    assert [s.status for s in failed.steps] == ["succeeded", "succeeded", "failed", "pending"]
    assert failed.steps[2].error == "ValueError: card declined"
    assert failed.steps[2].attempts == 1
    assert failed.steps[3].started_at is None
    assert not failed.steps[3].started
    assert event_kinds(journal, run_id) == [(None, "failed")]
    assert failed.events[0].detail == "ValueError: card declined"

    report = q.rollback()
    assert report.ok
    done = journal.timeline(run_id)
    assert done.run.status == "rolled_back"
    assert done.run.finished_at == clock.now
    assert done.run.error == "ValueError: card declined"  # why it was rolled back stays
    assert [s.status for s in done.steps] == ["rolled_back"] * 3 + ["pending"]
    assert [s.rollback_attempts for s in done.steps] == [1, 1, 1, 0]
    for s in done.steps[:3]:
        assert s.rollback_started_at is not None
        assert s.rollback_finished_at is not None
        assert s.rollback_started_at < s.rollback_finished_at
        assert s.rollback_error is None
    # newest first: c, then b, then a
    assert done.steps[2].rollback_finished_at <= done.steps[1].rollback_started_at  # type: ignore[operator]
    assert json.loads(done.steps[0].state)["undone"] is True
    assert WORLD.keys_called("rollback") == ["c", "b", "a"]
    assert WORLD.ledger == {}
    assert event_kinds(journal, run_id) == [(None, "failed")]


def test_a_rollback_after_success_is_recorded(journal: Journal) -> None:
    """rollback() after a successful execute() turns succeeded into rolled_back."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(Put("b"))
    q.execute()
    q.rollback()
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    assert statuses(journal, q.run_id) == ["rolled_back", "rolled_back"]
    assert WORLD.ledger == {}


def test_a_with_block_rolls_back_and_records_it(journal: Journal) -> None:
    """A journaled queue used as a context manager records its automatic rollback."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))

    def block() -> None:
        with q:
            q.execute()
            raise KeyError("later failure")

    with pytest.raises(KeyError):
        block()
    assert q.run_id is not None
    assert journal.timeline(q.run_id).run.status == "rolled_back"
    assert WORLD.ledger == {}


def test_each_queue_gets_its_own_run(journal: Journal) -> None:
    """Two queues on one journal are two runs with different ids."""
    first, second = ActionQueue(journal=journal), ActionQueue(journal=journal)
    assert first.run_id is not None
    assert first.run_id != second.run_id
    assert journal.runs() == []  # nothing is written before execute()


def test_a_journaled_queue_executes_once(journal: Journal) -> None:
    """The single-use rules of the queue hold with a journal."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.execute()
    with pytest.raises(QueueStateError):
        q.execute()
    assert len(journal.runs()) == 1


def test_runs_lists_newest_first_and_filters(journal: Journal, clock: FakeClock) -> None:
    """runs() lists newest first, filtered by status, name, age and limit."""
    ids: list[str] = []
    for name, fail in [("signup", False), ("order", True), ("signup", True)]:
        q = ActionQueue(journal=journal, name=name)
        q.add(Put(f"{name}-{len(ids)}"))
        if fail:
            WORLD.script("execute", f"{name}-{len(ids)}", RuntimeError("no"))
            with pytest.raises(RuntimeError):
                q.execute()
        else:
            q.execute()
        assert q.run_id is not None
        ids.append(q.run_id)
        clock.advance(100)

    assert [r.run_id for r in journal.runs()] == ids[::-1]
    assert [r.run_id for r in journal.runs(name="signup")] == [ids[2], ids[0]]
    assert [r.run_id for r in journal.runs(status="failed")] == [ids[2], ids[1]]
    assert [r.run_id for r in journal.runs(status=["succeeded", "failed"], limit=2)] == [
        ids[2],
        ids[1],
    ]
    assert [r.run_id for r in journal.runs(older_than=150)] == [ids[1], ids[0]]
    assert journal.runs(name="nobody") == []
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        journal.runs(status="done")
    with pytest.raises(ValueError, match="limit"):
        journal.runs(limit=0)


def test_a_timeline_is_found_by_a_unique_prefix_of_its_id(journal: Journal) -> None:
    """timeline() accepts a unique prefix of 8+ characters; KeyError otherwise."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.execute()
    assert q.run_id is not None
    assert journal.timeline(q.run_id[:8]).run.run_id == q.run_id
    with pytest.raises(KeyError):
        journal.timeline(q.run_id[:7])
    with pytest.raises(KeyError, match="no run"):
        journal.timeline("00000000-0000-0000-0000-000000000000")
    with pytest.raises(KeyError):
        journal.timeline("%%%%%%%%")  # LIKE wildcards are not wildcards here
    with pytest.raises(KeyError):
        journal.timeline(q.run_id[:8] + "_" * 28)


def test_an_error_that_utf8_cannot_encode_is_recorded_escaped(journal: Journal) -> None:
    """An OS error about an undecodable file name holds a lone surrogate: the failure is
    still recorded (the surrogate as its escape), and the rollback goes on."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", OSError("cannot open /tmp/\udcff.txt"))
    with pytest.raises(OSError, match="cannot open"):
        q.execute()
    assert q.rollback().ok
    timeline = journal.timeline(str(q.run_id))
    assert timeline.run.status == "rolled_back"
    assert timeline.run.error == "OSError: cannot open /tmp/\\udcff.txt"
    assert timeline.steps[1].error == timeline.run.error
