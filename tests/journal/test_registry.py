"""Registered action types: what a journaled queue accepts, and how state is saved."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    Journal,
    JournalError,
    QueueStateError,
    RetryPolicy,
    UnknownActionType,
    recover,
    register_action,
    step,
)
from actionqueues.testing import FakeClock

from .conftest import LEASE
from .helpers import WORLD, Put, charge, state_of, statuses


def unique(prefix: str = "tests.journal.registry") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("name", ["", " padded", "padded ", "x" * 201, 7, None])
def test_register_action_refuses_a_bad_name(name: Any) -> None:
    """A type name is a non-empty string without surrounding spaces, at most 200 characters."""
    with pytest.raises(ValueError, match="action type name"):
        register_action(name)


def test_a_name_cannot_be_registered_for_two_classes() -> None:
    """Registering a second class under a taken name raises ValueError naming the first."""
    name = unique()

    @register_action(name)
    @dataclass
    class First(Action):
        pass

    @dataclass
    class Second(Action):
        pass

    with pytest.raises(ValueError, match=r"already registered for .*First"):
        register_action(name)(Second)
    assert register_action(name)(First) is First  # registering the same again is harmless


def test_a_class_cannot_be_registered_under_two_names() -> None:
    """A class keeps one name: a second registration under another name raises ValueError."""

    @register_action(unique())
    @dataclass
    class Once(Action):
        pass

    with pytest.raises(ValueError, match="already registered as"):
        register_action(unique())(Once)


def test_a_class_without_a_saveable_state_is_refused() -> None:
    """Neither a dataclass nor to_state()/from_state(): TypeError saying what is needed."""

    class Opaque(Action):
        def __init__(self, handle: object) -> None:
            self.handle = handle

    with pytest.raises(TypeError, match=r"must be a dataclass .* or define to_state"):
        register_action(unique())(Opaque)


def test_a_class_with_to_state_but_no_from_state_is_refused() -> None:
    """to_state() alone is not enough to rebuild the action."""

    class HalfWay(Action):
        def to_state(self) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match="from_state"):
        register_action(unique())(HalfWay)


def test_a_class_without_execute_and_rollback_is_refused() -> None:
    """Only action classes (with execute() and rollback()) can be registered."""

    @dataclass
    class NotAnAction:
        x: int = 0

    with pytest.raises(TypeError, match="no execute\\(\\)/rollback\\(\\)"):
        register_action(unique())(NotAnAction)


@pytest.mark.parametrize("target", [lambda: None, Put("x"), "tests.journal.put", 42])
def test_only_classes_and_step_definitions_can_be_registered(target: object) -> None:
    """Functions (not @step), instances and other objects are refused with TypeError."""
    with pytest.raises(TypeError, match="decorates an action class or a @step function"):
        register_action(unique())(target)


def test_unknown_action_type_is_a_lookup_error() -> None:
    """UnknownActionType can be caught as LookupError."""
    assert issubclass(UnknownActionType, LookupError)


def test_an_unregistered_action_is_refused_at_add(journal: Journal) -> None:
    """add() of an action whose class is not registered raises TypeError; the queue is unchanged."""

    class Unregistered(Action):
        pass

    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    with pytest.raises(TypeError, match=r"Unregistered is not registered.*@register_action"):
        q.add(Unregistered())
    assert len(q) == 1
    q.add(Put("b"))
    q.execute()
    assert q.run_id is not None
    assert statuses(journal, q.run_id) == ["succeeded", "succeeded"]


def test_an_unregistered_action_with_options_leaves_no_options_behind(journal: Journal) -> None:
    """A refused add(..., retry=...) does not leave its options to the next step."""

    class Unregistered(Action):
        pass

    q = ActionQueue(journal=journal)
    with pytest.raises(TypeError):
        q.add(Unregistered(), rollback_retry=RetryPolicy(max_attempts=5))
    q.add(Put("a"))
    assert q.policy_for(0, "rollback") is None


@pytest.mark.parametrize("kind", ["lambda", "undo", "unregistered step"])
def test_function_steps_must_be_registered_step_definitions(journal: Journal, kind: str) -> None:
    """A lambda, add(fn, undo=) or an unregistered @step cannot be journaled: TypeError at add()."""

    @step
    def loose(n: int) -> int:
        return n

    q = ActionQueue(journal=journal)
    adders = {
        "lambda": lambda: q.add(lambda: 1),
        "undo": lambda: q.add(lambda: 1, undo=print),
        "unregistered step": lambda: q.add(loose(1)),
    }
    with pytest.raises(TypeError, match="cannot be journaled"):
        adders[kind]()
    assert len(q) == 0


def test_a_journaled_queue_calls_a_subclass_add(journal: Journal) -> None:
    """A subclass's add() override runs with a journal too, and the journal's check still
    refuses what it could not record (the override's super().add() raises)."""
    added: list[object] = []

    class Audited(ActionQueue):
        def add(self, action: Any, *args: Any, **kwargs: Any) -> Any:
            added.append(action)
            return super().add(action, *args, **kwargs)

    class Unregistered(Action):
        pass

    q = Audited(journal=journal)
    q.add(Put("a"))
    with pytest.raises(TypeError, match="cannot be journaled"):
        q.add(Unregistered())
    assert len(added) == 2
    assert len(q) == 1
    q.execute()
    assert WORLD.ledger == {"a": 1}


def test_add_group_is_refused_in_a_journaled_queue(journal: Journal) -> None:
    """Parallel groups cannot be journaled yet: TypeError."""
    q = ActionQueue(journal=journal)
    with pytest.raises(TypeError, match="parallel groups cannot be journaled"):
        q.add_group([Put("a"), Put("b")])
    assert len(q) == 0


def test_state_that_is_not_json_is_refused_before_anything_runs(journal: Journal) -> None:
    """A step whose state is not JSON: TypeError naming it, nothing called or recorded."""
    name = unique()

    @register_action(name)
    @dataclass
    class Holder(Action):
        payload: Any = None

    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    with pytest.raises(TypeError, match=r"state of step 1 .* is not JSON data"):
        q.add(Holder(payload={1, 2}))
    with pytest.raises(TypeError, match=r"state of step 1 .* is not JSON data \(Out of range"):
        q.add(Holder(payload=[float("nan")]))
    itself: list[Any] = []
    itself.append(itself)
    with pytest.raises(TypeError, match=r"state of step 1 .* is not JSON data \(Circular ref"):
        q.add(Holder(payload={"a": itself}))
    assert len(q) == 1
    assert WORLD.calls == []
    assert journal.runs() == []
    with pytest.raises(QueueStateError):
        q.rollback()


def test_state_made_non_json_after_add_is_refused_at_execute_and_the_queue_stays_usable(
    journal: Journal,
) -> None:
    """State changed to non-JSON after add(): execute() refuses before running anything."""
    name = unique()

    @register_action(name)
    @dataclass
    class Holder(Action):
        payload: Any = None

    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    holder = q.add(Holder())
    holder.payload = {1, 2}
    with pytest.raises(TypeError, match=r"state of step 1 .* is not JSON data"):
        q.execute()
    assert WORLD.calls == []
    assert journal.runs() == []
    holder.payload = [1, 2]
    q.execute()
    assert journal.runs()[0].status == "succeeded"


@pytest.mark.parametrize("bad", [float("nan"), b"bytes", object()])
def test_step_function_arguments_must_be_json(journal: Journal, bad: object) -> None:
    """A @step called with non-JSON arguments is refused before anything runs."""
    q = ActionQueue(journal=journal)
    with pytest.raises(TypeError, match="not JSON"):
        q.add(charge(bad, 1))  # type: ignore[arg-type]
    assert len(q) == 0
    assert WORLD.calls == []


def test_state_that_becomes_non_json_after_execute_fails_the_run(journal: Journal) -> None:
    """State not JSON after execute: JournalError; the step stays in flight and is rolled back."""
    name = unique()

    @register_action(name)
    @dataclass
    class Leaky(Action):
        key: str
        handle: Any = None

        def execute(self) -> None:
            WORLD.call("execute", self.key)
            WORLD.ledger[self.key] = 1
            self.handle = object()  # e.g. a connection kept on the action

        def rollback(self) -> None:
            WORLD.call("rollback", self.key)
            WORLD.ledger.pop(self.key, None)
            self.handle = None

    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.add(Leaky("b"))
    q.add(Put("c"))
    with pytest.raises(JournalError, match=r"step 1 .* ran, but its state after execute"):
        q.execute()
    assert q.run_id is not None
    run = journal.timeline(q.run_id).run
    assert run.status == "failed"
    assert run.error is not None
    assert "cannot be journaled" in run.error
    assert statuses(journal, q.run_id) == ["succeeded", "running", "pending"]
    assert q.rollback().ok
    assert WORLD.ledger == {}
    assert statuses(journal, q.run_id) == ["rolled_back", "rolled_back", "pending"]


def test_a_step_function_result_must_be_json(journal: Journal) -> None:
    """A registered @step returning non-JSON data fails the run with a JournalError."""

    @register_action(unique())
    @step
    def opaque() -> object:
        return object()

    q = ActionQueue(journal=journal)
    q.add(opaque())
    with pytest.raises(JournalError, match="cannot be journaled"):
        q.execute()


def test_to_state_must_return_a_dict(journal: Journal) -> None:
    """to_state() returning something else than a dict is a TypeError naming the class."""

    @register_action(unique())
    class Listy(Action):
        def to_state(self) -> Any:
            return [1, 2]

        @classmethod
        def from_state(cls, state: dict[str, Any]) -> Listy:
            return cls()

    q = ActionQueue(journal=journal)
    with pytest.raises(TypeError, match=r"Listy.to_state\(\) must return a dict"):
        q.add(Listy())


@register_action("tests.journal.registry.counted")
@dataclass
class Counted(Action):
    """A dataclass with an init=False field, restored after construction."""

    key: str
    calls: int = field(default=0, init=False)

    def execute(self) -> None:
        self.calls += 1
        WORLD.call("execute", self.key)

    def rollback(self) -> None:
        WORLD.call("rollback", self.key)
        WORLD.undone.append(self.calls)


def test_init_false_fields_are_saved_and_restored(journal: Journal, clock: FakeClock) -> None:
    """Dataclass fields with init=False are part of the state and set again on rebuild."""
    q = ActionQueue(journal=journal)
    q.add(Counted("a"))
    q.add(Put("b"))
    WORLD.script("execute", "b", ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        q.execute()
    assert q.run_id is not None
    assert state_of(journal, q.run_id, 0) == {"key": "a", "calls": 1}
    clock.advance(LEASE + 1)
    assert [r.outcome for r in recover(journal).runs] == ["rolled_back"]
    assert WORLD.undone == [1]  # the rebuilt action had calls=1 restored


def test_registration_keeps_the_class_usable_without_a_journal() -> None:
    """A registered class still runs in a queue without a journal."""
    q = ActionQueue()
    q.add(Put("plain"))
    q.add(charge("plain", 3))
    q.execute()
    assert q.run_id is None
    assert q.journal is None
    assert WORLD.ledger == {"plain": 1, "charge:plain": 3}
