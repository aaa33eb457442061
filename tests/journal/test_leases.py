"""Leases: atomic claims, LeaseLost after a takeover, and the heartbeat."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from actionqueues import (
    ActionQueue,
    Journal,
    JournalError,
    LeaseLost,
    RetryPolicy,
    open_journal,
    recover,
)
from actionqueues.testing import FakeClock, RecordingSleep, inject_faults

from .conftest import LEASE, START, OpenOther
from .helpers import WORLD, Put, crashed_run, statuses


def failed_run(journal: Journal, key: str = "a") -> tuple[ActionQueue, str]:
    """A queue whose only step failed (run status failed, still owned)."""
    q = ActionQueue(journal=journal, name="claimable")
    q.add(Put(key))
    WORLD.script("execute", key, ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert q.run_id is not None
    return q, q.run_id


def test_claim_takes_one_expired_run_and_renews_its_lease(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """claim() returns the timeline of an expired run, now owned by the claimer."""
    _, run_id = failed_run(journal)
    their_clock = FakeClock(clock.now + LEASE + 1)
    other = open_other(clock=their_clock)
    claimed = other.claim()
    assert claimed is not None
    assert claimed.run.run_id == run_id
    assert claimed.run.owner == "recoverer"
    assert claimed.run.lease_expires_at == their_clock.now + LEASE
    assert claimed.run.recoveries == 1
    assert [s.status for s in claimed.steps] == ["failed"]
    assert claimed.events[-1].kind == "claimed"
    assert other.claim() is None  # the claimer's lease is alive now
    assert journal.claim(run_id) is None


def test_claim_of_a_given_run_checks_its_status(journal: Journal, clock: FakeClock) -> None:
    """claim(run_id, statuses=) only takes that run, and only in one of those statuses."""
    _, run_id = failed_run(journal)
    clock.advance(LEASE + 1)
    assert journal.claim(run_id, statuses=["needs_attention"]) is None
    assert journal.claim("no-such-run") is None
    claimed = journal.claim(run_id, statuses=["failed"])
    assert claimed is not None
    assert claimed.run.run_id == run_id


def test_finished_runs_are_never_claimed(journal: Journal, clock: FakeClock) -> None:
    """Succeeded and rolled back runs are not claimed by recovery."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.execute()
    r = ActionQueue(journal=journal)
    r.add(Put("b"))
    r.execute()
    r.rollback()
    clock.advance(LEASE * 10)
    assert journal.claim() is None
    assert recover(journal).runs == ()


def test_release_lets_another_process_claim_at_once(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """release() gives the lease up: a process with the same time can claim the run."""
    _, run_id = failed_run(journal)
    other = open_other(clock=FakeClock(clock.now))
    assert other.claim() is None
    journal.release(run_id)
    claimed = other.claim()
    assert claimed is not None
    assert claimed.run.run_id == run_id
    other.release("not-mine")  # releasing a run one does not own changes nothing


def test_two_claimers_alternating_never_claim_the_same_run(
    journal: Journal, open_other: OpenOther
) -> None:
    """50 expired runs, two processes claiming in turn: each run is claimed exactly once."""
    ids = {crashed_run(journal, "after_step_record", keys=[f"k{i}"]) for i in range(50)}
    claimers = [open_other("w1"), open_other("w2")]
    got: dict[str, list[str]] = {"w1": [], "w2": []}
    turn = 0
    while True:
        claimer = claimers[turn % 2]
        claimed = claimer.claim()
        if claimed is None and claimers[(turn + 1) % 2].claim() is None:
            break
        if claimed is not None:
            got[claimer.owner].append(claimed.run.run_id)
        turn += 1
    assert len(got["w1"]) + len(got["w2"]) == 50
    assert set(got["w1"]) | set(got["w2"]) == ids
    assert not set(got["w1"]) & set(got["w2"])
    for owner, runs in got.items():
        for run_id in runs:
            run = journal.timeline(run_id).run
            assert (run.owner, run.recoveries) == (owner, 1)


def test_claimers_in_threads_never_claim_the_same_run(
    journal: Journal, open_other: OpenOther
) -> None:
    """Claims from several threads, each with its own journal, are atomic."""
    ids = {crashed_run(journal, "after_step_record", keys=[f"k{i}"]) for i in range(50)}
    claimers = [open_other(f"w{i}") for i in range(4)]
    got: dict[str, list[str]] = {c.owner: [] for c in claimers}
    start = threading.Barrier(len(claimers))

    def work(claimer: Journal) -> None:
        start.wait(timeout=10)
        while (claimed := claimer.claim()) is not None:
            got[claimer.owner].append(claimed.run.run_id)

    threads = [threading.Thread(target=work, args=(c,)) for c in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    all_claims = [run_id for runs in got.values() for run_id in runs]
    assert sorted(all_claims) == sorted(ids)
    assert all(journal.timeline(r).run.recoveries == 1 for r in ids)


def test_concurrent_recoveries_finish_each_run_once(
    journal: Journal, open_other: OpenOther
) -> None:
    """Two recover() calls in threads roll back each run exactly once."""
    ids = {crashed_run(journal, "after_step_record", keys=[f"k{i}"]) for i in range(20)}
    recoverers = [open_other("r1"), open_other("r2")]
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(recoverer: Journal) -> None:
        report = recover(recoverer)
        with lock:
            outcomes.extend(r.run_id for r in report.runs)

    threads = [threading.Thread(target=work, args=(r,)) for r in recoverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == sorted(ids)
    assert sorted(WORLD.keys_called("rollback")) == sorted(f"k{i}" for i in range(20))


def test_a_queue_whose_run_was_taken_over_stops_with_lease_lost(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """After another owner claimed the run, the queue's next write raises LeaseLost."""
    other = open_other(clock=FakeClock(clock.now + 3 * LEASE))
    q = ActionQueue(journal=journal)
    for key in "abc":
        q.add(Put(key))
    claims: list[object] = []
    WORLD.script("execute", "b", lambda: claims.append(other.claim()))  # a too long pause
    with pytest.raises(LeaseLost) as caught:
        q.execute()
    assert q.run_id is not None
    assert caught.value.run_id == q.run_id
    assert caught.value.owner == "original"
    assert caught.value.url == journal.url
    assert "no longer owned by original" in str(caught.value)
    assert isinstance(caught.value, JournalError)
    assert claims != [None]
    assert WORLD.keys_called("execute") == ["a", "b"]  # c was not started
    timeline = journal.timeline(q.run_id)
    assert timeline.run.owner == "recoverer"
    assert timeline.run.status == "running"  # nothing more was written by the old owner
    assert statuses(journal, q.run_id) == ["succeeded", "running", "pending"]


def test_a_rollback_whose_run_was_taken_over_logs_and_goes_on(
    journal: Journal, open_other: OpenOther, caplog: pytest.LogCaptureFixture
) -> None:
    """rollback() after a takeover writes nothing more, logs it, and still compensates."""
    q = ActionQueue(
        journal=journal,
        rollback_retry=RetryPolicy(max_attempts=2, initial_delay=1.0),
        sleep=RecordingSleep(),
    )
    q.add(Put("a"))
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.script("rollback", "a", OSError("flaky"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert q.run_id is not None
    run_id = q.run_id
    other = open_other()
    assert other.claim() is not None
    commits: list[str] = []
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(commits.append):
        report = q.rollback()
    assert report.ok
    assert "after_commit" not in commits  # not even the retry was recorded
    assert WORLD.keys_called("rollback") == ["a", "a"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("another process owns the run now" in m for m in messages)
    run = journal.timeline(run_id).run
    assert (run.owner, run.status) == ("recoverer", "failed")


def test_recovery_that_loses_its_run_during_a_rollback_reports_it_lost(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A recovery whose claim was taken over meanwhile reports the run as lost."""
    q = ActionQueue(journal=journal)
    for key in "ab":
        q.add(Put(key))
    WORLD.script("execute", "b", ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    third = open_other("third", clock=FakeClock(clock.now + 3 * LEASE))
    WORLD.script("rollback", "b", third.claim)
    report = recover(open_other())
    assert [r.outcome for r in report.runs] == ["lost"]
    assert journal.timeline(str(q.run_id)).run.owner == "third"


def test_recovery_that_loses_a_resumed_run_stops_without_rolling_back(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A resumed run taken over by another process is left to it: no rollback, outcome lost."""
    run_id = crashed_run(journal, "after_step_record", nth=2, resumable=True)
    third = open_other("third", clock=FakeClock(clock.now + 3 * LEASE))
    WORLD.script("execute", "b", third.claim)
    report = recover(open_other())
    assert [r.outcome for r in report.runs] == ["lost"]
    assert WORLD.keys_called("rollback") == []
    assert journal.timeline(run_id).run.owner == "third"


def test_heartbeat_renews_only_the_runs_of_live_queues(journal: Journal, clock: FakeClock) -> None:
    """heartbeat() extends the leases of tracked runs whose queue still exists."""
    kept, kept_id = failed_run(journal, "kept")
    dropped, dropped_id = failed_run(journal, "dropped")
    done = ActionQueue(journal=journal)
    done.add(Put("done"))
    done.execute()
    lease_before = journal.timeline(dropped_id).run.lease_expires_at
    del dropped
    gc.collect()

    clock.advance(10)
    assert journal.heartbeat() == 1
    assert journal.timeline(kept_id).run.lease_expires_at == clock.now + LEASE
    assert journal.timeline(dropped_id).run.lease_expires_at == lease_before
    assert done.run_id is not None
    assert journal.timeline(done.run_id).run.lease_expires_at == 0.0

    kept.rollback()  # finished: no longer tracked
    assert journal.heartbeat() == 0


def test_heartbeat_does_not_renew_a_run_another_process_took(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """A lease renewal never takes a run back from its new owner."""
    _keep, run_id = failed_run(journal)
    their_clock = FakeClock(clock.now + LEASE + 1)
    assert open_other(clock=their_clock).claim() is not None
    clock.advance(LEASE)
    journal.heartbeat()
    run = journal.timeline(run_id).run
    assert (run.owner, run.lease_expires_at) == ("recoverer", their_clock.now + LEASE)


def test_a_live_queue_kept_alive_by_heartbeats_is_not_recovered(
    journal: Journal, clock: FakeClock, open_other: OpenOther
) -> None:
    """While the heartbeat renews its lease, a slow run is not mistaken for a dead one."""
    _keep, run_id = failed_run(journal)
    for _ in range(5):
        clock.advance(LEASE / 2)
        journal.heartbeat()
    assert recover(open_other(clock=FakeClock(clock.now + 1))).runs == ()
    assert journal.timeline(run_id).run.owner == "original"


def test_the_heartbeat_thread_renews_leases_until_the_journal_is_closed(journal_url: str) -> None:
    """With heartbeat=True, a background thread renews leases every lease/3 seconds."""
    beats = threading.Event()
    calls = 0

    def clock() -> float:
        nonlocal calls
        if threading.current_thread().name == "actionqueues-heartbeat":
            calls += 1
            if calls >= 2:  # the first renewal is committed
                beats.set()
        return START + calls

    beating = open_journal(journal_url, owner="beating", clock=clock, lease=0.03, heartbeat=True)
    try:
        q, run_id = failed_run(beating)
        assert beats.wait(timeout=10)
        assert beating.timeline(run_id).run.lease_expires_at >= START + 1 + 0.03  # type: ignore[operator]
    finally:
        beating.close()
    assert not any(t.name == "actionqueues-heartbeat" for t in threading.enumerate())
    beating.close()  # closing twice is harmless
    with pytest.raises(JournalError, match="closed"):
        beating.runs()
    del q


def test_a_failing_heartbeat_is_logged_and_the_thread_goes_on(journal_url: str) -> None:
    """A heartbeat that cannot write logs the error, and beats again."""
    records: list[logging.LogRecord] = []
    logged_twice = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "journal heartbeat failed" in record.getMessage():
                records.append(record)
                if len(records) >= 2:
                    logged_twice.set()

    def broken(run_ids: object) -> None:
        raise JournalError("disk on fire")

    handler = Signal(logging.ERROR)
    logger = logging.getLogger("actionqueues")
    logger.addHandler(handler)
    beating = open_journal(journal_url, owner="beating", lease=0.03, heartbeat=True)
    try:
        beating.renew = broken  # type: ignore[method-assign]
        q, _run_id = failed_run(beating)
        assert logged_twice.wait(timeout=10)
    finally:
        beating.close()
        logger.removeHandler(handler)
    assert "journal heartbeat failed" in records[0].getMessage()
    assert records[0].exc_info is not None
    del q
