"""Parallel groups: ``add_group`` in ActionQueue (threads) and AsyncActionQueue (tasks).

Concurrency is proven with barriers and events that only release when members
really run at the same time; their timeouts are safety nets, never waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from actionqueues import (
    Action,
    ActionFailed,
    ActionQueue,
    ActionRetryException,
    ActionStarted,
    ActionSucceeded,
    AsyncActionQueue,
    AsyncFunctionStep,
    BaseListener,
    FunctionStep,
    ParallelGroup,
    QueueStateError,
    RollbackFailed,
    RollbackStarted,
    RollbackSucceeded,
)

SAFETY = 5.0  # seconds; only ever reached when a test is about to fail


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"the queue tried to sleep {seconds} s")


def wait_for(event: threading.Event) -> None:
    assert event.wait(SAFETY), "a member waited for something that never happened"


class Member(Action):
    """An action that logs its calls and runs optional hooks (in its worker thread)."""

    def __init__(
        self,
        log: list[str],
        name: str,
        *,
        execute: Callable[[], object] | None = None,
        rollback: Callable[[], object] | None = None,
    ) -> None:
        self.log = log
        self.name = name
        self.on_execute = execute
        self.on_rollback = rollback

    def execute(self) -> None:
        self.log.append(f"execute {self.name}")
        if self.on_execute is not None:
            self.on_execute()

    def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")
        if self.on_rollback is not None:
            self.on_rollback()

    def __repr__(self) -> str:
        return f"Member({self.name!r})"


def fail_with(error: BaseException) -> Callable[[], None]:
    def hook() -> None:
        raise error

    return hook


class Recorder(BaseListener):
    """Records (event type, index, action[, error]) of every action-level event."""

    def __init__(self, on_failed: Callable[[ActionFailed], None] | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.on_failed = on_failed

    def _record(self, *entry: Any) -> None:
        with self.lock:
            self.events.append(entry)

    def on_action_started(self, event: ActionStarted) -> None:
        self._record("started", event.index, event.action)

    def on_action_succeeded(self, event: ActionSucceeded) -> None:
        self._record("succeeded", event.index, event.action)

    def on_action_failed(self, event: ActionFailed) -> None:
        self._record("failed", event.index, event.action, event.error)
        if self.on_failed is not None:
            self.on_failed(event)

    def on_rollback_started(self, event: RollbackStarted) -> None:
        self._record("rollback started", event.index, event.action)

    def on_rollback_succeeded(self, event: RollbackSucceeded) -> None:
        self._record("rollback succeeded", event.index, event.action)

    def on_rollback_failed(self, event: RollbackFailed) -> None:
        self._record("rollback failed", event.index, event.action, event.error)


def failure_seen_listener() -> tuple[Recorder, threading.Event]:
    """A listener whose event is set once a failure was recorded by the queue."""
    seen = threading.Event()
    return Recorder(on_failed=lambda event: seen.set()), seen


# -- ActionQueue: running ----------------------------------------------------------


def test_group_members_run_at_the_same_time_before_later_steps() -> None:
    log: list[str] = []
    barrier = threading.Barrier(2, timeout=SAFETY)  # breaks unless both wait at once
    before, after = Member(log, "before"), Member(log, "after")
    a = Member(log, "a", execute=barrier.wait)
    b = Member(log, "b", execute=barrier.wait)
    c = Member(log, "c")
    q = ActionQueue(sleep=no_sleep)
    q.add(before)
    group = q.add_group([a, b, c], max_workers=2)
    q.add(after)
    assert type(group) is ParallelGroup
    assert q.actions == (before, group, after)
    assert group.actions == (a, b, c)
    assert group.started == []
    q.execute()
    assert log[0] == "execute before"
    assert sorted(log[1:4]) == ["execute a", "execute b", "execute c"]
    assert log[4:] == ["execute after"]
    assert sorted(group.started, key=repr) == [a, b, c]
    assert q.started == (before, group, after)
    assert repr(group) == "<ParallelGroup of 3 actions, 3 started>"


def test_max_workers_bounds_how_many_members_run_at_once() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    barrier = threading.Barrier(3, timeout=SAFETY)  # three at a time, twice

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        barrier.wait()
        with lock:
            running -= 1

    log: list[str] = []
    members = [Member(log, str(i), execute=work) for i in range(6)]
    q = ActionQueue(sleep=no_sleep)
    group = q.add_group(members, max_workers=3)
    q.execute()
    assert peak == 3
    assert len(group.started) == 6
    assert group.max_workers == 3


def test_one_worker_runs_the_members_one_by_one_in_group_order() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        with lock:
            running -= 1

    log: list[str] = []
    members = [Member(log, str(i), execute=work) for i in range(4)]
    q = ActionQueue(sleep=no_sleep)
    group = q.add_group(members, max_workers=1)
    q.execute()
    assert peak == 1
    assert group.started == members
    assert log == ["execute 0", "execute 1", "execute 2", "execute 3"]


def test_a_member_asking_for_a_retry_is_retried_within_the_group() -> None:
    sleeps: list[float] = []
    log: list[str] = []
    attempts = 0

    def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ActionRetryException(ms_backoff=5)

    q = ActionQueue(sleep=sleeps.append)
    group = q.add_group([Member(log, "flaky", execute=flaky), Member(log, "steady")])
    q.execute()
    assert attempts == 3
    assert sleeps == [0.005, 0.005]
    assert len(group.started) == 2


def test_function_members_are_accepted_and_keep_their_results() -> None:
    q = ActionQueue(sleep=no_sleep)
    group = q.add_group([lambda: 1, lambda: 2, Action()])
    assert [type(m) for m in group.actions] == [FunctionStep, FunctionStep, Action]
    q.execute()
    first, second, _ = group.actions
    assert isinstance(first, FunctionStep)
    assert isinstance(second, FunctionStep)
    assert (first.result, second.result) == (1, 2)


# -- ActionQueue: failures -------------------------------------------------------


def test_after_a_member_fails_no_new_member_is_started_and_the_queue_stops() -> None:
    log: list[str] = []
    boom = RuntimeError("b failed")
    before, after = Member(log, "before"), Member(log, "after")
    a = Member(log, "a")
    b = Member(log, "b", execute=fail_with(boom))
    c, d = Member(log, "c"), Member(log, "d")
    q = ActionQueue(sleep=no_sleep)
    q.add(before)
    group = q.add_group([a, b, c, d], max_workers=1)
    q.add(after)
    with pytest.raises(RuntimeError) as excinfo:
        q.execute()
    assert excinfo.value is boom
    assert group.started == [a, b]
    assert q.started == (before, group)
    assert log == ["execute before", "execute a", "execute b"]
    report = q.rollback()
    assert log[3:] == ["rollback b", "rollback a", "rollback before"]  # never c, d or after
    assert report.rolled_back == (b, a, before)
    assert report.ok


def test_members_already_running_when_another_fails_are_left_to_finish() -> None:
    log: list[str] = []
    boom = RuntimeError("a failed")
    b_started = threading.Event()
    listener, failure_seen = failure_seen_listener()

    def a_fails_once_b_runs() -> None:
        wait_for(b_started)
        raise boom

    def b_outlives_the_failure() -> None:
        b_started.set()
        wait_for(failure_seen)
        log.append("b finished")

    a = Member(log, "a", execute=a_fails_once_b_runs)
    b = Member(log, "b", execute=b_outlives_the_failure)
    c = Member(log, "c")
    q = ActionQueue(sleep=no_sleep, listeners=[listener])
    group = q.add_group([a, b, c], max_workers=2)
    with pytest.raises(RuntimeError) as excinfo:
        q.execute()
    assert excinfo.value is boom
    assert "b finished" in log
    assert "execute c" not in log  # no worker took c once the failure was known
    assert sorted(group.started, key=repr) == [a, b]
    report = q.rollback()
    assert report.rolled_back == tuple(reversed(group.started))


def test_execute_raises_the_error_of_the_first_failed_member_in_group_order() -> None:
    log: list[str] = []
    a_error = ValueError("a failed second")
    b_error = KeyError("b failed first")
    listener, failure_seen = failure_seen_listener()

    def a_fails_after_b() -> None:
        wait_for(failure_seen)
        raise a_error

    a = Member(log, "a", execute=a_fails_after_b)
    b = Member(log, "b", execute=fail_with(b_error))
    q = ActionQueue(sleep=no_sleep, listeners=[listener])
    group = q.add_group([a, b], max_workers=2)
    with pytest.raises(ValueError, match="a failed second") as excinfo:
        q.execute()
    assert excinfo.value is a_error
    failed = [(e[2], e[3]) for e in listener.events if e[0] == "failed"]
    assert failed == [(b, b_error), (a, a_error)]
    report = q.rollback()
    assert set(report.rolled_back) == {a, b}
    assert report.rolled_back == tuple(reversed(group.started))


# -- ActionQueue: rollback ---------------------------------------------------------


def test_rollback_undoes_members_in_reverse_start_order_then_earlier_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    before = Member(log, "before")
    a, b, c = Member(log, "a"), Member(log, "b"), Member(log, "c")
    marked = {a: threading.Event(), b: threading.Event(), c: threading.Event()}
    waits_for = {a: b, c: a}  # start order: b, a, c
    mark_started = ParallelGroup._mark_started

    def mark_in_order(group: ParallelGroup, action: Any) -> None:
        if action in waits_for:
            wait_for(marked[waits_for[action]])
        mark_started(group, action)
        marked[action].set()

    monkeypatch.setattr(ParallelGroup, "_mark_started", mark_in_order)
    q = ActionQueue(sleep=no_sleep)
    q.add(before)
    group = q.add_group([a, b, c], max_workers=2)
    q.execute()
    assert group.started == [b, a, c]  # not the group's order
    report = q.rollback()
    assert report.rolled_back == (c, a, b, before)
    assert log[-4:] == ["rollback c", "rollback a", "rollback b", "rollback before"]


def test_rollback_concurrently_rolls_members_back_at_once_and_reports_in_start_order() -> None:
    log: list[str] = []
    barrier = threading.Barrier(2, timeout=SAFETY)
    first_done = threading.Event()
    before, after = Member(log, "before"), Member(log, "after")
    a, b = Member(log, "a"), Member(log, "b")
    q = ActionQueue(sleep=no_sleep)
    q.add(before)
    group = q.add_group([a, b], max_workers=2, rollback_concurrently=True)
    q.add(after)
    assert group.rollback_concurrently
    q.execute()
    started_first, started_last = group.started
    assert isinstance(started_first, Member)
    assert isinstance(started_last, Member)

    def finish_first() -> None:
        barrier.wait()
        first_done.set()

    def finish_last() -> None:  # rolled back (and listed) first, finishes last
        barrier.wait()
        wait_for(first_done)

    started_first.on_rollback = finish_first
    started_last.on_rollback = finish_last
    report = q.rollback()
    assert report.rolled_back == (after, started_last, started_first, before)
    assert report.ok


@pytest.mark.parametrize("concurrently", [False, True], ids=["sequential", "concurrent"])
def test_a_member_whose_rollback_fails_is_reported_with_the_group_index(
    concurrently: bool,
) -> None:
    log: list[str] = []
    broken = OSError("cannot undo b")
    before, after = Member(log, "before"), Member(log, "after")
    a = Member(log, "a")
    b = Member(log, "b", rollback=fail_with(broken))
    listener = Recorder()
    q = ActionQueue(sleep=no_sleep, listeners=[listener])
    q.add(before)
    group = q.add_group([a, b], max_workers=2, rollback_concurrently=concurrently)
    q.add(after)
    q.execute()
    report = q.rollback()
    assert [(f.index, f.action, f.error) for f in report.failures] == [(1, b, broken)]
    assert report.rolled_back == (after, a, before)
    assert {"rollback a", "rollback b"} <= set(log)
    assert ("rollback failed", 1, b, broken) in listener.events
    assert len(group.started) == 2


def test_rolling_back_a_successful_run_undoes_every_member_in_reverse() -> None:
    log: list[str] = []
    q = ActionQueue(sleep=no_sleep)
    group = q.add_group([Member(log, "a"), Member(log, "b")], max_workers=1)
    q.execute()
    report = q.rollback()
    assert report.rolled_back == (group.actions[1], group.actions[0])
    assert log == ["execute a", "execute b", "rollback b", "rollback a"]


# -- ActionQueue: listeners ---------------------------------------------------------


def test_listeners_hear_about_each_member_with_the_group_index() -> None:
    log: list[str] = []
    boom = RuntimeError("b failed")
    before = Member(log, "before")
    a = Member(log, "a")
    b = Member(log, "b", execute=fail_with(boom))
    listener = Recorder()
    q = ActionQueue(sleep=no_sleep, listeners=[listener])
    q.add(before)
    q.add_group([a, b], max_workers=1)
    with pytest.raises(RuntimeError):
        q.execute()
    q.rollback()
    assert listener.events == [
        ("started", 0, before),
        ("succeeded", 0, before),
        ("started", 1, a),
        ("succeeded", 1, a),
        ("started", 1, b),
        ("failed", 1, b, boom),
        ("rollback started", 1, b),
        ("rollback succeeded", 1, b),
        ("rollback started", 1, a),
        ("rollback succeeded", 1, a),
        ("rollback started", 0, before),
        ("rollback succeeded", 0, before),
    ]


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", [ActionQueue, AsyncActionQueue])
def test_an_empty_group_is_refused(queue_type: type[ActionQueue | AsyncActionQueue]) -> None:
    q = queue_type()
    with pytest.raises(ValueError, match="at least one action"):
        q.add_group([])
    with pytest.raises(ValueError, match="at least one action"):
        q.add_group(iter(()))
    assert q.actions == ()


@pytest.mark.parametrize("max_workers", [0, -1, True, 1.5, "2", None])
def test_max_workers_must_be_an_int_of_at_least_one(max_workers: Any) -> None:
    q = ActionQueue()
    error = (
        TypeError
        if isinstance(max_workers, bool) or not isinstance(max_workers, int)
        else ValueError
    )
    with pytest.raises(error, match=r"max_workers must be an int >= 1"):
        q.add_group([Action()], max_workers=max_workers)
    assert q.actions == ()


def test_a_member_that_is_neither_an_action_nor_a_function_is_refused() -> None:
    q = ActionQueue()
    with pytest.raises(TypeError, match=r"cannot add 42 to an action queue"):
        q.add_group([Action(), 42])
    assert q.actions == ()


def test_the_sync_queue_refuses_coroutine_function_members() -> None:
    async def member() -> None:
        pass

    q = ActionQueue()
    with pytest.raises(TypeError, match="async steps need AsyncActionQueue"):
        q.add_group([member])
    assert q.actions == ()


def test_the_sync_queue_refuses_an_async_action_member_at_add_group() -> None:
    class AsyncAction:
        async def execute(self) -> None:
            pass

        async def rollback(self) -> None:
            pass

    q = ActionQueue(sleep=no_sleep)
    with pytest.raises(TypeError, match=r"is an async action .* needs AsyncActionQueue"):
        q.add_group([Action(), AsyncAction()])
    assert len(q) == 0
    q.execute()  # nothing was added


def test_add_group_after_execute_raises_queue_state_error() -> None:
    q = ActionQueue()
    q.execute()
    with pytest.raises(QueueStateError, match=r"add_group\(\) is not allowed"):
        q.add_group([Action()])

    async def main() -> None:
        aq = AsyncActionQueue()
        await aq.execute()
        with pytest.raises(QueueStateError, match=r"add_group\(\) is not allowed"):
            aq.add_group([Action()])

    asyncio.run(main())


def test_a_group_is_run_by_its_queue_not_directly() -> None:
    group = ParallelGroup([Action()])
    with pytest.raises(TypeError, match="run by the queue"):
        group.execute()
    with pytest.raises(TypeError, match="run by the queue"):
        group.rollback()


# -- AsyncActionQueue ---------------------------------------------------------------


class AsyncMember:
    """An async action that logs its calls and awaits optional hooks."""

    def __init__(
        self,
        log: list[str],
        name: str,
        *,
        execute: Callable[[], Awaitable[object]] | None = None,
        rollback: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.log = log
        self.name = name
        self.on_execute = execute
        self.on_rollback = rollback

    async def execute(self) -> None:
        self.log.append(f"execute {self.name}")
        if self.on_execute is not None:
            try:
                await self.on_execute()
            except asyncio.CancelledError:
                self.log.append(f"cancelled {self.name}")
                raise

    async def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")
        if self.on_rollback is not None:
            await self.on_rollback()

    def __repr__(self) -> str:
        return f"AsyncMember({self.name!r})"


async def await_event(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), SAFETY)


def meet(mine: asyncio.Event, theirs: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """A hook that only returns once the other member's hook ran too."""

    async def hook() -> None:
        mine.set()
        await await_event(theirs)

    return hook


def async_fail_with(error: BaseException) -> Callable[[], Awaitable[None]]:
    async def hook() -> None:
        await asyncio.sleep(0)
        raise error

    return hook


def test_async_group_members_run_as_concurrent_tasks_before_later_steps() -> None:
    log: list[str] = []

    async def main() -> None:
        a_ran, b_ran = asyncio.Event(), asyncio.Event()
        before, after = AsyncMember(log, "before"), AsyncMember(log, "after")
        a = AsyncMember(log, "a", execute=meet(a_ran, b_ran))
        b = AsyncMember(log, "b", execute=meet(b_ran, a_ran))
        q = AsyncActionQueue(sleep=no_sleep)
        q.add(before)
        group = q.add_group([a, b])
        q.add(after)
        await q.execute()
        assert group.started == [a, b]
        assert q.started == (before, group, after)

    asyncio.run(main())
    assert log == ["execute before", "execute a", "execute b", "execute after"]


def test_async_max_workers_bounds_how_many_members_run_at_once() -> None:
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1

    async def main() -> ParallelGroup:
        log: list[str] = []
        q = AsyncActionQueue(sleep=no_sleep)
        group = q.add_group(
            [AsyncMember(log, str(i), execute=work) for i in range(5)], max_workers=2
        )
        await q.execute()
        return group

    group = asyncio.run(main())
    assert peak == 2
    assert len(group.started) == 5


def test_async_failure_cancels_running_members_which_count_as_started_and_roll_back() -> None:
    log: list[str] = []
    boom = RuntimeError("b failed")

    async def main() -> None:
        a_running = asyncio.Event()
        listener = Recorder()
        before, after = AsyncMember(log, "before"), AsyncMember(log, "after")

        async def a_runs_forever() -> None:
            a_running.set()
            await await_event(asyncio.Event())

        async def b_fails_once_a_runs() -> None:
            await await_event(a_running)
            raise boom

        a = AsyncMember(log, "a", execute=a_runs_forever)
        b = AsyncMember(log, "b", execute=b_fails_once_a_runs)
        c = AsyncMember(log, "c")  # waits for a worker; never gets one
        q = AsyncActionQueue(sleep=no_sleep, listeners=[listener])
        q.add(before)
        group = q.add_group([a, b, c], max_workers=2)
        q.add(after)
        with pytest.raises(RuntimeError) as excinfo:
            await q.execute()
        assert excinfo.value is boom
        assert group.started == [a, b]
        assert log == ["execute before", "execute a", "execute b", "cancelled a"]
        failed = {e[2]: e[3] for e in listener.events if e[0] == "failed"}
        assert failed[b] is boom
        assert isinstance(failed[a], asyncio.CancelledError)
        report = await q.rollback()
        assert report.rolled_back == (b, a, before)
        assert log[4:] == ["rollback b", "rollback a", "rollback before"]

    asyncio.run(main())


def test_async_members_still_waiting_for_a_worker_are_neither_started_nor_undone() -> None:
    log: list[str] = []
    boom = RuntimeError("a failed")

    async def main() -> None:
        a = AsyncMember(log, "a", execute=async_fail_with(boom))
        b, c = AsyncMember(log, "b"), AsyncMember(log, "c")
        q = AsyncActionQueue(sleep=no_sleep)
        group = q.add_group([a, b, c], max_workers=1)
        with pytest.raises(RuntimeError) as excinfo:
            await q.execute()
        assert excinfo.value is boom
        assert group.started == [a]
        report = await q.rollback()
        assert report.rolled_back == (a,)

    asyncio.run(main())
    assert log == ["execute a", "rollback a"]


def test_async_rollback_undoes_members_in_reverse_start_order_then_earlier_steps() -> None:
    log: list[str] = []

    async def main() -> None:
        before, after = AsyncMember(log, "before"), AsyncMember(log, "after")
        a, b, c = AsyncMember(log, "a"), AsyncMember(log, "b"), AsyncMember(log, "c")
        q = AsyncActionQueue(sleep=no_sleep)
        q.add(before)
        group = q.add_group([a, b, c], max_workers=1)
        q.add(after)
        await q.execute()
        assert group.started == [a, b, c]
        report = await q.rollback()
        assert report.rolled_back == (after, c, b, a, before)

    asyncio.run(main())
    assert log[5:] == [
        "rollback after",
        "rollback c",
        "rollback b",
        "rollback a",
        "rollback before",
    ]


def test_async_rollback_concurrently_gathers_members_and_reports_in_start_order() -> None:
    log: list[str] = []

    async def main() -> None:
        a_in, b_in, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def a_rollback() -> None:
            await meet(a_in, b_in)()
            a_done.set()

        async def b_rollback() -> None:
            await meet(b_in, a_in)()
            await await_event(a_done)  # b, listed first, finishes last
            log.append("b rolled back")

        a = AsyncMember(log, "a", rollback=a_rollback)
        b = AsyncMember(log, "b", rollback=b_rollback)
        q = AsyncActionQueue(sleep=no_sleep)
        group = q.add_group([a, b], rollback_concurrently=True)
        await q.execute()
        assert group.started == [a, b]
        report = await q.rollback()
        assert report.rolled_back == (b, a)
        assert report.ok

    asyncio.run(main())
    assert log[-1] == "b rolled back"


@pytest.mark.parametrize("concurrently", [False, True], ids=["sequential", "concurrent"])
def test_async_member_whose_rollback_fails_is_reported_with_the_group_index(
    concurrently: bool,
) -> None:
    log: list[str] = []
    broken = OSError("cannot undo a")

    async def main() -> None:
        before = AsyncMember(log, "before")
        a = AsyncMember(log, "a", rollback=async_fail_with(broken))
        b = AsyncMember(log, "b")
        listener = Recorder()
        q = AsyncActionQueue(sleep=no_sleep, listeners=[listener])
        q.add(before)
        q.add_group([a, b], rollback_concurrently=concurrently)
        await q.execute()
        report = await q.rollback()
        assert [(f.index, f.action, f.error) for f in report.failures] == [(1, a, broken)]
        assert report.rolled_back == (b, before)
        assert ("rollback failed", 1, a, broken) in listener.events

    asyncio.run(main())


def test_async_listeners_hear_about_each_member_with_the_group_index() -> None:
    log: list[str] = []
    boom = RuntimeError("b failed")

    async def main() -> list[tuple[Any, ...]]:
        before = AsyncMember(log, "before")
        a = AsyncMember(log, "a")
        b = AsyncMember(log, "b", execute=async_fail_with(boom))
        listener = Recorder()
        q = AsyncActionQueue(sleep=no_sleep, listeners=[listener])
        q.add(before)
        q.add_group([a, b], max_workers=1)
        with pytest.raises(RuntimeError):
            await q.execute()
        assert listener.events == [
            ("started", 0, before),
            ("succeeded", 0, before),
            ("started", 1, a),
            ("succeeded", 1, a),
            ("started", 1, b),
            ("failed", 1, b, boom),
        ]
        return listener.events

    asyncio.run(main())


def test_async_function_members_are_accepted_and_awaited() -> None:
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n * 10

    async def main() -> ParallelGroup:
        q = AsyncActionQueue(sleep=no_sleep)
        group = q.add_group([lambda: fetch(1), lambda: 2, lambda: fetch(3)])
        await q.execute()
        return group

    group = asyncio.run(main())
    assert all(type(m) is AsyncFunctionStep for m in group.actions)
    assert [m.result for m in group.actions if isinstance(m, FunctionStep)] == [10, 2, 30]
