"""Many recovery workers on one journal: 2,000 orphaned runs, 4 worker processes, one SIGKILLed.

The runs' owner "died" (:func:`_workers_actions.orphans`: each run started 2
or 3 steps, the last one in flight, its effect applied or not). Four
``actionqueues worker`` processes recover them at once, with a short lease.
About halfway, a trap in the ledger catches one rollback of one worker
after it undid its effect and before it returned, and that worker is
SIGKILLed there: its claims expire after the lease and the others take its
runs over. The ledger of side effects and the journal then show that:

- every run is rolled back, none missed, every started step's rollback ran
  and no effect is left applied;
- a rollback was applied twice only for a step the killed worker had in
  flight (the trapped one at least), harmlessly: the effect is keyed by the
  step's idempotency key;
- no two live workers ever held the same run: each run's claims (the
  journal's ``claimed`` events) are sequential, a second one only takes over
  a run of the killed worker, after the kill, and each run's rollback calls
  (logged with the worker's pid and time) come from one worker, or from the
  killed one and then one other.

It runs on an SQLite file, and on the PostgreSQL server of
``tests/_pgtest.py`` (in a schema of its own, dropped afterwards; skipped,
saying how to run it, when the server is absent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _pgtest
import _workers_actions as actions
import pytest
from _workers_actions import FileLedger

from actionqueues import Journal, open_journal
from actionqueues._journal import ACTIVE_STATUSES
from actionqueues.testing import FakeClock

RUNS = 2000
WORKERS = 4
THREADS = 2  # --concurrency of each worker
LEASE = 2.0  # the workers' lease: a killed worker's claims expire this fast
DEADLINE = 120.0  # for the whole recovery
SETUP_THREADS = 4  # queues making the orphans at once
POLL = 0.05  # how often the test looks at the journal (and the workers' --poll)
TESTS = Path(__file__).resolve().parent
DEAD_OWNER = "dead-owner"


# -- backends ---------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_file(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'journal' / 'runs.db'}"


@contextlib.contextmanager
def _postgresql_schema(tmp_path: Path) -> Iterator[str]:
    with _pgtest.fresh_schema("aqw") as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("sqlite-file"),
        pytest.param("postgresql", marks=_pgtest.marks()),
    ]
)
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty journal of each backend (PostgreSQL: see tests/_pgtest.py)."""
    database = _sqlite_file if request.param == "sqlite-file" else _postgresql_schema
    with database(tmp_path) as url:
        yield url


# -- the orphans --------------------------------------------------------------------------


def _fast_setup(journal: Journal) -> None:
    """Make the dead owner's own commits cheap (test setup only: no fsync per commit)."""
    conn = getattr(journal, "_conn", None)  # the SQLite journal's one connection
    if conn is not None:
        conn.execute("PRAGMA synchronous=OFF")


def make_orphans(url: str) -> list[str]:
    """RUNS runs whose owner died an hour ago (its leases long expired on the real clock)."""
    with open_journal(
        url, owner=DEAD_OWNER, clock=FakeClock(time.time() - 3600), heartbeat=False
    ) as dead:
        _fast_setup(dead)
        return actions.orphans(dead, RUNS, threads=SETUP_THREADS)


# -- the workers --------------------------------------------------------------------------


@dataclass
class Worker:
    """One ``actionqueues worker`` process."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    owner: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        """Its JSON log records (complete lines)."""
        lines = self.out.read_text().splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def output(self) -> str:
        return f"--- worker {self.pid}:\n{self.out.read_text()}{self.err.read_text()}"


def start_workers(url: str, tmp_path: Path, ledger: str) -> list[Worker]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        actions.LEDGER_ENV: ledger,
    }
    workers = []
    for number in range(WORKERS):
        out, err = tmp_path / f"worker-{number}.out", tmp_path / f"worker-{number}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "actionqueues",
                    "worker",
                    "--journal",
                    url,
                    "--import",
                    "_workers_actions",
                    "--concurrency",
                    str(THREADS),
                    "--poll",
                    str(POLL),
                    "--lease",
                    str(LEASE),
                    "--log-format",
                    "json",
                ],
                stdout=stdout,
                stderr=stderr,
                env=env,
            )
        workers.append(Worker(proc, out, err))
    return workers


@dataclass
class Watch:
    """Waits on the worker processes, looking at the journal every POLL seconds."""

    journal: Journal
    workers: list[Worker]
    deadline: float
    killed: set[int] = field(default_factory=set)

    def fail(self, why: str) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        pytest.fail(f"{why}\n" + "\n".join(w.output()[-3000:] for w in self.workers))

    def pause(self) -> None:
        """Wait POLL seconds on a live worker (failing if one exits unasked or time is up)."""
        if time.monotonic() > self.deadline:
            self.fail(f"recovery took more than {DEADLINE} s")
        live = [w for w in self.workers if w.pid not in self.killed]
        for worker in live:
            if worker.proc.poll() is not None:
                self.fail(f"worker {worker.pid} exited ({worker.proc.returncode}) unasked")
        with contextlib.suppress(subprocess.TimeoutExpired):
            live[0].proc.wait(timeout=POLL)

    def active(self) -> int:
        return len(self.journal.runs(status=ACTIVE_STATUSES))


def _pid(owner: str) -> int:
    """The pid in an owner id ``host:pid:nonce``."""
    return int(owner.split(":")[-2])


def _claims(journal: Journal, run_id: str) -> list[tuple[float, str, str]]:
    """(when, new owner, previous owner) of each claim of the run, in order."""
    found = []
    for event in journal.timeline(run_id).events:
        if event.kind == "claimed":
            detail = event.detail  # "by <owner> (was <previous>)"
            owner, _, previous = detail.removeprefix("by ").partition(" (was ")
            found.append((event.at, owner, previous.removesuffix(")")))
    return found


# -- the test -----------------------------------------------------------------------------


def test_four_workers_recover_2000_orphans_with_one_killed_halfway(
    journal_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    """4 worker processes, one SIGKILLed mid-rollback: every run rolled back once, safely."""
    ledger = FileLedger(str(tmp_path / "ledger.db"))
    monkeypatch.setattr(actions, "LEDGER", ledger)
    try:
        _recover_with_a_kill(journal_url, tmp_path, ledger, record_property)
    finally:
        ledger.close()


def _recover_with_a_kill(
    url: str, tmp_path: Path, ledger: FileLedger, record_property: Any
) -> None:
    setup = time.monotonic()
    orphaned = make_orphans(url)
    setup = time.monotonic() - setup
    started = {
        f"{run_id}:{index}"
        for i, run_id in enumerate(orphaned)
        for index in range(actions.started_steps(i))
    }

    began = time.monotonic()
    workers = start_workers(url, tmp_path, ledger.path)
    victim = workers[0]
    with open_journal(url, heartbeat=False, owner="test-observer") as journal:
        watch = Watch(journal, workers, began + DEADLINE)
        while watch.active() > RUNS // 2:  # halfway
            watch.pause()
        trap = ledger.set_trap(victim.pid)
        while ledger.sprung(trap) is None:
            watch.pause()
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        watch.killed.add(victim.pid)
        assert victim.proc.wait(timeout=10) == -signal.SIGKILL
        dead_at = time.time()  # its other thread may have made a call since killed_at
        while watch.active():
            watch.pause()
        elapsed = time.monotonic() - began
        for worker in workers[1:]:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in workers[1:]:
            try:
                code = worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                watch.fail(f"worker {worker.pid} did not stop on SIGTERM")
            assert code == 0, worker.output()

        runs = journal.runs(limit=RUNS + 1)
        claims = {run_id: _claims(journal, run_id) for run_id in orphaned}

    trapped = ledger.sprung(trap)
    assert trapped is not None

    # Every run rolled back, none missed.
    assert len(runs) == RUNS
    assert {r.status for r in runs} == {"rolled_back"}
    assert {r.run_id for r in runs} == set(orphaned)

    # Every started step's rollback ran; nothing else was called; no effect is left.
    conn = ledger._conn()
    effects = {
        key: (started_, applied, rollbacks)
        for key, started_, applied, rollbacks in conn.execute(
            "SELECT key, started, applied, rollbacks FROM effects"
        )
    }
    assert set(effects) == started
    assert all(s == 1 and a == 0 and r >= 1 for s, a, r in effects.values())

    # Who did what: each worker's owner id, from its log.
    owners: dict[int, str] = {}
    for worker in workers:
        first = worker.records()[0]
        assert first["event"] == "worker_started"
        owners[worker.pid] = first["owner"]
        assert _pid(first["owner"]) == worker.pid
    victim_owner = owners[victim.pid]

    # Claims: one per run; a second only for a run of the killed worker, after the kill.
    taken_over = set()
    for run_id, run_claims in claims.items():
        assert run_claims, f"run {run_id} was never claimed"
        assert run_claims[0][2] == DEAD_OWNER
        assert len(run_claims) <= 2, run_claims
        if len(run_claims) == 2:
            (_, claimer, _), (at, second, previous) = run_claims
            assert claimer == victim_owner, run_claims
            assert previous == victim_owner, run_claims
            assert second != victim_owner
            assert at > killed_at, (run_claims, killed_at)
            taken_over.add(run_id)
    assert trapped.rpartition(":")[0] in taken_over

    # Rollback calls: one worker per run, or the killed one, then one other (after the kill).
    calls: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for run_id, pid, at in conn.execute("SELECT run_id, pid, at FROM log ORDER BY seq"):
        calls[run_id].append((pid, at))
    assert set(calls) == set(orphaned)
    for run_id, run_calls in calls.items():
        sequence = [pid for pid, _ in run_calls]
        holders = [pid for i, pid in enumerate(sequence) if i == 0 or pid != sequence[i - 1]]
        if run_id in taken_over:
            successor = _pid(claims[run_id][1][1])
            assert holders in ([victim.pid, successor], [successor]), (run_id, run_calls)
            assert all(at < dead_at for pid, at in run_calls if pid == victim.pid)
            assert all(at > killed_at for pid, at in run_calls if pid != victim.pid)
        else:
            assert holders == [_pid(claims[run_id][0][1])], (run_id, run_calls)

    # A rollback applied twice only for a step the killed worker had in flight.
    twice = {key for key, (_, _, rollbacks) in effects.items() if rollbacks > 1}
    assert trapped in twice
    for key in twice:
        run_id = key.rpartition(":")[0]
        assert run_id in taken_over
        pids = [
            pid for (pid,) in conn.execute("SELECT pid FROM log WHERE key = ? ORDER BY seq", (key,))
        ]
        assert len(pids) == 2
        assert pids[0] == victim.pid
        assert pids[1] != victim.pid

    # Each run was reported finished by one worker at most; progress lines were written.
    reported: dict[str, int] = defaultdict(int)
    progress = 0
    for worker in workers:
        for record in worker.records():
            if record["event"] == "run_recovered":
                assert record["outcome"] == "rolled_back", record
                reported[record["run_id"]] += 1
            progress += record["event"] in ("progress", "backlog_cleared")
    assert set(reported.values()) == {1}
    # The killed worker may have finished a run and died before it logged it.
    unreported = set(orphaned) - set(reported)
    assert all(claims[run_id][-1][1] == victim_owner for run_id in unreported)
    assert progress
    for worker in workers[1:]:
        assert worker.err.read_text() == "", worker.output()
        assert worker.records()[-1]["event"] == "worker_stopped"

    finished = sorted(r.finished_at or 0.0 for r in runs)
    steady = (len(finished) - 1) / (finished[-1] - finished[0])
    overall = RUNS / elapsed
    backend = url.partition(":")[0]
    record_property("recovery_runs_per_second", round(overall, 1))
    print(
        f"\n{backend}: {RUNS} orphans made in {setup:.1f} s; {WORKERS} workers x {THREADS} "
        f"threads recovered them in {elapsed:.1f} s: {overall:.1f} runs/s overall (with the "
        f"start-up, the kill and its {LEASE:g} s lease), {steady:.1f} runs/s between the "
        f"first and the last finished run; {len(taken_over)} run(s) taken over from the "
        f"killed worker, {len(twice)} rollback(s) applied twice"
    )
