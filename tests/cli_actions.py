"""Registered actions for the command-line tests (``--import cli_actions``).

Each action puts one key into :data:`LEDGER` and takes it out on rollback.
A key in :data:`FAILING_UNDO` makes its rollback fail (until the test
"fixes the cause" by removing it); ``fail=True`` makes ``execute`` fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from actionqueues import Action, register_action

#: What the actions did to the outside world: key -> who put it.
LEDGER: dict[str, str] = {}
#: Keys whose rollback raises.
FAILING_UNDO: set[str] = set()


@register_action("cli_tests.put")
@dataclass
class Put(Action):
    """Puts ``key`` into the ledger; removes it on rollback."""

    key: str
    fail: bool = False

    def execute(self) -> None:
        if self.fail:
            raise ValueError(f"cannot put {self.key}")
        LEDGER[self.key] = "put"

    def rollback(self) -> None:
        if self.key in FAILING_UNDO:
            raise RuntimeError(f"cannot remove {self.key}")
        LEDGER.pop(self.key, None)
