"""Registered actions that write to a ledger of external side effects, and a simulated crash.

The actions are module-level and registered under stable names, as a user's
would be, so that recovery can rebuild them from the journal. They reach the
outside world through :data:`WORLD`, which the ``world`` fixture resets for
each test: a ledger (what exists in the "external system"), the log of every
call with the idempotency key it saw, and scripted outcomes per call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    AsyncAction,
    Journal,
    current_step,
    register_action,
    step,
)
from actionqueues.testing import FakeClock, RecordingSleep, inject_faults


class Crash(BaseException):
    """A simulated death of the process (nothing after it may reach the journal)."""


@dataclass(frozen=True)
class Call:
    """One call of an action's execute or rollback, as the outside world saw it."""

    method: str
    key: str
    idempotency_key: str | None


#: What a scripted call does instead of succeeding: raise this, or call this.
Outcome = BaseException | Callable[[], object]


@dataclass
class World:
    """The external system the test actions change."""

    ledger: dict[str, Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    scripts: dict[tuple[str, str], list[Outcome]] = field(default_factory=dict)
    undone: list[Any] = field(default_factory=list)
    clock: FakeClock | None = None

    def reset(self, clock: FakeClock | None) -> None:
        self.ledger.clear()
        self.calls.clear()
        self.scripts.clear()
        self.undone.clear()
        self.clock = clock

    def script(self, method: str, key: str, *outcomes: Outcome) -> None:
        """Make the next calls of ``method`` on ``key`` raise or run these, in order."""
        self.scripts.setdefault((method, key), []).extend(outcomes)

    def always_fail(self, method: str, key: str, error: BaseException, times: int = 50) -> None:
        self.script(method, key, *([error] * times))

    def call(self, method: str, key: str) -> None:
        """Log a call (with the step's idempotency key), take a second, play its script."""
        try:
            idempotency_key: str | None = current_step().idempotency_key
        except LookupError:
            idempotency_key = None
        self.calls.append(Call(method, key, idempotency_key))
        if self.clock is not None:
            self.clock.advance(1.0)  # every call takes one second of the journal's time
        pending = self.scripts.get((method, key))
        if pending:
            outcome = pending.pop(0)
            if isinstance(outcome, BaseException):
                try:
                    raise outcome
                finally:
                    del outcome  # this frame would hold the error it raised: a cycle
            outcome()

    def count(self, method: str, key: str) -> int:
        return sum(1 for c in self.calls if c.method == method and c.key == key)

    def keys_called(self, method: str) -> list[str]:
        return [c.key for c in self.calls if c.method == method]


WORLD = World()


@register_action("tests.journal.put")
@dataclass
class Put(Action):
    """Creates ``key`` in the ledger; its rollback deletes it."""

    key: str
    value: int = 1
    receipt: str | None = None
    undone: bool = False

    def execute(self) -> None:
        WORLD.call("execute", self.key)
        WORLD.ledger[self.key] = self.value
        self.receipt = f"receipt-{self.key}"

    def rollback(self) -> None:
        WORLD.call("rollback", self.key)
        WORLD.ledger.pop(self.key, None)
        self.undone = True


@register_action("tests.journal.async_put")
@dataclass
class AsyncPut(AsyncAction):
    """Put, with coroutine methods (for AsyncActionQueue)."""

    key: str
    receipt: str | None = None

    async def execute(self) -> None:
        WORLD.call("execute", self.key)
        WORLD.ledger[self.key] = 1
        self.receipt = f"receipt-{self.key}"

    async def rollback(self) -> None:
        WORLD.call("rollback", self.key)
        WORLD.ledger.pop(self.key, None)


@register_action("tests.journal.account")
class Account(Action):
    """A plain class saved with to_state()/from_state(), not a dataclass."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.account_id: int | None = None

    def to_state(self) -> dict[str, Any]:
        return {"owner": self.owner, "account_id": self.account_id}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Account:
        if state.get("poison"):
            raise ValueError("poisoned state")
        made = cls(state["owner"])
        made.account_id = state["account_id"]
        return made

    def execute(self) -> None:
        WORLD.call("execute", f"account:{self.owner}")
        self.account_id = 42
        WORLD.ledger[f"account:{self.owner}"] = self.account_id

    def rollback(self) -> None:
        WORLD.call("rollback", f"account:{self.owner}")
        WORLD.ledger.pop(f"account:{self.owner}", None)


@register_action("tests.journal.charge")
@step
def charge(customer: str, cents: int, *, currency: str = "EUR") -> dict[str, Any]:
    """A registered @step function; its result is what the compensation gets."""
    WORLD.call("execute", f"charge:{customer}")
    WORLD.ledger[f"charge:{customer}"] = cents
    return {"charge_id": f"ch_{customer}", "cents": cents, "currency": currency}


@charge.compensate
def refund(result: dict[str, Any]) -> None:
    WORLD.call("rollback", f"charge:{result['charge_id'][3:]}")
    WORLD.undone.append(result)
    WORLD.ledger.pop(f"charge:{result['charge_id'][3:]}", None)


@register_action("tests.journal.async_charge")
@step
async def async_charge(customer: str, cents: int) -> dict[str, Any]:
    """A registered async @step function with an async compensation."""
    WORLD.call("execute", f"charge:{customer}")
    WORLD.ledger[f"charge:{customer}"] = cents
    return {"charge_id": f"ch_{customer}", "cents": cents}


@async_charge.compensate
async def async_refund(result: dict[str, Any]) -> None:
    WORLD.call("rollback", f"charge:{result['charge_id'][3:]}")
    WORLD.undone.append(result)
    WORLD.ledger.pop(f"charge:{result['charge_id'][3:]}", None)


@register_action("tests.journal.notify")
@step
def notify(user: str) -> None:
    """A registered @step without a compensation."""
    WORLD.call("execute", f"notify:{user}")


@register_action("tests.journal.picky")
@dataclass
class Picky(Action):
    """An action whose class refuses some states with an exception of its own choosing."""

    key: str

    def __post_init__(self) -> None:
        if self.key == "runtime":
            raise RuntimeError("the configuration for 'runtime' is missing")
        if self.key == "assertion":
            raise AssertionError("invariant broken")

    def execute(self) -> None:
        WORLD.call("execute", self.key)

    def rollback(self) -> None:
        WORLD.call("rollback", self.key)


class Killer:
    """An ``inject_faults`` hook that kills the "process" at a named point.

    At the ``nth`` time ``point`` is reached it raises :class:`Crash`; from
    then on every journal transaction fails before its COMMIT, so nothing
    the dying process does while unwinding reaches the journal, as after a
    SIGKILL. :meth:`kill` does the same from anywhere (an action, a sleep).
    """

    def __init__(self, point: str | None = None, nth: int = 1) -> None:
        self.point = point
        self.nth = nth
        self.seen = 0
        self.dead = False

    def kill(self) -> NoReturn:
        self.dead = True
        raise Crash

    def __call__(self, point: str) -> None:
        if self.dead:
            if point == "before_commit":
                raise Crash
            return
        if point == self.point:
            self.seen += 1
            if self.seen == self.nth:
                self.kill()


def crashed_run(
    journal: Journal,
    point: str,
    nth: int = 1,
    *,
    keys: Sequence[str] = "abc",
    resumable: bool = False,
) -> str:
    """Run a queue of Put(key) steps that "dies" at the nth ``point``; return its run id."""
    q = ActionQueue(journal=journal, name="crashy", resumable=resumable, sleep=RecordingSleep())
    for key in keys:
        q.add(Put(key))
    with inject_faults(Killer(point, nth)), pytest.raises(Crash):
        q.execute()
    assert q.run_id is not None
    return q.run_id


def state_of(journal: Journal, run_id: str, index: int) -> Any:
    """The decoded JSON state of a step as the journal holds it."""
    return json.loads(journal.timeline(run_id).steps[index].state)


def statuses(journal: Journal, run_id: str) -> list[str]:
    """The status of each step of a run, in order."""
    return [s.status for s in journal.timeline(run_id).steps]


def event_kinds(journal: Journal, run_id: str) -> list[tuple[int | None, str]]:
    """(step index or None, kind) of each event of a run, in order."""
    return [(e.index, e.kind) for e in journal.timeline(run_id).events]


def write_run(
    journal: Journal,
    run_id: str,
    steps: Sequence[tuple[str, str, str]],
    *,
    name: str = "foreign",
    status: str = "running",
    policies: str | None = None,
    kind: str = "sync",
) -> None:
    """Write a run as some other program (or version) would: steps are (type, state, status).

    Uses the backend interface every journal implements (create), so that a
    test can put in what a queue of this process could not (an unknown type,
    a state the type refuses, retry policies as JSON for every step).
    """
    journal.create(
        {
            "run_id": run_id,
            "name": name,
            "kind": kind,
            "status": status,
            "resumable": 0,
            "steps": len(steps),
            "started": sum(1 for s in steps if s[2] != "pending"),
        },
        [
            {"idx": i, "type": t, "state": s, "policies": policies}
            for i, (t, s, _) in enumerate(steps)
        ],
        [
            ("step", i, {"status": st, "attempts": 1, "started_at": journal.clock()})
            for i, (_, _, st) in enumerate(steps)
            if st != "pending"
        ],
    )


class ArmedFault:
    """An ``inject_faults`` hook: once :meth:`arm` is called (from an action, say), the next
    journal write raises ``error()`` (every later one too with ``every=True``)."""

    def __init__(
        self,
        error: Callable[[], BaseException],
        *,
        every: bool = False,
        interrupt_on_arm: bool = False,
    ) -> None:
        self.error, self.every, self.interrupt_on_arm = error, every, interrupt_on_arm
        self.armed = False

    def arm(self) -> None:
        """Arm; with ``interrupt_on_arm``, raise KeyboardInterrupt here too (a first Ctrl-C)."""
        self.armed = True
        if self.interrupt_on_arm:
            raise KeyboardInterrupt

    def __call__(self, point: str) -> None:
        if point == "before_commit" and self.armed:
            self.armed = self.every
            raise self.error()
