"""Recovery workers: long-running processes that finish the runs whose owner is gone.

A :class:`Worker` runs ``concurrency`` threads sharing one journal. Each
thread calls :func:`~actionqueues.recover` for one run at a time (claiming it
atomically: any number of workers, on any number of machines, may share a
journal; each run is finished by one of them at a time), and waits ``poll``
seconds when there is nothing to claim. It logs every run it finished, a
progress line while it works through a backlog, and stops cleanly:
:meth:`Worker.stop` stops claiming and lets each thread finish the run it
holds; :meth:`Worker.abort` gives the runs in hand back (their lease ends at
once, so another worker claims them) and returns without waiting.

``actionqueues worker`` (:func:`worker_command`) wires it to the command
line: signals, structured logs (text or one JSON object per line) and exit
codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from ._cli_runs import (
    Painter,
    duration,
    import_modules,
    iso,
    journal_url,
    missing_journal,
    opened,
    unregistered_types,
)
from ._durable import current_step
from ._errors import bad_argument
from ._events import Listener
from ._journal import ACTIVE_STATUSES, Journal, JournalError
from ._policy import RetryPolicy
from ._recovery import OUTCOMES, RecoveredRun, check_pass_on, recover, shared_event_loop

__all__ = [
    "JsonLogFormatter",
    "Progress",
    "TextLogFormatter",
    "Worker",
    "WorkerSummary",
    "seconds",
    "worker_command",
]

logger = logging.getLogger("actionqueues.worker")

_OK = frozenset({"rolled_back", "resumed"})
#: The longest wait between two attempts after the journal failed (seconds).
MAX_ERROR_DELAY = 60.0
#: ``actionqueues worker`` exit status after a second signal (the runs in hand were released).
EXIT_ABORTED = 3
#: How often run()'s main loop wakes up at least (seconds), to act on signals.
_SIGNAL_CHECK = 0.2
#: After abort(), how long run() waits for claims in flight before it releases the runs
#: in hand (seconds): a claim that lands later is released by its thread, if it lives.
_CLAIM_GRACE = 5.0
#: How many abandoned runs ``actionqueues worker`` checks for unregistered action types.
TYPE_CHECK_SAMPLE = 100
#: The default ``pass_on`` of a :class:`Worker` (and ``actionqueues worker --pass-on``).
PASS_ON = 5


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a worker is in the backlog it is working through.

    A backlog starts with the first run recovered after the worker was idle
    (or started), and ends when no thread finds anything left to claim.

    Attributes:
        recovered: Runs finished since the backlog started.
        outcomes: How many of them had each outcome (only outcomes seen).
        elapsed: Seconds since the backlog started (on the worker's clock).
        rate: ``recovered / elapsed``, in runs per second.
        left: Active runs whose lease has expired (waiting to be claimed),
            or None if the journal could not be read; 0 when ``done``.
        done: The backlog is cleared: no thread found a run to claim.
    """

    recovered: int
    outcomes: tuple[tuple[str, int], ...]
    elapsed: float
    rate: float
    left: int | None
    done: bool = False

    def line(self) -> str:
        """The progress line: ``recovered 350 runs (rolled_back 340, ...), 41.2 runs/s, 8 left``."""
        counts = ", ".join(f"{name} {count}" for name, count in self.outcomes)
        runs = f"{self.recovered} run{'' if self.recovered == 1 else 's'}"
        text = f"recovered {runs} ({counts}), {self.rate:.1f} runs/s"
        if self.done:
            return f"backlog cleared: {text} in {duration(self.elapsed)}; waiting for more"
        left = (
            "? left (the journal could not be read)" if self.left is None else f"{self.left} left"
        )
        return f"{text}, {left}"


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """What :meth:`Worker.run` did, from start to stop.

    Attributes:
        recovered: Runs finished.
        outcomes: How many had each outcome (only outcomes seen).
        errors: Failed attempts to claim or finish a run (journal errors), each retried.
        aborted: :meth:`Worker.abort` ended it: threads may still be finishing their run.
        released: The runs given back by :meth:`Worker.abort`.
        failed: A thread died of an unexpected exception (the worker stopped).
        elapsed: Seconds from start to stop (on the worker's clock).
    """

    recovered: int
    outcomes: tuple[tuple[str, int], ...]
    errors: int
    aborted: bool
    released: tuple[str, ...]
    failed: bool
    elapsed: float


def _counts(counter: Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple((name, counter[name]) for name in OUTCOMES if counter[name])


#: The longest wait a worker takes (``poll``, a backoff): a day. Longer ones are surely
#: mistakes, and past threading.TIMEOUT_MAX a wait raises OverflowError.
_LONGEST_WAIT = 86400.0


def _positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= _LONGEST_WAIT
    ):
        raise bad_argument(
            value,
            (int, float),
            f"{name} must be a number of seconds > 0 and at most {_LONGEST_WAIT:g} (a day), "
            f"got {value!r}",
        )
    return float(value)


class Worker:
    """Finish, in ``concurrency`` threads, the runs of ``journal`` whose owner is gone.

    Each thread repeatedly calls ``recover(journal, limit=1, ...)``; when
    there is nothing to claim it waits ``poll`` seconds (through ``wait``,
    which :meth:`stop` interrupts) before looking again. The journal is
    shared by the threads (an SQLite journal serialises them on its one
    connection; a PostgreSQL journal gives each a pooled connection); the
    journal's heartbeat keeps the lease of each run being recovered.

    Args:
        journal: The journal to recover (its ``owner`` is this worker's id).
        concurrency: How many runs to recover at once (threads).
        poll: Seconds to wait, when idle, before looking for runs again.
        resume: Resume resumable runs forward (False: roll back every run).
        retry: Passed to :func:`~actionqueues.recover` (None: the journaled policies).
        rollback_retry: Passed to :func:`~actionqueues.recover`.
        sleep: Waits between retries of a step (default :func:`time.sleep`).
        listeners: Listeners of the recovery queues.
        clock: A monotonic clock for rates and progress (default :func:`time.monotonic`).
        wait: Called with a number of seconds to wait when idle, or after a
            journal error (default: a wait on an event that :meth:`stop` sets).
        on_progress: Called with each :class:`Progress` (in a worker thread),
            besides the progress log line.
        progress_every: Seconds between two progress lines during a backlog.
        progress_runs: If given, a progress line every this many runs
            instead of every ``progress_every`` seconds.
        log: The logger of the worker's own records (default ``actionqueues.worker``).
        pass_on: Passed to :func:`~actionqueues.recover`: how many times a
            run whose steps this process cannot rebuild (an action type it
            does not register, a state its class refuses) is left for
            another worker (one with newer code, during a rolling deploy)
            before a claim marks it ``needs_attention``.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        concurrency: int = 1,
        poll: float = 1.0,
        resume: bool = True,
        retry: RetryPolicy | None = None,
        rollback_retry: RetryPolicy | None = None,
        sleep: Callable[[float], Any] | None = None,
        listeners: Iterable[Listener] = (),
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
        on_progress: Callable[[Progress], object] | None = None,
        progress_every: float = 2.0,
        progress_runs: int | None = None,
        log: logging.Logger | None = None,
        pass_on: int = PASS_ON,
    ) -> None:
        if not isinstance(journal, Journal):
            raise TypeError(f"journal must be a Journal (open_journal(url)), got {journal!r}")
        if type(concurrency) is not int or concurrency < 1:
            raise bad_argument(
                concurrency, (int,), f"concurrency must be an int >= 1, got {concurrency!r}"
            )
        if progress_runs is not None and (type(progress_runs) is not int or progress_runs < 1):
            raise bad_argument(
                progress_runs,
                (int,),
                f"progress_runs must be an int >= 1 or None, got {progress_runs!r}",
            )
        self.journal = journal
        self.concurrency = concurrency
        self.poll = _positive("poll", poll)
        self.progress_every = _positive("progress_every", progress_every)
        self.progress_runs = progress_runs
        check_pass_on(pass_on)
        self.pass_on = pass_on
        self.resume = bool(resume)
        self.retry = retry
        self.rollback_retry = rollback_retry
        self.sleep = sleep
        self.listeners = tuple(listeners)
        self.clock = clock
        self.on_progress = on_progress
        self.log = log or logger
        #: Appended to the "stopping" log line (the CLI says how to stop at once).
        self.stop_hint = ""
        self._wait = wait
        self._stopping = threading.Event()  # no new claims; idle waits end
        self._wake = threading.Event()  # the main loop of run() has something to do
        self._aborting = False
        self._stop_reason: str | None = None
        self._lock = threading.Lock()
        self._progress_lock = threading.Lock()
        self._busy: set[int] = set()
        self._claiming: set[int] = set()  # threads inside a claim
        self._claimed = threading.Condition(self._lock)  # notified when one leaves it
        self._threads: list[threading.Thread] = []
        self._ended = 0
        self._failed = False
        self._started = False
        self._runner: threading.Thread | None = None  # the thread inside run()
        self._errors = 0
        self._totals: Counter[str] = Counter()
        self._batch: Counter[str] = Counter()
        self._batch_total = 0
        self._batch_start: float | None = None
        self._last_progress = 0.0
        self._last_progress_count = 0

    # -- control (safe from signal handlers and other threads) ------------------------

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` (or :meth:`abort`) was called."""
        return self._stopping.is_set()

    def stop(self, reason: str | None = None) -> None:
        """Stop claiming runs; each thread finishes the run it holds, then :meth:`run` returns.

        Safe from any thread, and from a signal handler.
        """
        self._request(reason)

    def abort(self, reason: str | None = None) -> None:
        """Stop now: :meth:`run` releases the runs in hand and returns without waiting.

        Released runs can be claimed at once by another worker; a thread of
        this one still inside a run's rollback is fenced off at its next
        journal write (``LeaseLost``) if another worker took the run over,
        so end the process soon after (the command line exits at once).
        Safe from any thread, and from a signal handler.
        """
        self._stopping.set()  # first: no thread begins a claim once abort shows
        self._aborting = True
        self._request(reason)

    def _request(self, reason: str | None) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason or "stop requested"
        self._stopping.set()  # only the worker threads wait on it
        # A signal handler runs in the thread of run(), perhaps inside _wake.wait(), which
        # holds _wake's (non-reentrant) lock for a moment: setting _wake there could
        # deadlock. run() wakes up within _SIGNAL_CHECK seconds and sees the request.
        if threading.current_thread() is not self._runner:
            self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to end (after :meth:`abort`); return whether they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(t.is_alive() for t in self._threads)

    # -- the main loop ---------------------------------------------------------------

    def run(self) -> WorkerSummary:
        """Recover runs until :meth:`stop` or :meth:`abort`; return what was done.

        Raises:
            RuntimeError: the worker already ran (a Worker runs once).
        """
        if self._started:
            raise RuntimeError("a Worker runs once: create another one")
        self._started = True
        self._runner = threading.current_thread()
        began = self.clock()
        journal = self.journal
        self.log.info(
            "worker started on %s as %s: %d thread%s, poll %s s, lease %s s",
            journal.url,
            journal.owner,
            self.concurrency,
            "" if self.concurrency == 1 else "s",
            f"{self.poll:g}",
            f"{journal.lease:g}",
            extra={
                "aq_event": "worker_started",
                "aq_journal": journal.url,
                "aq_owner": journal.owner,
                "aq_concurrency": self.concurrency,
                "aq_poll": self.poll,
                "aq_lease": journal.lease,
            },
        )
        for number in range(1, self.concurrency + 1):
            thread = threading.Thread(
                target=self._thread_main,
                args=(number,),
                name=f"actionqueues-worker-{number}",
                daemon=True,  # after abort(), the process may exit while they finish
            )
            self._threads.append(thread)
            thread.start()
        announced = False
        released: tuple[str, ...] = ()
        while True:
            # Woken by stop() and abort() from other threads and by each thread's end; a
            # signal handler (always run in the main thread, where run() is on the command
            # line) only sets flags, which the timeout makes this loop see.
            self._wake.wait(_SIGNAL_CHECK)
            self._wake.clear()
            if self.stopping and not announced:
                announced = True
                self._log_stopping()
            if self._aborting:
                with self._claimed:  # a claim in flight lands before the runs are listed
                    self._claimed.wait_for(lambda: not self._claiming, _CLAIM_GRACE)
                released = self._release_held()
                break
            with self._lock:
                if self._ended == len(self._threads):
                    break
        with self._lock:  # after abort(), threads may still be recording
            summary = WorkerSummary(
                recovered=sum(self._totals.values()),
                outcomes=_counts(self._totals),
                errors=self._errors,
                aborted=self._aborting,
                released=released,
                failed=self._failed,
                elapsed=self.clock() - began,
            )
        self.log.info(
            "worker %s: recovered %d run%s (%s) in %s%s",
            "aborted" if summary.aborted else "stopped",
            summary.recovered,
            "" if summary.recovered == 1 else "s",
            ", ".join(f"{name} {count}" for name, count in summary.outcomes) or "none",
            duration(summary.elapsed),
            f"; {summary.errors} journal error(s)" if summary.errors else "",
            extra={
                "aq_event": "worker_stopped",
                "aq_recovered": summary.recovered,
                "aq_outcomes": dict(summary.outcomes),
                "aq_errors": summary.errors,
                "aq_aborted": summary.aborted,
                "aq_elapsed": summary.elapsed,
            },
        )
        return summary

    def _log_stopping(self) -> None:
        with self._lock:
            busy = len(self._busy)
        if self._aborting:
            what = "releasing the runs in hand and exiting now"
        elif busy:
            what = f"finishing the run{'s' if busy > 1 else ''} in hand ({busy} thread"
            what += f"{'s' if busy > 1 else ''} busy)" + (
                f"; {self.stop_hint}" if self.stop_hint else ""
            )
        else:
            what = "no run in hand"
        self.log.info(
            "stopping (%s): no new claims; %s",
            self._stop_reason,
            what,
            extra={"aq_event": "worker_stopping", "aq_reason": self._stop_reason, "aq_busy": busy},
        )

    def _release_held(self) -> tuple[str, ...]:
        """Give up the lease of every active run this worker's owner holds."""
        journal = self.journal
        try:
            held = [
                r.run_id
                for r in journal.runs(status=ACTIVE_STATUSES)
                if r.owner == journal.owner and not _passed_on(journal, r.run_id)
            ]
        except Exception as exc:  # the journal is unreachable: the leases expire by themselves
            self.log.error(
                "cannot list the runs in hand to release them (%s); they are claimable once "
                "their lease (%s s) expires",
                exc,
                f"{journal.lease:g}",
                extra={"aq_event": "release_failed"},
            )
            return ()
        released: list[str] = []
        for run_id in held:
            try:
                journal.release(run_id)
            except Exception as exc:
                self.log.error(
                    "run %s: cannot release it (%s); it is claimable once its lease expires",
                    run_id,
                    exc,
                    extra={"aq_event": "release_failed", "aq_run": run_id},
                )
            else:
                released.append(run_id)
                self.log.warning(
                    "run %s released unfinished: another worker may claim it now",
                    run_id,
                    extra={"aq_event": "run_released", "aq_run": run_id},
                )
        return tuple(released)

    # -- the threads -----------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        if self._wait is not None:
            self._wait(seconds)
        else:
            self._stopping.wait(seconds)

    def _thread_main(self, number: int) -> None:
        try:
            with shared_event_loop():  # its async runs share one loop, and its connections
                self._loop(number)
        except BaseException:
            self._failed = True
            self.log.critical(
                "worker thread %d died unexpectedly; the worker stops",
                number,
                exc_info=True,
                extra={"aq_event": "worker_thread_died"},
            )
            self.stop("a worker thread died")
            raise
        finally:
            with self._lock:
                self._busy.discard(number)
                self._ended += 1
            self._wake.set()

    def _loop(self, number: int) -> None:
        failures = 0
        while not self.stopping:
            with self._lock:
                self._busy.add(number)
            began = self.clock()
            try:
                try:
                    report = recover(
                        self.journal,
                        resume=self.resume,
                        limit=1,
                        retry=self.retry,
                        rollback_retry=self.rollback_retry,
                        sleep=self.sleep,
                        listeners=self.listeners,
                        should_stop=self._claim_checks(number),
                        pass_on=self.pass_on,
                    )
                finally:
                    self._claim_ended(number)
            except Exception as exc:  # the journal failed (unreachable, locked): try again later
                failures += 1
                with self._lock:
                    self._errors += 1
                    self._busy.discard(number)
                delay = min(self.poll * 2 ** min(failures - 1, 16), max(self.poll, MAX_ERROR_DELAY))
                self.log.error(
                    "recovery failed (%s: %s)%s",
                    type(exc).__name__,
                    exc,
                    "" if self.stopping else f"; trying again in {delay:g} s",
                    exc_info=not isinstance(exc, JournalError),
                    extra={"aq_event": "worker_error", "aq_delay": delay},
                )
                if self.stopping:
                    return
                self._pause(delay)
                continue
            failures = 0
            if report.runs:
                for result in report.runs:
                    self._record(result, began)
            elif not self.stopping:
                self._idle(number)
                self._pause(self.poll)

    def _claim_checks(self, number: int) -> Callable[[], bool]:
        """``should_stop`` of one recover(limit=1) call: called before its claim and after.

        From the first call until the second lets it recover the run it
        claimed (or until recover() returns: nothing to claim, the run given
        back as the worker stops, or the journal failed) thread ``number``
        counts as inside a claim, which abort() waits for before it lists the
        runs in hand to release them.
        """
        calls = 0

        def should_stop() -> bool:
            nonlocal calls
            calls += 1
            stopping = self._stopping.is_set()
            with self._claimed:
                if calls == 1:
                    self._claiming.add(number)
                elif not stopping:  # on to recover the run it claimed (else it gives the
                    self._claiming.discard(number)  # run back first: see _claim_ended)
                    self._claimed.notify_all()
            return stopping

        return should_stop

    def _claim_ended(self, number: int) -> None:
        with self._claimed:
            self._claiming.discard(number)
            self._claimed.notify_all()

    def _record(self, result: RecoveredRun, began: float) -> None:
        now = self.clock()
        with self._lock:
            if self._batch_start is None:
                self._batch_start = began
                self._last_progress = began
                self._last_progress_count = 0
            self._batch[result.outcome] += 1
            self._batch_total += 1
            self._totals[result.outcome] += 1
            if self.progress_runs is not None:
                due = self._batch_total - self._last_progress_count >= self.progress_runs
            else:
                due = now - self._last_progress >= self.progress_every
            if due:
                self._last_progress = now
                self._last_progress_count = self._batch_total
        ok = result.outcome in _OK
        self.log.log(
            logging.INFO if ok else logging.WARNING,
            "%s %s %s in %s%s",
            result.outcome,
            result.run_id,
            result.name,
            duration(now - began),
            "" if ok or not result.error else f": {result.error}",
            extra={
                "aq_event": "run_recovered",
                "aq_run": result.run_id,
                "aq_name": result.name,
                "aq_outcome": result.outcome,
                "aq_status": result.status,
                "aq_error": result.error,
                "aq_seconds": now - began,
            },
        )
        if due:
            self._progress(done=False)

    def _idle(self, number: int) -> None:
        with self._lock:
            self._busy.discard(number)
            if self._busy or not self._batch_total or self._batch_start is None:
                return
            progress = Progress(
                self._batch_total,
                _counts(self._batch),
                *self._rate(self._batch_total, self._batch_start),
                left=0,
                done=True,
            )
            self._batch.clear()
            self._batch_total = 0
            self._batch_start = None
        self._emit(progress)

    def _rate(self, count: int, start: float) -> tuple[float, float]:
        elapsed = max(0.0, self.clock() - start)
        return elapsed, (count / elapsed if elapsed > 0 else 0.0)

    def _progress(self, *, done: bool) -> None:
        if not self._progress_lock.acquire(blocking=False):  # pragma: no cover - a race
            return  # another thread is writing one right now
        try:
            left = self._left()
            with self._lock:
                if self._batch_start is None:  # pragma: no cover - the backlog just ended
                    return
                progress = Progress(
                    self._batch_total,
                    _counts(self._batch),
                    *self._rate(self._batch_total, self._batch_start),
                    left=left,
                    done=done,
                )
            self._emit(progress)
        finally:
            self._progress_lock.release()

    def _left(self) -> int | None:
        """Active runs whose lease expired: what is left to claim."""
        journal = self.journal
        try:
            runs = journal.runs(status=ACTIVE_STATUSES)
            now = journal.clock()
        except Exception:  # a progress line is not worth failing for
            return None
        return sum(1 for r in runs if r.lease_expires_at is None or r.lease_expires_at < now)

    def _emit(self, progress: Progress) -> None:
        self.log.info(
            "%s",
            progress.line(),
            extra={
                "aq_event": "backlog_cleared" if progress.done else "progress",
                "aq_recovered": progress.recovered,
                "aq_outcomes": dict(progress.outcomes),
                "aq_elapsed": progress.elapsed,
                "aq_rate": progress.rate,
                "aq_left": progress.left,
            },
        )
        if self.on_progress is not None:
            self.on_progress(progress)


# -- log formats ---------------------------------------------------------------------

#: Log record attributes renamed in JSON (the others lose their ``aq_`` prefix).
_FIELD_NAMES = {"aq_run": "run_id", "aq_step": "step"}


def _step_fields() -> dict[str, Any]:
    """The run and step of a journaled step running in this thread, if any."""
    try:
        context = current_step()
    except LookupError:
        return {}
    return {"run_id": context.run_id, "step": context.index}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``event``, ``message``, then fields.

    The fields are the record's ``aq_*`` extras without their prefix
    (``aq_run`` is ``run_id``, ``aq_step`` is ``step``); a record logged
    inside a journaled step gets that step's ``run_id`` and ``step``. An
    exception adds ``error`` and ``traceback``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        data: dict[str, Any] = {
            "ts": iso(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "aq_event", None) or "log",
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key.startswith("aq_") and key != "aq_event":
                data[_FIELD_NAMES.get(key, key[3:])] = value
        if "run_id" not in data:
            data.update(_step_fields())
        data["logger"] = record.name
        data["thread"] = record.threadName
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            data["error"] = f"{type(error).__name__}: {error}"
            data["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(data, default=str, ensure_ascii=False)


_LEVEL_COLOR = {"WARNING": "33", "ERROR": "1;31", "CRITICAL": "1;31"}


class TextLogFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO    message``; outcomes and levels in colour.

    Args:
        paint: Colours (or not) the level and a run's outcome.
        verbose: Show tracebacks (else only the one-line message).
    """

    def __init__(self, paint: Painter, verbose: bool = False) -> None:
        super().__init__()
        self.paint = paint
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (plus a traceback when verbose)."""
        message = record.getMessage()
        outcome = getattr(record, "aq_outcome", None)
        if isinstance(outcome, str) and message.startswith(outcome):
            message = self.paint.status(outcome) + message[len(outcome) :]
        level = record.levelname
        shown = level.ljust(max(8, len(level) + 1))  # CRITICAL too keeps a space after it
        text = (
            f"{self.paint.dim(iso(record.created) or '')} "
            f"{self.paint(_LEVEL_COLOR.get(level, ''), shown)}{message}"
        )
        if self.verbose and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextmanager
def _logging_to(handler: logging.Handler) -> Iterator[None]:
    """Send the library's records of level INFO and above to ``handler`` only."""
    library = logging.getLogger("actionqueues")
    saved = (library.level, library.propagate)
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(saved[0])
        library.propagate = saved[1]


# -- the command ---------------------------------------------------------------------


def seconds(text: str) -> float:
    """A number of seconds > 0 and at most a day (``--poll``, ``--lease``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= _LONGEST_WAIT:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and at most {_LONGEST_WAIT:g} (a day), got {text!r}"
        )
    return value


def _passed_on(journal: Journal, run_id: str) -> bool:
    """Whether this owner's latest claim of ``run_id`` passed it on (it is not in hand)."""
    events = journal.timeline(run_id).events
    return bool(events) and events[-1].kind == "passed_on"


def _hard_exit(code: int) -> None:  # pragma: no cover - replaced in tests; ends the process
    os._exit(code)


def _unregistered(journal: Journal) -> dict[str, list[str]]:
    """Action types, among a sample of the abandoned runs, that no imported module registers."""
    now = journal.clock()
    unknown: dict[str, list[str]] = {}
    checked = 0
    for run in journal.runs(status=ACTIVE_STATUSES):
        if run.lease_expires_at is not None and run.lease_expires_at >= now:
            continue  # held by a live owner
        for name in unregistered_types(journal.timeline(run.run_id)):
            unknown.setdefault(name, []).append(run.run_id[:8])
        checked += 1
        if checked >= TYPE_CHECK_SAMPLE:
            break
    return unknown


def worker_command(args: argparse.Namespace, out: TextIO, err: TextIO, paint: Painter) -> int:
    """``actionqueues worker``: recover runs until SIGTERM/SIGINT."""
    import_modules(args.imports)
    url = journal_url(args)
    handler = logging.StreamHandler(out)
    if args.log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(TextLogFormatter(paint, args.verbose))
    created = missing_journal(url)
    options: dict[str, object] = {"lease": args.lease}
    if url.partition("://")[0].lower() in ("postgresql", "postgres") and "pool_size=" not in url:
        # one connection per thread, plus the heartbeat's and a spare
        options["pool_size"] = max(10, args.concurrency + 2)
    with opened(url, **options) as journal, _logging_to(handler):
        if created is not None:
            logger.warning(
                "there was no journal at %s: created an empty one; waiting for runs",
                created,
                extra={"aq_event": "journal_created", "aq_journal": journal.url},
            )
        if not args.force:
            unknown = _unregistered(journal)
            if unknown:
                listed = "; ".join(
                    f"{name!r} (run{'s' if len(ids) > 1 else ''} {', '.join(ids[:5])}"
                    f"{', ...' if len(ids) > 5 else ''})"
                    for name, ids in sorted(unknown.items())
                )
                print(
                    f"actionqueues: error: recovery rebuilds each step from its registered "
                    f"action type, and these are not registered in this process: {listed}. "
                    f"Pass --import MODULE for each module that defines them; --force starts "
                    f"anyway, passing such runs on to other workers (up to --pass-on times) "
                    f"before it marks them needs_attention. Nothing was changed.",
                    file=err,
                )
                return 2
        worker = Worker(
            journal,
            concurrency=args.concurrency,
            poll=args.poll,
            resume=not args.no_resume,
            progress_runs=100 if args.batch_progress else None,
            pass_on=args.pass_on,
        )
        worker.stop_hint = "send SIGTERM or SIGINT again to release them and exit at once"
        with _signals(worker):
            summary = worker.run()
        if summary.aborted:
            handler.flush()
            out.flush()
            err.flush()
            if not worker.join(timeout=0):
                _hard_exit(EXIT_ABORTED)  # threads still inside rollbacks: end them with us
            return EXIT_ABORTED
    return 1 if summary.failed else 0


@contextmanager
def _signals(worker: Worker) -> Iterator[None]:
    """SIGTERM/SIGINT stop ``worker`` cleanly; a second one aborts it."""
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        yield  # signals can only be handled in the main thread
        return

    received: list[str] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:  # the second signal, not the first after a stop of its own
            worker.abort(f"{name} again")
        else:
            worker.stop(name)

    saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)
