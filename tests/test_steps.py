"""Function steps: ``add(fn, undo=...)`` and the ``@step`` decorator, sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    ActionRetryException,
    AsyncActionQueue,
    AsyncFunctionStep,
    AsyncStepDefinition,
    FunctionStep,
    StepDefinition,
    step,
)


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"the queue tried to sleep {seconds} s")


# -- add(fn, undo=...) in ActionQueue ------------------------------------------


def test_adding_a_function_returns_a_function_step_that_keeps_its_result() -> None:
    calls: list[str] = []

    def create() -> int:
        calls.append("create")
        return 42

    q = ActionQueue()
    created = q.add(create, undo=lambda user_id: None)
    assert type(created) is FunctionStep
    assert q.actions == (created,)
    assert created.result is None
    assert not created.done
    assert calls == []
    q.execute()
    assert calls == ["create"]
    assert created.result == 42
    assert created.done


def test_rollback_calls_undo_with_what_the_function_returned() -> None:
    undone: list[object] = []
    result = object()
    q = ActionQueue()
    created = q.add(lambda: result, undo=undone.append)
    q.execute()
    report = q.rollback()
    assert undone == [result]
    assert undone[0] is result
    assert report.rolled_back == (created,)
    assert report.ok


def test_undo_is_not_called_when_the_function_raised() -> None:
    boom = RuntimeError("boom")
    undone: list[object] = []

    def create() -> int:
        raise boom

    q = ActionQueue()
    created = q.add(create, undo=undone.append)
    with pytest.raises(RuntimeError) as excinfo:
        q.execute()
    assert excinfo.value is boom
    report = q.rollback()
    assert undone == []  # nothing to compensate: the function never returned
    assert not created.done
    assert report.rolled_back == (created,)
    assert report.ok


def test_a_function_without_undo_executes_and_rolls_back_as_a_no_op() -> None:
    q = ActionQueue()
    created = q.add(lambda: "value")
    assert created.undo is None
    q.execute()
    assert created.result == "value"
    report = q.rollback()
    assert report.rolled_back == (created,)
    assert report.ok


def test_undo_is_called_at_most_once_per_successful_call() -> None:
    undone: list[int] = []
    created = FunctionStep(lambda: 1, undone.append)
    created.execute()
    created.rollback()
    created.rollback()
    assert undone == [1]
    assert not created.done


def test_a_failing_undo_is_reported_with_its_error() -> None:
    broken = ValueError("cannot delete")

    def delete(user_id: int) -> None:
        raise broken

    q = ActionQueue()
    created = q.add(lambda: 7, undo=delete)
    q.execute()
    report = q.rollback()
    assert report.rolled_back == ()
    assert [(f.index, f.action, f.error) for f in report.failures] == [(0, created, broken)]


def test_a_function_step_is_retried_when_it_asks_for_a_retry() -> None:
    attempts: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ActionRetryException(ms_backoff=10)
        return "finally"

    q = ActionQueue(sleep=sleeps.append)
    created = q.add(flaky)
    q.execute()
    assert attempts == [1, 2, 3]
    assert sleeps == [0.01, 0.01]
    assert created.result == "finally"


def test_undo_given_with_an_action_raises_type_error() -> None:
    q = ActionQueue()
    with pytest.raises(TypeError, match=r"undo= is for function steps"):
        q.add(Action(), undo=lambda result: None)  # type: ignore[call-overload]
    assert q.actions == ()


def test_a_non_callable_undo_raises_type_error() -> None:
    q = ActionQueue()
    with pytest.raises(TypeError, match=r"undo= must be a function .* got 'nope'"):
        q.add(lambda: 1, undo="nope")  # type: ignore[call-overload]
    assert q.actions == ()


def test_a_non_callable_non_action_raises_type_error_that_says_pass_a_function() -> None:
    q = ActionQueue()
    with pytest.raises(TypeError, match=r"cannot add 42 .*or pass a function"):
        q.add(42)  # type: ignore[call-overload]
    assert q.actions == ()


def test_the_sync_queue_refuses_coroutine_functions_and_async_undos() -> None:
    async def create() -> int:
        return 1

    async def delete(user_id: int) -> None:
        pass

    q = ActionQueue()
    with pytest.raises(TypeError, match="coroutine function: async steps need AsyncActionQueue"):
        q.add(create)
    with pytest.raises(TypeError, match="coroutine function: async steps need AsyncActionQueue"):
        q.add(lambda: 1, undo=delete)
    assert q.actions == ()


def test_function_step_repr_names_both_functions() -> None:
    def create() -> int:
        return 1

    def delete(user_id: int) -> None:
        pass

    assert repr(FunctionStep(create, delete)) == (
        "<FunctionStep test_function_step_repr_names_both_functions.<locals>.create "
        "undo=test_function_step_repr_names_both_functions.<locals>.delete>"
    )
    assert repr(FunctionStep(create)) == (
        "<FunctionStep test_function_step_repr_names_both_functions.<locals>.create undo=none>"
    )


# -- @step in ActionQueue --------------------------------------------------------


def test_calling_a_step_binds_its_arguments_and_runs_them_only_on_execute() -> None:
    calls: list[tuple[str, str]] = []

    @step
    def create_user(name: str, *, role: str = "user") -> str:
        calls.append((name, role))
        return f"{name}-id"

    assert isinstance(create_user, StepDefinition)
    assert not isinstance(create_user, AsyncStepDefinition)
    alice = create_user("alice")
    bob = create_user("bob", role="admin")
    assert type(alice) is FunctionStep
    assert calls == []
    q = ActionQueue()
    assert q.add(alice) is alice
    q.add(bob)
    q.execute()
    assert calls == [("alice", "user"), ("bob", "admin")]
    assert (alice.result, bob.result) == ("alice-id", "bob-id")


def test_compensate_registers_the_undo_and_returns_the_function_unchanged() -> None:
    undone: list[int] = []

    @step
    def create_user(name: str) -> int:
        return len(name)

    def delete_user(user_id: int) -> None:
        undone.append(user_id)

    assert create_user.compensate(delete_user) is delete_user
    assert create_user.undo is delete_user
    q = ActionQueue()
    created = q.add(create_user("alice"))
    assert created.undo is delete_user
    q.execute()
    q.rollback()
    assert undone == [5]


def test_a_step_keeps_the_name_and_docstring_of_its_function_and_reprs_as_a_step() -> None:
    @step
    def create_user(name: str) -> int:
        """Create a user."""
        return 1

    assert create_user.__name__ == "create_user"
    assert create_user.__doc__ == "Create a user."
    assert create_user.__qualname__.endswith(".<locals>.create_user")
    assert repr(create_user) == f"<step {create_user.__qualname__}>"


def test_step_on_a_non_callable_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"@step decorates a function, got 42"):
        step(42)  # type: ignore[call-overload]


def test_compensate_with_a_non_callable_raises_type_error() -> None:
    @step
    def create_user(name: str) -> int:
        return 1

    with pytest.raises(TypeError, match=r"compensate\(\) needs a function .* got 'oops'"):
        create_user.compensate("oops")  # type: ignore[arg-type]
    assert create_user.undo is None


# -- the sign-up of the README, with steps --------------------------------------


def test_a_failing_later_step_rolls_back_earlier_function_steps_in_reverse_with_results() -> None:
    users: dict[int, str] = {}
    log: list[str] = []
    declined = RuntimeError("card declined")

    @step
    def create_user(name: str) -> int:
        user_id = len(users) + 1
        users[user_id] = name
        log.append(f"create {name}")
        return user_id

    @create_user.compensate
    def delete_user(user_id: int) -> None:
        log.append(f"delete {user_id}")
        del users[user_id]

    @step
    def open_account(user_id: int) -> str:
        log.append(f"open account of {user_id}")
        return f"acct-{user_id}"

    @open_account.compensate
    def close_account(account: str) -> None:
        log.append(f"close {account}")

    @step
    def charge_card(amount: int) -> None:
        log.append(f"charge {amount}")
        raise declined

    @charge_card.compensate
    def refund(_: None) -> None:
        log.append("refund")  # never: the charge did not go through

    q = ActionQueue(sleep=no_sleep)
    created = q.add(create_user("alice"))
    account = q.add(open_account(1))
    charge = q.add(charge_card(100))
    with pytest.raises(RuntimeError) as excinfo:
        q.execute()
    assert excinfo.value is declined
    assert users == {1: "alice"}
    report = q.rollback()
    assert log == [
        "create alice",
        "open account of 1",
        "charge 100",
        "close acct-1",
        "delete 1",
    ]
    assert report.rolled_back == (charge, account, created)
    assert report.ok
    assert users == {}


# -- AsyncActionQueue ------------------------------------------------------------


def test_step_on_an_async_function_makes_an_async_step() -> None:
    @step
    async def create_user(name: str) -> int:
        return len(name)

    assert isinstance(create_user, AsyncStepDefinition)
    assert isinstance(create_user, StepDefinition)
    created = create_user("alice")
    assert type(created) is AsyncFunctionStep
    assert repr(create_user) == f"<step {create_user.__qualname__}>"


@pytest.mark.parametrize("async_undo", [True, False], ids=["async-undo", "sync-undo"])
def test_an_async_step_runs_in_the_async_queue_and_rolls_back_with_its_result(
    async_undo: bool,
) -> None:
    log: list[str] = []

    @step
    async def create_user(name: str) -> int:
        await asyncio.sleep(0)
        log.append(f"create {name}")
        return 7

    if async_undo:

        @create_user.compensate
        async def delete_user(user_id: int) -> None:
            await asyncio.sleep(0)
            log.append(f"delete {user_id}")

    else:

        @create_user.compensate
        def delete_user_now(user_id: int) -> None:
            log.append(f"delete {user_id}")

    async def main() -> AsyncFunctionStep[int]:
        q = AsyncActionQueue(sleep=no_sleep)
        created = q.add(create_user("alice"))
        await q.execute()
        assert created.result == 7
        report = await q.rollback()
        assert report.rolled_back == (created,)
        return created

    created = asyncio.run(main())
    assert log == ["create alice", "delete 7"]
    assert not created.done


def test_the_async_queue_accepts_sync_and_async_functions_with_sync_or_async_undo() -> None:
    log: list[str] = []

    async def create(name: str) -> str:
        await asyncio.sleep(0)
        log.append(f"create {name}")
        return name

    async def delete(name: str) -> None:
        await asyncio.sleep(0)
        log.append(f"delete {name}")

    def sync_create() -> str:
        log.append("create sync")
        return "sync"

    async def main() -> tuple[Any, ...]:
        q = AsyncActionQueue(sleep=no_sleep)
        steps = (
            q.add(lambda: create("a"), undo=delete),  # a plain function returning a coroutine
            q.add(sync_create, undo=lambda name: log.append(f"delete {name}")),
            q.add(sync_create, undo=delete),
            q.add(lambda: "no undo"),
        )
        await q.execute()
        await q.rollback()
        return steps

    steps = asyncio.run(main())
    assert all(isinstance(s, AsyncFunctionStep) for s in steps)
    assert [s.result for s in steps] == ["a", "sync", "sync", "no undo"]
    assert log == [
        "create a",
        "create sync",
        "create sync",
        "delete sync",
        "delete sync",
        "delete a",
    ]


def test_an_async_step_that_raised_is_not_compensated() -> None:
    undone: list[int] = []
    boom = RuntimeError("boom")

    @step
    async def create_user(name: str) -> int:
        await asyncio.sleep(0)
        raise boom

    @create_user.compensate
    async def delete_user(user_id: int) -> None:
        undone.append(user_id)

    async def main() -> None:
        q = AsyncActionQueue(sleep=no_sleep)
        created = q.add(create_user("alice"))
        with pytest.raises(RuntimeError) as excinfo:
            await q.execute()
        assert excinfo.value is boom
        report = await q.rollback()
        assert report.rolled_back == (created,)

    asyncio.run(main())
    assert undone == []


def test_the_async_sign_up_rolls_back_earlier_steps_in_reverse_with_their_results() -> None:
    log: list[str] = []
    declined = RuntimeError("card declined")

    @step
    async def create_user(name: str) -> int:
        log.append(f"create {name}")
        return 1

    @create_user.compensate
    async def delete_user(user_id: int) -> None:
        log.append(f"delete {user_id}")

    @step
    def reserve_name(name: str) -> str:
        log.append(f"reserve {name}")
        return name.upper()

    @reserve_name.compensate
    def release_name(reserved: str) -> None:
        log.append(f"release {reserved}")

    @step
    async def charge_card(amount: int) -> None:
        raise declined

    async def main() -> None:
        q = AsyncActionQueue(sleep=no_sleep)
        created = q.add(create_user("alice"))
        reserved = q.add(reserve_name("alice"))
        charge = q.add(charge_card(100))
        with pytest.raises(RuntimeError) as excinfo:
            await q.execute()
        assert excinfo.value is declined
        report = await q.rollback()
        assert report.rolled_back == (charge, reserved, created)

    asyncio.run(main())
    assert log == ["create alice", "reserve alice", "release ALICE", "delete 1"]


def test_sync_queue_refuses_an_async_step_at_add() -> None:
    @step
    async def reserve(seat: int) -> int:
        return seat

    q = ActionQueue()
    with pytest.raises(TypeError, match="is an async step"):
        q.add(reserve(3))
    with pytest.raises(TypeError, match="async step"):  # refused every time, not cached
        q.add(reserve(4))
    assert q.actions == ()


def test_an_uncalled_step_definition_is_refused_with_a_hint() -> None:
    @step
    def reserve(seat: int) -> int:
        return seat

    with pytest.raises(TypeError, match=r"call it with its arguments, e\.g\. q\.add\(reserve"):
        ActionQueue().add(reserve)  # type: ignore[arg-type]


def test_sync_function_returning_a_coroutine_fails_clearly_in_the_sync_queue() -> None:
    async def later() -> int:
        return 1

    q = ActionQueue()
    q.add(lambda: later())  # noqa: PLW0108 - hides that it is async
    with pytest.raises(TypeError, match="returned an awaitable: async steps need AsyncActionQueue"):
        q.execute()


def test_sync_undo_returning_a_coroutine_is_reported_as_a_failed_rollback() -> None:
    async def undo_later(value: int) -> None:
        return None

    q = ActionQueue()
    q.add(lambda: 1, undo=lambda value: undo_later(value))  # noqa: PLW0108
    q.execute()
    report = q.rollback()
    assert isinstance(report.failures[0].error, TypeError)
