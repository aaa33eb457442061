"""Leases: atomic claims, LeaseLost after a takeover, and the heartbeat."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref

import pytest

from actionqueues import (
    ActionQueue,
    AsyncActionQueue,
    BaseListener,
    Journal,
    JournalError,
    LeaseLost,
    RetryPolicy,
    RollbackFailed,
    open_journal,
    recover,
    retry_rollback,
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


def test_a_rollback_whose_run_was_taken_over_stops_with_lease_lost(
    journal: Journal, open_other: OpenOther, caplog: pytest.LogCaptureFixture
) -> None:
    """rollback() after a takeover raises LeaseLost before any call, logged once, writes nothing."""
    q, run_id = failed_run(journal)
    other = open_other()
    assert other.claim() is not None
    before = journal.timeline(run_id)
    commits: list[str] = []
    with caplog.at_level(logging.ERROR, "actionqueues"), inject_faults(commits.append):
        with pytest.raises(LeaseLost) as caught:
            q.rollback()
        assert caught.value.run_id == run_id
        with pytest.raises(LeaseLost):  # asked again: still nothing called
            q.rollback()
    assert "after_commit" not in commits
    assert WORLD.keys_called("rollback") == []  # the new owner rolls back, not this one
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "another process owns the run now: this one stops" in messages[0]
    assert journal.timeline(run_id) == before
    assert (before.run.owner, before.run.status) == ("recoverer", "failed")


@pytest.mark.parametrize("when", ["in the failing call", "during the retry delay"])
def test_a_takeover_during_an_execute_retry_stops_execute_with_lease_lost(
    journal: Journal, clock: FakeClock, open_other: OpenOther, when: str
) -> None:
    """A run claimed while a step retries: execute() raises LeaseLost; no further call is made."""
    other = open_other(clock=FakeClock(clock.now + 3 * LEASE))

    def claim() -> None:
        assert other.claim() is not None

    def claim_then_fail() -> None:
        claim()
        raise OSError("transient")

    def sleep(seconds: float) -> None:
        if when == "during the retry delay":
            claim()

    q = ActionQueue(journal=journal, retry=RetryPolicy(max_attempts=3), sleep=sleep)
    q.add(Put("a"))
    q.add(Put("b"))
    if when == "in the failing call":
        WORLD.script("execute", "a", claim_then_fail)
    else:
        WORLD.script("execute", "a", OSError("transient"))
    with pytest.raises(LeaseLost) as caught:
        q.execute()
    assert caught.value.run_id == q.run_id
    with pytest.raises(LeaseLost):  # the usual clean-up after a failed execute
        q.rollback()
    assert WORLD.keys_called("execute") == ["a"]  # no retry, and b never started
    assert WORLD.keys_called("rollback") == []
    assert q.run_id is not None
    timeline = journal.timeline(q.run_id)
    assert (timeline.run.owner, timeline.run.status) == ("recoverer", "running")
    assert [(s.status, s.attempts) for s in timeline.steps] == [("running", 1), ("pending", 0)]


def test_a_takeover_during_a_rollback_retry_stops_the_rollback(
    journal: Journal, clock: FakeClock, open_other: OpenOther, caplog: pytest.LogCaptureFixture
) -> None:
    """A run claimed while a rollback retries: rollback() raises LeaseLost, no further call."""
    other = open_other(clock=FakeClock(clock.now + 3 * LEASE))

    def claim_then_fail() -> None:
        assert other.claim() is not None
        raise OSError("flaky")

    q = ActionQueue(
        journal=journal,
        rollback_retry=RetryPolicy(max_attempts=3, initial_delay=1.0),
        sleep=RecordingSleep(),
    )
    for key in "abc":
        q.add(Put(key))
    WORLD.script("execute", "c", ValueError("no"))
    WORLD.script("rollback", "b", claim_then_fail)
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with caplog.at_level(logging.ERROR, "actionqueues"), pytest.raises(LeaseLost):
        q.rollback()
    assert WORLD.keys_called("rollback") == ["c", "b"]  # b not retried, a left to the new owner
    lost = [m for m in caplog.messages if "another process owns the run now" in m]
    assert len(lost) == 1
    assert q.run_id is not None
    timeline = journal.timeline(q.run_id)
    assert (timeline.run.owner, timeline.run.status) == ("recoverer", "rolling_back")
    assert [s.status for s in timeline.steps] == ["succeeded", "rolling_back", "rolled_back"]


def test_a_takeover_during_a_rollback_retry_is_not_reported_as_a_failed_rollback(
    journal: Journal, clock: FakeClock, open_other: OpenOther, caplog: pytest.LogCaptureFixture
) -> None:
    """A lost lease in a rollback retry is not logged or heard as that step's rollback failure."""
    other = open_other(clock=FakeClock(clock.now + 3 * LEASE))
    heard: list[RollbackFailed] = []

    class Listener(BaseListener):
        def on_rollback_failed(self, event: RollbackFailed) -> None:
            heard.append(event)

    def claim_then_fail() -> None:
        assert other.claim() is not None
        raise OSError("flaky")

    q = ActionQueue(
        journal=journal,
        rollback_retry=RetryPolicy(max_attempts=3, initial_delay=1.0),
        sleep=RecordingSleep(),
        listeners=[Listener()],
    )
    q.add(Put("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", ValueError("no"))
    WORLD.script("rollback", "b", claim_then_fail)
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with caplog.at_level(logging.ERROR, "actionqueues"), pytest.raises(LeaseLost):
        q.rollback()
    assert not [m for m in caplog.messages if "continuing with the earlier steps" in m]
    assert heard == []


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


def test_a_journaled_queue_is_in_no_reference_cycle(journal: Journal) -> None:
    """With the cyclic GC off, a journaled queue (its add() included) is freed once dropped."""
    gc.disable()
    try:
        q = ActionQueue(journal=journal)
        q.add(Put("a"))
        q.add(Put("b"))
        alive = weakref.ref(q)
        del q
        assert alive() is None
    finally:
        gc.enable()


def test_a_dropped_failed_queue_stops_being_renewed_without_the_cyclic_gc(
    journal: Journal, clock: FakeClock
) -> None:
    """A queue dropped after execute() raised is not renewed, even before any gc.collect()."""
    gc.disable()
    try:
        dropped, run_id = failed_run(journal)
        lease_before = journal.timeline(run_id).run.lease_expires_at
        assert journal.heartbeat() == 1
        del dropped
        clock.advance(10)
        assert journal.heartbeat() == 0
    finally:
        gc.enable()
    assert journal.timeline(run_id).run.lease_expires_at == lease_before


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_queue_dropped_after_a_journal_write_failed_stops_being_renewed_without_the_gc(
    journal: Journal, kind: str
) -> None:
    """A failed write's exception holds no cycle that keeps a dropped queue (and its lease)."""

    def second_commit_fails(point: str, hits: list[int] = []) -> None:  # noqa: B006
        if point == "before_commit":
            hits.append(1)
            if len(hits) == 2:
                raise JournalError("disk full (simulated)", journal.url)

    gc.disable()
    try:
        queue: ActionQueue | AsyncActionQueue
        if kind == "sync":
            queue = ActionQueue(journal=journal, name="w")
        else:
            queue = AsyncActionQueue(journal=journal, name="w")
        queue.add(Put("a"))
        queue.add(Put("b"))
        with inject_faults(second_commit_fails):
            _execute_failing(queue)
        assert journal.heartbeat() == 1
        del queue
        assert journal.heartbeat() == 0
    finally:
        gc.enable()


def _execute_failing(queue: ActionQueue | AsyncActionQueue) -> None:
    """Run ``queue``, which fails with a JournalError (caught inside the loop, if async:
    one escaping ``asyncio.run`` is kept in a cycle with its task)."""
    if isinstance(queue, ActionQueue):
        with pytest.raises(JournalError, match="simulated"):
            queue.execute()
        return

    async def main(queue: AsyncActionQueue) -> None:
        with pytest.raises(JournalError, match="simulated"):
            await queue.execute()

    asyncio.run(main(queue))


def test_a_heartbeat_that_read_a_run_before_it_finished_does_not_renew_it(
    journal: Journal, clock: FakeClock
) -> None:
    """renew() skips finished runs: a late heartbeat leaves a needs_attention run retryable."""
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    WORLD.script("execute", "a", ValueError("no"))
    WORLD.script("rollback", "a", OSError("refund api down"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert q.run_id is not None
    run_id = q.run_id
    assert journal.heartbeat() == 1
    clock.advance(5)
    journal.renew([run_id])  # ... the heartbeat read its list before this rollback ...
    assert not q.rollback().ok  # ... which ends the run needs_attention, lease 0 ...
    clock.advance(5)
    journal.renew([run_id])  # ... then it renews
    run = journal.timeline(run_id).run
    assert (run.status, run.lease_expires_at) == ("needs_attention", 0.0)
    assert retry_rollback(journal, run_id, sleep=RecordingSleep()).outcome == "rolled_back"


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


def test_a_released_run_is_fenced_against_its_old_owner(journal: Journal) -> None:
    """After release(), the old owner's next write raises LeaseLost and renews nothing."""
    _, run_id = failed_run(journal)
    journal.release(run_id)
    run = journal.timeline(run_id).run
    assert (run.owner, run.lease_expires_at) == (None, 0.0)
    with pytest.raises(LeaseLost):
        journal.commit(run_id, {}, [("event", None, "note", "late")])
    after = journal.timeline(run_id)
    assert (after.run.owner, after.run.lease_expires_at) == (None, 0.0)
    assert [e.kind for e in after.events if e.kind == "note"] == []
