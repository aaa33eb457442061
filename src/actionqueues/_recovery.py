"""Recovery: finish the journaled runs whose owner is gone.

:func:`recover` claims, one at a time and atomically, each run whose lease
expired, rebuilds its steps from the journal (by their registered type
names) and finishes it: it rolls back every started step in reverse,
including the one that was in flight and any rollback that was itself
interrupted; a run declared ``resumable`` is resumed forward instead. A run
that cannot be rebuilt, or whose rollback still fails, ends as
``needs_attention`` with its errors recorded; :func:`retry_rollback` tries
such a run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import inspect
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from ._async import AsyncActionQueue
from ._durable import RunRecorder, policies_from_json
from ._engine import EXECUTE, StepOptions, logger
from ._errors import bad_argument
from ._events import Listener
from ._journal import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Journal,
    JournalError,
    LeaseLost,
    RunInfo,
    RunTimeline,
)
from ._policy import RetryPolicy
from ._queue import ActionQueue
from ._registry import load_step
from ._steps import FunctionStep

__all__ = ["RecoveredRun", "RecoveryReport", "recover", "retry_rollback"]

_Q = TypeVar("_Q", ActionQueue, AsyncActionQueue)
_T = TypeVar("_T")

Outcome = Literal[
    "rolled_back",
    "resumed",
    "needs_attention",
    "unrecoverable",
    "passed_on",
    "lost",
    "unrecorded",
]
#: Every outcome, in the order summaries list them.
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


@dataclass(frozen=True, slots=True)
class RecoveredRun:
    """What recovery did with one run.

    Attributes:
        run_id: The run.
        name: Its queue's name.
        outcome: ``rolled_back`` (every started step undone), ``resumed``
            (finished forward), ``needs_attention`` (a rollback still
            failed), ``unrecoverable`` (its steps could not be rebuilt; the
            run was marked ``needs_attention`` and left for a person),
            ``passed_on`` (its steps could not be rebuilt here: the run was
            left untouched for another recoverer, see ``pass_on`` of
            :func:`recover`), ``lost``
            (another process took it over meanwhile), or
            ``unrecorded`` (finished, but the journal could not be written:
            it still shows the run active, and recovery takes it again once
            its lease expires, redoing what is not recorded).
        status: The run's status in the journal afterwards.
        error: Why it did not end cleanly, if it did not.
    """

    run_id: str
    name: str
    outcome: Outcome
    status: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """The runs one :func:`recover` call finished, in the order it claimed them."""

    runs: tuple[RecoveredRun, ...]

    @property
    def ok(self) -> bool:
        """True when every run ended rolled back or resumed."""
        return all(r.outcome in ("rolled_back", "resumed") for r in self.runs)

    def count(self, outcome: Outcome) -> int:
        """How many runs had ``outcome``."""
        return sum(1 for r in self.runs if r.outcome == outcome)


def check_pass_on(pass_on: object) -> None:
    """Refuse a ``pass_on`` that is not an int >= 0 (TypeError, ValueError)."""
    if type(pass_on) is not int or pass_on < 0:
        raise bad_argument(pass_on, (int,), f"pass_on must be an int >= 0, got {pass_on!r}")


def _policy(name: str, value: object) -> None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise TypeError(f"{name} must be a RetryPolicy or None, got {value!r}")


def recover(
    journal: Journal,
    *,
    resume: bool = True,
    limit: int | None = None,
    retry: RetryPolicy | None = None,
    rollback_retry: RetryPolicy | None = None,
    sleep: Callable[[float], Any] | None = None,
    listeners: Iterable[Listener] = (),
    should_stop: Callable[[], bool] | None = None,
    pass_on: int = 0,
) -> RecoveryReport:
    """Finish every run whose owner's lease expired; return what was done.

    Each run is claimed atomically, so several processes may recover the
    same journal at once: each run is finished by one of them. Runs are
    rolled back; runs of queues declared ``resumable=True`` are resumed
    forward instead when ``resume`` is true (and rolled back if a step then
    fails). The action types of the runs must be registered in this process
    (import the modules that define them).

    Each step is retried with the policies its queue had (journaled: limits,
    delays and exception types; a ``retry_on`` predicate is not kept, so
    with one every ``Exception`` is retried within the limits), unless
    ``retry``/``rollback_retry`` are given. Retry counts and deadlines
    continue from the journal: a step that made 2 calls before the crash
    has 2 fewer left.

    Args:
        journal: The journal to recover.
        resume: Resume resumable runs forward (False: roll back every run).
        limit: Stop after this many runs (None: until none is left).
        retry: The retry policy of resumed steps' ``execute``, instead of
            the journaled ones.
        rollback_retry: The retry policy of every ``rollback``, instead of
            the journaled ones.
        sleep: Waits between retries (default :func:`time.sleep`); also
            waits out a retry delay that was running when the owner died.
        listeners: Listeners of the recovery queues.
        should_stop: Called before each claim, and after it; return True to
            stop early (a worker's clean shutdown). A run claimed while the
            stop was asked for is released untouched, claimable at once.
        pass_on: How many times a run whose steps cannot be rebuilt here
            (an action type this process does not register, or a state its
            class refuses, as a field of a newer release) is left untouched
            for another recoverer (one running newer code, during a rolling
            deploy), before the claim that marks it ``needs_attention``
            (0, the default: the first such claim marks it). A run passed on
            is claimable again, by any recoverer, once the lease this claim
            took expires; each pass is a ``passed_on`` event of the run.

    Raises:
        JournalError: the journal cannot be read or written.
    """
    _policy("retry", retry)
    _policy("rollback_retry", rollback_retry)
    _refuse_in_event_loop("recover")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise bad_argument(limit, (int,), f"limit must be an int >= 1 or None, got {limit!r}")
    check_pass_on(pass_on)
    listeners = tuple(listeners)
    done: list[RecoveredRun] = []
    with _event_loop() as loops:
        while limit is None or len(done) < limit:
            if should_stop is not None and should_stop():
                break
            timeline = journal.claim(statuses=ACTIVE_STATUSES)
            if timeline is None:
                break
            if should_stop is not None and should_stop():
                _give_back(journal, timeline.run)
                break
            done.append(
                _finish(
                    journal,
                    timeline,
                    resume,
                    retry,
                    rollback_retry,
                    sleep,
                    listeners,
                    False,
                    pass_on,
                    loops,
                )
            )
    return RecoveryReport(tuple(done))


def retry_rollback(
    journal: Journal,
    run_id: str,
    *,
    rollback_retry: RetryPolicy | None = None,
    sleep: Callable[[float], Any] | None = None,
    listeners: Iterable[Listener] = (),
) -> RecoveredRun:
    """Roll back again the steps of a ``needs_attention`` run that are not rolled back yet.

    Steps whose rollback succeeded before are left alone; the others
    (failed, or never rolled back) are rolled back in reverse order.

    Raises:
        KeyError: the journal has no such run.
        ValueError: the run does not need attention, or another process holds it.
    """
    _policy("rollback_retry", rollback_retry)
    _refuse_in_event_loop("retry_rollback")
    run_id = journal.timeline(run_id).run.run_id  # accepts a unique prefix; KeyError if none
    timeline = journal.claim(run_id, statuses=("needs_attention",))
    if timeline is None:
        run = journal.timeline(run_id).run
        if run.status != "needs_attention":
            raise ValueError(
                f"run {run_id} is {run.status}: only a run that needs attention can have "
                f"its rollback retried"
            )
        raise ValueError(
            f"run {run_id} is being retried by {run.owner} right now (its lease runs until "
            f"{_iso(run.lease_expires_at)})"
        )
    with _event_loop() as loops:
        return _finish(
            journal, timeline, False, None, rollback_retry, sleep, tuple(listeners), True, 0, loops
        )


def _iso(at: float | None) -> str:
    if at is None:  # pragma: no cover - a claimed run always has a lease
        return "?"
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="seconds")


class _EventLoop:
    """The event loop on which recovery finishes async runs, made at the first one.

    One loop serves every async run of a :func:`recover` call (of a worker
    thread, under :func:`shared_event_loop`), so that the journal's async
    connections opened for it serve them all, instead of a loop and new
    connections per run. Each run gets what matters of ``asyncio.run()``: the
    tasks it left behind are cancelled when it ends, it runs in a fresh copy
    of the thread's context, and (3.11+, in the main thread) a Ctrl-C cancels
    it before it is raised. Other leftovers of a run (a timer it scheduled,
    a handler it set on the loop) stay with the loop until it closes.
    """

    def __init__(self) -> None:
        self._runner: Any = None
        self._journals: list[Journal] = []

    def run(self, journal: Journal, main: Coroutine[Any, Any, _T]) -> _T:
        """Run ``main`` to its end, as ``asyncio.run(main)`` would, on this loop."""
        if self._runner is None:
            self._runner = _Runner()
        if journal not in self._journals:
            self._journals.append(journal)
        try:
            result: _T = self._runner.run(main, context=contextvars.copy_context())
            return result
        finally:
            _cancel_left_tasks(self._runner.get_loop())

    def close(self) -> None:
        """Close the journals' connections of this loop, then the loop (if one was made)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            for journal in self._journals:
                with contextlib.suppress(Exception):  # a dead connection: closed anyway
                    runner.run(journal._aclose_loop())
        finally:
            runner.close()


if sys.version_info >= (3, 11):
    _Runner = asyncio.Runner
else:  # pragma: no cover - Python 3.10

    class _Runner:
        """What recovery uses of ``asyncio.Runner`` (3.11+): asyncio.run() on one loop."""

        def __init__(self) -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

        def get_loop(self) -> asyncio.AbstractEventLoop:
            return self._loop

        def run(self, main: Coroutine[Any, Any, _T], *, context: object = None) -> _T:
            # the task copies the thread's context, as asyncio.run() does on 3.10
            return self._loop.run_until_complete(main)

        def close(self) -> None:
            loop = self._loop
            try:
                _cancel_left_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()


def _cancel_left_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks a run left behind, and let them end (what ``asyncio.run()`` does)."""
    left = asyncio.all_tasks(loop)
    if not left:
        return
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    for task in left:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in a task left by a recovered run",
                    "exception": task.exception(),
                    "task": task,
                }
            )


_SHARED = threading.local()


@contextlib.contextmanager
def shared_event_loop() -> Iterator[None]:
    """Within it, the :func:`recover` calls of this thread share one event loop.

    What a worker thread does, which calls ``recover(limit=1)`` once per run:
    its async runs then reuse the loop and its journal connections. The loop
    is closed on the way out.
    """
    loops = _EventLoop()
    outer = getattr(_SHARED, "loops", None)
    _SHARED.loops = loops
    try:
        yield
    finally:
        _SHARED.loops = outer
        loops.close()


@contextlib.contextmanager
def _event_loop() -> Iterator[_EventLoop]:
    """The thread's shared loop (see :func:`shared_event_loop`), or one for this call."""
    shared: _EventLoop | None = getattr(_SHARED, "loops", None)
    if shared is not None:
        yield shared
        return
    loops = _EventLoop()
    try:
        yield loops
    finally:
        loops.close()


def _refuse_in_event_loop(name: str) -> None:
    """Recovery blocks (and runs async runs on a loop of its own): not from a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{name}() blocks, and runs async runs on an event loop of its own: call it from "
        f"a thread, e.g. await asyncio.to_thread({name}, journal, ...)"
    )


def _finish(
    journal: Journal,
    timeline: RunTimeline,
    resume: bool,
    retry: RetryPolicy | None,
    rollback_retry: RetryPolicy | None,
    sleep: Callable[[float], Any] | None,
    listeners: tuple[Listener, ...],
    retrying: bool,
    pass_on: int,
    loops: _EventLoop,
) -> RecoveredRun:
    run = timeline.run
    try:
        actions = [load_step(step.type, step.state) for step in timeline.steps]
        policies = [policies_from_json(step.policies) for step in timeline.steps]
    except Exception as exc:  # whatever the class raised: the run is kept, recovery goes on
        # An unknown type, or a state the class refuses (a field of a newer release): a
        # recoverer running other code may rebuild it, so it may be passed on first.
        reason = f"cannot rebuild the run's steps: {exc}"
        passes = sum(1 for event in timeline.events if event.kind == "passed_on")
        if passes < pass_on:
            return _pass_on(journal, timeline, reason, passes + 1, pass_on)
        if passes:
            reason += f" (passed on {passes} time{'s' if passes > 1 else ''} before)"
        return _unrecoverable(journal, timeline, reason)
    job = _Job(
        journal, timeline, actions, policies, resume, retry, rollback_retry, sleep, listeners
    )
    try:
        if run.kind == "async":
            outcome = loops.run(journal, _finish_in_loop(job, retrying))
        else:
            outcome = _finish_sync(job, retrying)
    except LeaseLost as exc:
        return RecoveredRun(
            run.run_id, run.name, "lost", journal.timeline(run.run_id).run.status, str(exc)
        )
    except KeyboardInterrupt:  # the operator stops recovery: another may take the run at once
        with contextlib.suppress(Exception):
            journal.release(run.run_id)
        raise
    except (Exception, SystemExit, asyncio.CancelledError) as exc:
        # A bug, or an action raising where it must not (even sys.exit()): never lose the
        # run, and go on with the others (only the operator's Ctrl-C stops recovery).
        logger.exception(
            "run %s (%s): recovery failed unexpectedly",
            run.run_id,
            run.name,
            extra={"aq_event": "recovery_failed", "aq_run": run.run_id},
        )
        return _unrecoverable(journal, timeline, f"recovery failed: {exc!r}")
    finally:
        journal.untrack(run.run_id)
    return _result(journal, run, outcome, job.recorder)


def _result(
    journal: Journal, run: RunInfo, outcome: Outcome, recorder: RunRecorder | None
) -> RecoveredRun:
    """What became of a run this recovery finished (read back only when unsure)."""
    written = recorder.committed.get("status") if recorder is not None else None
    if written in TERMINAL_STATUSES and recorder is not None and not (recorder.ops or recorder.run):
        # Every write went through (under this owner's fence): the journal holds that.
        error = recorder.committed.get("error")
        if written == "needs_attention":
            return RecoveredRun(run.run_id, run.name, "needs_attention", written, error)
        return RecoveredRun(run.run_id, run.name, outcome, written)
    if recorder is not None and (recorder.ops or recorder.run):
        with contextlib.suppress(JournalError):  # a write failed (and was logged): once more
            recorder._flush()
    status = journal.timeline(run.run_id).run
    if status.owner != journal.owner:  # taken over meanwhile (its rollback logged LeaseLost)
        return RecoveredRun(
            run.run_id, run.name, "lost", status.status, f"taken over by {status.owner}"
        )
    if status.status == "needs_attention":
        return RecoveredRun(run.run_id, run.name, "needs_attention", status.status, status.error)
    if status.status not in TERMINAL_STATUSES:
        return RecoveredRun(
            run.run_id,
            run.name,
            "unrecorded",
            status.status,
            f"the run was {outcome.replace('_', ' ')}, but the journal could not record it "
            f"(see the logged error); recovery takes it again once its lease expires",
        )
    return RecoveredRun(run.run_id, run.name, outcome, status.status)


def _give_back(journal: Journal, run: RunInfo) -> None:
    """Release a run claimed as recovery was stopping, before anything was done to it."""
    try:
        journal.release(run.run_id)
    except Exception as exc:  # its lease ends by itself
        logger.error(
            "run %s (%s): claimed as recovery was stopping, and cannot be released (%s); it "
            "is claimable once its lease expires",
            run.run_id,
            run.name,
            exc,
            extra={"aq_event": "release_failed", "aq_run": run.run_id},
        )
        return
    logger.warning(
        "run %s (%s): claimed as recovery was stopping; released untouched, another "
        "recoverer may claim it now",
        run.run_id,
        run.name,
        extra={"aq_event": "run_released", "aq_run": run.run_id},
    )


def _pass_on(
    journal: Journal, timeline: RunTimeline, reason: str, count: int, limit: int
) -> RecoveredRun:
    """Leave a claimed run untouched for another recoverer, for one lease (no heartbeat)."""
    run = timeline.run
    message = (
        f"{reason[:4000]}; passed on ({count} of {limit}) to a recoverer that can rebuild "
        f"them, claimable again in {journal.lease:g} s"
    )
    try:
        # The commit renews the lease (now + lease) and nothing keeps it alive after: no
        # recoverer, this one included, claims the run again before it expires.
        journal.commit(run.run_id, {}, [("event", None, "passed_on", message)])
    except LeaseLost as exc:
        return RecoveredRun(run.run_id, run.name, "lost", run.status, str(exc))
    logger.warning(
        "run %s (%s): %s",
        run.run_id,
        run.name,
        message,
        extra={"aq_event": "run_passed_on", "aq_run": run.run_id},
    )
    return RecoveredRun(run.run_id, run.name, "passed_on", run.status, message)


def _unrecoverable(journal: Journal, timeline: RunTimeline, message: str) -> RecoveredRun:
    """Mark a claimed run needs_attention with ``message``; the run is kept, never dropped."""
    run = timeline.run
    message = message[:4000]
    logger.error(
        "run %s (%s) cannot be recovered: %s; marked needs_attention",
        run.run_id,
        run.name,
        message,
        extra={"aq_event": "run_unrecoverable", "aq_run": run.run_id},
    )
    journal.commit(
        run.run_id,
        {"status": "needs_attention", "error": message, "finished_at": journal.clock()},
        [("event", None, "unrecoverable", message)],
    )
    return RecoveredRun(run.run_id, run.name, "unrecoverable", "needs_attention", message)


def _prepare(
    queue: Any,
    journal: Journal,
    timeline: RunTimeline,
    actions: list[Any],
    policies: list[tuple[RetryPolicy | None, RetryPolicy | None]],
    resume: bool,
    retrying: bool,
) -> tuple[bool, float]:
    """Set ``queue`` up to continue ``timeline``; return (resume forward?, seconds to wait)."""
    run = timeline.run
    steps = timeline.steps
    recorder = RunRecorder(journal, run.name, run.kind, run.resumable, run.run_id, timeline)
    journal.track(run.run_id, recorder)  # the heartbeat keeps the claim, even while waiting
    queue._recorder = recorder
    queue._general = True
    queue._actions = actions
    # The policies the run's queue had, unless the caller gave its own.
    options = {}
    for index, (journaled, journaled_rollback) in enumerate(policies):
        retry = queue._retry or journaled
        rollback_retry = queue._rollback_retry or journaled_rollback
        if retry is not None or rollback_retry is not None:
            options[index] = StepOptions(retry, rollback_retry, None)
    if options:
        queue._options = options
    started = [s.index for s in steps if s.started]
    forward = resume and run.resumable and run.status == "running" and not retrying
    now = journal.clock()

    def wait_for(statuses: tuple[str, ...]) -> float:
        # A retry delay that was running when the owner died, of a call that will be made
        due = [
            s.next_retry_at for s in steps if s.next_retry_at is not None and s.status in statuses
        ]
        return max(0.0, max(due) - now) if due else 0.0

    if forward:
        queue._first = next((s.index for s in steps if s.status != "succeeded"), len(steps))
        return True, wait_for(("running",))
    # Roll back: steps never started, or already rolled back, are left alone; so are
    # (after a crash) those whose rollback already failed for good, which stay failed.
    done = {"pending", "rolled_back"} if retrying else {"pending", "rolled_back", "rollback_failed"}
    queue._skip = frozenset(s.index for s in steps if s.status in done)
    if retrying:
        recorder.fresh_rollbacks = True  # an operator's retry gets its policy's full budget
    else:
        recorder.failed_rollbacks = {s.index for s in steps if s.status == "rollback_failed"}
        for step in steps:
            action = actions[step.index]
            if step.status == "running" and _outcome_unknown(action):
                queue._skip |= {step.index}
                recorder.unknown_outcome(step.index, action)
    recorder.rolling_back = False
    queue._started = max(started) + 1 if started else 0
    queue._state = EXECUTE
    queue._failed = True
    return False, 0.0 if retrying else wait_for(("rolling_back",))


def _outcome_unknown(action: object) -> bool:
    """A function step whose do() was in flight: undo() needs a result nobody recorded."""
    return isinstance(action, FunctionStep) and action.undo is not None and not action.done


@dataclass
class _Job:
    """One claimed run, rebuilt, and how to finish it."""

    journal: Journal
    timeline: RunTimeline
    actions: list[Any]
    policies: list[tuple[RetryPolicy | None, RetryPolicy | None]]
    resume: bool
    retry: RetryPolicy | None
    rollback_retry: RetryPolicy | None
    sleep: Callable[[float], Any] | None
    listeners: tuple[Listener, ...]
    recorder: RunRecorder | None = None  # the run's, once started

    def start(self, kind: type[_Q], retrying: bool) -> tuple[_Q, bool, float]:
        """A queue of ``kind`` set up to continue the run; (queue, forward?, wait)."""
        queue = kind(
            sleep=self.sleep,
            retry=self.retry,
            rollback_retry=self.rollback_retry,
            listeners=self.listeners,
        )
        forward, wait = _prepare(
            queue,
            self.journal,
            self.timeline,
            self.actions,
            self.policies,
            self.resume,
            retrying,
        )
        self.recorder = queue._recorder
        return queue, forward, wait

    def resume_failed(self, error: Exception) -> None:
        """Log that resuming failed; the run is rolled back next."""
        run_id = self.timeline.run.run_id
        logger.warning(
            "run %s: resuming failed (%r); rolling it back",
            run_id,
            error,
            extra={"aq_event": "resume_failed", "aq_run": run_id},
        )


def _finish_sync(job: _Job, retrying: bool) -> Literal["rolled_back", "resumed"]:
    queue, forward, wait = job.start(ActionQueue, retrying)
    if wait:
        queue._sleep(wait)
    if forward:
        try:
            queue.execute()
        except LeaseLost:  # another process owns the run now: it finishes it, not this one
            raise
        except Exception as exc:  # a failed resume is rolled back
            job.resume_failed(exc)
        else:
            return "resumed"
    queue.rollback()
    return "rolled_back"


async def _finish_in_loop(job: _Job, retrying: bool) -> Literal["rolled_back", "resumed"]:
    queue, forward, wait = job.start(AsyncActionQueue, retrying)
    if wait:
        pause = queue._sleep(wait)
        if inspect.isawaitable(pause):
            await pause
    if forward:
        try:
            await queue.execute()
        except LeaseLost:  # another process owns the run now: it finishes it, not this one
            raise
        except Exception as exc:  # a failed resume is rolled back
            job.resume_failed(exc)
        else:
            return "resumed"
    await queue.rollback()
    return "rolled_back"
