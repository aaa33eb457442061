"""The 0.8.2 import paths, legacy modules and the public surface."""

from __future__ import annotations

import pytest

import actionqueues
from actionqueues import QueueStateError, aqstatemachine
from actionqueues.action import Action
from actionqueues.actionqueue import ActionQueue, ActionRetryException
from actionqueues.aqstatemachine import (
    AQStateMachine,
    AQStateMachine_ADD,
    AQStateMachine_EXECUTE,
    AQStateMachine_EXECUTE_COMPLETE,
    AQStateMachine_INIT,
    AQStateMachine_ROLLBACK,
    AQStateMachine_ROLLBACK_COMPLETE,
)
from actionqueues.exceptionfactory import DoublingBackoffExceptionFactory


def test_legacy_paths_and_top_level_names_are_the_same_objects() -> None:
    assert Action is actionqueues.Action
    assert ActionQueue is actionqueues.ActionQueue
    assert ActionRetryException is actionqueues.ActionRetryException
    assert DoublingBackoffExceptionFactory is actionqueues.DoublingBackoffExceptionFactory


def test_all_is_exactly_the_public_surface() -> None:
    public = {
        name
        for name, value in vars(actionqueues).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("actionqueues")
    }
    assert set(actionqueues.__all__) == public | {"__version__"}
    assert sorted(actionqueues.__all__) == actionqueues.__all__
    for name in actionqueues.__all__:
        obj = getattr(actionqueues, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"


def test_state_constants_keep_their_values() -> None:
    assert [
        AQStateMachine_INIT,
        AQStateMachine_ADD,
        AQStateMachine_EXECUTE,
        AQStateMachine_ROLLBACK,
        AQStateMachine_EXECUTE_COMPLETE,
        AQStateMachine_ROLLBACK_COMPLETE,
    ] == [0, 1, 2, 3, 4, 5]


def test_state_machine_allows_the_0_8_2_paths() -> None:
    sm = AQStateMachine()
    assert sm.state == AQStateMachine_INIT
    sm.transition_to_add()
    sm.transition_to_add()
    sm.transition_to_execute()
    sm.transition_to_execute_complete()
    sm.transition_to_rollback()
    sm.transition_to_rollback_complete()
    assert sm.state == AQStateMachine_ROLLBACK_COMPLETE

    failed = AQStateMachine()
    failed.transition_to_add()
    failed.transition_to_execute()
    failed.transition_to_rollback()
    assert failed.state == AQStateMachine_ROLLBACK


@pytest.mark.parametrize(
    ("steps", "refused"),
    [
        ([], "transition_to_execute"),
        ([], "transition_to_rollback"),
        (["transition_to_add", "transition_to_execute"], "transition_to_add"),
        (["transition_to_add", "transition_to_execute"], "transition_to_rollback_complete"),
        (["transition_to_add"], "transition_to_execute_complete"),
    ],
)
def test_state_machine_refuses_other_transitions_with_a_named_error(
    steps: list[str], refused: str
) -> None:
    sm = AQStateMachine()
    for step in steps:
        getattr(sm, step)()
    before = sm.state
    with pytest.raises(AssertionError, match=f"{refused}.. is not allowed in state") as info:
        getattr(sm, refused)()
    assert isinstance(info.value, QueueStateError)
    assert sm.state == before


def test_state_machine_reports_unknown_states() -> None:
    sm = aqstatemachine.AQStateMachine()
    sm.state = 99
    with pytest.raises(QueueStateError, match="in state 99; it needs state INIT or ADD"):
        sm.transition_to_add()


# -- DoublingBackoffExceptionFactory ----------------------------------------------


def collect_backoffs(factory: DoublingBackoffExceptionFactory, calls: int) -> list[object]:
    seen: list[object] = []
    for _ in range(calls):
        try:
            factory.raise_exception()
        except ActionRetryException as retry:
            seen.append(retry.ms_backoff)
        except Exception as exc:
            seen.append(exc)
    return seen


def test_factory_defaults_double_from_500_ms_three_times() -> None:
    seen = collect_backoffs(DoublingBackoffExceptionFactory(), 5)
    assert seen[:3] == [500, 1000, 2000]
    assert all(type(e) is Exception for e in seen[3:])


def test_factory_raises_the_original_exception_itself_on_every_later_call() -> None:
    factory = DoublingBackoffExceptionFactory(retries=1, ms_backoff_initial=100)
    original = ZeroDivisionError("1/0")
    with pytest.raises(ActionRetryException):
        factory.raise_exception(original_exception=original)
    for _ in range(3):
        with pytest.raises(ZeroDivisionError) as info:
            factory.raise_exception(original)
        assert info.value is original


def test_factory_generic_exception_says_why() -> None:
    factory = DoublingBackoffExceptionFactory(retries=0)
    with pytest.raises(Exception, match="gave up after 0 retries"):
        factory.raise_exception()


@pytest.mark.parametrize("retries", [-1, 1.5, True, None])
def test_factory_rejects_bad_retries(retries: object) -> None:
    error = TypeError if isinstance(retries, bool) or not isinstance(retries, int) else ValueError
    with pytest.raises(error, match="retries must be an int >= 0"):
        DoublingBackoffExceptionFactory(retries=retries)  # type: ignore[arg-type]


def test_factory_rejects_bad_initial_backoff() -> None:
    with pytest.raises(ValueError, match="finite number of milliseconds"):
        DoublingBackoffExceptionFactory(ms_backoff_initial=-5)


def test_factory_drives_a_queue_with_the_seed_readme_backoffs() -> None:
    class Failing(Action):
        def __init__(self) -> None:
            self.runs = 0
            self.factory = DoublingBackoffExceptionFactory(retries=5, ms_backoff_initial=100)

        def execute(self) -> None:
            self.runs += 1
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError as ex:
                self.factory.raise_exception(original_exception=ex)

    sleeps: list[float] = []
    q = ActionQueue(sleep=sleeps.append)
    action = q.add(Failing())
    with pytest.raises(ZeroDivisionError):
        q.execute()
    assert action.runs == 6
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.6]


def test_factory_refuses_a_backoff_that_would_overflow() -> None:
    with pytest.raises(ValueError, match="overflows a float"):
        DoublingBackoffExceptionFactory(retries=2, ms_backoff_initial=1e308)
    DoublingBackoffExceptionFactory(retries=1, ms_backoff_initial=1e308)  # never doubled
