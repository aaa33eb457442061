"""Crash test: journaled queues SIGKILLed at random points, then recovered and checked.

Workers (forked by ``crash_child.py``, a ``sys.executable`` child of this
process) run random journaled queues against a ledger of external side
effects: steps that fail for good (so the queue rolls back), steps whose
execute or rollback fails a few times (retried by a RetryPolicy), resumable
runs. Each worker is SIGKILLed: every other one after a random delay on the
real clock, the others by themselves at the Nth hit of a fault point (every
journal point and every ledger point in turn). After each kill this process
recovers the journal (another owner, a clock past every lease) and checks
the invariant (``_crashlib.check``); a quarter of the crashes are left to
the next worker to recover, so recoveries get killed too. Half the
recoveries use the policies journaled with the steps. Some runs have a step
whose rollback fails until it is unblocked: those end needs_attention, and
are unblocked and retried (``retry_rollback``) before the check.

The soak runs on both backends: SQLite journal files, and PostgreSQL (the
server of ``_pgtest``; a fresh schema per test, a table prefix per journal;
skipped, saying how to run it, when the server is absent). The ledger is a
local SQLite file either way.

Also here: in-process tests of a zombie owner (alive, its lease expired, its
run taken over), and tests that the check is not vacuous.

``ACTIONQUEUES_CRASH_KILLS`` (default 200), ``ACTIONQUEUES_CRASH_SEED`` and
``ACTIONQUEUES_CRASH_WORKERS`` (default 2; 4 on PostgreSQL, where a worker
mostly waits for the server's commits) tune it; ``pytest -s`` prints the
tally. ``scripts/crash_soak.py`` is the long version.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from typing import Any

import _pgtest
import pytest
from _crashlib import (
    POINTS,
    RETRY,
    ROLLBACK_RETRY,
    Boom,
    RunSpec,
    announce,
    check,
    create_ledger,
    hooked,
    no_sleep,
    read_ledger,
    recover_journal,
    run_queue,
    soak,
)

from actionqueues import ActionQueue, LeaseLost, RecoveryReport, open_journal, recover
from actionqueues.testing import FakeClock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() and SIGKILL (POSIX)")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=_pgtest.marks())])
def test_sigkilled_workers_leave_every_run_succeeded_or_fully_rolled_back(
    tmp_path: Any, backend: str
) -> None:
    """After 200+ SIGKILLs and recoveries, every run is succeeded or rolled back, nothing lost."""
    kills = int(os.environ.get("ACTIONQUEUES_CRASH_KILLS", "200"))
    seed = int(os.environ.get("ACTIONQUEUES_CRASH_SEED") or random.randrange(10**6))
    workers = int(
        os.environ.get("ACTIONQUEUES_CRASH_WORKERS") or (4 if backend == "postgresql" else 2)
    )
    with contextlib.ExitStack() as stack:
        journal_url = None
        if backend == "postgresql":
            journal_url = stack.enter_context(_pgtest.fresh_schema("aqcrash"))
        tally = soak(
            kills, seed=seed, directory=str(tmp_path), workers=workers, journal_url=journal_url
        )
    print(f"\n{tally.render()}")
    assert tally.violations == [], (
        f"crash invariant violated (ACTIONQUEUES_CRASH_SEED={seed}):\n{tally.render()}"
    )
    assert tally.total_kills >= kills
    assert tally.kills["timer"] > 0
    if kills >= 2 * len(POINTS) * workers:  # each worker takes every point in turn
        assert set(tally.kills) >= {"timer", *POINTS}
    assert tally.facts.runs["succeeded"] > 0
    assert tally.facts.runs["rolled_back"] > 0
    assert tally.facts.recovered > 0


@pytest.fixture
def settled(tmp_path: Any) -> tuple[str, str, list[str]]:
    """A journal and ledger with one succeeded and one rolled-back run (no crash)."""
    journal, ledger = str(tmp_path / "journal.db"), str(tmp_path / "ledger.db")
    create_ledger(ledger)
    with open_journal(journal, heartbeat=False) as j:
        run_queue(j, ledger, RunSpec(steps=2), "ok")
        run_queue(j, ledger, RunSpec(steps=3, fail_at=2), "fails")
        run_ids = [r.run_id for r in sorted(j.runs(), key=lambda r: r.name, reverse=True)]
    assert check(journal, ledger)[0] == []
    return journal, ledger, run_ids


def _tamper(path: str, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            assert conn.execute(sql, params).rowcount >= 1
    finally:
        conn.close()


def test_the_check_flags_an_effect_a_rollback_left_behind(
    settled: tuple[str, str, list[str]],
) -> None:
    """The invariant check is not vacuous: an undone effect that is applied again is reported."""
    journal, ledger, (_, failed) = settled
    _tamper(ledger, "UPDATE effects SET applied = 1 WHERE run_id = ? AND idx = 1", failed)
    assert any("still applied" in v for v in check(journal, ledger)[0])


def test_the_check_flags_a_missing_effect_of_a_succeeded_run(
    settled: tuple[str, str, list[str]],
) -> None:
    """A succeeded run whose effect is missing from the ledger is reported."""
    journal, ledger, (ok, _) = settled
    _tamper(ledger, "DELETE FROM effects WHERE run_id = ? AND idx = 0", ok)
    assert any("succeeded run has effect None" in v for v in check(journal, ledger)[0])


def test_the_check_flags_a_run_left_unfinished_or_never_announced(
    settled: tuple[str, str, list[str]],
) -> None:
    """A run still running after recovery, and a journal run nobody announced, are reported."""
    journal, ledger, (ok, failed) = settled
    _tamper(journal, "UPDATE aq_runs SET status = 'running' WHERE run_id = ?", failed)
    _tamper(ledger, "DELETE FROM runs WHERE run_id = ?", ok)
    violations = check(journal, ledger)[0]
    assert any("ended running" in v for v in violations)
    assert any(f"journal run {ok} was never announced" in v for v in violations)


def test_the_check_flags_rollbacks_out_of_reverse_order(
    settled: tuple[str, str, list[str]],
) -> None:
    """Rollbacks whose last calls ran in increasing step order are reported."""
    journal, ledger, (_, failed) = settled
    _tamper(
        ledger,
        "UPDATE log SET seq = seq + 1000 WHERE run_id = ? AND idx = 2 AND op LIKE 'rollback%'",
        failed,
    )
    assert any("not in reverse" in v for v in check(journal, ledger)[0])


# -- a zombie owner: alive, but its lease expired and another process took the run over --

ZOMBIES = {
    # step 1 fails once; its lease expires during the retry's delay: the retry's start
    # is the write that finds the run taken over, so the retry is never made
    "execute-retry-delay": (RunSpec(steps=2, flaky=(0, 1)), "sleep"),
    # step 1 fails for good; its rollback fails once; the lease expires during that
    # retry's delay: rollback() stops, step 0's rollback is never called by the zombie
    "rollback-retry-delay": (RunSpec(steps=2, fail_at=1, rollback_flaky=(0, 1)), "sleep"),
    # the lease expires inside step 0's execute, after its effect: step 0's result and
    # step 1's start are the write that fails, so step 1 is never called
    "in-execute": (RunSpec(steps=2), "after_effect"),
}


@pytest.mark.parametrize("name", list(ZOMBIES))
def test_a_zombie_owner_is_fenced_and_the_recoverer_finishes_its_run(
    tmp_path: Any, name: str
) -> None:
    """An owner whose lease expired while it was alive stops at its next journal write.

    While it is paused (a retry's delay, or inside execute()), the clock
    passes its lease and another owner recovers the run. The zombie's next
    write raises LeaseLost; it calls no execute() or rollback() after that,
    rollback() raises LeaseLost too; the recoverer's outcome meets the invariant.
    """
    spec, where = ZOMBIES[name]
    journal_path, ledger = str(tmp_path / "journal.db"), str(tmp_path / "ledger.db")
    create_ledger(ledger)
    clock = FakeClock(1_000_000.0)
    zombie = open_journal(journal_path, clock=clock, owner="zombie", lease=10, heartbeat=False)
    recoverer = open_journal(journal_path, clock=clock, owner="recoverer", heartbeat=False)
    takeovers: list[RecoveryReport] = []
    taking_over = False

    def take_over() -> None:
        nonlocal taking_over
        if not taking_over:  # once: the recovery hits the action points too
            taking_over = True
            clock.advance(60)  # past the zombie's lease
            takeovers.append(
                recover(recoverer, retry=RETRY, rollback_retry=ROLLBACK_RETRY, sleep=no_sleep)
            )

    queue = ActionQueue(
        journal=zombie,
        name=name,
        retry=RETRY,
        rollback_retry=ROLLBACK_RETRY,
        sleep=lambda seconds: take_over() if where == "sleep" else None,
    )
    actions = spec.actions(ledger)
    for action in actions:
        queue.add(action)
    assert queue.run_id is not None
    run_id = queue.run_id
    announce(ledger, run_id, spec)

    def hook(point: str) -> None:
        if point == where:
            take_over()

    with hooked(hook):
        try:
            queue.execute()
        except LeaseLost:
            pass
        except Boom:
            with pytest.raises(LeaseLost):
                queue.rollback()
        else:
            raise AssertionError("the zombie's execute() did not notice it lost the run")
        with pytest.raises(LeaseLost):  # fenced: it cannot roll back either
            queue.rollback()
    # The zombie's actions were not called after the takeover (the recoverer has its own).
    zombie_calls = [(a.calls, a.rollback_calls) for a in actions]
    expected = {
        "execute-retry-delay": [(1, 0), (1, 0)],
        "rollback-retry-delay": [(1, 0), (1, 1)],
        "in-execute": [(1, 0), (0, 0)],
    }[name]
    assert zombie_calls == expected
    [report] = takeovers
    [recovered] = report.runs
    assert (recovered.run_id, recovered.outcome) == (run_id, "rolled_back")
    run = recoverer.timeline(run_id).run
    assert (run.status, run.owner, run.recoveries) == ("rolled_back", "recoverer", 1)
    ops = [(idx, op, pid) for _, r, idx, op, pid in read_ledger(ledger).log if r == run_id]
    assert ops[-1][:2] == (0, "rollback:rollback")  # nothing after the recoverer's last undo
    zombie.close()
    recoverer.close()
    assert check(journal_path, ledger)[0] == []


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=_pgtest.marks())])
def test_a_claim_in_the_middle_of_a_zombie_step_commit_fences_the_zombie(
    tmp_path: Any, backend: str
) -> None:
    """A recoverer claims the run while the zombie's step commit is open (before COMMIT).

    Either the claim waits for (or skips) the run until that commit is over,
    or the commit fails with LeaseLost: the zombie must not write to the run
    after the takeover. In the end (after a last recovery) the invariant holds.
    SQLite serializes writers, so this is a PostgreSQL test.
    """
    ledger = str(tmp_path / "ledger.db")
    create_ledger(ledger)
    with _pgtest.fresh_schema("aqcrash") as url:
        clock = FakeClock(1_000_000.0)
        zombie = open_journal(url, clock=clock, owner="zombie", lease=10, heartbeat=False)
        recoverer = open_journal(url, clock=clock, owner="recoverer", heartbeat=False)
        watcher = open_journal(url, owner="watcher", heartbeat=False)
        spec = RunSpec(steps=3)
        queue = ActionQueue(
            journal=zombie,
            name="zombie",
            retry=RETRY,
            rollback_retry=ROLLBACK_RETRY,
            sleep=no_sleep,
        )
        for action in spec.actions(ledger):
            queue.add(action)
        assert queue.run_id is not None
        run_id = queue.run_id
        announce(ledger, run_id, spec)
        commits = 0
        takeover: list[threading.Thread] = []

        def hook(point: str) -> None:
            nonlocal commits
            if point != "before_commit" or takeover:
                return
            commits += 1
            if commits < 2:  # the first commit creates the run; the second is a step's
                return
            clock.advance(60)  # past the zombie's lease
            thread = threading.Thread(
                target=recover,
                args=(recoverer,),
                kwargs={"retry": RETRY, "rollback_retry": ROLLBACK_RETRY, "sleep": no_sleep},
            )
            takeover.append(thread)
            thread.start()
            # Until its claim is committed (its rollback then waits for our locks), or
            # it returned (it skipped the run): then let the zombie's COMMIT go.
            deadline = time.monotonic() + 10
            while thread.is_alive() and time.monotonic() < deadline:
                if watcher.timeline(run_id).run.owner == "recoverer":
                    break
                thread.join(0.005)  # wait on the recoverer itself, a little at a time

        try:
            with hooked(hook), contextlib.suppress(LeaseLost):
                queue.execute()
            [thread] = takeover
            thread.join(30)
            assert not thread.is_alive()
        finally:
            for journal in (zombie, recoverer, watcher):
                journal.close()
        recover_journal(url, 10_000.0, "last")
        assert check(url, ledger)[0] == []
