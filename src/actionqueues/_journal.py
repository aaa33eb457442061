"""The journal interface: what a durable run records, and how backends are chosen.

A :class:`Journal` keeps runs (one per journaled queue), their steps and a
timeline of events. Queues write to it through a small set of primitives,
each one atomic (one transaction): :meth:`Journal.create` and
:meth:`Journal.commit`. Recovery claims runs whose owner is gone with
:meth:`Journal.claim`. Backends are chosen by URL with :func:`open_journal`:

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or a plain
  path: the embedded default (stdlib :mod:`sqlite3`), WAL with
  ``synchronous=FULL``;
- ``sqlite://`` (no path): a private in-memory database (tests, demos);
- ``postgresql://user@host/db?schema=NAME``: for many machines (the
  ``actionqueues[postgres]`` extra: psycopg 3 and psycopg_pool).
"""

from __future__ import annotations

import abc
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._errors import ActionQueuesError, bad_argument

__all__ = [
    "ACTIVE_STATUSES",
    "FAULT_POINTS",
    "Journal",
    "JournalError",
    "LeaseLost",
    "RunEvent",
    "RunInfo",
    "RunStatus",
    "RunTimeline",
    "StepRecord",
    "default_journal_url",
    "open_journal",
]

#: The status of a journaled run.
RunStatus = Literal[
    "running", "failed", "succeeded", "rolling_back", "rolled_back", "needs_attention"
]
#: Runs in these states belong to a live owner; when its lease expires, recovery finishes them.
ACTIVE_STATUSES: Final = ("running", "failed", "rolling_back")
#: A run in one of these states is finished: it keeps no lease.
TERMINAL_STATUSES: Final = frozenset({"succeeded", "rolled_back", "needs_attention"})

#: The named points where :func:`actionqueues.testing.inject_faults` can crash a journaled run.
FAULT_POINTS: Final = (
    "before_step_record",  # execute() about to be recorded as started
    "after_step_record",  # recorded, execute() not called yet
    "after_execute",  # execute() returned; its result is not committed yet
    "before_finish_record",  # every step ran; the run's outcome is not committed yet
    "before_rollback_record",  # rollback() of a step about to be recorded as started
    "after_rollback_record",  # recorded, rollback() not called yet
    "after_rollback",  # rollback() returned; its outcome is not committed yet
    "before_commit",  # inside a journal transaction, before COMMIT
    "after_commit",  # a journal transaction has just committed
)

_fault_hook: Callable[[str], None] | None = None


def fault(point: str) -> None:
    """Call the injected fault hook (tests only) at a named point."""
    hook = _fault_hook
    if hook is not None:
        hook(point)


def set_fault_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Install ``hook`` (or remove it with None); return the previous one."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


class JournalError(ActionQueuesError):
    """A journal could not be opened, read or written; the message says what and where.

    Attributes:
        url: The journal's URL (or path).
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url))


class LeaseLost(JournalError):
    """Another process claimed the run (its lease had expired): this one must stop.

    Attributes:
        run_id: The run.
        owner: This process's owner id, which no longer holds it.
    """

    def __init__(self, run_id: str, owner: str, url: str = "") -> None:
        super().__init__(
            f"run {run_id} is no longer owned by {owner}: its lease expired and another "
            f"process claimed it (a heartbeat that cannot keep up, or a paused process); "
            f"this process stopped writing to it",
            url,
        )
        self.run_id = run_id
        self.owner = owner

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.owner, self.url))


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One journaled run, as listed by :meth:`Journal.runs`.

    Attributes:
        run_id: Its id (a UUID string).
        name: The queue's name.
        kind: ``"sync"`` or ``"async"`` (which queue ran it).
        status: See :data:`RunStatus`.
        resumable: Whether recovery may resume it forward.
        owner: The process that holds it (``host:pid:nonce``), if any.
        lease_expires_at: When the owner's lease ends (Unix time).
        created_at: When it started (Unix time).
        updated_at: When it last changed (Unix time).
        finished_at: When it reached succeeded/rolled_back/needs_attention.
        steps: How many steps it has.
        started: How many steps were started.
        error: The error that failed it, or why it needs attention.
        recoveries: How many times recovery claimed it.
    """

    run_id: str
    name: str
    kind: str
    status: str
    resumable: bool
    owner: str | None
    lease_expires_at: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    steps: int
    started: int
    error: str | None
    recoveries: int


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of a journaled run.

    Attributes:
        index: Its position (0 is the first).
        type: Its registered type name.
        state: Its last recorded state, as JSON text.
        status: ``pending``, ``running``, ``succeeded``, ``failed``,
            ``rolling_back``, ``rolled_back`` or ``rollback_failed``.
        attempts: Calls of ``execute`` made (a crash counts the call in flight).
        rollback_attempts: Calls of ``rollback`` made.
        next_retry_at: When the next call is due, while a retry waits (Unix time).
        started_at: When ``execute`` was first called.
        finished_at: When ``execute`` returned or failed for good.
        rollback_started_at: When ``rollback`` was first called.
        rollback_finished_at: When ``rollback`` returned or failed for good.
        error: How ``execute`` failed.
        rollback_error: How ``rollback`` failed.
        policies: The limits and delays of the step's retry policies, as JSON
            (``{"execute": {...} | null, "rollback": {...} | null}``), or None.
    """

    index: int
    type: str
    state: str
    status: str
    attempts: int
    rollback_attempts: int
    next_retry_at: float | None
    started_at: float | None
    finished_at: float | None
    rollback_started_at: float | None
    rollback_finished_at: float | None
    error: str | None
    rollback_error: str | None
    policies: str | None = None

    @property
    def started(self) -> bool:
        """Whether ``execute`` was called (so the step must be rolled back)."""
        return self.status != "pending"


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One entry of a run's timeline besides its steps' own fields.

    Attributes:
        at: When (Unix time).
        index: The step, or None for the run.
        kind: ``retry``, ``failed``, ``rollback_retry``, ``rollback_failed``,
            ``claimed``, ``released``, ``unrecoverable``, ``passed_on``.
        detail: Free text (the error, the delay, the new owner).
    """

    at: float
    index: int | None
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class RunTimeline:
    """A run with its steps and events (:meth:`Journal.timeline`)."""

    run: RunInfo
    steps: tuple[StepRecord, ...]
    events: tuple[RunEvent, ...] = field(default=())


# A write operation of one commit; see Journal.commit.
Op = tuple[Any, ...]


#: How many forks made this process from the one that started (see Journal._check_usable):
#: reading it costs nothing, unlike os.getpid(), a system call, on every journal write.
#: Python's own fork paths (os.fork, multiprocessing) count; a bare C fork() that skips
#: PyOS_AfterFork_Child does not.
_FORKS = [0]


def _count_fork() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork()
    os.register_at_fork(after_in_child=_count_fork)


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Journal(abc.ABC):
    """Where journaled runs are recorded; backends subclass it.

    Use :func:`open_journal` to get one. A journal is safe to share between
    the queues and threads of one process, and is closed with :meth:`close`
    (or a ``with`` block). It keeps the leases of the runs this process owns
    alive from a background thread (the heartbeat).

    Args:
        lease: Seconds a run stays owned after its owner's last sign of life;
            the heartbeat renews leases every third of that.
        clock: Returns the wall-clock time in seconds (default :func:`time.time`);
            leases and timestamps use it.
        owner: This process's owner id (default ``host:pid:random``).
        heartbeat: Whether to renew leases from a background thread.
    """

    url: str

    def __init__(
        self,
        *,
        lease: float = 30.0,
        clock: Callable[[], float] | None = None,
        owner: str | None = None,
        heartbeat: bool = True,
    ) -> None:
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < 1e9:
            raise bad_argument(
                lease,
                (int, float),
                f"lease must be a number of seconds > 0 and < 1e9 (about 31 years), got {lease!r}",
            )
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning Unix time, got {clock!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise bad_argument(owner, (str,), f"owner must be a non-empty string, got {owner!r}")
        self.lease = float(lease)
        self.clock: Callable[[], float] = clock or time.time
        self.owner = owner or _default_owner()
        self._heartbeat_on = heartbeat
        self._tracked: dict[str, weakref.ref[object]] = {}
        self._tracked_lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._forks = _FORKS[0]
        self.closed = False

    def _check_usable(self) -> None:
        """Refuse use after close(), and in a child process forked after opening."""
        if self.closed:
            raise JournalError(f"the journal {self.url} is closed", self.url)
        if _FORKS[0] != self._forks:
            raise JournalError(
                f"the journal {self.url} was opened by process {self._pid} before it forked; "
                f"open a journal of its own in this process ({os.getpid()}), after the fork",
                self.url,
            )

    # -- writing ------------------------------------------------------------------

    @abc.abstractmethod
    def create(
        self, run: dict[str, Any], steps: Sequence[dict[str, Any]], ops: Sequence[Op]
    ) -> None:
        """Atomically insert a run (owned by this journal's owner) and its steps; apply ``ops``."""

    @abc.abstractmethod
    def commit(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], *, renew: bool = True
    ) -> None:
        """Atomically update run ``run_id`` with ``run``'s columns and apply ``ops``.

        Each op is ``("step", index, {column: value})`` or
        ``("event", index_or_None, kind, detail)``. The run's lease is renewed
        in the same transaction, unless ``renew`` is false and ``run`` is
        empty: then the run is only checked to be held by this owner.

        Raises:
            LeaseLost: the run is not owned by this journal's owner any more.
            JournalError: the write failed; nothing of it was applied.
        """

    async def acreate(
        self, run: dict[str, Any], steps: Sequence[dict[str, Any]], ops: Sequence[Op]
    ) -> None:
        """:meth:`create`, awaited: what :class:`~actionqueues.AsyncActionQueue` calls.

        The PostgreSQL journal sends it over an async connection, so the event
        loop runs other tasks meanwhile; by default (SQLite) it is :meth:`create`
        itself, made from the loop's thread.
        """
        self.create(run, steps, ops)

    async def acommit(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], *, renew: bool = True
    ) -> None:
        """:meth:`commit`, awaited (see :meth:`acreate`)."""
        self.commit(run_id, run, ops, renew=renew)

    async def aclose(self) -> None:
        """:meth:`close` from async code: also closes the connections of the running loop."""
        self.close()

    async def _aclose_loop(self) -> None:  # noqa: B027 - a hook, a no-op by default
        """Close the connections opened for the running event loop, which is about to end."""

    # -- recovery -----------------------------------------------------------------

    @abc.abstractmethod
    def claim(
        self, run_id: str | None = None, *, statuses: Iterable[str] = ACTIVE_STATUSES
    ) -> RunTimeline | None:
        """Atomically take over one run whose lease expired; return it, or None.

        With ``run_id``, take that run if its status is one of ``statuses``
        and it is not held by a live owner.
        """

    @abc.abstractmethod
    def release(self, run_id: str) -> None:
        """Give up this owner's claim on ``run_id`` at once (recovery may claim it).

        The run has no owner afterwards, so this owner's next write to it
        raises :class:`LeaseLost`.
        """

    @abc.abstractmethod
    def renew(self, run_ids: Sequence[str]) -> None:
        """Extend this owner's leases on ``run_ids`` (the heartbeat)."""

    # -- reading ------------------------------------------------------------------

    @abc.abstractmethod
    def runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        older_than: float | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Runs, newest first; filtered by status(es), name, and age in seconds."""

    @abc.abstractmethod
    def timeline(self, run_id: str) -> RunTimeline:
        """One run with its steps and events.

        Raises:
            KeyError: no run has that id (a unique prefix of 8+ characters works too).
        """

    # -- lifecycle ----------------------------------------------------------------

    def track(self, run_id: str, owner_object: object) -> None:
        """Keep ``run_id``'s lease alive while ``owner_object`` lives (or until untracked)."""
        with self._tracked_lock:
            self._tracked[run_id] = weakref.ref(owner_object)
            if self._heartbeat_on and self._beat is None and not self.closed:
                self._beat = threading.Thread(
                    target=self._beat_loop, name="actionqueues-heartbeat", daemon=True
                )
                self._beat.start()

    def untrack(self, run_id: str) -> None:
        """Stop renewing ``run_id``'s lease."""
        with self._tracked_lock:
            self._tracked.pop(run_id, None)

    def heartbeat(self) -> int:
        """Renew the leases of the tracked runs whose queue is still alive; return how many."""
        with self._tracked_lock:
            dead = [r for r, ref in self._tracked.items() if ref() is None]
            for run_id in dead:
                del self._tracked[run_id]
            alive = list(self._tracked)
        if alive:
            self.renew(alive)
        return len(alive)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.heartbeat()
            except Exception:  # logged; the next beat tries again
                logging.getLogger("actionqueues").exception(
                    "journal heartbeat failed (%s); leases may expire",
                    self.url,
                    extra={"aq_event": "heartbeat_failed"},
                )

    def close(self) -> None:
        """Stop the heartbeat and close the connection(s); closing twice is harmless."""
        self.closed = True
        self._stop.set()
        beat = self._beat
        if beat is not None and beat is not threading.current_thread():
            beat.join()
        self._beat = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} owner={self.owner}>"


def default_journal_url() -> str:
    """The journal the CLI uses without ``--journal``.

    ``$ACTIONQUEUES_JOURNAL`` if set, else the SQLite file
    ``$XDG_DATA_HOME/actionqueues/runs.db`` (``~/.local/share/actionqueues/runs.db``).
    """
    env = os.environ.get("ACTIONQUEUES_JOURNAL")
    if env:
        return env
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return "sqlite:///" + os.path.abspath(os.path.join(base, "actionqueues", "runs.db"))


def sqlite_path(url: str) -> str | None:
    """The file (or ``":memory:"``) a SQLite journal URL names; None for another scheme.

    Raises:
        ValueError: a malformed ``sqlite:`` URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        if url.lower().startswith(("sqlite:", "postgresql:", "postgres:")):  # not a path
            raise ValueError(
                f"malformed journal URL {url!r}: use sqlite:///relative/path.db, "
                f"sqlite:////absolute/path.db, sqlite:// (in memory) or postgresql://..."
            )
        return url
    if scheme.lower() != "sqlite":
        return None
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(
            f"a SQLite journal URL is sqlite:///relative/path.db or "
            f"sqlite:////absolute/path.db (three or four slashes), got {url!r}"
        )
    return rest[1:]


def open_journal(url: str | os.PathLike[str], **options: Any) -> Journal:
    """Open (creating or migrating as needed) the journal at ``url``.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a plain
            file path, ``sqlite://`` (in memory), or
            ``postgresql://user[:password]@host[:port]/database``, whose query
            may set ``schema``, ``table_prefix``, ``pool_size`` and
            ``connect_timeout`` besides libpq's own options.
        **options: Passed to the backend: ``lease``, ``clock``, ``owner``,
            ``heartbeat`` (see :class:`Journal`); for SQLite also
            ``busy_timeout`` (seconds to wait for another writer, default 30)
            and ``read_only``; for PostgreSQL the query options above.

    Raises:
        ImportError: a ``postgresql://`` URL without the ``actionqueues[postgres]`` extra.
        ValueError: the URL's scheme is not supported.
        JournalError: the journal cannot be opened: not a journal, corrupt,
            written by a newer actionqueues, or not writable.
    """
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"a journal URL is a string like 'sqlite:///runs.db', got {url!r}")
    text = os.fspath(url)
    path = sqlite_path(text)
    if path is not None:
        from ._sqlite import SQLiteJournal  # noqa: PLC0415 - backends load on demand

        return SQLiteJournal(path, **options)
    scheme = text.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        from ._postgres import open_postgres  # noqa: PLC0415 - backends load on demand

        return open_postgres(text, **options)
    raise ValueError(
        f"unsupported journal URL {redact(text)!r}: use sqlite:///path.db (embedded), "
        f"sqlite:// (in memory) or postgresql://..."
    )


def redact(url: str) -> str:
    """``url`` without its password (for messages and ``Journal.url``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
        if password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:  # not a URL urllib can take apart (a bad port, a bad IPv6 address)
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***" if sep and "@" in rest.partition("/")[0] else url
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def step_key(run_id: str, index: int) -> str:
    """The idempotency key of step ``index`` of run ``run_id``."""
    return f"{run_id}:{index}"


def as_statuses(status: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Normalise a status filter, refusing unknown names."""
    if status is None:
        return None
    names = (status,) if isinstance(status, str) else tuple(status)
    known = ("running", "failed", "succeeded", "rolling_back", "rolled_back", "needs_attention")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown run status {name!r}; expected one of {', '.join(known)}")
    return names
