"""Property-based tests: ActionQueue and the exception factory against a reference model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from actionqueues import (
    ActionQueue,
    ActionRetryException,
    DoublingBackoffExceptionFactory,
    RetryLimitExceeded,
    RollbackError,
    RollbackReport,
)

Method = Literal["execute", "rollback"]
Status = Literal["ok", "error", "limit"]
Call = tuple[Method, int]

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


class ExecuteFailed(Exception):
    """Raised by a scripted action's execute."""


class RollbackFailed(Exception):
    """Raised by a scripted action's rollback."""


# -- the scripted action ---------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What one action does: retries (as ms backoffs) before an outcome, per method."""

    exec_backoffs: tuple[float, ...]
    exec_error: type[Exception] | None
    rb_backoffs: tuple[float, ...]
    rb_error: type[Exception] | None


class ScriptedAction:
    """Follows its Spec, recording every call in a log shared with the other actions."""

    def __init__(self, index: int, spec: Spec, calls: list[Call], live: set[int]) -> None:
        self.index = index
        self.spec = spec
        self.calls = calls
        self.live = live
        self.signals: dict[Method, list[ActionRetryException]] = {"execute": [], "rollback": []}
        # Fresh objects, so identity checks tell this action's error from any other's.
        self.errors: dict[Method, Exception | None] = {
            "execute": None if spec.exec_error is None else spec.exec_error(f"execute {index}"),
            "rollback": None if spec.rb_error is None else spec.rb_error(f"rollback {index}"),
        }

    def backoffs(self, method: Method) -> tuple[float, ...]:
        return self.spec.exec_backoffs if method == "execute" else self.spec.rb_backoffs

    def _step(self, method: Method) -> None:
        self.calls.append((method, self.index))
        signals = self.signals[method]
        backoffs = self.backoffs(method)
        if len(signals) < len(backoffs):
            signal = ActionRetryException(backoffs[len(signals)])
            signals.append(signal)
            raise signal
        error = self.errors[method]
        if error is not None:
            raise error
        if method == "execute":
            self.live.add(self.index)
        else:
            self.live.discard(self.index)

    def execute(self) -> None:
        self._step("execute")

    def rollback(self) -> None:
        self._step("rollback")

    def __repr__(self) -> str:
        return f"<ScriptedAction {self.index}>"


# -- the reference model -----------------------------------------------------------


def model_call(
    backoffs: tuple[float, ...], fails: bool, cap: int | None
) -> tuple[int, list[float], Status]:
    """How one method call sequence goes: (number of calls, sleeps, final status)."""
    if cap is not None and len(backoffs) > cap:
        # Signals 1..cap are retried; signal cap+1 is one too many.
        return cap + 1, [ms / 1000.0 for ms in backoffs[:cap]], "limit"
    return len(backoffs) + 1, [ms / 1000.0 for ms in backoffs], "error" if fails else "ok"


def check_error(
    actual: BaseException | None,
    action: ScriptedAction,
    method: Method,
    status: Status,
    cap: int | None,
) -> None:
    """The error is the action's own object, or RetryLimitExceeded caused by its last signal."""
    if status == "error":
        assert actual is action.errors[method]
        return
    assert status == "limit"
    assert cap is not None
    assert type(actual) is RetryLimitExceeded
    assert actual.action is action
    assert actual.method == method
    assert actual.retries == cap
    signals = action.signals[method]
    assert len(signals) == cap + 1
    assert actual.__cause__ is signals[-1]


# -- helpers ---------------------------------------------------------------------


def raised(call: Callable[[], object]) -> BaseException | None:
    """The exception ``call()`` raised, or None."""
    try:
        call()
    except BaseException as error:
        return error
    return None


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def recorded_logs(debug: bool) -> Iterator[RecordingHandler]:
    """Capture the "actionqueues" logger (a per-example handler instead of caplog).

    With ``debug`` the queue runs its general (listener) loops, else its fast loops.
    """
    logger = logging.getLogger("actionqueues")
    handler = RecordingHandler()
    old_level, old_disabled = logger.level, logger.disabled
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.disabled = old_disabled


def run_rollback(queue: ActionQueue, strict: bool, expect_failures: bool) -> RollbackReport:
    """Roll back; in strict mode, RollbackError must be raised iff rollbacks failed."""
    if not strict:
        return queue.rollback()
    if not expect_failures:
        return queue.rollback(raise_errors=True)
    error = raised(lambda: queue.rollback(raise_errors=True))
    assert isinstance(error, RollbackError)
    assert error.failures == error.report.failures
    return error.report


# -- strategies --------------------------------------------------------------------

ms_backoffs = st.one_of(
    st.just(0),
    st.just(0.0),
    st.integers(min_value=0, max_value=10_000),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
retry_lists = st.lists(ms_backoffs, max_size=3).map(tuple)
error_types = st.none() | st.sampled_from([ExecuteFailed, ValueError, KeyError, RuntimeError])
rb_error_types = st.none() | st.sampled_from([RollbackFailed, OSError, LookupError])
specs = st.builds(
    Spec,
    exec_backoffs=retry_lists,
    exec_error=error_types,
    rb_backoffs=retry_lists,
    rb_error=rb_error_types,
)
caps = st.none() | st.integers(min_value=0, max_value=3)


# -- properties --------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    spec_list=st.lists(specs, max_size=8),
    cap=caps,
    strict=st.booleans(),
    debug=st.booleans(),
)
def test_execute_and_rollback_follow_the_reference_model(
    spec_list: list[Spec], cap: int | None, strict: bool, debug: bool
) -> None:
    """Calls, sleeps, the propagated error, rollback order, report and logs match the model."""
    calls: list[Call] = []
    sleeps: list[float] = []
    live: set[int] = set()
    queue = ActionQueue(sleep=sleeps.append, max_retries=cap)
    actions = [queue.add(ScriptedAction(i, spec, calls, live)) for i, spec in enumerate(spec_list)]

    # Model of execute(): stop at the first action that does not end "ok".
    expected_calls: list[Call] = []
    expected_sleeps: list[float] = []
    failed: tuple[ScriptedAction, Status] | None = None
    started: list[ScriptedAction] = []
    for action in actions:
        started.append(action)
        n, naps, status = model_call(
            action.spec.exec_backoffs, action.spec.exec_error is not None, cap
        )
        expected_calls += [("execute", action.index)] * n
        expected_sleeps += naps
        if status != "ok":
            failed = (action, status)
            break

    error = raised(queue.execute)
    if failed is None:
        assert error is None
    else:
        check_error(error, failed[0], "execute", failed[1], cap)
    assert calls == expected_calls
    assert sleeps == expected_sleeps
    assert len(queue.started) == len(started)
    assert all(a is b for a, b in zip(queue.started, started, strict=True))

    # Model of rollback(): every started action, newest first, failures do not stop it.
    del calls[:], sleeps[:]
    expected_calls, expected_sleeps = [], []
    rolled_back: list[ScriptedAction] = []
    failures: list[tuple[ScriptedAction, Status]] = []
    for action in reversed(started):
        n, naps, status = model_call(action.spec.rb_backoffs, action.spec.rb_error is not None, cap)
        expected_calls += [("rollback", action.index)] * n
        expected_sleeps += naps
        if status == "ok":
            rolled_back.append(action)
        else:
            failures.append((action, status))

    with recorded_logs(debug) as handler:
        report = run_rollback(queue, strict, expect_failures=bool(failures))

    assert calls == expected_calls
    assert sleeps == expected_sleeps
    assert len(report.rolled_back) == len(rolled_back)
    assert all(a is b for a, b in zip(report.rolled_back, rolled_back, strict=True))
    assert len(report.failures) == len(failures)
    for failure, (action, status) in zip(report.failures, failures, strict=True):
        assert failure.index == action.index
        assert failure.action is action
        check_error(failure.error, action, "rollback", status, cap)
    assert report.ok == (not failures)
    assert report.errors == tuple(f.error for f in report.failures)

    errors_logged = [r for r in handler.records if r.levelno >= logging.ERROR]
    assert len(errors_logged) == len(failures)
    for record, failure in zip(errors_logged, report.failures, strict=True):
        assert record.name == "actionqueues"
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert record.exc_info[1] is failure.error
        assert record.__dict__["aq_step"] == failure.index


successful_specs = st.builds(
    Spec,
    exec_backoffs=retry_lists,
    exec_error=st.none(),
    rb_backoffs=retry_lists,
    rb_error=st.none(),
)


@PROPERTY_SETTINGS
@given(
    spec_list=st.lists(successful_specs, max_size=8),
    cap=st.none() | st.integers(min_value=3, max_value=5),
    strict=st.booleans(),
    debug=st.booleans(),
)
def test_successful_execute_then_rollback_undoes_everything(
    spec_list: list[Spec], cap: int | None, strict: bool, debug: bool
) -> None:
    """After a fully successful execute, rollback undoes every action, newest first, cleanly."""
    calls: list[Call] = []
    sleeps: list[float] = []
    live: set[int] = set()
    queue = ActionQueue(sleep=sleeps.append, max_retries=cap)
    actions = [queue.add(ScriptedAction(i, spec, calls, live)) for i, spec in enumerate(spec_list)]

    assert queue.execute() is None  # type: ignore[func-returns-value]
    assert live == set(range(len(actions)))
    assert all(a is b for a, b in zip(queue.started, actions, strict=True))
    assert len(queue.started) == len(actions)

    with recorded_logs(debug) as handler:
        report = queue.rollback(raise_errors=strict)

    assert live == set()
    assert report.ok
    assert report.failures == ()
    assert len(report.rolled_back) == len(actions)
    assert all(a is b for a, b in zip(report.rolled_back, reversed(actions), strict=True))
    expected_calls: list[Call] = [
        ("execute", a.index) for a in actions for _ in range(len(a.spec.exec_backoffs) + 1)
    ] + [("rollback", a.index) for a in actions[::-1] for _ in range(len(a.spec.rb_backoffs) + 1)]
    expected_sleeps = [ms / 1000.0 for s in spec_list for ms in s.exec_backoffs] + [
        ms / 1000.0 for s in reversed(spec_list) for ms in s.rb_backoffs
    ]
    assert calls == expected_calls
    assert sleeps == expected_sleeps
    assert not [r for r in handler.records if r.levelno >= logging.ERROR]


@PROPERTY_SETTINGS
@given(
    retries=st.integers(min_value=0, max_value=6),
    initial=ms_backoffs,
    extra_calls=st.integers(min_value=1, max_value=4),
    original_type=st.none() | st.sampled_from([ExecuteFailed, ValueError, OSError]),
)
def test_doubling_factory_doubles_then_raises_the_original(
    retries: int, initial: float, extra_calls: int, original_type: type[Exception] | None
) -> None:
    """The factory asks for initial*2**k ms for k < retries, then raises the original each call."""
    factory = DoublingBackoffExceptionFactory(retries, initial)
    original = None if original_type is None else original_type("the real error")

    for k in range(retries):
        signal = raised(lambda: factory.raise_exception(original))
        assert type(signal) is ActionRetryException
        assert signal.ms_backoff == initial * 2**k

    for _ in range(extra_calls):
        error = raised(lambda: factory.raise_exception(original))
        if original is None:
            assert type(error) is Exception
        else:
            assert error is original
