"""Static typing checks of function steps: read by mypy, never run.

mypy checks this file with the rest of ``tests/`` (``make test``); under
``--strict`` its ``warn_unused_ignores`` turns every ``# type: ignore[...]``
below into an assertion that mypy does report that error. The module is not
collected by pytest (no ``test_`` prefix) and does nothing when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import assert_type

    from actionqueues import (
        Action,
        ActionQueue,
        AsyncAction,
        AsyncActionQueue,
        AsyncFunctionStep,
        AsyncStepDefinition,
        FunctionStep,
        StepDefinition,
        step,
    )

    class CreateUser(Action):
        user_id: int | None = None

    def adding_an_action_returns_that_action(q: ActionQueue, aq: AsyncActionQueue) -> None:
        assert_type(q.add(CreateUser()), CreateUser)
        assert_type(aq.add(CreateUser()), CreateUser)

    class Subscribe(AsyncAction):
        async def execute(self) -> None: ...  # no "ignore[override]": coroutines are its API

        async def rollback(self) -> None: ...

    class SyncOverride(AsyncAction):
        def execute(self) -> None: ...  # type: ignore[override]

    class AsyncOverride(Action):
        async def execute(self) -> None: ...  # type: ignore[override]

    def adding_an_async_action_returns_that_action(aq: AsyncActionQueue) -> None:
        assert_type(aq.add(Subscribe()), Subscribe)

    def adding_a_function_returns_a_function_step_of_its_result(q: ActionQueue) -> None:
        assert_type(q.add(lambda: 1, undo=lambda x: None), FunctionStep[int])
        assert_type(q.add(lambda: "no undo"), FunctionStep[str])

        def delete_user(user_id: int) -> None: ...

        def make_name() -> str:
            return "a"

        q.add(lambda: 1, undo=delete_user)
        q.add(make_name, undo=delete_user)  # type: ignore[arg-type]

    def undo_is_refused_with_an_action(q: ActionQueue) -> None:
        q.add(CreateUser(), undo=lambda x: None)  # type: ignore[call-overload]

    def adding_an_async_function_returns_a_step_of_the_awaited_value(
        aq: AsyncActionQueue,
    ) -> None:
        async def create_user() -> int:
            return 1

        async def delete_user(user_id: int) -> None: ...

        async def create_named_user(name: str) -> int:
            return 1

        assert_type(aq.add(create_user, undo=delete_user), AsyncFunctionStep[int])
        assert_type(aq.add(create_user), AsyncFunctionStep[int])
        assert_type(
            aq.add(lambda: create_named_user("a"), undo=delete_user), AsyncFunctionStep[int]
        )
        aq.add(create_user, undo=lambda name: name.upper())  # type: ignore[attr-defined]

    @step
    def create_user(name: str) -> int: ...

    @create_user.compensate
    def delete_user(user_id: int) -> None: ...

    @step
    def ping(host: str, /) -> float: ...

    def a_step_is_typed_by_its_function() -> None:
        assert_type(ping, StepDefinition[[str], float])
        assert_type(ping("h"), FunctionStep[float])
        assert_type(create_user("a"), FunctionStep[int])
        assert_type(create_user(name="a"), FunctionStep[int])
        assert_type(ActionQueue().add(create_user("a")), FunctionStep[int])
        create_user(1)  # type: ignore[arg-type]
        create_user()  # type: ignore[call-arg]
        create_user("a", "b")  # type: ignore[call-arg]

    def a_compensation_must_take_the_step_result() -> None:
        def wrong_undo(name: str) -> None: ...

        create_user.compensate(wrong_undo)  # type: ignore[arg-type]

        def loose_undo(result: object) -> str:
            return ""

        create_user.compensate(loose_undo)  # any function accepting the result will do

    @step
    async def fetch_user(user_id: int, /) -> str: ...

    @fetch_user.compensate
    async def forget_user(name: str) -> None: ...

    def an_async_step_is_typed_by_the_awaited_value(aq: AsyncActionQueue) -> None:
        assert_type(fetch_user, AsyncStepDefinition[[int], str])
        assert_type(fetch_user(1), AsyncFunctionStep[str])
        assert_type(aq.add(fetch_user(1)), AsyncFunctionStep[str])
        assert_type(fetch_user(1).result, str | None)
        fetch_user("1")  # type: ignore[arg-type]

        def wrong_undo(user_id: int) -> None: ...

        fetch_user.compensate(wrong_undo)  # type: ignore[arg-type]
