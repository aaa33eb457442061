r"""0.8.2's state machine for queue calls, kept for code that imports it.

:class:`~actionqueues.ActionQueue` enforces the same rules itself. A refused
transition raises :class:`~actionqueues.QueueStateError`, which is an
``AssertionError`` as in 0.8.2, but is a real check that also runs under
``python -O``::

    INIT
     |
     | <-\
     v   |
    ADD -/
     |
     V
    EXECUTE -> EXECUTE_COMPLETE
     |           |
     v           |
    ROLLBACK  <--/
     |
     v
    ROLLBACK_COMPLETE
"""

from __future__ import annotations

from ._errors import QueueStateError

__all__ = [
    "AQStateMachine",
    "AQStateMachine_ADD",
    "AQStateMachine_EXECUTE",
    "AQStateMachine_EXECUTE_COMPLETE",
    "AQStateMachine_INIT",
    "AQStateMachine_ROLLBACK",
    "AQStateMachine_ROLLBACK_COMPLETE",
]

AQStateMachine_INIT = 0
AQStateMachine_ADD = 1
AQStateMachine_EXECUTE = 2
AQStateMachine_ROLLBACK = 3
AQStateMachine_EXECUTE_COMPLETE = 4
AQStateMachine_ROLLBACK_COMPLETE = 5

_NAMES = {
    AQStateMachine_INIT: "INIT",
    AQStateMachine_ADD: "ADD",
    AQStateMachine_EXECUTE: "EXECUTE",
    AQStateMachine_ROLLBACK: "ROLLBACK",
    AQStateMachine_EXECUTE_COMPLETE: "EXECUTE_COMPLETE",
    AQStateMachine_ROLLBACK_COMPLETE: "ROLLBACK_COMPLETE",
}


class AQStateMachine:
    """The transitions an action queue may make (0.8.2 semantics).

    1. One or more calls to ADD
    2. One call to EXECUTE
    3. One call to ROLLBACK (after EXECUTE, whether or not it completed)

    Attributes:
        state: The current state, one of the ``AQStateMachine_*`` constants.
    """

    def __init__(self) -> None:
        self.state = AQStateMachine_INIT

    def _move(self, call: str, allowed: tuple[int, ...], target: int) -> None:
        if self.state not in allowed:
            state = _NAMES.get(self.state, repr(self.state))
            expected = " or ".join(_NAMES[a] for a in allowed)
            raise QueueStateError(
                f"AQStateMachine.{call}() is not allowed in state {state}; "
                f"it needs state {expected}",
                call=call,
                state=state,
            )
        self.state = target

    def transition_to_add(self) -> None:
        """Move to ADD (allowed from INIT and ADD)."""
        self._move(
            "transition_to_add", (AQStateMachine_INIT, AQStateMachine_ADD), AQStateMachine_ADD
        )

    def transition_to_execute(self) -> None:
        """Move to EXECUTE (allowed from ADD)."""
        self._move("transition_to_execute", (AQStateMachine_ADD,), AQStateMachine_EXECUTE)

    def transition_to_rollback(self) -> None:
        """Move to ROLLBACK (allowed from EXECUTE and EXECUTE_COMPLETE)."""
        self._move(
            "transition_to_rollback",
            (AQStateMachine_EXECUTE, AQStateMachine_EXECUTE_COMPLETE),
            AQStateMachine_ROLLBACK,
        )

    def transition_to_execute_complete(self) -> None:
        """Move to EXECUTE_COMPLETE (allowed from EXECUTE)."""
        self._move(
            "transition_to_execute_complete",
            (AQStateMachine_EXECUTE,),
            AQStateMachine_EXECUTE_COMPLETE,
        )

    def transition_to_rollback_complete(self) -> None:
        """Move to ROLLBACK_COMPLETE (allowed from ROLLBACK)."""
        self._move(
            "transition_to_rollback_complete",
            (AQStateMachine_ROLLBACK,),
            AQStateMachine_ROLLBACK_COMPLETE,
        )
