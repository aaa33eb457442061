"""Behaviour of AsyncActionQueue: async actions, cancellation, timeouts, ``async with``.

Each test drives its own event loop with ``asyncio.run``. No test really
sleeps: backoff sleeps are injected fakes, and the coordination between tasks
uses ``asyncio.Event``. Only the timeout tests wait, for the event loop's
timer of about 0.01 s.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import math
import sys
import warnings
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    ActionTimeoutError,
    AsyncAction,
    AsyncActionQueue,
    AsyncFunctionStep,
    BaseListener,
    QueueStateError,
    RetryPolicy,
    RetryScheduled,
    RollbackError,
    step,
)
from actionqueues.testing import RecordingSleep


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(main())


class SyncStep(Action):
    """A plain action (sync methods) that logs its calls and follows a script."""

    def __init__(
        self,
        log: list[str],
        name: str,
        *,
        execute_errors: Iterable[BaseException] = (),
        rollback_errors: Iterable[BaseException] = (),
    ) -> None:
        self.log = log
        self.name = name
        self.execute_errors = list(execute_errors)
        self.rollback_errors = list(rollback_errors)

    def execute(self) -> None:
        self.log.append(f"execute {self.name}")
        if self.execute_errors:
            raise self.execute_errors.pop(0)

    def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")
        if self.rollback_errors:
            raise self.rollback_errors.pop(0)

    def __repr__(self) -> str:
        return f"SyncStep({self.name!r})"


class AsyncStep(SyncStep):
    """The same script as SyncStep, with ``async def`` methods."""

    def __init__(
        self,
        log: list[str],
        name: str,
        *,
        execute_errors: Iterable[BaseException] = (),
        rollback_errors: Iterable[BaseException] = (),
    ) -> None:
        super().__init__(log, name, execute_errors=execute_errors, rollback_errors=rollback_errors)
        self.execute_calls = 0

    async def execute(self) -> None:  # type: ignore[override]
        self.execute_calls += 1
        SyncStep.execute(self)

    async def rollback(self) -> None:  # type: ignore[override]
        SyncStep.rollback(self)

    def __repr__(self) -> str:
        return f"AsyncStep({self.name!r})"


class Hanging:
    """An action whose chosen calls await an event that is never set.

    The first ``hang_execute`` calls of ``execute`` hang (setting ``entered``
    as they start waiting); later ones return at once, or raise
    ``execute_error`` if given. ``rollback`` hangs if ``hang_rollback``.
    """

    def __init__(
        self,
        log: list[str],
        *,
        hang_execute: int = 0,
        hang_rollback: bool = False,
        execute_error: BaseException | None = None,
    ) -> None:
        self.log = log
        self.hang_execute = hang_execute
        self.hang_rollback = hang_rollback
        self.execute_error = execute_error
        self.execute_calls = 0
        self.entered = asyncio.Event()

    async def execute(self) -> None:
        self.execute_calls += 1
        self.log.append("execute hanging")
        if self.execute_error is not None:
            raise self.execute_error
        if self.execute_calls <= self.hang_execute:
            self.entered.set()
            await asyncio.Event().wait()

    async def rollback(self) -> None:
        self.log.append("rollback hanging")
        if self.hang_rollback:
            await asyncio.Event().wait()


# -- async and sync actions in one queue ------------------------------------------


def test_async_and_sync_actions_execute_in_the_order_added() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(AsyncStep(log, "a"))
        q.add(SyncStep(log, "b"))
        q.add(AsyncStep(log, "c"))
        assert await q.execute() is None  # type: ignore[func-returns-value]

    run(main)
    assert log == ["execute a", "execute b", "execute c"]


def test_a_failing_async_action_stops_the_queue_and_its_own_error_object_propagates() -> None:
    log: list[str] = []
    failure = RuntimeError("card declined")

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(SyncStep(log, "a"))
        failing = q.add(AsyncStep(log, "b", execute_errors=[failure]))
        q.add(SyncStep(log, "c"))
        with pytest.raises(RuntimeError) as excinfo:
            await q.execute()
        assert excinfo.value is failure
        assert q.started == (q.actions[0], failing)

    run(main)
    assert log == ["execute a", "execute b"]


def test_rollback_undoes_every_started_action_in_reverse_including_the_failed_one() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        a = q.add(AsyncStep(log, "a"))
        b = q.add(SyncStep(log, "b"))
        c = q.add(AsyncStep(log, "c", execute_errors=[ValueError("no")]))
        q.add(SyncStep(log, "d"))
        with pytest.raises(ValueError, match="no"):
            await q.execute()

        report = await q.rollback()

        assert report.ok
        assert report.rolled_back == (c, b, a)

    run(main)
    assert log == [
        "execute a",
        "execute b",
        "execute c",
        "rollback c",
        "rollback b",
        "rollback a",
    ]


def test_rollback_after_a_successful_execute_undoes_every_action() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        a = q.add(SyncStep(log, "a"))
        b = q.add(AsyncStep(log, "b"))
        await q.execute()
        report = await q.rollback()
        assert report.rolled_back == (b, a)

    run(main)
    assert log[2:] == ["rollback b", "rollback a"]


def test_a_failing_rollback_is_logged_and_reported_and_earlier_rollbacks_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    broken = OSError("cannot undo b")

    async def main() -> None:
        q = AsyncActionQueue()
        a = q.add(SyncStep(log, "a"))
        b = q.add(AsyncStep(log, "b", rollback_errors=[broken]))
        await q.execute()

        report = await q.rollback()

        assert not report.ok
        assert report.rolled_back == (a,)
        assert [(f.index, f.action, f.error) for f in report.failures] == [(1, b, broken)]

    with caplog.at_level(logging.ERROR, logger="actionqueues"):
        run(main)
    assert log[2:] == ["rollback b", "rollback a"]
    (record,) = [r for r in caplog.records if getattr(r, "aq_event", None) == "rollback_failed"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[1] is broken


def test_strict_rollback_raises_rollback_error_after_every_rollback_was_attempted() -> None:
    log: list[str] = []
    first = OSError("cannot undo c")
    second = KeyError("cannot undo a")

    async def main() -> None:
        q = AsyncActionQueue()
        a = q.add(AsyncStep(log, "a", rollback_errors=[second]))
        b = q.add(SyncStep(log, "b"))
        c = q.add(SyncStep(log, "c", rollback_errors=[first]))
        await q.execute()

        with pytest.raises(RollbackError, match="2 rollbacks failed") as excinfo:
            await q.rollback(raise_errors=True)

        assert excinfo.value.report.errors == (first, second)
        assert excinfo.value.report.rolled_back == (b,)
        assert [f.action for f in excinfo.value.failures] == [c, a]

    run(main)
    assert log[3:] == ["rollback c", "rollback b", "rollback a"]


def test_executing_twice_raises_queue_state_error() -> None:
    async def main() -> None:
        q = AsyncActionQueue()
        q.add(AsyncStep([], "a"))
        await q.execute()
        with pytest.raises(QueueStateError, match=r"execute\(\) is not allowed") as excinfo:
            await q.execute()
        assert excinfo.value.call == "execute"

    run(main)


def test_rolling_back_before_execute_raises_queue_state_error_and_rolls_nothing_back() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(AsyncStep(log, "a"))
        with pytest.raises(QueueStateError, match=r"rollback\(\) is not allowed") as excinfo:
            await q.rollback()
        assert excinfo.value.call == "rollback"

    run(main)
    assert log == []


def test_rolling_back_twice_or_adding_after_execute_raises_queue_state_error() -> None:
    async def main() -> None:
        q = AsyncActionQueue()
        q.add(AsyncStep([], "a"))
        await q.execute()
        with pytest.raises(QueueStateError, match=r"add\(\) is not allowed"):
            q.add(AsyncStep([], "b"))
        await q.rollback()
        with pytest.raises(QueueStateError, match="has been rolled back"):
            await q.rollback()

    run(main)


# -- backoff never blocks the loop ----------------------------------------------------


def test_backoff_awaits_asyncio_sleep_as_looked_up_when_the_queue_sleeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[float] = []

    async def fake_async_sleep(seconds: float, result: object = None) -> object:
        delays.append(seconds)
        return result

    monkeypatch.setattr(asyncio, "sleep", fake_async_sleep)
    flaky = AsyncStep([], "a", execute_errors=[ConnectionError(), ConnectionError()])

    async def main() -> None:
        q = AsyncActionQueue(retry=RetryPolicy(max_attempts=3, initial_delay=0.5))
        q.add(flaky)
        await q.execute()

    run(main)
    assert flaky.execute_calls == 3
    assert delays == [0.5, 1.0]


def test_an_async_sleep_given_to_the_queue_is_awaited_with_each_delay() -> None:
    delays: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        delays.append(seconds)

    flaky = AsyncStep([], "a", execute_errors=[ConnectionError()])

    async def main() -> None:
        q = AsyncActionQueue(sleep=fake_async_sleep, retry=RetryPolicy.fixed(2.0))
        q.add(flaky)
        await q.execute()

    run(main)
    assert delays == [2.0]
    assert flaky.execute_calls == 2


def test_while_one_queue_backs_off_another_task_makes_progress() -> None:
    events: list[str] = []

    async def main() -> None:
        backing_off = asyncio.Event()
        resume = asyncio.Event()

        async def gated_sleep(seconds: float) -> None:
            events.append(f"backing off {seconds} s")
            backing_off.set()
            await resume.wait()
            events.append("backoff over")

        async def other_work() -> None:
            await backing_off.wait()
            events.append("other task made progress")
            resume.set()

        q = AsyncActionQueue(sleep=gated_sleep, retry=RetryPolicy.fixed(30.0, max_attempts=2))
        q.add(AsyncStep(events, "a", execute_errors=[ConnectionError()]))
        await asyncio.gather(q.execute(), other_work())

    run(main)
    assert events == [
        "execute a",
        "backing off 30.0 s",
        "other task made progress",
        "backoff over",
        "execute a",
    ]


# -- function steps ---------------------------------------------------------------------


def test_an_async_function_step_hands_its_result_to_its_async_undo() -> None:
    log: list[str] = []

    async def create() -> int:
        log.append("create")
        return 42

    async def delete(user_id: int) -> None:
        log.append(f"delete {user_id}")

    async def main() -> None:
        q = AsyncActionQueue()
        created = q.add(create, undo=delete)
        assert isinstance(created, AsyncFunctionStep)
        await q.execute()
        assert created.result == 42
        report = await q.rollback()
        assert report.rolled_back == (created,)

    run(main)
    assert log == ["create", "delete 42"]


def test_async_and_sync_functions_mix_as_a_step_and_its_undo() -> None:
    log: list[str] = []

    async def create() -> str:
        return "row-1"

    def sync_create() -> str:
        return "row-2"

    async def async_delete(key: str) -> None:
        log.append(f"async delete {key}")

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(create, undo=log.append)
        q.add(sync_create, undo=async_delete)
        await q.execute()
        await q.rollback()

    run(main)
    assert log == ["async delete row-2", "row-1"]


def test_a_plain_function_returning_a_coroutine_is_awaited_as_a_step() -> None:
    log: list[str] = []

    async def create(name: str) -> str:
        log.append(f"create {name}")
        return name

    async def main() -> None:
        q = AsyncActionQueue()
        created = q.add(lambda: create("alice"), undo=lambda name: log.append(f"undo {name}"))
        await q.execute()
        assert created.result == "alice"
        await q.rollback()

    run(main)
    assert log == ["create alice", "undo alice"]


def test_an_async_function_step_that_raised_is_not_undone() -> None:
    log: list[str] = []
    failure = ConnectionError("refused")

    async def create() -> int:
        raise failure

    async def delete(user_id: int) -> None:
        log.append(f"delete {user_id}")

    async def main() -> None:
        q = AsyncActionQueue()
        created = q.add(create, undo=delete)
        with pytest.raises(ConnectionError) as excinfo:
            await q.execute()
        assert excinfo.value is failure
        assert q.started == (created,)
        assert (await q.rollback()).rolled_back == (created,)

    run(main)
    assert log == []


def test_the_step_decorator_on_an_async_function_makes_steps_with_its_compensation() -> None:
    users: dict[int, str] = {}

    @step
    async def create_user(name: str) -> int:
        users[len(users) + 1] = name
        return len(users)

    @create_user.compensate
    async def delete_user(user_id: int) -> None:
        del users[user_id]

    async def main() -> None:
        q = AsyncActionQueue()
        alice = q.add(create_user("alice"))
        bob = q.add(create_user("bob"))
        await q.execute()
        assert (alice.result, bob.result) == (1, 2)
        assert users == {1: "alice", 2: "bob"}
        report = await q.rollback()
        assert report.rolled_back == (bob, alice)

    run(main)
    assert users == {}


def test_adding_an_async_function_to_the_sync_queue_raises_type_error() -> None:
    async def do_async() -> int:
        return 1

    q = ActionQueue()
    with pytest.raises(TypeError, match="coroutine function: async steps need AsyncActionQueue"):
        q.add(do_async)
    assert len(q) == 0


def test_adding_a_function_with_an_async_undo_to_the_sync_queue_raises_type_error() -> None:
    async def undo_async(value: int) -> None:
        pass

    q = ActionQueue()
    with pytest.raises(TypeError, match="AsyncActionQueue"):
        q.add(lambda: 1, undo=undo_async)
    assert len(q) == 0


def _closed_and_never_warned(coroutines: list[Coroutine[Any, Any, Any]]) -> list[str]:
    """Assert every coroutine was closed; free them and return 'never awaited' warnings."""
    assert coroutines
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in coroutines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coroutines.clear()
        gc.collect()
    return [str(w.message) for w in caught if "never awaited" in str(w.message)]


def test_a_sync_queue_refuses_an_action_returning_a_coroutine_and_closes_the_coroutine() -> None:
    coroutines: list[Coroutine[Any, Any, Any]] = []

    async def work() -> None:
        pass

    class ReturnsCoroutine:
        def execute(self) -> object:
            coroutines.append(work())
            return coroutines[-1]

        def rollback(self) -> None:
            pass

    q = ActionQueue()
    action = q.add(ReturnsCoroutine())
    with pytest.raises(TypeError, match=r"returned an awaitable.*AsyncActionQueue"):
        q.execute()

    assert q.started == (action,)
    assert _closed_and_never_warned(coroutines) == []


def test_a_sync_queue_reports_a_rollback_returning_a_coroutine_and_closes_it() -> None:
    coroutines: list[Coroutine[Any, Any, Any]] = []

    async def undo() -> None:
        pass

    class AsyncRollback(Action):
        def rollback(self) -> object:  # type: ignore[override]
            coroutines.append(undo())
            return coroutines[-1]

    q = ActionQueue()
    action = q.add(AsyncRollback())
    q.execute()
    report = q.rollback()

    (failure,) = report.failures
    assert failure.action is action
    assert isinstance(failure.error, TypeError)
    assert "AsyncActionQueue" in str(failure.error)
    assert _closed_and_never_warned(coroutines) == []


def test_an_async_step_made_with_the_decorator_fails_in_the_sync_queue_without_a_warning() -> None:
    @step
    async def create_user(name: str) -> int:
        return 1

    q = ActionQueue()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Refused by add() or by execute(): either way, never run half-way.
        with pytest.raises(TypeError, match="AsyncActionQueue"):  # noqa: PT012
            q.add(create_user("alice"))
            q.execute()
        gc.collect()
    assert [str(w.message) for w in caught] == []


class Subscribe(AsyncAction):
    """An AsyncAction: no ``# type: ignore[override]`` needed on its coroutines."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log, self.fail = log, fail

    async def execute(self) -> None:
        await asyncio.sleep(0)
        self.log.append("subscribed")
        if self.fail:
            raise ValueError("mail server said no")

    async def rollback(self) -> None:
        await asyncio.sleep(0)
        self.log.append("unsubscribed")


def test_an_async_action_runs_and_is_rolled_back_in_the_async_queue() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        first = q.add(Subscribe(log))
        q.add(AsyncAction())  # the base's coroutines do nothing
        q.add(Subscribe(log, fail=True))
        with pytest.raises(ValueError, match="said no"):
            await q.execute()
        report = await q.rollback()
        assert report.ok
        assert first in report.rolled_back

    asyncio.run(main())
    assert log == ["subscribed", "subscribed", "unsubscribed", "unsubscribed"]


class PlainSubscribe:
    """Not an AsyncAction, but its methods are coroutine functions all the same."""

    async def execute(self) -> None: ...

    def rollback(self) -> None: ...


@pytest.mark.parametrize("make", [lambda: Subscribe([]), PlainSubscribe])
def test_the_sync_queue_refuses_an_async_action_at_add(make: Callable[[], Any]) -> None:
    """Refused at add(), every time: even once its class ran in an AsyncActionQueue."""
    for _ in range(2):
        aq = AsyncActionQueue()
        aq.add(make())
        asyncio.run(aq.execute())
        q = ActionQueue()
        with pytest.raises(TypeError, match=r"is an async action .* needs AsyncActionQueue"):
            q.add(make())
        assert len(q) == 0


# -- cancellation ------------------------------------------------------------------------


def test_cancelling_execute_while_an_action_awaits_propagates_and_the_action_is_rolled_back() -> (
    None
):
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        first = q.add(SyncStep(log, "a"))
        hanging = q.add(Hanging(log, hang_execute=1))
        q.add(SyncStep(log, "c"))

        task = asyncio.ensure_future(q.execute())
        await hanging.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert q.started == (first, hanging)
        report = await q.rollback()
        assert report.rolled_back == (hanging, first)

    run(main)
    assert log == ["execute a", "execute hanging", "rollback hanging", "rollback a"]


def test_cancelling_execute_during_a_backoff_propagates_without_another_attempt() -> None:
    flaky = AsyncStep([], "a", execute_errors=[ConnectionError()])

    async def main() -> None:
        backing_off = asyncio.Event()

        async def endless_sleep(seconds: float) -> None:
            backing_off.set()
            await asyncio.Event().wait()

        q = AsyncActionQueue(sleep=endless_sleep, retry=RetryPolicy.fixed(60.0))
        q.add(flaky)
        task = asyncio.ensure_future(q.execute())
        await backing_off.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert q.started == (flaky,)
        assert (await q.rollback()).rolled_back == (flaky,)

    run(main)
    assert flaky.execute_calls == 1


def test_a_cancellation_is_never_retried_even_by_a_policy_retrying_everything() -> None:
    cancelled = asyncio.CancelledError()
    flaky = AsyncStep([], "a", execute_errors=[cancelled])
    sleep = RecordingSleep()

    async def main() -> None:
        q = AsyncActionQueue(sleep=sleep, retry=RetryPolicy(retry_on=BaseException))
        q.add(flaky)
        with pytest.raises(asyncio.CancelledError) as excinfo:
            await q.execute()
        assert excinfo.value is cancelled

    run(main)
    assert flaky.execute_calls == 1
    assert sleep.calls == []


class GatedRollback(Action):
    """An action whose async rollback signals ``entered`` and waits for ``release``."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def rollback(self) -> None:  # type: ignore[override]
        self.entered.set()
        await self.release.wait()
        self.log.append(f"rollback {self.name}")


class ShieldWatcher(logging.Handler):
    """Collects the "rollback_shielded" warnings and wakes whoever waits for one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "aq_event", None) == "rollback_shielded":
            self.records.append(record)
            self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.records) < count:
            self.changed.clear()
            await self.changed.wait()


@pytest.mark.parametrize("cancels", [1, 2])
def test_rollback_finishes_every_rollback_while_its_task_is_cancelled_then_raises_cancelled(
    cancels: int,
) -> None:
    log: list[str] = []
    aq_logger = logging.getLogger("actionqueues")

    async def main() -> list[logging.LogRecord]:
        watcher = ShieldWatcher()
        aq_logger.addHandler(watcher)
        try:
            q = AsyncActionQueue()
            a, b, c = (q.add(GatedRollback(log, name)) for name in "abc")
            await q.execute()

            task = asyncio.ensure_future(q.rollback())
            for number, gated in enumerate((c, b, a)):
                await gated.entered.wait()
                if number < cancels:
                    task.cancel()
                    await watcher.wait_for(number + 1)  # the cancellation was shielded
                    assert not task.done()
                gated.release.set()
            with pytest.raises(asyncio.CancelledError):
                await task

            assert task.cancelled()
            with pytest.raises(QueueStateError, match="has been rolled back"):
                await q.rollback()
            return watcher.records
        finally:
            aq_logger.removeHandler(watcher)

    records = run(main)
    assert log == ["rollback c", "rollback b", "rollback a"]
    assert len(records) == cancels
    assert all(r.levelno == logging.WARNING for r in records)
    assert f"({cancels} time(s))" in records[-1].getMessage()


def test_a_rollback_that_is_not_cancelled_logs_no_shield_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        q = AsyncActionQueue()
        q.add(AsyncStep([], "a"))
        await q.execute()
        await q.rollback()

    with caplog.at_level(logging.WARNING, logger="actionqueues"):
        run(main)
    assert [r for r in caplog.records if getattr(r, "aq_event", None) == "rollback_shielded"] == []


# -- per-action timeout ------------------------------------------------------------------


def test_an_action_overrunning_its_timeout_fails_with_action_timeout_error_and_is_rolled_back() -> (
    None
):
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        hanging = q.add(Hanging(log, hang_execute=1), timeout=0.01)
        q.add(SyncStep(log, "never"))

        with pytest.raises(ActionTimeoutError) as excinfo:
            await q.execute()

        error = excinfo.value
        assert isinstance(error, TimeoutError)
        assert (error.action, error.method, error.timeout) == (hanging, "execute", 0.01)
        assert "timed out after 0.01 s" in str(error)
        assert q.started == (hanging,)
        assert (await q.rollback()).rolled_back == (hanging,)

    run(main)
    assert log == ["execute hanging", "rollback hanging"]


def test_an_action_finishing_within_its_timeout_succeeds() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(AsyncStep(log, "a"), timeout=10)
        q.add(SyncStep(log, "b"))
        await q.execute()

    run(main)
    assert log == ["execute a", "execute b"]


def test_a_timeout_on_an_action_without_async_methods_is_refused_at_add() -> None:
    q = AsyncActionQueue()
    with pytest.raises(TypeError, match="a plain call cannot be interrupted"):
        q.add(SyncStep([], "b"), timeout=10.0)
    assert q.actions == ()


class RetryRecorder(BaseListener):
    def __init__(self) -> None:
        self.events: list[RetryScheduled] = []

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        self.events.append(event)


def test_a_timed_out_call_is_retried_when_the_policy_retries_timeout_error() -> None:
    hanging = Hanging([], hang_execute=1)
    sleep = RecordingSleep()
    listener = RetryRecorder()

    async def main() -> None:
        policy = RetryPolicy.fixed(0.5, max_attempts=2, retry_on=TimeoutError)
        q = AsyncActionQueue(sleep=sleep, listeners=[listener])
        q.add(hanging, retry=policy, timeout=0.01)
        await q.execute()

    run(main)
    assert hanging.execute_calls == 2
    assert sleep.calls == [0.5]
    (event,) = listener.events
    assert isinstance(event.error, ActionTimeoutError)
    assert event.attempt == 1


def test_a_call_timing_out_on_every_attempt_gives_up_with_the_last_action_timeout_error() -> None:
    hanging = Hanging([], hang_execute=5)

    async def main() -> None:
        policy = RetryPolicy.fixed(0.5, max_attempts=2)
        q = AsyncActionQueue(sleep=RecordingSleep(), retry=policy)
        q.add(hanging, timeout=0.01)
        with pytest.raises(ActionTimeoutError) as excinfo:
            await q.execute()
        (earlier,) = excinfo.value.actionqueues_attempts  # type: ignore[attr-defined]
        assert isinstance(earlier.error, ActionTimeoutError)
        assert earlier.error is not excinfo.value

    run(main)
    assert hanging.execute_calls == 2


def test_a_timeout_error_raised_by_the_action_itself_propagates_as_itself() -> None:
    own = TimeoutError("the upstream server timed out")

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(Hanging([], execute_error=own), timeout=10)
        with pytest.raises(TimeoutError) as excinfo:
            await q.execute()
        assert excinfo.value is own
        assert not isinstance(excinfo.value, ActionTimeoutError)

    run(main)


def test_a_rollback_overrunning_its_timeout_is_reported_as_an_action_timeout_error() -> None:
    log: list[str] = []

    async def main() -> None:
        q = AsyncActionQueue()
        first = q.add(SyncStep(log, "a"))
        hanging = q.add(Hanging(log, hang_rollback=True), timeout=0.01)
        await q.execute()

        report = await q.rollback()

        assert report.rolled_back == (first,)
        (failure,) = report.failures
        assert failure.action is hanging
        assert isinstance(failure.error, ActionTimeoutError)
        assert failure.error.method == "rollback"

    run(main)
    assert log[-2:] == ["rollback hanging", "rollback a"]


@pytest.mark.parametrize("timeout", [0, 0.0, -1, math.nan, math.inf, True, "1"])
def test_an_invalid_timeout_is_refused_at_add(timeout: Any) -> None:
    """A wrong kind of value is a TypeError, a number out of range a ValueError."""
    q = AsyncActionQueue()
    error = (
        TypeError
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        else ValueError
    )
    with pytest.raises(error, match="timeout must be None or a finite number"):
        q.add(AsyncStep([], "a"), timeout=timeout)
    assert len(q) == 0


def test_the_sync_queue_refuses_a_timeout_with_type_error() -> None:
    q = ActionQueue()
    with pytest.raises(TypeError, match="timeout= needs AsyncActionQueue"):
        q.add(SyncStep([], "a"), timeout=1.0)
    assert len(q) == 0


# -- context managers ----------------------------------------------------------------------

Scenario = Literal["no error", "raise before execute", "execute raises", "raise after execute"]
SCENARIOS: list[Scenario] = [
    "no error",
    "raise before execute",
    "execute raises",
    "raise after execute",
]
EXPECTED_LOG: dict[Scenario, list[str]] = {
    "no error": ["execute a", "execute b"],
    "raise before execute": [],
    "execute raises": ["execute a", "execute b", "rollback b", "rollback a"],
    "raise after execute": ["execute a", "execute b", "rollback b", "rollback a"],
}


def _failures(scenario: Scenario, error: Exception) -> list[BaseException]:
    return [error] if scenario == "execute raises" else []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_async_with_rolls_back_only_when_the_block_raises_after_execute_began(
    scenario: Scenario,
) -> None:
    log: list[str] = []
    error = RuntimeError("the request failed")

    async def main() -> None:
        async with AsyncActionQueue() as q:
            q.add(SyncStep(log, "a"))
            q.add(AsyncStep(log, "b", execute_errors=_failures(scenario, error)))
            if scenario == "raise before execute":
                raise error
            await q.execute()
            if scenario == "raise after execute":
                raise error

    if scenario == "no error":
        run(main)
    else:
        with pytest.raises(RuntimeError) as excinfo:
            run(main)
        assert excinfo.value is error
    assert log == EXPECTED_LOG[scenario]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_with_rolls_back_only_when_the_block_raises_after_execute_began(
    scenario: Scenario,
) -> None:
    log: list[str] = []
    error = RuntimeError("the request failed")

    def block() -> None:
        with ActionQueue() as q:
            q.add(SyncStep(log, "a"))
            q.add(SyncStep(log, "b", execute_errors=_failures(scenario, error)))
            if scenario == "raise before execute":
                raise error
            q.execute()
            if scenario == "raise after execute":
                raise error

    if scenario == "no error":
        block()
    else:
        with pytest.raises(RuntimeError) as excinfo:
            block()
        assert excinfo.value is error
    assert log == EXPECTED_LOG[scenario]


def test_async_with_rolls_back_when_the_block_is_cancelled_after_execute() -> None:
    log: list[str] = []

    async def main() -> None:
        entered = asyncio.Event()

        async def body() -> None:
            async with AsyncActionQueue() as q:
                q.add(SyncStep(log, "a"))
                await q.execute()
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert log == ["execute a", "rollback a"]


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10's asyncio.wait_for can lose this cancellation (CPython gh-86296)",
)
def test_a_cancellation_as_a_timed_call_ends_is_never_lost() -> None:
    """The task is cancelled in the very turn its timed action's call ends: execute() raises
    CancelledError and starts no next step (asyncio.wait_for lost it before Python 3.12)."""
    log: list[str] = []
    done: asyncio.Future[None] | None = None

    class Waits(AsyncAction):
        async def execute(self) -> None:
            assert done is not None
            await done
            log.append("waited")

    class Next(AsyncAction):
        async def execute(self) -> None:
            log.append("next ran")

    async def main() -> None:
        nonlocal done
        done = asyncio.get_running_loop().create_future()
        q = AsyncActionQueue()
        q.add(Waits(), timeout=5.0)
        q.add(Next())
        task = asyncio.ensure_future(q.execute())
        for _ in range(5):  # let it reach the await (no real sleep)
            await asyncio.sleep(0)
        done.set_result(None)
        task.cancel()  # in the same turn
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert "next ran" not in log
