"""Behaviour under interruption, odd input and in other processes (review findings)."""

from __future__ import annotations

import asyncio
import contextvars
import pickle
import sys
import threading
from typing import Any

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    ActionRetryException,
    ActionTimeoutError,
    AsyncActionQueue,
    ParallelGroup,
    QueueStateError,
    RetryLimitExceeded,
    RetryPolicy,
    RollbackError,
    RollbackReport,
    actionqueue,
)
from actionqueues._queue import _finish


class Step(Action):
    def __init__(self, log: list[str], name: str, rollback_error: BaseException | None = None):
        self.log, self.name, self.rollback_error = log, name, rollback_error

    def execute(self) -> None:
        self.log.append(f"execute {self.name}")

    def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")
        if self.rollback_error is not None:
            error, self.rollback_error = self.rollback_error, None
            raise error


class Listening:  # a listener forces the general (listener) path
    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda event: None
        raise AttributeError(name)


@pytest.mark.parametrize("path", ["fast", "general"])
def test_rollback_stopped_by_keyboard_interrupt_resumes_with_the_interrupted_step(
    path: str,
) -> None:
    log: list[str] = []
    q = ActionQueue(listeners=[Listening()] if path == "general" else ())
    a = q.add(Step(log, "a"))
    b = q.add(Step(log, "b", rollback_error=KeyboardInterrupt()))
    c = q.add(Step(log, "c", rollback_error=ValueError("c stays")))
    d = q.add(Step(log, "d"))
    q.execute()
    with pytest.raises(KeyboardInterrupt):
        q.rollback()
    assert "was interrupted while rolling back" in repr(q)
    report = q.rollback()
    assert log[4:] == ["rollback d", "rollback c", "rollback b", "rollback b", "rollback a"]
    # the report covers both calls: nothing rolled back or failed before the stop is lost
    assert report.rolled_back == (d, b, a)
    assert [(f.index, f.action) for f in report.failures] == [(2, c)]
    with pytest.raises(QueueStateError, match="has been rolled back"):
        q.rollback()


def test_async_rollback_stopped_by_a_base_exception_resumes() -> None:
    log: list[str] = []
    q = AsyncActionQueue()
    q.add(Step(log, "a"))
    q.add(Step(log, "b", rollback_error=SystemExit(3)))

    asyncio.run(q.execute())
    with pytest.raises(SystemExit):  # asyncio lets it out of the event loop
        asyncio.run(q.rollback())
    assert "was interrupted while rolling back" in repr(q)
    report = asyncio.run(q.rollback())
    assert log[2:] == ["rollback b", "rollback b", "rollback a"]
    assert report.ok


def test_a_cancelled_error_raised_by_a_rollback_is_a_reported_failure_not_a_silent_stop() -> None:
    log: list[str] = []
    q = AsyncActionQueue()
    q.add(Step(log, "a"))
    q.add(Step(log, "b", rollback_error=asyncio.CancelledError()))

    async def main() -> RollbackReport:
        await q.execute()
        return await q.rollback()

    report = asyncio.run(main())
    assert log[2:] == ["rollback b", "rollback a"]
    assert isinstance(report.failures[0].error, asyncio.CancelledError)
    assert "has been rolled back" in repr(q)


def test_an_interrupted_wait_lets_running_members_finish_and_starts_no_more() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import actionqueues._queue as queue_module

    calls = 0
    real_wait = queue_module._wait_all
    release = threading.Event()

    def interrupted_once(futures: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            release.set()
            raise KeyboardInterrupt
        return real_wait(futures)

    pool = ThreadPoolExecutor(1)
    futures = [pool.submit(release.wait, 5) for _ in range(3)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(queue_module, "_wait_all", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            _finish(pool, futures, start_more=False)
    assert futures[0].result() is True  # the running one finished
    assert all(f.cancelled() for f in futures[1:])  # the queued ones never started
    assert calls == 2


def test_sync_group_members_see_the_callers_context_variables() -> None:
    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)
    seen: list[str | None] = []

    class Peek(Action):
        def execute(self) -> None:
            seen.append(request_id.get())

    request_id.set("req-42")
    q = ActionQueue()
    q.add_group([Peek(), Peek()], max_workers=2)
    q.execute()
    assert seen == ["req-42", "req-42"]


def test_adding_a_parallel_group_with_add_is_refused() -> None:
    with pytest.raises(TypeError, match=r"use queue\.add_group"):
        ActionQueue().add(ParallelGroup([Action()]))


def test_adding_a_class_instead_of_an_instance_is_refused() -> None:
    with pytest.raises(
        TypeError, match=r"add an instance of it, e\.g\. q\.add\(Action\(\.\.\.\)\)"
    ):
        ActionQueue().add(Action)


def test_group_members_go_through_the_same_checks_as_add() -> None:
    async def later() -> None:
        return None

    with pytest.raises(TypeError, match="async steps need AsyncActionQueue"):
        ActionQueue().add_group([later])


def test_retry_limit_exceeded_carries_the_attempt_history() -> None:
    class Always(Action):
        def execute(self) -> None:
            raise ActionRetryException(5)

    q = ActionQueue(sleep=lambda s: None, max_retries=2)
    q.add(Always())
    with pytest.raises(RetryLimitExceeded) as info:
        q.execute()
    assert [e.attempt for e in info.value.actionqueues_attempts] == [1, 2]  # type: ignore[attr-defined]
    assert isinstance(info.value.__cause__, ActionRetryException)


def test_execute_with_retries_with_a_custom_function_uses_the_execute_policy() -> None:
    sleeps: list[float] = []
    q = ActionQueue(
        sleep=sleeps.append,
        retry=RetryPolicy(initial_delay=1.0, max_attempts=2),
        rollback_retry=RetryPolicy(initial_delay=7.0, max_attempts=2),
    )
    calls: list[int] = []

    def flaky(action: Action) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("blip")

    q.execute_with_retries(Action(), flaky)
    assert sleeps == [1.0]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note needs Python 3.11")
def test_the_error_leaving_a_with_block_tells_what_the_rollback_did() -> None:
    log: list[str] = []

    def sign_up() -> None:
        with ActionQueue() as q:
            q.add(Step(log, "a", rollback_error=OSError("undo failed")))
            q.execute()
            raise ValueError("after")

    with pytest.raises(ValueError, match="after") as info:
        sign_up()
    assert getattr(info.value, "__notes__", None) == [
        "actionqueues: rolled back 0 step(s); 1 rollback(s) failed: step 0: OSError('undo failed')"
    ]


def test_the_0_8_2_module_attributes_of_actionqueue_remain(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(actionqueue.time, "sleep", sleeps.append)  # 0.8.2 tests did this
    assert actionqueue.AQStateMachine().state == 0

    class Once(Action):
        calls = 0

        def execute(self) -> None:
            Once.calls += 1
            if Once.calls == 1:
                raise ActionRetryException(20)

    q = actionqueue.ActionQueue()
    q.add(Once())
    q.execute()
    assert sleeps == [0.02]


def test_library_errors_survive_pickling() -> None:
    q = ActionQueue()
    q.execute()
    try:
        q.execute()
    except QueueStateError as exc:
        state_error = exc
    errors: list[BaseException] = [
        state_error,
        RetryLimitExceeded("action", "execute", 3),
        ActionTimeoutError("action", "rollback", 1.5),
        RollbackError(RollbackReport(rolled_back=(), failures=())),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)


def test_ctrl_c_while_a_group_runs_starts_no_more_members_and_rollback_undoes_the_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import actionqueues._queue as queue_module

    log: list[str] = []
    first_running = threading.Event()

    class Slow(Step):
        def execute(self) -> None:
            first_running.set()
            super().execute()

    real_wait = queue_module._wait_all
    calls = 0

    def interrupted_once(futures: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_running.wait(5)
            raise KeyboardInterrupt
        real_wait(futures)

    monkeypatch.setattr(queue_module, "_wait_all", interrupted_once)
    q = ActionQueue()
    q.add(Step(log, "before"))
    group = q.add_group([Slow(log, f"m{i}") for i in range(6)], max_workers=1)
    with pytest.raises(KeyboardInterrupt):
        q.execute()
    started = [m.name for m in group.started]  # type: ignore[attr-defined]
    assert 1 <= len(started) < 6
    q.rollback()
    undone = [line.split()[1] for line in log if line.startswith("rollback")]
    assert undone == [*reversed(started), "before"]


def test_a_listener_given_to_the_queue_and_globally_hears_each_event_once() -> None:
    import actionqueues

    heard: list[str] = []

    class Ear(actionqueues.BaseListener):
        def on_action_started(self, event: actionqueues.ActionStarted) -> None:
            heard.append("started")

    ear = Ear()
    actionqueues.add_listener(ear)
    try:
        q = ActionQueue(listeners=[ear, ear])
        q.add(Action())
        q.execute()
    finally:
        actionqueues.remove_listener(ear)
    assert heard == ["started"]


def test_a_single_listener_instead_of_a_list_gets_a_clear_error() -> None:
    import actionqueues

    with pytest.raises(TypeError, match=r"write listeners=\[your_listener\]"):
        ActionQueue(listeners=actionqueues.BaseListener())  # type: ignore[arg-type]


def test_max_retries_counts_only_retries_the_action_asked_for() -> None:
    script: list[BaseException] = [
        ConnectionError("blip"),
        ConnectionError("blip"),
        ActionRetryException(0),
        ActionRetryException(0),
    ]

    class Mixed(Action):
        def execute(self) -> None:
            if script:
                raise script.pop(0)

    q = ActionQueue(
        sleep=lambda s: None,
        max_retries=1,
        retry=RetryPolicy(max_attempts=10, retry_on=ConnectionError),
    )
    q.add(Mixed())
    with pytest.raises(RetryLimitExceeded, match="after 1 retry") as info:
        q.execute()
    assert info.value.retries == 1
    assert len(info.value.actionqueues_attempts) == 3  # type: ignore[attr-defined]


def test_a_sync_step_with_an_async_compensation_runs_in_the_async_queue() -> None:
    from actionqueues import step

    undone: list[int] = []

    @step
    def reserve(seat: int) -> int:
        return seat

    @reserve.compensate
    async def release(seat: int) -> None:
        undone.append(seat)

    with pytest.raises(TypeError, match="async step"):
        ActionQueue().add(reserve(1))

    async def main() -> None:
        q = AsyncActionQueue()
        q.add(reserve(7))
        await q.execute()
        await q.rollback()

    asyncio.run(main())
    assert undone == [7]
