"""What a journaled queue writes, and when: one recorder per run.

The recorder turns the engine's reporting hooks into journal commits:

- the run and its steps are inserted together with the start of step 0;
- the result of step k shares one commit with the start of step k+1, so a
  happy run of N steps costs N+1 commits;
- every retry commits its attempt count and the time of the next call;
- each rollback is recorded as started before the action's ``rollback`` is
  called, and its outcome is committed with the next rollback's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import sys
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from ._journal import Journal, JournalError, LeaseLost, Op, RunTimeline, fault, step_key
from ._policy import RetryPolicy
from ._registry import dump_state, require_name

__all__ = ["RunRecorder", "StepContext", "current_step"]

logger = logging.getLogger("actionqueues")


@dataclass(frozen=True, slots=True)
class StepContext:
    """The journaled step being called right now (see :func:`current_step`).

    Attributes:
        run_id: The run's id.
        index: The step's position in the queue.
        method: ``"execute"`` or ``"rollback"``.
        idempotency_key: ``"<run_id>:<index>"``: the same for every call of
            this step's ``execute`` and ``rollback``, in every process. Pass it
            to the external system so that a call repeated after a crash is
            applied once.
    """

    run_id: str
    index: int
    method: str
    idempotency_key: str


_CURRENT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "actionqueues_current_step", default=None
)


def current_step() -> StepContext:
    """The journaled step whose ``execute`` or ``rollback`` is running in this context.

    Raises:
        LookupError: no journaled step is running here (the queue has no
            journal, or this is called outside ``execute``/``rollback``).
    """
    context = _CURRENT.get()
    if context is None:
        raise LookupError(
            "current_step() is only available inside the execute() or rollback() of a step "
            "of a journaled queue (ActionQueue(journal=...))"
        )
    return context


_LIMITS = ("max_attempts", "initial_delay", "multiplier", "max_delay", "jitter", "deadline")


def _type_names(value: object) -> list[list[str]] | None:
    """Exception type(s) as [module, qualname] pairs; None for a predicate (not journaled)."""
    types = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(t, type) for t in types):
        return None
    return [[t.__module__, t.__qualname__] for t in types]


def _types(names: object) -> tuple[type[BaseException], ...] | None:
    """The exception types named, or None if one is not found.

    They are looked up among the modules already imported: nothing named in a
    journal is ever imported.
    """
    found: list[type[BaseException]] = []
    for module, qualname in names:  # type: ignore[attr-defined]
        target: object = sys.modules.get(module)
        for part in str(qualname).split("."):
            target = getattr(target, part, None)
        if not (isinstance(target, type) and issubclass(target, BaseException)):
            return None
        found.append(target)
    return tuple(found)


def _policy_data(policy: RetryPolicy) -> dict[str, Any]:
    data: dict[str, Any] = {k: getattr(policy, k) for k in _LIMITS}
    data["retry_on"] = _type_names(policy.retry_on)
    data["never_retry"] = _type_names(policy.never_retry)
    return data


def _policy_from(data: dict[str, Any]) -> RetryPolicy:
    options = {k: data[k] for k in _LIMITS}
    retry_on = data.get("retry_on")
    never_retry = data.get("never_retry")
    # A predicate, or a type this process has not imported: retry every Exception
    # within the limits (a rollback retried once too often is the safer mistake).
    retry_types = None if retry_on is None else _types(retry_on)
    if retry_types:
        options["retry_on"] = retry_types
    if never_retry:
        never_types = _types(never_retry)
        if never_types:
            options["never_retry"] = never_types
    return RetryPolicy(**options)


def policies_json(execute: RetryPolicy | None, rollback: RetryPolicy | None) -> str | None:
    """A step's retry policies as journaled: limits, delays and exception types (no predicate)."""
    if execute is None and rollback is None:
        return None
    return json.dumps(
        {
            method: None if policy is None else _policy_data(policy)
            for method, policy in (("execute", execute), ("rollback", rollback))
        },
        separators=(",", ":"),
    )


def policies_from_json(text: str | None) -> tuple[RetryPolicy | None, RetryPolicy | None]:
    """The (execute, rollback) policies of a journaled step (ValueError if malformed)."""
    if text is None:
        return None, None
    try:
        data = json.loads(text)
        return tuple(  # type: ignore[return-value]
            None if data[m] is None else _policy_from(data[m]) for m in ("execute", "rollback")
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"the step's journaled retry policies are invalid: {exc!r}") from exc


#: A recorder hook's steps: it yields None where it needs what is pending committed
#: (a failure is thrown back into it), or a description where it needs that committed
#: without stopping a rollback (see ``RunRecorder._guarded``). ``RunRecorder._drive``
#: runs it for ActionQueue, ``_adrive`` (awaiting the writes) for AsyncActionQueue.
_Hook = Generator[str | None, None, None]
_DONE: Any = object()


def _throw(hook: _Hook, exc: BaseException) -> Any:
    """Throw ``exc`` into ``hook``: its next request, or _DONE (or it raises)."""
    try:
        return hook.throw(exc)
    except StopIteration:
        return _DONE
    finally:
        del exc  # the raised exception's traceback holds this frame: no cycle


def _error_text(error: BaseException) -> str:
    """How the journal records ``error``: its type and message, at most 4,000 characters.

    A lone surrogate (an OS error about an undecodable file name) is written as
    its escape: text that UTF-8 cannot encode could not be stored at all.
    """
    text = f"{type(error).__module__}.{type(error).__qualname__}: {error}"
    text = text.encode("utf-8", "backslashreplace").decode()
    return text.removeprefix("builtins.")[:4000]


class RunRecorder:
    """Records one run of one queue in a journal."""

    def __init__(
        self,
        journal: Journal,
        name: str,
        kind: str,
        resumable: bool,
        run_id: str | None = None,
        timeline: RunTimeline | None = None,
    ) -> None:
        self.journal = journal
        self.name = name
        self.kind = kind
        self.resumable = resumable
        self.run_id = run_id or str(uuid.uuid4())
        self.created = timeline is not None
        self.renewed = 0.0  # when this recorder last renewed the run's lease (journal clock)
        self.ops: list[Op] = []
        self.run: dict[str, Any] = {}
        self.committed: dict[str, Any] = {}  # the run columns of the commits made so far
        self.create_rows: list[dict[str, Any]] | None = None
        self.rolling_back = False
        self.failed_rollbacks: set[int] = set()
        self.lost = False  # another process claimed the run: stop calling and writing
        self.write_failed = False  # a write failed while rolling back (logged once)
        self.cancelled = False  # the task was cancelled during an async write
        self.recorded_start = -1  # the last step whose start was (or may have been) committed
        # (attempts already made, Unix time of the first) per (index, method), from a journal
        self.seeds: dict[tuple[int, str], tuple[int, float | None]] = {}
        # retry_rollback(): the rollback policy's attempts and deadline start afresh
        # (the journal's counts still add up every call)
        self.fresh_rollbacks = False
        self.token: contextvars.Token[StepContext | None] | None = None
        if timeline is not None:
            for step in timeline.steps:
                self.seeds[(step.index, "execute")] = (step.attempts, step.started_at)
                self.seeds[(step.index, "rollback")] = (
                    step.rollback_attempts,
                    step.rollback_started_at,
                )

    # -- plumbing ---------------------------------------------------------------

    def _flush(self) -> None:
        """Commit what is pending; if that fails, nothing was written and it stays pending."""
        ops, run = self._take()
        try:
            self._write(ops, run)
        except BaseException as exc:
            self._not_written(exc, ops, run)
            raise
        self.committed.update(run)

    async def _aflush(self) -> None:
        """:meth:`_flush`, through the journal's async methods.

        The write is shielded from cancellation: a commit the server may have
        applied must be known to have been, or not. A cancellation that came
        meanwhile is raised when the hook ends (see :meth:`_adrive`). A journal
        whose async writes are its blocking ones (SQLite's) never awaits in
        them, so nothing can come meanwhile: its write is simply made.
        """
        if _writes_block(self.journal):
            self._flush()
            return
        ops, run = self._take()
        write = asyncio.ensure_future(self._awrite(ops, run))
        try:
            while not write.done():
                try:
                    await asyncio.wait((write,))  # never cancels the write, never raises its error
                except asyncio.CancelledError:
                    # Ours (the write may even be done by now): the write decides what
                    # was written, and the cancellation is raised after the hook.
                    self.cancelled = True
            try:
                write.result()
            except BaseException as exc:
                self._not_written(exc, ops, run)
                raise
        finally:
            del write  # the task holds the error, whose traceback holds this frame
        self.committed.update(run)

    def _take(self) -> tuple[list[Op], dict[str, Any]]:
        ops, self.ops = self.ops, []
        run, self.run = self.run, {}
        return ops, run

    def _not_written(self, exc: BaseException, ops: list[Op], run: dict[str, Any]) -> None:
        if isinstance(exc, LeaseLost):
            self.lost = True
            return
        self.ops = ops + self.ops
        run.update(self.run)
        self.run = run

    def _write(self, ops: list[Op], run: dict[str, Any]) -> None:
        if self.create_rows is not None:
            self.journal.create(self._run_row(run), self.create_rows, ops)
            self._created()
            return
        renew, now = self._renewal(run)
        self.journal.commit(self.run_id, run, ops, renew=renew)
        if renew:
            self.renewed = now

    async def _awrite(self, ops: list[Op], run: dict[str, Any]) -> None:
        if self.create_rows is not None:
            await self.journal.acreate(self._run_row(run), self.create_rows, ops)
            self._created()
            return
        renew, now = self._renewal(run)
        await self.journal.acommit(self.run_id, run, ops, renew=renew)
        if renew:
            self.renewed = now

    def _run_row(self, run: dict[str, Any]) -> dict[str, Any]:
        """The new run's columns, for the journal's ``create()``."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "kind": self.kind,
            "status": run.get("status", "running"),
            "resumable": int(self.resumable),
            "steps": len(self.create_rows or ()),
            "finished_at": run.get("finished_at"),
            "error": run.get("error"),
        }

    def _created(self) -> None:
        self.create_rows = None
        self.created = True
        self.renewed = self.journal.clock()

    def _renewal(self, run: dict[str, Any]) -> tuple[bool, float]:
        """(renew the lease in this commit?, now).

        A step's commit renews it only when a third of it has passed (the
        heartbeat renews it too): most commits then write the step rows alone.
        """
        now = self.journal.clock()
        return bool(run) or now - self.renewed >= self.journal.lease / 3, now

    def _drive(self, hook: _Hook) -> None:
        """Run a hook's steps, making each write it asks for (see :data:`_Hook`)."""
        request = next(hook, _DONE)
        while request is not _DONE:
            try:
                if request is None:
                    self._flush()
                else:
                    self._guarded(str(request))
            except BaseException as exc:
                request = _throw(hook, exc)
            else:
                request = next(hook, _DONE)

    async def _adrive(self, hook: _Hook) -> None:
        """:meth:`_drive`, with each write awaited.

        A cancellation that came during a write is raised once the hook has
        ended, so that what the journal holds is also what this queue knows.
        """
        try:
            request = next(hook, _DONE)
            while request is not _DONE:
                try:
                    if request is None:
                        await self._aflush()
                    else:
                        await self._aguarded(str(request))
                except BaseException as exc:
                    request = _throw(hook, exc)
                else:
                    request = next(hook, _DONE)
        finally:
            cancelled, self.cancelled = self.cancelled, False
            if cancelled:
                raise asyncio.CancelledError  # it wins over an error of the hook

    def _set_current(self, index: int, method: str) -> None:
        token = _CURRENT.set(StepContext(self.run_id, index, method, step_key(self.run_id, index)))
        if self.token is None:
            self.token = token

    def _clear_current(self) -> None:
        token, self.token = self.token, None
        if token is not None:
            try:
                _CURRENT.reset(token)
            except ValueError:  # pragma: no cover - set in another context (a task)
                _CURRENT.set(None)

    def _base(self, index: int, method: str) -> int:
        seed = self.seeds.get((index, method))
        return 0 if seed is None else seed[0]

    def seed(self, index: int, method: str, clock_now: float) -> tuple[int, float | None]:
        """For a Retrier: (attempt number of the call that just failed, start on the clock)."""
        seed = self.seeds.get((index, method))
        if seed is None or seed[0] == 0 or (method == "rollback" and self.fresh_rollbacks):
            return 1, None
        attempts, first = seed
        start = None if first is None else clock_now - max(0.0, self.journal.clock() - first)
        return attempts + 1, start

    # -- execute ------------------------------------------------------------------

    def run_started(
        self, actions: Sequence[object], policies: Sequence[tuple[Any, Any]] = ()
    ) -> None:
        """Prepare the run's rows (committed with the start of step 0).

        ``policies`` holds each step's (execute, rollback) retry policies.
        """
        if not self.created:
            self.create_rows = [
                {
                    "idx": i,
                    "type": require_name(a, i),
                    "state": dump_state(a, i),
                    "policies": policies_json(*policies[i]) if policies else None,
                }
                for i, a in enumerate(actions)
            ]
        else:
            self.run["status"] = "running"
        self.journal.track(self.run_id, self)

    def step_started(self, index: int, action: object) -> None:
        """Durably record that step ``index``'s ``execute`` is about to be called."""
        self._drive(self._step_started(index))

    async def astep_started(self, index: int, action: object) -> None:
        """:meth:`step_started`, with the journal write awaited."""
        await self._adrive(self._step_started(index))

    def _step_started(self, index: int) -> _Hook:
        fault("before_step_record")
        now = self.journal.clock()
        base = self._base(index, "execute")
        columns: dict[str, Any] = {
            "status": "running",
            "attempts": base + 1,
            "next_retry_at": None,
        }
        if base == 0:
            columns["started_at"] = now
        op = ("step", index, columns)
        self.ops.append(op)
        try:
            yield None
        except BaseException as exc:
            # Not recorded, so execute() will not be called: only the earlier results stay.
            self.ops = [o for o in self.ops if o is not op]
            if not isinstance(exc, Exception):
                # An interrupt (Ctrl-C) during the write: the start may have landed, so
                # the step counts as started (its rollback is called, as after a crash).
                self.recorded_start = index
            raise
        self.recorded_start = index
        fault("after_step_record")
        self._set_current(index, "execute")

    def step_succeeded(self, index: int, action: object, attempts: int) -> None:
        """Queue step ``index``'s result; it is committed with the next write."""
        fault("after_execute")
        try:
            state = dump_state(action, index)
        except TypeError as exc:
            raise JournalError(
                f"step {index} ({action!r}) ran, but its state after execute() cannot be "
                f"journaled: {exc}",
                self.journal.url,
            ) from exc
        self.ops.append(
            (
                "step",
                index,
                {
                    "status": "succeeded",
                    "attempts": self._base(index, "execute") + attempts,
                    "finished_at": self.journal.clock(),
                    "state": state,
                    "next_retry_at": None,
                },
            )
        )

    def step_failed(self, index: int, action: object, error: BaseException, attempts: int) -> None:
        """Queue step ``index``'s failure; committed with the run's outcome."""
        self.ops.append(
            (
                "step",
                index,
                {
                    "status": "failed",
                    "attempts": self._base(index, "execute") + attempts,
                    "finished_at": self.journal.clock(),
                    "error": _error_text(error),
                    "next_retry_at": None,
                },
            )
        )

    def retry_scheduled(
        self, index: int, method: str, attempt: int, delay: float, error: BaseException
    ) -> None:
        """Durably record a failed call and when the next one is due."""
        self._drive(self._retry_scheduled(index, method, attempt, delay, error))

    async def aretry_scheduled(
        self, index: int, method: str, attempt: int, delay: float, error: BaseException
    ) -> None:
        """:meth:`retry_scheduled`, with the journal write awaited."""
        await self._adrive(self._retry_scheduled(index, method, attempt, delay, error))

    def _retry_scheduled(
        self, index: int, method: str, attempt: int, delay: float, error: BaseException
    ) -> _Hook:
        if method == "rollback" and self.fresh_rollbacks:  # attempt counts from this retry
            attempt += self._base(index, method)
        self.ops.append(("step", index, {"next_retry_at": self.journal.clock() + delay}))
        kind = "retry" if method == "execute" else "rollback_retry"
        self.ops.append(
            ("event", index, kind, f"attempt {attempt}: {_error_text(error)}; next in {delay:.3f}s")
        )
        yield None if method == "execute" else "a rollback retry"

    def retry_starting(self, index: int, method: str, attempt: int) -> None:
        """Durably record that call number ``attempt`` is about to be made."""
        self._drive(self._retry_starting(index, method, attempt))

    async def aretry_starting(self, index: int, method: str, attempt: int) -> None:
        """:meth:`retry_starting`, with the journal write awaited."""
        await self._adrive(self._retry_starting(index, method, attempt))

    def _retry_starting(self, index: int, method: str, attempt: int) -> _Hook:
        if method == "execute":
            self.ops.append(("step", index, {"attempts": attempt, "next_retry_at": None}))
            yield None
            return
        if self.fresh_rollbacks:
            attempt += self._base(index, method)
        self.ops.append(("step", index, {"rollback_attempts": attempt, "next_retry_at": None}))
        yield "a rollback retry"

    def run_finished(self, error: BaseException | None) -> None:
        """Commit the run's outcome (raises if a success cannot be recorded)."""
        self._drive(self._run_finished(error))

    async def arun_finished(self, error: BaseException | None) -> None:
        """:meth:`run_finished`, with the journal write awaited."""
        await self._adrive(self._run_finished(error))

    def _run_finished(self, error: BaseException | None) -> _Hook:
        fault("before_finish_record")
        self._clear_current()
        if error is None:
            self.run.update(status="succeeded", finished_at=self.journal.clock())
            yield None
            self.journal.untrack(self.run_id)
            return
        self.run.update(status="failed", error=_error_text(error))
        self.ops.append(("event", None, "failed", _error_text(error)))
        try:
            yield None
        except JournalError as exc:
            _log_write_failure(self, exc, "its failure")

    # -- rollback -----------------------------------------------------------------

    def rollback_started(self, index: int, action: object) -> None:
        """Durably record that step ``index``'s ``rollback`` is about to be called."""
        self._drive(self._rollback_started(index))

    async def arollback_started(self, index: int, action: object) -> None:
        """:meth:`rollback_started`, with the journal write awaited."""
        await self._adrive(self._rollback_started(index))

    def _rollback_started(self, index: int) -> _Hook:
        if not self.rolling_back:
            self.rolling_back = True
            self.run.update(status="rolling_back")
            self.journal.track(self.run_id, self)
        fault("before_rollback_record")
        base = self._base(index, "rollback")
        columns: dict[str, Any] = {
            "status": "rolling_back",
            "rollback_attempts": base + 1,
            "next_retry_at": None,
        }
        if base == 0:
            columns["rollback_started_at"] = self.journal.clock()
        self.ops.append(("step", index, columns))
        yield f"the start of step {index}'s rollback"
        fault("after_rollback_record")
        self._set_current(index, "rollback")

    def rollback_finished(
        self, index: int, action: object, error: BaseException | None, attempts: int
    ) -> None:
        """Queue step ``index``'s rollback outcome; committed with the next write."""
        fault("after_rollback")
        columns: dict[str, Any] = {
            "status": "rolled_back" if error is None else "rollback_failed",
            "rollback_attempts": self._base(index, "rollback") + attempts,
            "rollback_finished_at": self.journal.clock(),
            "rollback_error": None if error is None else _error_text(error),
            "next_retry_at": None,
        }
        with contextlib.suppress(TypeError):  # else the state before the rollback stays
            columns["state"] = dump_state(action, index)
        self.ops.append(("step", index, columns))
        if error is not None:
            self.failed_rollbacks.add(index)
            self.ops.append(("event", index, "rollback_failed", _error_text(error)))

    def unknown_outcome(self, index: int, action: object) -> None:
        """Recovery: step ``index``'s undo needs the result its crashed do() never recorded."""
        message = (
            f"{action!r} was running when its process died, so its result is unknown and "
            f"its undo cannot be called; check what it did (idempotency key "
            f"{step_key(self.run_id, index)}), undo it by hand if needed, then retry the "
            f"rollback (which then treats the step as done)"
        )
        self.failed_rollbacks.add(index)
        self.ops.append(("step", index, {"status": "rollback_failed", "rollback_error": message}))
        self.ops.append(("event", index, "rollback_failed", message))

    def rollback_done(self) -> None:
        """Commit the rollback's outcome: rolled back, or needs attention."""
        self._drive(self._rollback_done())

    async def arollback_done(self) -> None:
        """:meth:`rollback_done`, with the journal write awaited."""
        await self._adrive(self._rollback_done())

    def _rollback_done(self) -> _Hook:
        self._clear_current()
        if self.failed_rollbacks:
            failed = ", ".join(str(i) for i in sorted(self.failed_rollbacks, reverse=True))
            self.run.update(
                status="needs_attention",
                error=f"the rollback of step(s) {failed} failed",
                finished_at=self.journal.clock(),
            )
        else:
            self.run.update(status="rolled_back", finished_at=self.journal.clock())
            if self.fresh_rollbacks:  # a retried needs_attention run: its failures are undone
                self.run["error"] = None
        yield "the rollback's outcome"
        self.journal.untrack(self.run_id)

    def rollback_interrupted(self) -> None:
        """A BaseException stopped the rollback: commit what is known, if possible."""
        self._drive(self._rollback_interrupted())

    async def arollback_interrupted(self) -> None:
        """:meth:`rollback_interrupted`, with the journal write awaited."""
        await self._adrive(self._rollback_interrupted())

    def _rollback_interrupted(self) -> _Hook:
        self._clear_current()
        if not self.lost:
            with contextlib.suppress(LeaseLost):
                yield "the interrupted rollback"

    def _guarded(self, what: str) -> None:
        """Write while rolling back: a journal failure must not stop the compensation.

        What could not be written stays pending for the next write. Only a lost
        lease stops the rollback: another process is finishing the run.
        """
        self._check_held()
        try:
            self._flush()
        except JournalError as exc:
            if self._guard(exc, what):
                raise

    async def _aguarded(self, what: str) -> None:
        """:meth:`_guarded`, with the write awaited."""
        self._check_held()
        try:
            await self._aflush()
        except JournalError as exc:
            if self._guard(exc, what):
                raise

    def _check_held(self) -> None:
        if self.lost:
            raise LeaseLost(self.run_id, self.journal.owner, self.journal.url)

    def _guard(self, exc: JournalError, what: str) -> bool:
        """A guarded write failed: log it (once); True to stop (only for a lost lease)."""
        if isinstance(exc, LeaseLost):
            _log_write_failure(self, exc, what)
            return True
        if not self.write_failed:
            self.write_failed = True
            _log_write_failure(self, exc, what)
        return False


def _writes_block(journal: Journal) -> bool:
    """Whether ``journal``'s async writes are :class:`Journal`'s, which call the blocking ones."""
    acommit = getattr(journal.acommit, "__func__", None)
    acreate = getattr(journal.acreate, "__func__", None)
    return acommit is Journal.acommit and acreate is Journal.acreate


def _log_write_failure(recorder: RunRecorder, exc: JournalError, what: str) -> None:
    lost = isinstance(exc, LeaseLost)
    logger.error(
        "run %s: could not record %s in the journal (%s); %s",
        recorder.run_id,
        what,
        exc,
        "another process owns the run now: this one stops"
        if lost
        else "until a later write succeeds, the journal shows the run unfinished, and "
        "recovery would repeat the rollbacks it cannot see",
        extra={"aq_event": "journal_write_failed", "aq_run": recorder.run_id},
    )
