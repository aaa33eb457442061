"""Unit tests of ActionQueue: the 0.8.2 rules and the fixed sharp edges."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from fractions import Fraction
from typing import Any

import pytest

import actionqueues
from actionqueues import (
    Action,
    ActionQueue,
    ActionRetryException,
    ActionSucceeded,
    BaseListener,
    QueueStateError,
    RetryLimitExceeded,
    RetryPolicy,
    RetryScheduled,
    RollbackError,
    RollbackReport,
)


class Recorder(Action):
    """An action that logs its calls and follows a script of outcomes."""

    def __init__(
        self,
        log: list[str],
        name: str,
        *,
        execute: list[BaseException] | None = None,
        rollback: list[BaseException] | None = None,
    ) -> None:
        self.log = log
        self.name = name
        self.execute_script = list(execute or [])
        self.rollback_script = list(rollback or [])

    def execute(self) -> None:
        self.log.append(f"execute {self.name}")
        if self.execute_script:
            raise self.execute_script.pop(0)

    def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")
        if self.rollback_script:
            raise self.rollback_script.pop(0)

    def __repr__(self) -> str:
        return f"Recorder({self.name!r})"


def make_queue(log: list[str], *names: str, **kwargs: Any) -> ActionQueue:
    q = ActionQueue(sleep=kwargs.pop("sleep", lambda s: None), **kwargs)
    for name in names:
        q.add(Recorder(log, name))
    return q


# -- running in order ------------------------------------------------------


def test_execute_runs_actions_in_the_order_added_and_returns_none() -> None:
    log: list[str] = []
    q = make_queue(log, "a", "b", "c")
    assert q.execute() is None  # type: ignore[func-returns-value]
    assert log == ["execute a", "execute b", "execute c"]


def test_action_base_class_methods_are_no_ops() -> None:
    q = ActionQueue()
    q.add(Action())
    q.execute()
    assert q.rollback().rolled_back == (q.actions[0],)


def test_add_returns_the_action_for_later_use() -> None:
    q = ActionQueue()
    action = Action()
    assert q.add(action) is action
    assert q.actions == (action,)
    assert len(q) == 1


def test_empty_queue_executes_and_rolls_back_as_no_ops() -> None:
    q = ActionQueue()
    q.execute()
    report = q.rollback()
    assert report == RollbackReport(rolled_back=(), failures=())
    assert report.ok


def test_action_counts_as_started_before_execute_is_called() -> None:
    log: list[str] = []
    q = ActionQueue()
    a = q.add(Recorder(log, "a"))
    b = q.add(Recorder(log, "b", execute=[SystemExit()]))
    q.add(Recorder(log, "c"))
    with pytest.raises(SystemExit):
        q.execute()
    assert q.started == (a, b)


def test_duck_typed_objects_are_accepted() -> None:
    log: list[str] = []

    class Duck:
        def execute(self) -> None:
            log.append("quack")

        def rollback(self) -> None:
            log.append("unquack")

    q = ActionQueue()
    q.add(Duck())
    q.execute()
    q.rollback()
    assert log == ["quack", "unquack"]


def test_instance_level_callables_are_accepted() -> None:
    class Holder:
        def __init__(self) -> None:
            self.execute = lambda: None
            self.rollback = lambda: None

    q = ActionQueue()
    q.add(Holder())
    q.execute()


# -- failures in execute -----------------------------------------------------


def test_execute_error_propagates_as_the_same_object_and_stops_the_queue() -> None:
    log: list[str] = []
    boom = ValueError("card declined")
    q = ActionQueue()
    q.add(Recorder(log, "a"))
    failing = q.add(Recorder(log, "b", execute=[boom]))
    q.add(Recorder(log, "c"))
    with pytest.raises(ValueError, match="card declined") as info:
        q.execute()
    assert info.value is boom
    assert log == ["execute a", "execute b"]
    assert q.started == (q.actions[0], failing)


def test_rollback_undoes_started_actions_in_reverse_including_the_failed_one() -> None:
    log: list[str] = []
    q = ActionQueue()
    a = q.add(Recorder(log, "a"))
    b = q.add(Recorder(log, "b", execute=[KeyError("x")]))
    q.add(Recorder(log, "c"))
    with pytest.raises(KeyError):
        q.execute()
    report = q.rollback()
    assert log == ["execute a", "execute b", "rollback b", "rollback a"]
    assert report.rolled_back == (b, a)
    assert report.ok


def test_rollback_after_successful_execute_undoes_everything() -> None:
    log: list[str] = []
    q = make_queue(log, "a", "b", "c")
    q.execute()
    q.rollback()
    assert log[3:] == ["rollback c", "rollback b", "rollback a"]


def test_keyboard_interrupt_in_execute_still_counts_the_action_as_started() -> None:
    log: list[str] = []
    q = ActionQueue()
    q.add(Recorder(log, "a"))
    q.add(Recorder(log, "b", execute=[KeyboardInterrupt()]))
    with pytest.raises(KeyboardInterrupt):
        q.execute()
    q.rollback()
    assert log[-2:] == ["rollback b", "rollback a"]


# -- retries -----------------------------------------------------------------------


def test_retry_exception_sleeps_and_calls_execute_again_until_it_stops() -> None:
    log: list[str] = []
    sleeps: list[float] = []
    q = ActionQueue(sleep=sleeps.append)
    q.add(Recorder(log, "a", execute=[ActionRetryException(250), ActionRetryException(0)]))
    q.add(Recorder(log, "b"))
    q.execute()
    assert log == ["execute a"] * 3 + ["execute b"]
    assert sleeps == [0.25, 0.0]
    assert len(q.started) == 2  # a retried action is recorded once


def test_retry_exception_works_in_rollback() -> None:
    log: list[str] = []
    sleeps: list[float] = []
    q = ActionQueue(sleep=sleeps.append)
    q.add(Recorder(log, "a", rollback=[ActionRetryException(ms_backoff=10)]))
    q.execute()
    report = q.rollback()
    assert log == ["execute a", "rollback a", "rollback a"]
    assert sleeps == [0.01]
    assert report.ok


def test_default_sleep_is_time_sleep_looked_up_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    q = ActionQueue()
    q.add(Recorder([], "a", execute=[ActionRetryException(1500)]))
    q.execute()
    assert sleeps == [1.5]


def test_retries_are_unlimited_by_default() -> None:
    log: list[str] = []
    q = ActionQueue(sleep=lambda s: None)
    q.add(Recorder(log, "a", execute=[ActionRetryException() for _ in range(500)]))
    q.execute()
    assert len(log) == 501


def test_max_retries_caps_retries_of_execute_with_retry_limit_exceeded() -> None:
    log: list[str] = []
    sleeps: list[float] = []
    q = ActionQueue(sleep=sleeps.append, max_retries=2)
    signals = [ActionRetryException(1) for _ in range(5)]
    a = q.add(Recorder(log, "a", execute=list(signals)))
    q.add(Recorder(log, "b"))
    with pytest.raises(RetryLimitExceeded, match="after 2 retries") as info:
        q.execute()
    assert info.value.action is a
    assert info.value.method == "execute"
    assert info.value.retries == 2
    assert info.value.__cause__ is signals[2]
    assert log == ["execute a"] * 3
    assert sleeps == [0.001, 0.001]
    q.rollback()
    assert log[-1] == "rollback a"


def test_max_retries_zero_means_no_retry() -> None:
    q = ActionQueue(max_retries=0)
    q.add(Recorder([], "a", execute=[ActionRetryException()]))
    with pytest.raises(RetryLimitExceeded, match="after 0 retries"):
        q.execute()


def test_max_retries_one_reads_naturally() -> None:
    q = ActionQueue(sleep=lambda s: None, max_retries=1)
    q.add(Recorder([], "a", execute=[ActionRetryException(), ActionRetryException()]))
    with pytest.raises(RetryLimitExceeded, match="after 1 retry "):
        q.execute()


def test_max_retries_in_rollback_is_reported_as_a_failure() -> None:
    log: list[str] = []
    q = ActionQueue(sleep=lambda s: None, max_retries=1)
    q.add(Recorder(log, "a"))
    b = q.add(Recorder(log, "b", rollback=[ActionRetryException()] * 3))
    q.execute()
    report = q.rollback()
    assert [f.action for f in report.failures] == [b]
    assert isinstance(report.failures[0].error, RetryLimitExceeded)
    assert report.failures[0].error.method == "rollback"
    assert log[-1] == "rollback a"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_max_retries_must_be_a_non_negative_int(bad: object) -> None:
    error = TypeError if isinstance(bad, bool) or not isinstance(bad, int) else ValueError
    with pytest.raises(error, match="max_retries must be None"):
        ActionQueue(max_retries=bad)  # type: ignore[arg-type]


def test_sleep_must_be_callable() -> None:
    with pytest.raises(TypeError, match="sleep must be a callable"):
        ActionQueue(sleep=0.5)  # type: ignore[arg-type]


# -- ActionRetryException ---------------------------------------------------------


def test_retry_exception_keeps_its_backoff_positional_or_keyword() -> None:
    assert ActionRetryException().ms_backoff == 0
    assert ActionRetryException(20).ms_backoff == 20
    assert ActionRetryException(ms_backoff=2.5).ms_backoff == 2.5
    assert ActionRetryException(Fraction(1, 2)).ms_backoff == Fraction(1, 2)  # type: ignore[arg-type]
    assert str(ActionRetryException(7)) == "retry requested after 7 ms"
    assert isinstance(ActionRetryException(), Exception)


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_retry_exception_rejects_negative_nan_and_infinite_backoff(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number of milliseconds"):
        ActionRetryException(bad)


@pytest.mark.parametrize("bad", ["10", None, True, [1]])
def test_retry_exception_rejects_non_numbers(bad: object) -> None:
    with pytest.raises(TypeError, match="ms_backoff must be a number"):
        ActionRetryException(bad)  # type: ignore[arg-type]


def test_retry_exception_pickles() -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(ActionRetryException(30)))
    assert copy.ms_backoff == 30


# -- rollback errors ----------------------------------------------------------------


def test_rollback_error_does_not_stop_earlier_rollbacks_and_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    broken = RuntimeError("billing API down")
    q = ActionQueue()
    a = q.add(Recorder(log, "a"))
    b = q.add(Recorder(log, "b", rollback=[broken]))
    c = q.add(Recorder(log, "c"))
    q.execute()
    with caplog.at_level(logging.ERROR, logger="actionqueues"):
        report = q.rollback()
    assert log[3:] == ["rollback c", "rollback b", "rollback a"]
    assert report.rolled_back == (c, a)
    assert len(report.failures) == 1
    failure = report.failures[0]
    assert (failure.index, failure.action, failure.error) == (1, b, broken)
    assert report.errors == (broken,)
    assert not report.ok
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.name == "actionqueues"
    assert record.exc_info is not None
    assert record.exc_info[1] is broken
    assert "step 1" in record.getMessage()
    assert record.aq_step == 1  # type: ignore[attr-defined]
    assert record.aq_event == "rollback_failed"  # type: ignore[attr-defined]


def test_strict_rollback_raises_one_error_with_all_failures_after_trying_all() -> None:
    log: list[str] = []
    first, second = ValueError("one"), OSError("two")
    q = ActionQueue()
    q.add(Recorder(log, "a", rollback=[first]))
    q.add(Recorder(log, "b"))
    q.add(Recorder(log, "c", rollback=[second]))
    q.execute()
    with pytest.raises(RollbackError, match="2 rollbacks failed") as info:
        q.rollback(raise_errors=True)
    assert log[3:] == ["rollback c", "rollback b", "rollback a"]
    assert [f.error for f in info.value.failures] == [second, first]
    assert info.value.report.rolled_back == (q.actions[1],)
    assert "step 2 (Recorder('c')): OSError: two" in str(info.value)


def test_strict_rollback_returns_the_report_when_nothing_failed() -> None:
    q = make_queue([], "a")
    q.execute()
    assert q.rollback(raise_errors=True).ok


def test_report_raise_for_errors() -> None:
    q = make_queue([], "a")
    q.add(Recorder([], "b", rollback=[ValueError("x")]))
    q.execute()
    report = q.rollback()
    with pytest.raises(RollbackError, match="1 rollback failed"):
        report.raise_for_errors()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_rollback_never_swallows_keyboard_interrupt_or_system_exit(
    exc_type: type[BaseException],
) -> None:
    log: list[str] = []
    q = ActionQueue()
    q.add(Recorder(log, "a"))
    q.add(Recorder(log, "b", rollback=[exc_type()]))
    q.execute()
    with pytest.raises(exc_type):
        q.rollback()
    assert log[-1] == "rollback b"


# -- single use -----------------------------------------------------------------


def test_add_after_execute_is_refused_with_a_clear_assertion_error() -> None:
    q = make_queue([], "a")
    q.execute()
    with pytest.raises(AssertionError, match=r"ActionQueue\.add\(\) is not allowed") as info:
        q.add(Action())
    assert isinstance(info.value, QueueStateError)
    assert info.value.call == "add"
    assert info.value.state == "has executed successfully"


def test_add_after_failed_execute_is_refused() -> None:
    q = ActionQueue()
    q.add(Recorder([], "a", execute=[ValueError("no")]))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    with pytest.raises(QueueStateError, match="failed during execute"):
        q.add(Action())


def test_second_execute_is_refused() -> None:
    q = make_queue([], "a")
    q.execute()
    with pytest.raises(QueueStateError, match=r"execute\(\) is not allowed.*executes once"):
        q.execute()


def test_rollback_before_execute_is_refused() -> None:
    q = make_queue([], "a")
    with pytest.raises(QueueStateError, match="has not been executed yet"):
        q.rollback()


def test_second_rollback_is_refused() -> None:
    q = make_queue([], "a")
    q.execute()
    q.rollback()
    with pytest.raises(QueueStateError, match="has been rolled back"):
        q.rollback()
    with pytest.raises(QueueStateError):
        q.execute()


def test_rollback_from_inside_execute_is_refused() -> None:
    errors: list[BaseException] = []

    class Reentrant(Action):
        def execute(self) -> None:
            try:
                q.rollback()
            except QueueStateError as exc:
                errors.append(exc)
            try:
                q.execute()
            except QueueStateError as exc:
                errors.append(exc)

    q = ActionQueue()
    q.add(Reentrant())
    q.execute()
    assert [e.call for e in errors] == ["rollback", "execute"]  # type: ignore[attr-defined]
    assert all("the queue is executing" in str(e) for e in errors)


def test_state_errors_are_raised_under_python_dash_o() -> None:
    code = (
        "from actionqueues import ActionQueue\n"
        "q = ActionQueue(); q.execute()\n"
        "try:\n    q.execute()\nexcept AssertionError as e:\n    print('refused:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("refused: ActionQueue.execute() is not allowed")


def test_repr_shows_size_and_state() -> None:
    q = make_queue([], "a", "b")
    assert repr(q) == "<ActionQueue 2 actions, 0 started, has not been executed yet>"
    q.execute()
    assert repr(q) == "<ActionQueue 2 actions, 2 started, has executed successfully>"
    q.rollback()
    assert "has been rolled back" in repr(q)
    assert q.max_retries is None


# -- add() validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [None, 42, "execute", object()],
    ids=["none", "int", "str", "object"],
)
def test_add_rejects_objects_without_execute_and_rollback(bad: object) -> None:
    q = ActionQueue()
    with pytest.raises(TypeError, match=r"cannot add .* needs callable execute\(\) and rollback"):
        q.add(bad)  # type: ignore[call-overload]
    assert q.actions == ()


def test_add_rejects_non_callable_methods_and_names_the_object() -> None:
    class HalfAction:
        execute = None

        def rollback(self) -> None: ...

        def __repr__(self) -> str:
            return "<HalfAction #7>"

    class OnlyExecute:
        def execute(self) -> None: ...

    q = ActionQueue()
    with pytest.raises(TypeError, match="<HalfAction #7>"):
        q.add(HalfAction())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="OnlyExecute"):
        q.add(OnlyExecute())  # type: ignore[call-overload]


def test_class_check_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from actionqueues import _engine

    monkeypatch.setattr(_engine, "_ACTION_CLASSES", set())
    monkeypatch.setattr(_engine, "_ACTION_CLASSES_MAX", 3)
    q = ActionQueue()
    for i in range(10):
        q.add(type(f"Made{i}", (Action,), {})())
    assert len(_engine._ACTION_CLASSES) <= 3


# -- legacy execute_with_retries ---------------------------------------------------


def test_execute_with_retries_is_still_public() -> None:
    sleeps: list[float] = []
    q = ActionQueue(sleep=sleeps.append)
    calls: list[int] = []

    def flaky(action: Action) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ActionRetryException(5)

    q.execute_with_retries(Action(), flaky)
    assert len(calls) == 3
    assert sleeps == [0.005, 0.005]


def test_execute_with_retries_respects_max_retries() -> None:
    q = ActionQueue(max_retries=0)

    def always(action: Action) -> None:
        raise ActionRetryException()

    with pytest.raises(RetryLimitExceeded, match="execute_with_retries"):
        q.execute_with_retries(Action(), always)


def test_subclass_overriding_execute_with_retries_is_used_for_every_call() -> None:
    seen: list[str] = []

    class Audited(ActionQueue):
        def execute_with_retries(self, action: Any, f: Any) -> None:
            seen.append(repr(action))
            super().execute_with_retries(action, f)

    log: list[str] = []
    q = Audited(sleep=lambda s: None)
    q.add(Recorder(log, "a", execute=[ActionRetryException()]))
    q.add(Recorder(log, "b", execute=[ValueError("b failed")], rollback=[OSError("x")]))
    q.add(Recorder(log, "c"))
    with pytest.raises(ValueError, match="b failed"):
        q.execute()
    report = q.rollback()
    assert seen == ["Recorder('a')", "Recorder('b')", "Recorder('b')", "Recorder('a')"]
    assert log == ["execute a", "execute a", "execute b", "rollback b", "rollback a"]
    assert [f.index for f in report.failures] == [1]


def test_an_override_calling_super_keeps_the_steps_policies_and_reports() -> None:
    """super().execute_with_retries() retries with the step's own policy, reports the real
    step and action to listeners and counts its calls, as the queue does without it."""
    events: list[tuple[str, int, object, int]] = []

    class Listening(BaseListener):
        def on_retry_scheduled(self, event: RetryScheduled) -> None:
            events.append(("retry", event.index, event.action, event.attempt))

        def on_action_succeeded(self, event: ActionSucceeded) -> None:
            events.append(("ok", event.index, event.action, event.attempts))

    class Audited(ActionQueue):
        def execute_with_retries(self, action: Any, f: Any) -> None:
            super().execute_with_retries(action, f)

    log: list[str] = []
    q = Audited(sleep=lambda s: None, listeners=[Listening()])
    first = q.add(Recorder(log, "a"))
    flaky = q.add(
        Recorder(log, "b", execute=[ConnectionError("1"), ConnectionError("2")]),
        retry=RetryPolicy(max_attempts=3, initial_delay=1.0),
    )
    q.execute()
    assert log == ["execute a", "execute b", "execute b", "execute b"]
    assert events == [
        ("ok", 0, first, 1),
        ("retry", 1, flaky, 1),
        ("retry", 1, flaky, 2),
        ("ok", 1, flaky, 3),
    ]


def test_subclass_override_runs_a_successful_queue() -> None:
    class Plain(ActionQueue):
        def execute_with_retries(self, action: Any, f: Any) -> None:
            f(action)

    log: list[str] = []
    q = Plain()
    q.add(Recorder(log, "a"))
    q.execute()
    assert q.rollback().rolled_back == q.actions


def test_version_is_exposed() -> None:
    assert isinstance(actionqueues.__version__, str)
    assert actionqueues.__version__[0].isdigit()


def test_rollback_from_inside_rollback_is_refused() -> None:
    errors: list[QueueStateError] = []

    class Reentrant(Action):
        def rollback(self) -> None:
            try:
                q.rollback()
            except QueueStateError as exc:
                errors.append(exc)

    q = ActionQueue()
    q.add(Reentrant())
    q.execute()
    assert q.rollback().ok
    assert [e.state for e in errors] == ["is rolling back"]


def test_queue_refuses_a_policy_that_is_not_a_retry_policy() -> None:
    with pytest.raises(TypeError, match="retry must be a RetryPolicy or None"):
        ActionQueue(retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rollback_retry must be a RetryPolicy or None"):
        ActionQueue().add(Action(), rollback_retry="twice")  # type: ignore[call-overload]


def test_queue_refuses_a_clock_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="clock must be a callable returning seconds"):
        ActionQueue(clock=12.0)  # type: ignore[arg-type]


def test_undo_with_a_duck_typed_action_is_refused() -> None:
    class Holder:
        def __init__(self) -> None:
            self.execute = lambda: None
            self.rollback = lambda: None

    with pytest.raises(TypeError, match="undo= is for function steps"):
        ActionQueue().add(Holder(), undo=print)  # type: ignore[call-overload]


def test_the_same_action_added_twice_is_rolled_back_twice_and_reported_by_position() -> None:
    log: list[str] = []
    shared = Recorder(log, "shared", rollback=[ValueError("first undo fails")])
    q = ActionQueue()
    q.add(shared)
    q.add(Recorder(log, "middle"))
    q.add(shared)
    q.execute()
    report = q.rollback()
    assert log[3:] == ["rollback shared", "rollback middle", "rollback shared"]
    assert [f.index for f in report.failures] == [2]
    assert report.rolled_back == (q.actions[1], shared)
