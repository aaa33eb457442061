"""The result of ``ActionQueue.rollback()``."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import RollbackError

__all__ = ["RollbackFailure", "RollbackReport"]


@dataclass(frozen=True, slots=True)
class RollbackFailure:
    """One action whose ``rollback`` raised (after any retries).

    Attributes:
        index: The action's position in the queue (0 is the first added).
        action: The action itself.
        error: The exception its ``rollback`` raised.
    """

    index: int
    action: object
    error: BaseException


@dataclass(frozen=True, slots=True)
class RollbackReport:
    """What ``rollback()`` did.

    Attributes:
        rolled_back: The actions whose ``rollback`` succeeded, in the order
            they were rolled back (the reverse of the order they started).
        failures: The actions whose ``rollback`` raised, in the order they
            were attempted. Each error was also logged on the
            ``actionqueues`` logger at ERROR, with its traceback.
    """

    rolled_back: tuple[object, ...]
    failures: tuple[RollbackFailure, ...]

    @property
    def ok(self) -> bool:
        """True when every started action rolled back without an error."""
        return not self.failures

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """The exceptions of the failed rollbacks, in the order they were attempted."""
        return tuple(f.error for f in self.failures)

    def raise_for_errors(self) -> None:
        """Raise :class:`~actionqueues.RollbackError` if any rollback failed."""
        if self.failures:
            raise RollbackError(self)


_new = object.__new__
# The slot descriptors write the fields directly, as the dataclass __init__ would.
_set_rolled_back = vars(RollbackReport)["rolled_back"].__set__
_set_failures = vars(RollbackReport)["failures"].__set__


def new_report(
    rolled_back: tuple[object, ...], failures: tuple[RollbackFailure, ...]
) -> RollbackReport:
    """Build a report without the frozen dataclass ``__init__`` (rollback's hot path)."""
    report: RollbackReport = _new(RollbackReport)
    _set_rolled_back(report, rolled_back)
    _set_failures(report, failures)
    return report
