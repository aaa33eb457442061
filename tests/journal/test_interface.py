"""The backend interface itself (create, commit, claim, renew): what every backend must do."""

from __future__ import annotations

import pickle

import pytest

from actionqueues import Journal, JournalError, LeaseLost, open_journal
from actionqueues.testing import FakeClock

from .conftest import LEASE, OpenOther
from .helpers import write_run

RUN = "33333333-3333-4333-8333-333333333333"


def test_a_commit_is_atomic(journal: Journal) -> None:
    """A commit whose last op is invalid applies none of its ops, nor the run's columns."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    before = journal.timeline(RUN)
    with pytest.raises(ValueError, match="not a step column that can be written: 'owner'"):
        journal.commit(
            RUN,
            {"status": "failed"},
            [
                ("step", 0, {"status": "failed"}),
                ("event", 0, "failed", "x"),
                ("step", 0, {"owner": "me"}),
            ],
        )
    assert journal.timeline(RUN) == before


def test_only_known_run_columns_can_be_committed(journal: Journal) -> None:
    """commit() refuses to write run columns the journal manages itself."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    for column in ("owner", "lease_expires_at", "run_id", "recoveries"):
        with pytest.raises(ValueError, match="not a run column that can be written"):
            journal.commit(RUN, {column: "x"}, [])


def test_a_commit_to_a_run_that_does_not_exist_is_a_journal_error(journal: Journal) -> None:
    """commit() on a run that does not exist: JournalError saying so (not LeaseLost)."""
    with pytest.raises(JournalError, match="no run") as caught:
        journal.commit(RUN, {"status": "failed"}, [("event", None, "failed", "x")])
    assert not isinstance(caught.value, LeaseLost)
    assert journal.runs() == []


def test_a_commit_to_a_run_another_owner_holds_raises_lease_lost(
    journal: Journal, open_other: OpenOther
) -> None:
    """commit() on a run another owner claimed raises LeaseLost and writes nothing."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    assert open_other().claim() is not None
    before = journal.timeline(RUN)
    with pytest.raises(LeaseLost):
        journal.commit(RUN, {"status": "failed"}, [("event", None, "failed", "x")])
    assert journal.timeline(RUN) == before


def test_creating_a_run_twice_fails_and_changes_nothing(journal: Journal) -> None:
    """A second create() with the same run id is a JournalError; the first run is intact."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    before = journal.timeline(RUN)
    with pytest.raises(JournalError):
        write_run(journal, RUN, [("tests.journal.put", '{"key":"b"}', "pending")], name="dup")
    assert journal.timeline(RUN) == before


def test_events_keep_their_order_and_time(journal: Journal, clock: FakeClock) -> None:
    """Events come back in the order written, stamped with the commit's time."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    clock.advance(5)
    journal.commit(RUN, {}, [("event", 0, "retry", f"#{i}") for i in range(5)])
    clock.advance(5)
    journal.commit(RUN, {}, [("event", None, "failed", "last")])
    events = journal.timeline(RUN).events
    assert [e.detail for e in events] == ["#0", "#1", "#2", "#3", "#4", "last"]
    assert [e.at for e in events] == [clock.now - 5] * 5 + [clock.now]
    assert [e.index for e in events] == [0] * 5 + [None]


def test_a_terminal_status_gives_the_lease_up(journal: Journal, clock: FakeClock) -> None:
    """Committing succeeded, rolled_back or needs_attention sets the lease to 0."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    assert journal.timeline(RUN).run.lease_expires_at == clock.now + LEASE
    journal.commit(RUN, {"status": "needs_attention", "finished_at": clock.now}, [])
    assert journal.timeline(RUN).run.lease_expires_at == 0.0


def test_renew_takes_any_number_of_runs(journal: Journal, clock: FakeClock) -> None:
    """renew() with more ids than one statement holds renews the ones this owner has."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    clock.advance(10)
    journal.renew([f"missing-{i}" for i in range(700)] + [RUN])
    assert journal.timeline(RUN).run.lease_expires_at == clock.now + LEASE
    journal.renew([])


@pytest.mark.parametrize("status", ["succeeded", "rolled_back", "needs_attention"])
def test_renew_leaves_a_finished_run_without_a_lease(
    journal: Journal, clock: FakeClock, status: str
) -> None:
    """renew() only extends active runs: a finished run keeps lease 0 (retryable at once)."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")])
    journal.commit(RUN, {"status": status, "finished_at": clock.now}, [])
    clock.advance(10)
    journal.renew([RUN])
    assert journal.timeline(RUN).run.lease_expires_at == 0.0


@pytest.mark.parametrize("status", ["running", "failed", "rolling_back"])
def test_renew_extends_an_active_run(journal: Journal, clock: FakeClock, status: str) -> None:
    """renew() extends the lease of a running, failed or rolling_back run of this owner."""
    write_run(journal, RUN, [("tests.journal.put", '{"key":"a"}', "running")], status=status)
    clock.advance(10)
    journal.renew([RUN])
    assert journal.timeline(RUN).run.lease_expires_at == clock.now + LEASE


def test_an_ambiguous_prefix_is_a_key_error(journal: Journal) -> None:
    """A prefix that matches two runs raises KeyError asking for more of the id."""
    for suffix in ("1111-4111-8111-111111111111", "2222-4222-8222-222222222222"):
        write_run(journal, f"abcdef01-{suffix}", [("tests.journal.put", '{"key":"a"}', "pending")])
    with pytest.raises(KeyError, match="more than one run"):
        journal.timeline("abcdef01")
    assert journal.timeline("abcdef01-1").run.run_id.endswith("111111111111")


def test_writing_to_a_closed_journal_is_a_journal_error(journal_url: str) -> None:
    """A closed journal refuses reads and writes with a JournalError naming it."""
    closed = open_journal(journal_url, heartbeat=False)
    closed.close()
    with pytest.raises(JournalError, match="is closed"):
        closed.release(RUN)
    with pytest.raises(JournalError, match="is closed"):
        closed.timeline(RUN)


def test_journal_errors_survive_pickling() -> None:
    """JournalError and LeaseLost keep their attributes through pickle (e.g. across processes)."""
    error = pickle.loads(pickle.dumps(JournalError("bad file", "sqlite:///x.db")))
    assert (str(error), error.url) == ("bad file", "sqlite:///x.db")
    lost = pickle.loads(pickle.dumps(LeaseLost("run-1", "me", "sqlite:///x.db")))
    assert (lost.run_id, lost.owner, lost.url) == ("run-1", "me", "sqlite:///x.db")
    assert "run-1" in str(lost)
