"""The crash invariant at each named fault point, exercised deterministically.

A worker process runs the same small journaled queue up to three times and
SIGKILLs itself at exactly the Nth hit of one point: a journal point of
``actionqueues.testing.FAULT_POINTS`` or a ledger point inside the action
(``_crashlib.ACTION_POINTS``). The parent then checks the journal and the
ledger against a model of the documented commit protocol, recovers, and
checks the exact outcome again; a run that then needs attention (a blocked
rollback) is unblocked and retried with ``retry_rollback()``, and checked a
third time. Recovery runs with the queue's policies, or (a subset of the
cases) with the policies it reads from the journal.

The model (:func:`events`) lists, for one run, every point in the order it
is hit and what becomes durable right after it: a journal commit, or a
ledger write. :func:`test_the_model_lists_the_points_a_real_run_hits` holds
it to what a real run does.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from _crashlib import (
    OPERATOR,
    POINTS,
    ROLLBACK_RETRY,
    ForkServer,
    RunSpec,
    check,
    create_ledger,
    hooked,
    no_sleep,
    read_journal,
    read_ledger,
    recover_journal,
    run_queue,
    settle,
    unblock,
)

from actionqueues import open_journal, retry_rollback

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() and SIGKILL (POSIX)")

SCENARIOS = {
    # two steps that succeed
    "ok": RunSpec(steps=2),
    # step 1 writes its effect, then fails: both are rolled back
    "fail": RunSpec(steps=2, fail_at=1, fail_mode="after"),
    # step 0 fails once before it works; step 1 fails before writing its effect;
    # step 0's rollback fails once before it works (every retry is committed)
    "retry": RunSpec(steps=2, fail_at=1, fail_mode="before", flaky=(1, 0), rollback_flaky=(1, 0)),
    # resumable: recovery finishes the run forward
    "resume": RunSpec(steps=2, resumable=True),
    "resume-retry": RunSpec(steps=2, resumable=True, flaky=(0, 1)),
    # the same protocol with an AsyncActionQueue
    "async-retry": RunSpec(
        steps=2, fail_at=1, fail_mode="before", flaky=(1, 0), rollback_flaky=(1, 0), kind="async"
    ),
    # step 2 fails; step 1's rollback fails once (retried), then for good until unblock():
    # the run needs attention, and retry_rollback() finishes it
    "blocked": RunSpec(steps=3, fail_at=2, blocked=(1,), rollback_flaky=(0, 1, 0)),
    # resumable, but its step 1 fails for good (after writing its effect): resuming it fails
    "resume-fail": RunSpec(steps=2, resumable=True, fail_at=1, fail_mode="after"),
}
RUNS = 3  # each worker runs its scenario up to 3 times, so every point has 3+ hits


# -- the model ---------------------------------------------------------------------


@dataclass
class StepModel:
    status: str = "pending"
    attempts: int = 0
    rollback_attempts: int = 0
    waiting: bool = False  # next_retry_at is set: a retry's delay is running
    row: bool = False  # the ledger has a row for it
    applied: bool = False
    executes: int = 0
    rollbacks: int = 0


@dataclass
class RunModel:
    spec: RunSpec
    unblocked: bool = False  # unblock() was called: blocked rollbacks work
    created: bool = False
    status: str = ""
    recoveries: int = 0
    steps: list[StepModel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps = [StepModel() for _ in range(self.spec.steps)]

    def execute(self, index: int) -> None:
        """The ledger write of execute: INSERT OR IGNORE, count the call."""
        step = self.steps[index]
        step.executes += 1
        if not step.row:
            step.row = step.applied = True

    def undo(self, index: int) -> None:
        step = self.steps[index]
        step.rollbacks += 1
        step.row, step.applied = True, False

    def shape(self) -> dict[str, Any]:
        if not self.created:
            return {"in_journal": False, "effects": [i for i, s in enumerate(self.steps) if s.row]}
        shape = {
            "status": self.status,
            "recoveries": self.recoveries,
            "steps": [
                (
                    s.status,
                    s.attempts,
                    s.rollback_attempts,
                    (s.applied, s.executes, s.rollbacks) if s.row else None,
                )
                for s in self.steps
            ],
        }
        return _with_waiting(shape, [i for i, s in enumerate(self.steps) if s.waiting])


def _with_waiting(shape: dict[str, Any], waiting: list[int]) -> dict[str, Any]:
    """Add the steps whose retry delay is running (only when there are some: it is rare)."""
    if waiting:
        shape["waiting"] = waiting
    return shape


Change = Callable[[RunModel], None]


def _set(index: int | None = None, **values: Any) -> Change:
    def change(m: RunModel) -> None:
        target: Any = m if index is None else m.steps[index]
        for key, value in values.items():
            setattr(target, key, value)

    return change


def _count(index: int, column: str) -> Change:
    def change(m: RunModel) -> None:
        step = m.steps[index]
        setattr(step, column, getattr(step, column) + 1)

    return change


def _execute(index: int) -> Change:
    return lambda m: m.execute(index)


def _undo(index: int) -> Change:
    return lambda m: m.undo(index)


def events(spec: RunSpec) -> list[tuple[str, Change | None]]:
    """Every point one run hits, in order, with what becomes durable right after it.

    The protocol (``_durable.py``): the run is created with the start of step
    0; the result of step k is committed with the start of step k+1; a retry
    commits twice: when it is scheduled (its due time; the count is
    unchanged) and when its call is about to be made, after the delay (the
    count of calls started); the run's outcome is one commit; each rollback's
    start is committed (with the previous rollback's outcome) before
    ``rollback()`` is called; then the final status: rolled_back, or
    needs_attention if a rollback failed for good.
    """
    seq: list[tuple[str, Change | None]] = []
    queued: list[Change] = []  # waits for the next commit

    def commit(*changes: Change) -> None:
        batch = [*queued, *changes]
        queued.clear()

        def apply(m: RunModel) -> None:
            for c in batch:
                c(m)

        seq.append(("before_commit", apply))  # durable once COMMIT ran, i.e. after this point
        seq.append(("after_commit", None))

    def retry(k: int, column: str) -> None:
        commit(_set(k, waiting=True))  # scheduled: when the next call is due (count unchanged)
        commit(_count(k, column), _set(k, waiting=False))  # due: the call is about to be made

    failed_at = None
    for k in range(spec.steps):
        seq.append(("before_step_record", None))
        create = [_set(created=True, status="running")] if k == 0 else []
        commit(*create, _set(k, status="running"), _count(k, "attempts"))
        seq.append(("after_step_record", None))
        for _ in range(spec.flaky_at(k)):
            seq.append(("in_execute", None))  # raises Transient
            retry(k, "attempts")
        if spec.fail_at == k and spec.fail_mode == "before":
            seq.append(("in_execute", None))  # raises Boom
            failed_at = k
            break
        seq.append(("in_execute", _execute(k)))
        seq.append(("after_effect", None))
        if spec.fail_at == k:
            failed_at = k
            break
        seq.append(("after_execute", None))
        queued.append(_set(k, status="succeeded"))
    seq.append(("before_finish_record", None))
    if failed_at is None:
        commit(_set(status="succeeded"))
        return seq
    commit(_set(failed_at, status="failed"), _set(status="failed"))
    for k in range(failed_at, -1, -1):
        seq.append(("before_rollback_record", None))
        commit(
            _set(status="rolling_back"),
            _set(k, status="rolling_back"),
            _count(k, "rollback_attempts"),
        )
        seq.append(("after_rollback_record", None))
        for _ in range(spec.rollback_flaky_at(k)):
            seq.append(("in_rollback", None))  # raises Transient
            retry(k, "rollback_attempts")
        if k in spec.blocked:
            seq.append(("in_rollback", None))  # raises Boom: not retried
            seq.append(("after_rollback", None))
            queued.append(_set(k, status="rollback_failed"))
            continue
        seq.append(("in_rollback", _undo(k)))
        seq.append(("after_undo", None))
        seq.append(("after_rollback", None))
        queued.append(_set(k, status="rolled_back"))
    blocked = any(k <= failed_at for k in spec.blocked)
    commit(_set(status="needs_attention" if blocked else "rolled_back"))
    return seq


def simulate(spec: RunSpec, point: str, nth: int) -> list[RunModel]:
    """The runs a worker announced before it was killed at the ``nth`` hit of ``point``."""
    seen = 0
    models: list[RunModel] = []
    for _ in range(RUNS):
        model = RunModel(spec)
        models.append(model)
        for name, change in events(spec):
            if name == point:
                seen += 1
                if seen == nth:
                    return models
            if change is not None:
                change(model)
    raise AssertionError(f"{point} is hit fewer than {nth} times in {RUNS} runs")


def recover_model(m: RunModel, journaled: bool = False) -> str | None:
    """What recovery does (the issue's contract): resume a resumable running run, else roll back.

    A rollback that failed for good before the crash is not tried again; a
    blocked one fails; either way the run then needs attention.

    ``journaled``: recovery retries with the journaled policies instead of
    being given RETRY. They keep RETRY's limits and its ``retry_on``
    exception type (README, "Recovery retries with the policies the run's
    queue had"), so the outcome is the same: Transient is retried, Boom never.
    """
    spec = m.spec
    if not m.created or m.status in ("succeeded", "rolled_back", "needs_attention"):
        return None
    m.recoveries += 1
    if spec.resumable and m.status == "running":
        first = next((i for i, s in enumerate(m.steps) if s.status != "succeeded"), spec.steps)
        for k in range(first, spec.steps):
            step = m.steps[k]
            step.attempts += 1 + spec.flaky_at(k)  # the start, then each retry
            step.waiting = False
            if spec.fail_at == k:
                booms = _booms(step, "attempts", journaled)
                if spec.fail_mode == "after":
                    for _ in range(booms):
                        m.execute(k)
                step.status = m.status = "failed"
                break
            m.execute(k)
            step.status = "succeeded"
        else:
            m.status = "succeeded"
            return "resumed"
    return _roll_back(m, ("pending", "rolled_back", "rollback_failed"), journaled)


def _booms(step: StepModel, column: str, journaled: bool) -> int:
    """How many calls raise Boom: one, journaled policies or not (retry_on is journaled)."""
    return 1


def _roll_back(m: RunModel, done: tuple[str, ...], journaled: bool = False) -> str:
    """Roll back, in reverse, the steps whose status is not in ``done``; the outcome."""
    for k in range(m.spec.steps - 1, -1, -1):
        step = m.steps[k]
        if step.status in done:
            continue
        step.rollback_attempts += 1 + m.spec.rollback_flaky_at(k)  # a fresh process's calls
        step.waiting = False
        if k in m.spec.blocked and not m.unblocked:
            _booms(step, "rollback_attempts", journaled)
            step.status = "rollback_failed"
            continue
        m.undo(k)
        step.status = "rolled_back"
    failed = any(s.status == "rollback_failed" for s in m.steps)
    m.status = "needs_attention" if failed else "rolled_back"
    return m.status


def retry_rollback_model(m: RunModel) -> str | None:
    """retry_rollback() of a run that needs attention: its failed rollbacks are tried again."""
    if m.status != "needs_attention":
        return None
    m.recoveries += 1  # it claims the run
    return _roll_back(m, ("pending", "rolled_back"))


# -- what really happened ------------------------------------------------------------


def observed(journal: str, ledger: str) -> list[dict[str, Any]]:
    """The announced runs as the journal and the ledger show them, in the model's shape."""
    timelines = read_journal(journal)
    book = read_ledger(ledger)
    shapes: list[dict[str, Any]] = []
    for run_id in book.specs:
        effects = {e.idx: e for e in book.effects.values() if e.run_id == run_id}
        timeline = timelines.get(run_id)
        if timeline is None:
            shapes.append({"in_journal": False, "effects": sorted(effects)})
            continue
        steps = []
        for s in timeline.steps:
            e = effects.get(s.index)
            effect = None if e is None else (e.applied, e.executes, e.rollbacks)
            steps.append((s.status, s.attempts, s.rollback_attempts, effect))
        shape = {
            "status": timeline.run.status,
            "recoveries": timeline.run.recoveries,
            "steps": steps,
        }
        waiting = [s.index for s in timeline.steps if s.next_retry_at is not None]
        shapes.append(_with_waiting(shape, waiting))
    return shapes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One fork server for the module: each case forks a fresh worker from it."""
    with ForkServer(str(tmp_path_factory.mktemp("server") / "server.err")) as srv:
        yield srv


@pytest.fixture(scope="module")
def blank(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """An empty journal and an empty ledger, made once and copied by each case (cheaper)."""
    directory = tmp_path_factory.mktemp("blank")
    journal, ledger = str(directory / "journal.db"), str(directory / "ledger.db")
    open_journal(journal, heartbeat=False).close()
    create_ledger(ledger)
    return journal, ledger


@dataclass
class Case:
    journal: str
    ledger: str
    report_outcomes: list[str]
    before: list[dict[str, Any]]  # when the worker was killed
    after: list[dict[str, Any]]  # after recovery
    retried: list[str]  # the outcomes of retry_rollback() after unblock()
    settled: list[dict[str, Any]]  # after that


def kill_and_recover(
    server: ForkServer,
    blank: tuple[str, str],
    tmp: str,
    spec: RunSpec,
    point: str,
    nth: int,
    *,
    journaled: bool = False,
) -> Case:
    """Kill a worker at the ``nth`` hit of ``point``; observe; recover; observe again.

    Then unblock the runs that need attention and retry their rollback; observe
    and check the invariant. ``journaled``: recovery uses the journaled policies.
    """
    journal, ledger = os.path.join(tmp, "journal.db"), os.path.join(tmp, "ledger.db")
    shutil.copyfile(blank[0], journal)
    shutil.copyfile(blank[1], ledger)
    result = server.run(
        {
            "journal": journal,
            "ledger": ledger,
            "stderr": os.path.join(tmp, "worker.err"),
            "seed": 0,
            "spec": spec.to_json(),
            "runs": RUNS,
            "kill": [point, nth],
        }
    )
    assert result["killed"], f"the worker was not killed at {point} #{nth}: {result}"
    before = observed(journal, ledger)
    report = recover_journal(journal, 1e6, "recovery", journaled=journaled)
    after = observed(journal, ledger)
    bad, retried = settle(journal, ledger, 1e6, OPERATOR)
    assert bad == []
    settled = observed(journal, ledger)
    violations, _ = check(journal, ledger)
    assert violations == []
    outcomes: list[str] = [r.outcome for r in report.runs]
    retried_outcomes: list[str] = [r.outcome for r in retried]
    return Case(journal, ledger, outcomes, before, after, retried_outcomes, settled)


def _cases() -> list[Any]:
    cases = []
    for name, spec in SCENARIOS.items():
        per_run = Counter(point for point, _ in events(spec))
        for point in POINTS:
            hits = per_run[point]
            if not hits:
                continue
            nths = {1, 2, 3}
            if point in ("before_commit", "after_commit"):  # every commit of a run, and the next
                nths |= set(range(1, hits + 2))
            cases += [pytest.param(name, point, n, id=f"{name}-{point}-{n}") for n in sorted(nths)]
    return cases


# -- the tests -------------------------------------------------------------------------


def test_every_point_is_exercised_by_some_scenario() -> None:
    """Each journal fault point and ledger point is hit by at least one scenario."""
    hit = {point for spec in SCENARIOS.values() for point, _ in events(spec)}
    assert hit == set(POINTS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_model_lists_the_points_a_real_run_hits(name: str, tmp_path: Any) -> None:
    """An uninterrupted run hits exactly the modelled points, in order, and ends as modelled."""
    spec = SCENARIOS[name]
    journal, ledger = str(tmp_path / "journal.db"), str(tmp_path / "ledger.db")
    create_ledger(ledger)
    hits: list[str] = []
    with open_journal(journal, heartbeat=False) as j, hooked(hits.append):
        run_queue(j, ledger, spec, name)
    assert hits == [point for point, _ in events(spec)]
    model = RunModel(spec)
    for _, change in events(spec):
        if change is not None:
            change(model)
    assert observed(journal, ledger) == [model.shape()]


@pytest.mark.parametrize(("name", "point", "nth"), _cases())
def test_a_kill_at_each_point_recovers_to_the_exact_modelled_outcome(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any, name: str, point: str, nth: int
) -> None:
    """Killed at a point's Nth hit, journal and ledger match the model before and after recovery."""
    spec = SCENARIOS[name]
    models = simulate(spec, point, nth)
    case = kill_and_recover(server, blank, str(tmp_path), spec, point, nth)
    assert_modelled(case, models)


def assert_modelled(case: Case, models: list[RunModel], journaled: bool = False) -> None:
    """The case went as modelled: when killed, after recovery, after unblock and retry."""
    assert case.before == [m.shape() for m in models]
    outcomes = [o for o in (recover_model(m, journaled) for m in models) if o is not None]
    assert case.report_outcomes == outcomes
    assert case.after == [m.shape() for m in models]
    for m in models:
        m.unblocked = True
    assert case.retried == [o for o in (retry_rollback_model(m) for m in models) if o is not None]
    assert case.settled == [m.shape() for m in models]
    for shape in case.settled:
        assert shape.get("status", "rolled_back") in ("succeeded", "rolled_back")


@pytest.mark.parametrize(
    ("name", "point"),
    [
        pytest.param(name, point, id=f"{name}-{point}")
        for name in ("retry", "resume-retry", "async-retry", "blocked", "resume-fail")
        for point in POINTS
        if point in {p for p, _ in events(SCENARIOS[name])}
    ],
)
def test_recovery_with_the_journaled_policies_keeps_their_limits(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any, name: str, point: str
) -> None:
    """recover() without policies uses the steps' journaled ones: limits and retry_on types.

    The outcome is the one the queue's own policies give: Transient is
    retried, Boom (a blocked rollback, a resumed step that fails) never is.
    """
    spec = SCENARIOS[name]
    case = kill_and_recover(server, blank, str(tmp_path), spec, point, 1, journaled=True)
    assert_modelled(case, simulate(spec, point, 1), journaled=True)


# Literal cases, spelled out. Step tuples: (journal status, attempts, rollback
# attempts, ledger effect as (applied, execute calls, rollback calls) or None).


def test_killed_after_step_1_is_recorded_its_execute_never_ran_and_both_steps_roll_back(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """At after_step_record of step 1, execute 1 never ran; recovery rolls back steps 1 and 0."""
    case = kill_and_recover(server, blank, str(tmp_path), SCENARIOS["ok"], "after_step_record", 2)
    assert case.before == [
        {
            "status": "running",
            "recoveries": 0,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("running", 1, 0, None)],
        }
    ]
    assert case.report_outcomes == ["rolled_back"]
    assert case.after == [
        {
            "status": "rolled_back",
            "recoveries": 1,
            "steps": [("rolled_back", 1, 1, (False, 1, 1)), ("rolled_back", 1, 1, (False, 0, 1))],
        }
    ]


def test_killed_after_execute_wrote_its_effect_recovery_undoes_it(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """At after_execute the effect exists but is not journaled as done; recovery undoes it."""
    case = kill_and_recover(server, blank, str(tmp_path), SCENARIOS["ok"], "after_execute", 1)
    assert case.before == [
        {
            "status": "running",
            "recoveries": 0,
            "steps": [("running", 1, 0, (True, 1, 0)), ("pending", 0, 0, None)],
        }
    ]
    assert case.after == [
        {
            "status": "rolled_back",
            "recoveries": 1,
            "steps": [("rolled_back", 1, 1, (False, 1, 1)), ("pending", 0, 0, None)],
        }
    ]


def test_killed_before_the_succeeded_record_commits_the_run_is_rolled_back(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """At before_commit of the final record, the run is not succeeded: recovery rolls it back."""
    case = kill_and_recover(server, blank, str(tmp_path), SCENARIOS["ok"], "before_commit", 3)
    assert case.before == [
        {
            "status": "running",
            "recoveries": 0,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("running", 1, 0, (True, 1, 0))],
        }
    ]
    assert case.after == [
        {
            "status": "rolled_back",
            "recoveries": 1,
            "steps": [("rolled_back", 1, 1, (False, 1, 1)), ("rolled_back", 1, 1, (False, 1, 1))],
        }
    ]


def test_killed_after_the_succeeded_record_commits_the_run_stays_succeeded(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """At after_commit of the final record, the run stays succeeded and recovery finds nothing."""
    case = kill_and_recover(server, blank, str(tmp_path), SCENARIOS["ok"], "after_commit", 3)
    succeeded = {
        "status": "succeeded",
        "recoveries": 0,
        "steps": [("succeeded", 1, 0, (True, 1, 0)), ("succeeded", 1, 0, (True, 1, 0))],
    }
    assert case.report_outcomes == []
    assert case.before == case.after == [succeeded]


def test_killed_after_a_rollback_undid_its_effect_recovery_repeats_that_rollback(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """At after_undo of step 1 the journal still says rolling back: that rollback runs twice."""
    case = kill_and_recover(server, blank, str(tmp_path), SCENARIOS["fail"], "after_undo", 1)
    assert case.before == [
        {
            "status": "rolling_back",
            "recoveries": 0,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("rolling_back", 1, 1, (False, 1, 1))],
        }
    ]
    assert case.after == [
        {
            "status": "rolled_back",
            "recoveries": 1,
            "steps": [("rolled_back", 1, 1, (False, 1, 1)), ("rolled_back", 1, 2, (False, 1, 2))],
        }
    ]


def test_a_resumable_run_killed_after_execute_resumes_and_applies_each_effect_once(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """Resumed after a kill at after_execute, step 0 runs twice; its keyed effect applies once."""
    case = kill_and_recover(server, blank, str(tmp_path), SCENARIOS["resume"], "after_execute", 1)
    assert case.before == [
        {
            "status": "running",
            "recoveries": 0,
            "steps": [("running", 1, 0, (True, 1, 0)), ("pending", 0, 0, None)],
        }
    ]
    assert case.report_outcomes == ["resumed"]
    assert case.after == [
        {
            "status": "succeeded",
            "recoveries": 1,
            "steps": [("succeeded", 2, 0, (True, 2, 0)), ("succeeded", 1, 0, (True, 1, 0))],
        }
    ]


def test_a_retried_step_killed_mid_retry_keeps_its_attempt_count_across_the_crash(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """Killed in step 1's second call, resumed: the journal counts all four calls, not fewer."""
    case = kill_and_recover(
        server, blank, str(tmp_path), SCENARIOS["resume-retry"], "in_execute", 3
    )
    assert case.before == [
        {
            "status": "running",
            "recoveries": 0,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("running", 2, 0, None)],
        }
    ]
    assert case.after == [
        {
            "status": "succeeded",
            "recoveries": 1,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("succeeded", 4, 0, (True, 1, 0))],
        }
    ]


def test_a_step_killed_during_its_retry_delay_is_not_counted_twice(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """Killed after step 1's retry was scheduled (not yet started): 1 call journaled, not 2.

    The retry's start is committed after the delay, just before the call; the
    resumed run then counts the calls made: 1 before the crash, 2 after.
    """
    case = kill_and_recover(
        server, blank, str(tmp_path), SCENARIOS["resume-retry"], "after_commit", 3
    )
    assert case.before == [
        {
            "status": "running",
            "recoveries": 0,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("running", 1, 0, None)],
            "waiting": [1],
        }
    ]
    assert case.report_outcomes == ["resumed"]
    assert case.after == [
        {
            "status": "succeeded",
            "recoveries": 1,
            "steps": [("succeeded", 1, 0, (True, 1, 0)), ("succeeded", 3, 0, (True, 1, 0))],
        }
    ]


def test_a_rollback_that_keeps_failing_needs_attention_until_retried_after_the_fix(
    server: ForkServer, blank: tuple[str, str], tmp_path: Any
) -> None:
    """Recovery leaves a run whose rollback fails for good needs_attention, errors recorded.

    Killed after step 2's undo: recovery undoes step 2 again, step 1's
    rollback fails (once retried, then for good), step 0 is undone. A retry
    while the fault lasts changes nothing but the counts; after unblock(),
    retry_rollback() undoes step 1 and the run is rolled back.
    """
    tmp = str(tmp_path)
    journal, ledger = os.path.join(tmp, "journal.db"), os.path.join(tmp, "ledger.db")
    shutil.copyfile(blank[0], journal)
    shutil.copyfile(blank[1], ledger)
    job = {"journal": journal, "ledger": ledger, "stderr": os.path.join(tmp, "worker.err")}
    spec = SCENARIOS["blocked"]
    result = server.run(
        {**job, "seed": 0, "spec": spec.to_json(), "runs": 1, "kill": ["after_undo", 1]}
    )
    assert result["killed"]
    report = recover_journal(journal, 1e6, "recovery")
    [run] = report.runs
    assert (run.outcome, run.status) == ("needs_attention", "needs_attention")
    assert run.error == "the rollback of step(s) 1 failed"

    def needs_attention(recoveries: int, rollbacks_of_1: int) -> list[dict[str, Any]]:
        return [
            {
                "status": "needs_attention",
                "recoveries": recoveries,
                "steps": [
                    ("rolled_back", 1, 1, (False, 1, 1)),
                    ("rollback_failed", 1, rollbacks_of_1, (True, 1, 0)),  # still applied
                    ("rolled_back", 1, 2, (False, 1, 2)),
                ],
            }
        ]

    assert observed(journal, ledger) == needs_attention(1, 2)
    with open_journal(journal, owner=OPERATOR, heartbeat=False) as j:
        timeline = j.timeline(run.run_id)
        assert timeline.run.error == "the rollback of step(s) 1 failed"
        blocked = f"_crashlib.Boom: the rollback of {run.run_id}:1 is blocked"
        assert timeline.steps[1].rollback_error == blocked
        assert [(e.index, e.detail) for e in timeline.events if e.kind == "rollback_failed"] == [
            (1, blocked)
        ]
        again = retry_rollback(j, run.run_id, rollback_retry=ROLLBACK_RETRY, sleep=no_sleep)
        assert (again.outcome, again.status) == ("needs_attention", "needs_attention")
        assert again.error == "the rollback of step(s) 1 failed"
        assert observed(journal, ledger) == needs_attention(2, 4)
        unblock(ledger, run.run_id)
        done = retry_rollback(j, run.run_id, rollback_retry=ROLLBACK_RETRY, sleep=no_sleep)
        assert (done.outcome, done.status) == ("rolled_back", "rolled_back")
        assert j.timeline(run.run_id).run.error is None
    assert observed(journal, ledger) == [
        {
            "status": "rolled_back",
            "recoveries": 3,
            "steps": [
                ("rolled_back", 1, 1, (False, 1, 1)),
                ("rolled_back", 1, 6, (False, 1, 1)),
                ("rolled_back", 1, 2, (False, 1, 2)),
            ],
        }
    ]
    assert check(journal, ledger)[0] == []
