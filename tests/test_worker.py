"""Recovery workers: the Worker loop, its logs and progress, and ``actionqueues worker``."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _workers_actions as actions
import pytest
from _workers_actions import FileLedger, MemoryLedger

from actionqueues import Journal, JournalError, RetryPolicy, open_journal, recover
from actionqueues import _worker as worker_module
from actionqueues._cli import main
from actionqueues._cli_runs import Painter
from actionqueues._journal import ACTIVE_STATUSES
from actionqueues._worker import (
    EXIT_ABORTED,
    JsonLogFormatter,
    Progress,
    TextLogFormatter,
    Worker,
    WorkerSummary,
    _logging_to,
)
from actionqueues.testing import FakeClock, RecordingSleep

#: When the dead owners wrote their runs (their leases expired long before the workers look).
START = 1_700_000_000.0
#: The workers' journal clock: far past every dead owner's lease.
LATER = START + 3600.0
TESTS = Path(__file__).resolve().parent
#: The longest any test waits for a worker process.
PROCESS_TIMEOUT = 30.0


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def ledger(monkeypatch: pytest.MonkeyPatch) -> MemoryLedger:
    """A fresh in-memory ledger of side effects for the actions of this process."""
    fresh = MemoryLedger()
    monkeypatch.setattr(actions, "LEDGER", fresh)
    return fresh


@pytest.fixture(autouse=True)
def no_real_sleep(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test process never sleeps: a worker left with a real sleep fails the test.

    Tests of worker processes are the exception: they poll their children
    with ``Popen.wait(timeout)``, which sleeps in short steps.
    """
    if "spawn" in request.fixturenames:
        return

    def refuse(seconds: float) -> None:
        pytest.fail(f"the real time.sleep was called with {seconds!r}")

    monkeypatch.setattr(time, "sleep", refuse)


@pytest.fixture
def url(tmp_path: Path) -> str:
    """The URL of this test's (empty) journal file."""
    return f"sqlite:///{tmp_path / 'runs.db'}"


def make_orphans(url: str, count: int, **options: Any) -> list[str]:
    """``count`` runs whose owner ("dead") died long ago, each with 2-3 started steps."""
    with open_journal(url, owner="dead", clock=FakeClock(START), heartbeat=False) as dead:
        return actions.orphans(dead, count, **options)


@pytest.fixture
def journal(url: str) -> Iterator[Journal]:
    """The worker's journal: owner "worker", a clock far past the dead owners' leases."""
    opened = open_journal(url, owner="worker", clock=FakeClock(LATER), heartbeat=False)
    yield opened
    opened.close()


class Waits:
    """A worker's ``wait``: records each wait, then stops the worker (or calls ``then``)."""

    def __init__(self, then: Callable[[int], object] | None = None) -> None:
        self.calls: list[float] = []
        self.worker: Worker | None = None
        self.then = then

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.then is not None:
            self.then(len(self.calls))
        else:
            self.stop()

    def stop(self) -> None:
        assert self.worker is not None
        self.worker.stop("idle")


def worker(journal: Journal, waits: Waits, **options: Any) -> Worker:
    """A Worker on ``journal`` whose idle waits are ``waits``."""
    made = Worker(journal, wait=waits, **options)
    waits.worker = made
    return made


def in_background(target: Worker) -> tuple[threading.Thread, list[WorkerSummary]]:
    """Run ``target.run()`` in a thread; its summary lands in the list."""
    done: list[WorkerSummary] = []
    thread = threading.Thread(target=lambda: done.append(target.run()), name="test-runner")
    thread.start()
    return thread, done


def aborted_while_rolling_back(
    journal: Journal, ledger: MemoryLedger
) -> tuple[Worker, threading.Thread, list[WorkerSummary], Gate, str]:
    """A worker aborted while its thread is held inside a rollback (by the gate); run() has
    returned. Returns the worker, the thread of run(), its summary, the gate and the run."""
    gate = Gate()
    ledger.on_rollback = gate
    running = worker(journal, Waits())
    thread, done = in_background(running)
    held = gate.held_run()
    running.abort("test")
    thread.join(PROCESS_TIMEOUT)
    return running, thread, done, gate, held


class Gate:
    """Holds the first rollback call in its worker thread until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()
        self.key: str | None = None
        self.lock = threading.Lock()

    def __call__(self, key: str) -> None:
        with self.lock:
            if self.key is not None:
                return
            self.key = key
        self.entered.set()
        assert self.open.wait(PROCESS_TIMEOUT), "the test never opened the gate"

    def held_run(self) -> str:
        assert self.entered.wait(PROCESS_TIMEOUT), "no rollback reached the gate"
        assert self.key is not None
        return self.key.rpartition(":")[0]


def rolled_back_once(ledger: MemoryLedger) -> None:
    """Every started step was rolled back exactly once, and no effect is left applied."""
    assert ledger.starts
    assert ledger.rollbacks == Counter(dict.fromkeys(ledger.starts, 1))
    assert ledger.applied() == set()


def statuses(journal: Journal, run_ids: list[str]) -> list[str]:
    return [journal.timeline(r).run.status for r in run_ids]


# -- the Worker loop ------------------------------------------------------------------------


def test_a_worker_rolls_back_every_orphaned_run_then_stops_when_told(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """Each orphan is claimed once and rolled back; idle, it waits ``poll`` and stop() ends it."""
    orphaned = make_orphans(url, 12)
    waits = Waits()
    summary = worker(journal, waits, poll=7.5).run()
    assert summary == WorkerSummary(
        recovered=12,
        outcomes=(("rolled_back", 12),),
        errors=0,
        aborted=False,
        released=(),
        failed=False,
        elapsed=summary.elapsed,
    )
    assert waits.calls == [7.5]
    assert statuses(journal, orphaned) == ["rolled_back"] * 12
    assert {journal.timeline(r).run.recoveries for r in orphaned} == {1}
    rolled_back_once(ledger)


def test_an_idle_worker_waits_poll_seconds_between_claims_and_finds_new_orphans(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """With nothing to claim it waits ``poll``; runs orphaned meanwhile are found after the wait."""
    later: list[str] = []

    def then(calls: int) -> None:
        if calls == 1:
            later.extend(make_orphans(url, 3))
        else:
            waits.stop()

    waits = Waits(then)
    progress: list[Progress] = []
    summary = worker(journal, waits, poll=2.0, on_progress=progress.append).run()
    assert waits.calls == [2.0, 2.0]
    assert summary.recovered == 3
    assert statuses(journal, later) == ["rolled_back"] * 3
    assert [(p.recovered, p.done, p.left) for p in progress] == [(3, True, 0)]
    rolled_back_once(ledger)


def test_stop_lets_each_thread_finish_the_run_it_holds_and_claims_no_more(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """stop() during a rollback: that run is finished, the other orphans are left unclaimed."""
    orphaned = make_orphans(url, 5)
    gate = Gate()
    ledger.on_rollback = gate
    waits = Waits()
    running = worker(journal, waits)
    thread, done = in_background(running)
    held = gate.held_run()
    running.stop("test")
    assert running.stopping
    gate.open.set()
    thread.join(PROCESS_TIMEOUT)
    assert not thread.is_alive()
    assert done[0].recovered == 1
    assert not done[0].aborted
    assert waits.calls == []  # it never went idle
    assert journal.timeline(held).run.status == "rolled_back"
    others = [journal.timeline(r).run for r in orphaned if r != held]
    assert {(r.status in ACTIVE_STATUSES, r.owner, r.recoveries) for r in others} == {
        (True, "dead", 0)
    }


def test_abort_releases_the_run_in_hand_so_another_worker_claims_it_at_once(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """abort() gives the run in hand back (no lease): another owner claims it; ours is fenced."""
    make_orphans(url, 3)
    running, thread, done, gate, held = aborted_while_rolling_back(journal, ledger)
    assert not thread.is_alive()  # run() returned without waiting for the held rollback
    assert done[0].aborted
    assert done[0].released == (held,)
    run = journal.timeline(held).run
    assert (run.status, run.owner, run.lease_expires_at) == ("rolling_back", None, 0)

    # Another worker, whose clock is not past our lease at all, may claim it now.
    with open_journal(url, owner="other", clock=FakeClock(LATER), heartbeat=False) as other:
        assert other.claim(held) is not None
        gate.open.set()  # our thread goes on, and its next journal write finds the run gone
        assert running.join(PROCESS_TIMEOUT)
        other.release(held)
        report = recover(other)
    assert {r.outcome for r in report.runs} == {"rolled_back"}
    assert held in {r.run_id for r in report.runs}
    assert gate.key is not None
    assert ledger.rollbacks[gate.key] == 2  # applied by both: harmless, keyed by the step
    assert journal.timeline(held).run.status == "rolled_back"


@pytest.mark.parametrize("stop", ["abort", "stop"])
def test_a_claim_in_flight_when_the_worker_stops_is_released_untouched(
    url: str,
    journal: Journal,
    ledger: MemoryLedger,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stop: str,
) -> None:
    """A claim that lands after stop() or abort(): the run is given back, nothing is called.

    abort() also waits for the claim to land before it lists the runs in hand,
    so run() returns only with the run released (the command line then ends
    the process, which would leave a claim landing later held until its
    lease expires).
    """
    (orphan,) = make_orphans(url, 1)
    claim = journal.claim
    in_claim = threading.Event()
    landed = threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        in_claim.set()
        assert stopped.wait(PROCESS_TIMEOUT)  # the stop comes while the claim is in flight
        found = claim(*args, **kwargs)
        landed.set()
        return found

    stopped = threading.Event()
    monkeypatch.setattr(journal, "claim", slow_claim)
    caplog.set_level(logging.INFO, logger="actionqueues")
    running = worker(journal, Waits())
    thread, done = in_background(running)
    assert in_claim.wait(PROCESS_TIMEOUT)
    getattr(running, stop)("test")
    stopped.set()
    thread.join(PROCESS_TIMEOUT)
    assert not thread.is_alive()
    if stop == "abort":
        assert landed.is_set()  # run() waited for it
        assert done[0].aborted
    assert running.join(PROCESS_TIMEOUT)
    assert done[0].recovered == 0
    run = journal.timeline(orphan).run
    assert (run.status in ACTIVE_STATUSES, run.owner, run.lease_expires_at) == (True, None, 0)
    assert run.recoveries == 1
    assert ledger.rollbacks == {}  # nothing of the run was called
    released = [r for r in caplog.records if getattr(r, "aq_event", "") == "run_released"]
    assert [r.getMessage() for r in released] == [
        f"run {orphan} (orphan): claimed as recovery was stopping; released untouched, "
        f"another recoverer may claim it now"
    ]
    assert done[0].released == ()  # given back by its thread, not by abort()


def test_recover_gives_back_a_run_claimed_while_a_stop_was_asked_for(
    url: str, journal: Journal, ledger: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """should_stop is asked again after the claim: true, the run is released untouched."""
    orphaned = make_orphans(url, 2)
    answers = iter([False, True])
    caplog.set_level(logging.INFO, logger="actionqueues")
    report = recover(journal, should_stop=lambda: next(answers))
    assert report.runs == ()
    runs = [journal.timeline(r).run for r in orphaned]
    released = [r for r in runs if r.recoveries == 1]
    assert len(released) == 1
    assert (released[0].owner, released[0].lease_expires_at) == (None, 0)
    assert ledger.rollbacks == {}
    (record,) = [r for r in caplog.records if getattr(r, "aq_event", "") == "run_released"]
    assert record.levelno == logging.WARNING
    assert "claimed as recovery was stopping; released untouched" in record.getMessage()


def test_a_run_claimed_while_stopping_that_cannot_be_released_is_logged_and_left_to_its_lease(
    url: str,
    journal: Journal,
    ledger: MemoryLedger,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (orphan,) = make_orphans(url, 1)
    answers = iter([False, True])

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise JournalError("the database is gone", url)

    monkeypatch.setattr(journal, "release", fail)
    assert recover(journal, should_stop=lambda: next(answers)).runs == ()
    (record,) = [r for r in caplog.records if getattr(r, "aq_event", "") == "release_failed"]
    assert record.levelno == logging.ERROR
    assert "cannot be released (the database is gone)" in record.getMessage()
    run = journal.timeline(orphan).run
    assert (run.owner, run.recoveries) == ("worker", 1)  # held until its lease expires
    assert ledger.rollbacks == {}


def test_abort_does_not_release_the_runs_the_worker_passed_on(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """A run passed on waits out its lease even if the worker is aborted: only the run
    in hand is released (else another old worker would take it at once)."""
    newer = "newer-release-run"
    # Abandoned first (its lease expired first): claimed first, and passed on.
    with open_journal(url, owner="dead", clock=FakeClock(START - 60), heartbeat=False) as dead:
        dead.create(
            {
                "run_id": newer,
                "name": "newer",
                "kind": "sync",
                "status": "running",
                "resumable": 0,
                "steps": 1,
                "started": 1,
            },
            [{"idx": 0, "type": "workers_tests.newer_type", "state": "{}"}],
            [("step", 0, {"status": "running", "attempts": 1, "started_at": START - 60})],
        )
    make_orphans(url, 1)
    running, _thread, done, gate, held = aborted_while_rolling_back(journal, ledger)
    assert done[0].aborted
    assert done[0].released == (held,)
    run = journal.timeline(newer).run
    assert (run.owner, run.status in ACTIVE_STATUSES) == ("worker", True)
    assert run.lease_expires_at == LATER + journal.lease  # not released: claimable later
    gate.open.set()
    assert running.join(PROCESS_TIMEOUT)


@pytest.mark.parametrize("failing", ["runs", "release"])
def test_abort_logs_runs_it_cannot_release_and_still_returns(
    url: str,
    journal: Journal,
    ledger: MemoryLedger,
    failing: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the journal cannot list or release the runs in hand, abort() logs it (leases then end)."""
    make_orphans(url, 1)
    gate = Gate()
    ledger.on_rollback = gate
    running = worker(journal, Waits())
    thread, done = in_background(running)
    held = gate.held_run()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise JournalError("the database is gone", url)

    monkeypatch.setattr(journal, failing, fail)
    caplog.set_level(logging.INFO, logger="actionqueues")
    running.abort("test")
    thread.join(PROCESS_TIMEOUT)
    assert done[0].aborted
    assert done[0].released == ()
    monkeypatch.undo()
    gate.open.set()
    assert running.join(PROCESS_TIMEOUT)
    failures = [r for r in caplog.records if getattr(r, "aq_event", "") == "release_failed"]
    assert len(failures) == 1
    assert "the database is gone" in failures[0].getMessage()
    assert "claimable once" in failures[0].getMessage()
    assert journal.timeline(held).run.status == "rolled_back"  # the thread did finish it


def test_an_idle_worker_waits_on_an_event_that_stop_sets(url: str, journal: Journal) -> None:
    """Without an injected wait, an idle worker's long poll ends as soon as stop() is called."""
    make_orphans(url, 1)
    cleared = threading.Event()
    running = Worker(journal, poll=3600.0, on_progress=lambda p: cleared.set())
    thread, done = in_background(running)
    assert cleared.wait(PROCESS_TIMEOUT)  # idle now, or about to wait an hour
    running.stop()
    thread.join(PROCESS_TIMEOUT)
    assert not thread.is_alive()
    assert done[0].recovered == 1


def test_a_signal_handler_in_the_thread_of_run_stops_the_worker(url: str, journal: Journal) -> None:
    """stop() from a signal handler interrupting run() only sets flags; run() acts on them."""
    make_orphans(url, 2)

    received = threading.Event()

    def send(seconds: float) -> None:  # the idle worker thread signals the main thread
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        assert received.wait(PROCESS_TIMEOUT)

    handled: list[str] = []
    running = Worker(journal, wait=send)

    def handler(signum: int, frame: object) -> None:
        handled.append(threading.current_thread().name)
        running.stop(signal.Signals(signum).name)
        received.set()

    assert threading.current_thread() is threading.main_thread()
    saved = signal.signal(signal.SIGUSR1, handler)
    try:
        summary = running.run()
    finally:
        signal.signal(signal.SIGUSR1, saved)
    assert handled == ["MainThread"]
    assert summary.recovered == 2


def test_a_stop_during_a_claim_ends_the_thread_without_waiting(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that comes while a thread looks for a run ends that thread at once, not after poll."""
    waits = Waits()
    stopping = worker(journal, waits)
    real_claim = journal.claim

    def claim(*args: Any, **kwargs: Any) -> Any:
        stopping.stop("during the claim")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(journal, "claim", claim)
    assert stopping.run().recovered == 0
    assert waits.calls == []


def test_a_progress_line_says_so_when_the_journal_cannot_count_the_runs_left(
    url: str, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting the runs left is best effort: a failing journal gives "? left", not an error."""
    make_orphans(url, 2)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise JournalError("cannot read", url)

    monkeypatch.setattr(journal, "runs", fail)
    progress: list[Progress] = []
    worker(journal, Waits(), progress_runs=1, on_progress=progress.append).run()
    assert [(p.recovered, p.left, p.done) for p in progress] == [
        (1, None, False),
        (2, None, False),
        (2, 0, True),
    ]


def test_threads_of_one_worker_recover_each_run_exactly_once(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """Four threads work at once (they meet at a barrier) and no run is recovered twice."""
    orphaned = make_orphans(url, 40)
    barrier = threading.Barrier(4, timeout=PROCESS_TIMEOUT)
    met: set[str] = set()

    def meet(key: str) -> None:
        name = threading.current_thread().name
        if name not in met:
            met.add(name)
            barrier.wait()  # fails unless 4 threads are inside rollbacks at the same time

    ledger.on_rollback = meet
    summary = worker(journal, Waits(), concurrency=4).run()
    assert summary.recovered == 40
    assert summary.outcomes == (("rolled_back", 40),)
    assert statuses(journal, orphaned) == ["rolled_back"] * 40
    for run_id in orphaned:
        timeline = journal.timeline(run_id)
        assert timeline.run.recoveries == 1
        assert [e.kind for e in timeline.events].count("claimed") == 1
    rolled_back_once(ledger)
    assert len(met) == 4
    by_run: dict[str, set[str]] = {}
    for key, thread in ledger.calls:
        by_run.setdefault(key.rpartition(":")[0], set()).add(thread)
    assert all(len(threads) == 1 for threads in by_run.values())  # one thread per run


def test_progress_lines_give_counts_rate_and_runs_left_then_the_cleared_backlog(
    url: str, journal: Journal, ledger: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """A progress line every ``progress_every`` seconds of the clock, and one when it is cleared."""
    make_orphans(url, 8)  # 2, 3, 2, 3, ... started steps
    clock = FakeClock(0.0)
    ledger.on_rollback = lambda key: clock.advance(0.25)
    progress: list[Progress] = []
    caplog.set_level(logging.INFO, logger="actionqueues")
    worker(journal, Waits(), clock=clock, progress_every=1.0, on_progress=progress.append).run()
    assert [(p.recovered, p.elapsed, p.left, p.done) for p in progress] == [
        (2, 1.25, 6, False),
        (4, 2.5, 4, False),
        (6, 3.75, 2, False),
        (8, 5.0, 0, False),
        (8, 5.0, 0, True),
    ]
    assert all(math.isclose(p.rate, p.recovered / p.elapsed) for p in progress)
    assert progress[0].line() == "recovered 2 runs (rolled_back 2), 1.6 runs/s, 6 left"
    assert progress[-1].line() == (
        "backlog cleared: recovered 8 runs (rolled_back 8), 1.6 runs/s in 5.00 s; waiting for more"
    )
    lines = [r.getMessage() for r in caplog.records if getattr(r, "aq_event", "") == "progress"]
    assert lines == [p.line() for p in progress[:-1]]
    assert Progress(1, (("lost", 1),), 1.0, 1.0, None).line() == (
        "recovered 1 run (lost 1), 1.0 runs/s, ? left (the journal could not be read)"
    )


def test_batch_progress_writes_a_line_every_n_runs(url: str, journal: Journal) -> None:
    """With ``progress_runs`` the line comes every N runs, whatever the clock says."""
    make_orphans(url, 7)
    progress: list[Progress] = []
    clock = FakeClock(0.0)
    worker(journal, Waits(), clock=clock, progress_runs=3, on_progress=progress.append).run()
    assert [(p.recovered, p.left, p.done, p.rate) for p in progress] == [
        (3, 4, False, 0.0),
        (6, 1, False, 0.0),
        (7, 0, True, 0.0),
    ]


def test_json_log_lines_parse_with_run_ids_outcomes_and_the_library_fields(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """--log-format json: every line is a JSON object with ts, level, event and the aq_* fields."""
    retried, failing, fine = make_orphans(url, 3)
    with open_journal(url, owner="dead", clock=FakeClock(START), heartbeat=False) as dead:
        dead.create(
            {
                "run_id": "unknown-type-run",
                "name": "foreign",
                "kind": "sync",
                "status": "running",
                "resumable": 0,
                "steps": 1,
                "started": 1,
            },
            [{"idx": 0, "type": "workers_tests.no_such_type", "state": "{}"}],
            [("step", 0, {"status": "running", "attempts": 1, "started_at": START})],
        )
    failures = Counter[str]()

    def fail(key: str) -> None:
        run_id = key.rpartition(":")[0]
        if run_id == failing or (run_id == retried and not failures[key]):
            failures[key] += 1
            raise RuntimeError(f"cannot undo {key}")

    ledger.on_rollback = fail
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    sleep = RecordingSleep()
    with _logging_to(handler):
        summary = worker(
            journal,
            Waits(),
            rollback_retry=RetryPolicy(max_attempts=2, initial_delay=0.5, jitter="none"),
            sleep=sleep,
            pass_on=0,
        ).run()
    assert dict(summary.outcomes) == {"rolled_back": 2, "needs_attention": 1, "unrecoverable": 1}
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all({"ts", "level", "event", "message", "logger", "thread"} <= set(r) for r in records)
    assert all(r["ts"].endswith("Z") for r in records)
    events = [r["event"] for r in records]
    assert events[0] == "worker_started"
    assert events[-1] == "worker_stopped"
    outcomes = {
        r["run_id"]: (r["outcome"], r["level"]) for r in records if r["event"] == "run_recovered"
    }
    assert outcomes == {
        retried: ("rolled_back", "info"),
        fine: ("rolled_back", "info"),
        failing: ("needs_attention", "warning"),
        "unknown-type-run": ("unrecoverable", "warning"),
    }
    retry = next(r for r in records if r["event"] == "retry_scheduled")
    assert (retry["level"], retry["delay"], retry["step"], retry["run_id"]) == (
        "warning",
        0.5,
        retry["step"],
        retried,
    )
    failed = [r for r in records if r["event"] == "rollback_failed"]
    assert failed
    assert {r["run_id"] for r in failed} == {failing}
    assert all(r["level"] == "error" and "cannot undo" in r["error"] for r in failed)
    assert all("Traceback" in r["traceback"] for r in failed)
    unrecoverable = next(r for r in records if r["event"] == "run_unrecoverable")
    assert (unrecoverable["level"], unrecoverable["run_id"]) == ("error", "unknown-type-run")
    stopped = records[-1]
    assert (stopped["recovered"], stopped["aborted"], stopped["errors"]) == (4, False, 0)
    # One retry of each started step of both runs whose rollbacks fail.
    assert sleep.calls == [0.5] * (actions.started_steps(0) + actions.started_steps(1))


def test_text_log_lines_colour_the_outcome_and_hide_tracebacks_unless_verbose() -> None:
    """Text lines: UTC time, level, message; the outcome in its colour; tracebacks with -v only."""
    record = logging.LogRecord(
        "actionqueues.worker", logging.INFO, __file__, 1, "rolled_back %s", ("abc",), None
    )
    record.created = 0.0
    record.aq_outcome = "rolled_back"
    plain = TextLogFormatter(Painter(False)).format(record)
    assert plain == "1970-01-01T00:00:00.000Z INFO    rolled_back abc"
    coloured = TextLogFormatter(Painter(True)).format(record)
    assert "\033[35mrolled_back\033[0m abc" in coloured
    try:
        raise ValueError("boom")
    except ValueError:
        failure = logging.LogRecord(
            "actionqueues", logging.ERROR, __file__, 1, "it failed", (), sys.exc_info()
        )
    quiet = TextLogFormatter(Painter(True)).format(failure)
    assert "\033[1;31mERROR" in quiet
    assert "Traceback" not in quiet
    assert "Traceback" in TextLogFormatter(Painter(False), verbose=True).format(failure)
    died = logging.LogRecord("actionqueues", logging.CRITICAL, __file__, 1, "it died", (), None)
    died.created = 0.0
    assert TextLogFormatter(Painter(False)).format(died).endswith(" CRITICAL it died")


def test_a_journal_error_is_logged_and_retried_after_a_growing_wait(
    url: str, journal: Journal, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing journal does not end the worker: it waits poll, 2x poll, ... and tries again."""
    orphaned = make_orphans(url, 2)
    real_claim = journal.claim
    failures = iter([JournalError("database is locked", url)] * 2)

    def claim(*args: Any, **kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(journal, "claim", claim)
    caplog.set_level(logging.INFO, logger="actionqueues")
    waits = Waits(lambda calls: waits.stop() if calls == 3 else None)
    summary = worker(journal, waits, poll=1.5).run()
    assert waits.calls == [1.5, 3.0, 1.5]
    assert (summary.errors, summary.recovered) == (2, 2)
    assert statuses(journal, orphaned) == ["rolled_back"] * 2
    errors = [r for r in caplog.records if getattr(r, "aq_event", "") == "worker_error"]
    assert [r.getMessage() for r in errors] == [
        "recovery failed (JournalError: database is locked); trying again in 1.5 s",
        "recovery failed (JournalError: database is locked); trying again in 3 s",
    ]
    assert caplog.records[-1].getMessage().endswith("; 2 journal error(s)")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_dies_stops_the_worker(
    url: str, journal: Journal, ledger: MemoryLedger
) -> None:
    """A BaseException escaping recovery kills its thread: the worker stops and says it failed."""
    make_orphans(url, 3)

    def die(key: str) -> None:
        raise actions.Crash

    ledger.on_rollback = die
    dying = worker(journal, Waits(), concurrency=2)
    summary = dying.run()
    assert dying.join(PROCESS_TIMEOUT)  # their exceptions are reported within this test
    assert summary.failed
    assert summary.recovered == 0


def test_worker_arguments_are_checked(journal: Journal) -> None:
    """Bad arguments are refused when the Worker is made; a Worker runs once."""
    for bad, error in ((0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)):
        with pytest.raises(error, match="concurrency"):
            Worker(journal, concurrency=bad)  # type: ignore[arg-type]
    for poll in (0, -1, math.nan, math.inf, 1e10, 86400.5):
        with pytest.raises(ValueError, match="poll"):
            Worker(journal, poll=poll)
    for wrong in (True, "1"):  # the wrong kind of value
        with pytest.raises(TypeError, match="poll"):
            Worker(journal, poll=wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress_every"):
        Worker(journal, progress_every=0)
    with pytest.raises(ValueError, match="progress_runs"):
        Worker(journal, progress_runs=0)
    with pytest.raises(ValueError, match="pass_on must be an int >= 0, got -1"):
        Worker(journal, pass_on=-1)
    with pytest.raises(TypeError, match="pass_on"):
        Worker(journal, pass_on=2.0)  # type: ignore[arg-type]
    assert (Worker(journal).pass_on, Worker(journal, pass_on=0).pass_on) == (5, 0)
    with pytest.raises(TypeError, match="open_journal"):
        Worker("sqlite://")  # type: ignore[arg-type]
    once = Worker(journal)
    once.stop()
    assert once.run().recovered == 0
    with pytest.raises(RuntimeError, match="runs once"):
        once.run()


# -- actionqueues worker, in this process ---------------------------------------------------


@pytest.fixture
def signalled(monkeypatch: pytest.MonkeyPatch) -> list[Worker]:
    """The CLI's workers, which "receive SIGTERM" (its installed handler runs) when idle."""
    made: list[Worker] = []

    class Signalled(Worker):
        def __init__(self, journal: Journal, **options: Any) -> None:
            super().__init__(journal, wait=self.signal, **options)
            made.append(self)

        def signal(self, seconds: float) -> None:
            sigterm()

    monkeypatch.setattr(worker_module, "Worker", Signalled)
    return made


def sigterm() -> None:
    """Call the SIGTERM handler installed now (as the signal would, without sending one)."""
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    handler(signal.SIGTERM, None)


def test_the_worker_command_recovers_the_backlog_and_stops_cleanly_on_sigterm(
    url: str,
    ledger: MemoryLedger,
    signalled: list[Worker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``actionqueues worker``: text log lines per run and progress; SIGTERM when idle: exit 0."""
    orphaned = make_orphans(url, 4)
    saved = signal.getsignal(signal.SIGTERM)
    code = main(["worker", "--journal", url, "--import", "_workers_actions", "--poll", "0.2"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert signal.getsignal(signal.SIGTERM) is saved  # the handlers are put back
    lines = out.splitlines()
    assert "INFO    worker started on " in lines[0]
    assert "2 threads" not in lines[0]
    assert "1 thread, poll 0.2 s, lease 30 s" in lines[0]
    for run_id in orphaned:
        assert any(f"INFO    rolled_back {run_id} orphan in " in line for line in lines)
    assert any("backlog cleared: recovered 4 runs (rolled_back 4)" in line for line in lines)
    assert "stopping (SIGTERM): no new claims; no run in hand" in lines[-2]
    assert "worker stopped: recovered 4 runs (rolled_back 4) in " in lines[-1]
    assert "\033[" not in out  # not a terminal: no colour
    with open_journal(url, heartbeat=False) as journal:
        assert statuses(journal, orphaned) == ["rolled_back"] * 4
    rolled_back_once(ledger)
    assert signalled[0].concurrency == 1


def test_the_worker_command_passes_its_options_to_the_worker(
    url: str, signalled: list[Worker], capsys: pytest.CaptureFixture[str]
) -> None:
    """--concurrency, --poll, --lease, --no-resume and --batch-progress reach the worker."""
    code = main(
        [
            "worker",
            "--journal",
            url,
            "--concurrency",
            "3",
            "--poll",
            "0.5",
            "--lease",
            "4",
            "--no-resume",
            "--batch-progress",
            "--color",
            "always",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    made = signalled[0]
    assert (made.concurrency, made.poll, made.resume, made.progress_runs) == (3, 0.5, False, 100)
    assert made.journal.lease == 4.0
    assert "there was no journal at " in out  # it created one, and said so
    assert "\033[33mWARNING" in out


def test_a_second_signal_releases_the_run_in_hand_and_exits_3(
    url: str,
    ledger: MemoryLedger,
    signalled: list[Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM twice while a rollback runs: the run is released, the process ends at once."""
    make_orphans(url, 2)
    exits: list[int] = []
    monkeypatch.setattr(worker_module, "_hard_exit", exits.append)
    gate = threading.Event()
    held: list[str] = []

    def signal_twice(key: str) -> None:
        if not held:
            held.append(key.rpartition(":")[0])
            sigterm()
            sigterm()
            assert gate.wait(PROCESS_TIMEOUT)

    ledger.on_rollback = signal_twice
    code = main(
        ["worker", "--journal", url, "--import", "_workers_actions", "--log-format", "json"]
    )
    assert code == EXIT_ABORTED
    assert exits == [EXIT_ABORTED]  # its thread was still inside the rollback
    gate.set()
    assert signalled[0].join(PROCESS_TIMEOUT)
    out, _ = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    released = [r for r in records if r["event"] == "run_released"]
    assert [(r["run_id"], r["level"]) for r in released] == [(held[0], "warning")]
    stopping = next(r for r in records if r["event"] == "worker_stopping")
    assert stopping["reason"] == "SIGTERM"
    assert records[-1]["event"] == "worker_stopped"
    assert records[-1]["aborted"] is True
    with open_journal(url, heartbeat=False) as journal:
        run = journal.timeline(held[0]).run
    assert run.status in ACTIVE_STATUSES
    assert run.lease_expires_at == 0  # claimable by any worker now


def test_the_worker_command_refuses_runs_of_unregistered_action_types_unless_forced(
    url: str,
    signalled: list[Worker],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the --import that registers their types, it refuses to start; --force marks them."""
    # Only abandoned runs are checked, a sample of them (the newest first).
    monkeypatch.setattr(worker_module, "TYPE_CHECK_SAMPLE", 1)
    orphaned = make_orphans(url, 1)
    with open_journal(url, heartbeat=False) as journal:
        journal.create(
            {
                "run_id": "foreign-run",
                "name": "foreign",
                "kind": "sync",
                "status": "running",
                "resumable": 0,
                "steps": 1,
                "started": 1,
            },
            [{"idx": 0, "type": "elsewhere.step", "state": "{}"}],
            [("step", 0, {"status": "running", "attempts": 1, "started_at": START})],
        )
        journal.release("foreign-run")
    with open_journal(url, heartbeat=False, owner="alive", lease=3600) as alive:
        alive.create(  # held by a live owner: neither checked nor claimed
            {
                "run_id": "live-run",
                "name": "live",
                "kind": "sync",
                "status": "running",
                "resumable": 0,
                "steps": 1,
                "started": 0,
            },
            [{"idx": 0, "type": "elsewhere.other", "state": "{}"}],
            [],
        )
    code = main(["worker", "--journal", url, "--import", "_workers_actions"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "'elsewhere.step' (run foreign-)" in err
    assert "elsewhere.other" not in err
    assert "Nothing was changed" in err
    assert signalled == []
    code = main(["worker", "--journal", url, "--import", "_workers_actions", "--force"])
    out, err = capsys.readouterr()
    assert code == 0
    # By default a run of a type this worker lacks is left for another worker, a few times.
    assert "passed_on foreign-run foreign in " in out
    assert "passed on (1 of 5) to a recoverer that can rebuild them" in out
    with open_journal(url, heartbeat=False) as journal:
        assert statuses(journal, ["foreign-run", *orphaned, "live-run"]) == [
            "running",
            "rolled_back",
            "running",
        ]
        run = journal.timeline("foreign-run").run
        assert run.lease_expires_at is not None
        assert run.lease_expires_at > time.time()
    # Its lease over (another worker claims it, and gives it back), a worker allowing one
    # pass marks it: it was passed on once already.
    with open_journal(url, heartbeat=False, clock=FakeClock(time.time() + 3600)) as others:
        assert others.claim("foreign-run") is not None
        others.release("foreign-run")
    code = main(
        ["worker", "--journal", url, "--import", "_workers_actions", "--force", "--pass-on", "1"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "unrecoverable foreign-run foreign in " in out
    assert "(passed on 1 time before)" in out
    with open_journal(url, heartbeat=False) as journal:
        assert statuses(journal, ["foreign-run", *orphaned, "live-run"]) == [
            "needs_attention",
            "rolled_back",
            "running",
        ]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--poll", "0"),
        ("--poll", "soon"),
        ("--poll", "1e10"),  # past threading.TIMEOUT_MAX: a wait would raise OverflowError
        ("--lease", "-1"),
        ("--lease", "1e300"),
        ("--concurrency", "0"),
        ("--pass-on", "-1"),
        ("--pass-on", "many"),
    ],
)
def test_the_worker_command_rejects_bad_arguments(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad --poll, --lease or --concurrency values: exit 2 with the reason."""
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--journal", "sqlite://", option, value])
    assert exited.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_the_first_signal_stops_even_a_worker_already_stopping_of_its_own(
    journal: Journal,
) -> None:
    """A worker stopping because a thread died: the operator's first SIGTERM asks for the
    clean stop (the runs in hand finish), not the abort that a second signal means."""
    worker = Worker(journal)
    worker.stop("a worker thread died")
    with worker_module._signals(worker):
        os.kill(os.getpid(), signal.SIGTERM)
        assert not worker._aborting  # the runs in hand are not released
        os.kill(os.getpid(), signal.SIGTERM)
        assert worker._aborting


# -- actionqueues worker, as a process receiving signals ----------------------------------


class WorkerProcess:
    """``python -m actionqueues worker`` in a child process; its output in files."""

    def __init__(self, url: str, tmp_path: Path, ledger: str, *options: str) -> None:
        self.out = tmp_path / f"worker-{len(list(tmp_path.glob('worker-*.out')))}.out"
        self.err = self.out.with_suffix(".err")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            actions.LEDGER_ENV: ledger,
        }
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "actionqueues",
                    "worker",
                    "--journal",
                    url,
                    "--import",
                    "_workers_actions",
                    "--poll",
                    "0.05",
                    "--log-format",
                    "json",
                    *options,
                ],
                stdout=out,
                stderr=err,
                env=env,
            )

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (complete lines)."""
        text = self.out.read_text()
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def events(self) -> list[str]:
        return [r["event"] for r in self.records()]

    def wait_for(self, what: str, predicate: Callable[[], object]) -> None:
        """Wait (polling, while the process runs) until ``predicate()`` holds."""
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"timed out waiting for {what}; output:\n{self.output()}")
            try:
                code = self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"the worker exited ({code}) before {what}; output:\n{self.output()}")

    def exit_code(self) -> int:
        try:
            return self.proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung worker
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the worker did not exit; output:\n{self.output()}")

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()


Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def spawn(url: str, tmp_path: Path, file_ledger: FileLedger) -> Iterator[Spawn]:
    """Start worker processes on the test's journal and ledger; kill any left at the end."""
    started: list[WorkerProcess] = []

    def start(*options: str) -> WorkerProcess:
        process = WorkerProcess(url, tmp_path, file_ledger.path, *options)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:  # pragma: no cover - a failed test
            process.proc.kill()
            process.proc.wait()


@pytest.fixture
def file_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileLedger]:
    """A ledger file shared with the worker processes (this process's actions write to it too)."""
    shared = FileLedger(str(tmp_path / "ledger.db"))
    monkeypatch.setattr(actions, "LEDGER", shared)
    yield shared
    shared.close()


def ledger_rollbacks(ledger: FileLedger) -> dict[str, tuple[int, int, int]]:
    """Key -> (started, applied, rollback calls)."""
    rows = ledger._conn().execute("SELECT key, started, applied, rollbacks FROM effects")
    return {key: (started, applied, rollbacks) for key, started, applied, rollbacks in rows}


def test_a_worker_process_stops_with_exit_0_on_sigterm_leaving_no_run_claimed(
    url: str, file_ledger: FileLedger, spawn: Spawn
) -> None:
    """A real worker process clears the backlog, then SIGTERM ends it: exit 0, nothing held."""
    orphaned = make_orphans(url, 20)
    worker_process = spawn("--concurrency", "2")
    worker_process.wait_for(
        "the backlog to clear", lambda: "backlog_cleared" in worker_process.events()
    )
    worker_process.proc.send_signal(signal.SIGTERM)
    assert worker_process.exit_code() == 0, worker_process.output()
    assert worker_process.err.read_text() == ""
    records = worker_process.records()
    events = [r["event"] for r in records]
    assert events[0] == "worker_started"
    assert events[-2:] == ["worker_stopping", "worker_stopped"]
    recovered = {r["run_id"]: r["outcome"] for r in records if r["event"] == "run_recovered"}
    assert recovered == dict.fromkeys(orphaned, "rolled_back")
    with open_journal(url, heartbeat=False) as journal:
        assert journal.runs(status=ACTIVE_STATUSES) == []
        assert statuses(journal, orphaned) == ["rolled_back"] * 20
    effects = ledger_rollbacks(file_ledger)
    assert set(effects.values()) == {(1, 0, 1)}  # every started step undone, once
    assert len(effects) == sum(actions.started_steps(i) for i in range(20))


def test_sigterm_lets_a_worker_process_finish_the_run_in_hand(
    url: str, file_ledger: FileLedger, spawn: Spawn
) -> None:
    """SIGTERM during a rollback: the run is finished, no other run is claimed, exit 0."""
    orphaned = make_orphans(url, 4)
    trap = file_ledger.set_trap()
    worker_process = spawn()
    worker_process.wait_for("a rollback", lambda: file_ledger.sprung(trap))
    worker_process.proc.send_signal(signal.SIGTERM)
    worker_process.wait_for("the stop", lambda: "worker_stopping" in worker_process.events())
    file_ledger.release(trap)
    assert worker_process.exit_code() == 0, worker_process.output()
    held = (file_ledger.sprung(trap) or "").rpartition(":")[0]
    stopping = next(r for r in worker_process.records() if r["event"] == "worker_stopping")
    assert stopping["busy"] == 1
    with open_journal(url, heartbeat=False) as journal:
        assert journal.timeline(held).run.status == "rolled_back"
        left = [journal.timeline(r).run for r in orphaned if r != held]
    assert {(r.status in ACTIVE_STATUSES, r.owner, r.recoveries) for r in left} == {
        (True, "dead", 0)
    }


def test_a_second_sigterm_releases_the_run_in_hand_and_exits_3(
    url: str, file_ledger: FileLedger, spawn: Spawn
) -> None:
    """A second SIGTERM: the run in hand is released at once (lease 0) and the process exits 3."""
    make_orphans(url, 2)
    trap = file_ledger.set_trap()
    worker_process = spawn("--lease", "60")
    worker_process.wait_for("a rollback", lambda: file_ledger.sprung(trap))
    worker_process.proc.send_signal(signal.SIGTERM)
    worker_process.wait_for("the stop", lambda: "worker_stopping" in worker_process.events())
    worker_process.proc.send_signal(signal.SIGTERM)
    assert worker_process.exit_code() == EXIT_ABORTED, worker_process.output()
    key = file_ledger.sprung(trap)
    assert key is not None
    held = key.rpartition(":")[0]
    released = [r["run_id"] for r in worker_process.records() if r["event"] == "run_released"]
    assert released == [held]
    with open_journal(url, heartbeat=False) as journal:  # the real clock: the lease is gone
        run = journal.timeline(held).run
        assert run.status in ACTIVE_STATUSES
        assert run.lease_expires_at == 0
        report = recover(journal)  # long before the worker's 60 s lease would have expired
    assert {r.outcome for r in report.runs} == {"rolled_back"}
    assert held in {r.run_id for r in report.runs}
    assert ledger_rollbacks(file_ledger)[key] == (1, 0, 2)  # undone twice, harmlessly


def test_nested_shared_event_loops_restore_the_outer_one() -> None:
    """A shared loop inside another serves until its block ends; then the outer one again."""
    from actionqueues import _recovery

    with _recovery.shared_event_loop():
        outer = _recovery._SHARED.loops
        with _recovery.shared_event_loop():
            assert _recovery._SHARED.loops is not outer
        assert _recovery._SHARED.loops is outer
    assert _recovery._SHARED.loops is None
