"""The journal for many machines: PostgreSQL, through psycopg 3 and psycopg_pool.

Install the extra: ``pip install 'actionqueues[postgres]'``. The journal's
tables live in a schema of your choice (``?schema=`` in the URL, default
``public``) under a table prefix (``?table_prefix=``, default ``aq_``), are
created and migrated by the library, and are shared by every process that
opens the same URL. Recovery claims runs with ``SELECT ... FOR UPDATE SKIP
LOCKED``, so any number of workers on any number of machines may recover at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import re
import select
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._errors import bad_argument
from ._journal import JournalError, LeaseLost, Op, fault, redact
from ._registry import json_encoder
from ._sql import (
    RUN_STORED,
    STEP_COLUMNS,
    TERMINAL,
    UPDATABLE_RUN,
    UPDATABLE_STEP,
    SQLJournal,
    check_columns,
)

if TYPE_CHECKING:  # pragma: no cover
    import psycopg_pool

__all__ = ["PostgresJournal"]

logger = logging.getLogger("actionqueues")

_R = TypeVar("_R")
_V = TypeVar("_V")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_OUR_OPTIONS = ("schema", "table_prefix", "pool_size", "connect_timeout")
_MISSING = object()
_json_ascii = json_encoder(ensure_ascii=True, allow_nan=True)  # json.dumps's, compact
_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE: no transaction open on the connection
_TUPLES_OK = 2  # psycopg.pq.ExecStatus.TUPLES_OK: a statement's rows
_COMMAND_OK = 1  # psycopg.pq.ExecStatus.COMMAND_OK: a statement without rows (PREPARE, UPDATE)
_READABLE, _WRITABLE = 0, 1  # what a statement waits for on its socket
_BACK_TO_POOL = 1000  # every so many statements, the spare connection goes back to the pool
#: An async connection idle this long (seconds) is closed, not lent (psycopg_pool's max_idle):
#: a worker thread's event loop lives for days, and firewalls drop idle connections silently.
_MAX_IDLE = 600.0
_HAS_POLL = hasattr(select, "poll")
#: A new step's columns that are not NULL, when the create does not give them.
_STEP_DEFAULTS = {"status": "'pending'", "attempts": "0", "rollback_attempts": "0"}


def _tcp_defaults(psycopg: Any, url: str, lease: float) -> dict[str, str]:
    """TCP settings that notice a vanished server well within ``lease`` seconds.

    A failover, or a firewall that forgot the connection, leaves a statement
    waiting for the system's keepalive (two hours). Here a silent server is
    given up after about a third of the lease (keepalive probes after
    ``lease/3`` s of silence, 3 more at ``lease/10`` s; a sent packet left
    unacknowledged ``lease/3`` s, libpq 12+), so a commit sent again on a new
    connection still renews the lease in time, and the heartbeat's renewal
    (every third of the lease) fails before the lease is over. A setting the URL
    gives wins; with a service file (``service=``, or ``PGSERVICE``) none is set,
    so that the file's own settings are not overridden.
    """
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:  # a malformed URL: connecting says what is wrong with it
        given = {}
    if "service" in given or os.environ.get("PGSERVICE"):
        return {}
    third = max(1, round(lease / 3))
    defaults = {
        "keepalives": "1",
        "keepalives_idle": str(third),
        "keepalives_interval": str(max(1, round(lease / 10))),
        "keepalives_count": "3",
    }
    if psycopg.pq.version() >= 120000:
        defaults["tcp_user_timeout"] = str(third * 1000)  # ms
    return {key: value for key, value in defaults.items() if key not in given}


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg  # noqa: PLC0415 - an optional dependency, loaded on demand
        import psycopg_pool  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "PostgreSQL journals need the actionqueues[postgres] extra (psycopg 3 and "
            "psycopg_pool): pip install 'actionqueues[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def _identifier(name: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{name} must be a lowercase SQL identifier (letters, digits, _; at most 40 "
            f"characters, not starting with a digit), got {value!r}"
        )
    return value


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The libpq URL without actionqueues' own query options, and those options."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OUR_OPTIONS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OUR_OPTIONS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), ours


def _fenced_by_steps(shape: tuple[Any, ...]) -> bool:
    """A commit of step columns only (no run column, no lease, no event)."""
    run_keys, step_keys, events = shape
    return run_keys is None and bool(step_keys) and not events


def _columns_by_step(step_keys: tuple[tuple[str, ...], ...]) -> dict[str, tuple[int, ...]]:
    """Each column some of these steps set (in order), and which of them (by position) set it."""
    columns: dict[str, tuple[int, ...]] = {}
    for n, keys in enumerate(step_keys):
        for column in keys:
            columns[column] = (*columns.get(column, ()), n)
    return columns


@functools.lru_cache(maxsize=256)
def _case_order(step_keys: tuple[tuple[str, ...], ...]) -> tuple[tuple[int, str], ...]:
    """The (step position, column) of each ``WHEN`` of a several-step commit, in order."""
    return tuple((n, c) for c, steps in _columns_by_step(step_keys).items() for n in steps)


def _numbered(sql: str) -> str:
    """``sql`` with its ``%s`` placeholders numbered as libpq takes them: ``$1``, ``$2``..."""
    parts = sql.split("%s")
    if any("%" in part for part in parts):  # our own statements never hold one
        raise ValueError(f"a statement with a % that is not a placeholder: {sql!r}")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def _without_nul(value: _V) -> _V:
    r"""``value``, a str's NULs written as the four characters ``\x00``.

    PostgreSQL's text cannot hold NUL (SQLite's can), and an error message may
    carry one: recorded this way, the failure is kept rather than refused.
    """
    if isinstance(value, str) and "\x00" in value:
        return cast("_V", value.replace("\x00", "\\x00"))
    return value


def _texts(params: Sequence[Any]) -> list[bytes | None] | None:
    r"""``params`` in libpq's text format, or None if one needs psycopg's adaptation.

    Only str, int, float and None are written here, a str's NULs as ``\x00``
    (see :func:`_without_nul`: libpq would cut the text at the first one).
    """
    texts: list[bytes | None] = []
    append = texts.append
    for value in params:
        kind = type(value)
        if kind is str:
            text = value.replace("\x00", "\\x00") if "\x00" in value else value
            try:
                append(text.encode())
            except UnicodeEncodeError:  # a lone surrogate: psycopg reports it
                return None
        elif value is None:
            append(None)
        elif kind is float:
            append(repr(value).encode())  # repr round-trips; 'inf' and 'nan' too
        elif kind is int:
            append(b"%d" % value)
        else:
            return None
    return texts


def _wait_for(fd: int, wait: int) -> None:
    """Block until ``fd`` is readable (``_READABLE``) or writable (``_WRITABLE``).

    ``poll()``, which takes any descriptor (``select()`` refuses those past
    1023, which a process with many open files reaches); ``select()`` where
    there is no ``poll()`` (Windows).
    """
    if _HAS_POLL:
        waiter = select.poll()
        waiter.register(fd, select.POLLIN if wait == _READABLE else select.POLLOUT)
        waiter.poll()
    elif wait == _READABLE:  # pragma: no cover - Windows
        select.select([fd], [], [])
    else:  # pragma: no cover - Windows
        select.select([], [fd], [])


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, wait: int) -> None:
    """Return once ``fd`` is readable (``_READABLE``) or writable (``_WRITABLE``)."""
    ready = loop.create_future()

    def wake() -> None:
        with contextlib.suppress(asyncio.InvalidStateError):  # called again before we resume
            ready.set_result(None)

    if wait == _READABLE:
        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
    else:
        loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


class _AsyncConnections:
    """The async connections of one event loop: a small pool with no tasks of its own.

    (psycopg_pool's ``AsyncConnectionPool`` runs maintenance tasks; at a loop's
    end ``asyncio.run`` cancels them, and one cancelled while it reconnects
    swallows the cancellation and hangs the loop's shutdown.) A connection is
    lent for one statement; one that failed, or is not idle, is closed.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        size: int,
        url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._idle: list[tuple[Any, float]] = []  # (connection, idle since: clock())
        self._slots = asyncio.Semaphore(size)
        self._url = url
        self.closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """Lend a connection (at most ``size`` at once): an idle one, or a new one."""
        async with self._slots:
            if self.closed:
                raise JournalError(f"the journal {self._url} is closed", self._url)
            # The oldest first: those idle too long are closed (a firewall may have
            # dropped them), so the pool shrinks back after a burst; then the newest is lent.
            now = self._clock()
            while self._idle and now - self._idle[0][1] >= _MAX_IDLE:
                await _discard(self._idle.pop(0)[0])
            conn = self._idle.pop()[0] if self._idle else await self._connect()
            try:
                yield conn
            except BaseException:
                await _discard(conn)  # in an unknown state
                raise
            if self.closed or conn.closed or conn.info.transaction_status != _IDLE:
                await _discard(conn)
            else:
                self._idle.append((conn, self._clock()))

    async def check(self) -> None:
        """Close the idle connections: after one was lost, the others may be dead too."""
        await self._close_idle()

    async def close(self) -> None:
        """Close the idle connections; those lent are closed when they come back."""
        self.closed = True
        await self._close_idle()

    async def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await _discard(conn)


async def _discard(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


class PostgresJournal(SQLJournal):
    r"""A journal in a PostgreSQL database; open it with :func:`~actionqueues.open_journal`.

    Every commit is durable when it returns (with the server's default
    ``synchronous_commit=on``). Connections come from a pool shared by the
    process's queues, threads and heartbeat. A queue's commits are single
    statements, sent again on a new connection if the connection is lost
    (whether it was lost before or after the server applied them: they are
    written so that sending one twice changes nothing). Only the
    transactions of recovery (a claim) and of the heartbeat cannot be resent
    blindly: one whose connection is lost while committing raises
    :class:`JournalError` saying that its outcome is unknown. PostgreSQL text
    cannot hold NUL: one in a run's name, an error or an event's detail is
    written as the four characters ``\x00``.

    Args:
        url: ``postgresql://user[:password]@host[:port]/database``; libpq
            options may follow in the query (``?sslmode=require``).
        schema: The schema of the journal's tables (created if missing).
        table_prefix: The prefix of their names.
        pool_size: The most connections of each of the journal's pools: the
            blocking one (queues, heartbeat, recovery) and, for
            ``AsyncActionQueue``, the async one of each event loop.
        connect_timeout: Seconds to wait for the server when opening.
        read_only: Only read an existing journal (``runs()``, ``timeline()``):
            nothing is created or migrated, and writing raises
            :class:`JournalError`.
        **options: See :class:`~actionqueues.Journal`.
    """

    real_type = "DOUBLE PRECISION"
    serial_type = "BIGSERIAL PRIMARY KEY"
    # Room on each page for a row's next versions: a step's updates then stay on its
    # page (HOT updates, no index writes).
    updated_table_options = " WITH (fillfactor = 70)"
    claim_lock = "FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        table_prefix: str = "aq_",
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        read_only: bool = False,
        **options: Any,
    ) -> None:
        psycopg, pool_module = _import_psycopg()
        super().__init__(**options)
        self.schema = _identifier("schema", schema)
        self.prefix = _identifier("table_prefix", table_prefix)
        if type(pool_size) is not int or pool_size < 1:
            raise bad_argument(
                pool_size, (int,), f"pool_size must be an int >= 1, got {pool_size!r}"
            )
        if type(connect_timeout) not in (int, float) or not 0 < connect_timeout < math.inf:
            raise bad_argument(
                connect_timeout,
                (int, float),
                f"connect_timeout must be a number of seconds > 0, got {connect_timeout!r}",
            )
        self._psycopg = psycopg
        self.read_only = bool(read_only)
        shown = redact(url)
        query = f"schema={schema}" + (
            f"&table_prefix={table_prefix}" if table_prefix != "aq_" else ""
        )
        self.url = shown + ("&" if "?" in shown else "?") + query
        self.where = f"schema {schema} of {shown}"
        # A pool with no connection to give within its timeout, or closed: these
        # subclass OperationalError, but resending would only wait again.
        self._pool_errors = (pool_module.PoolTimeout, pool_module.PoolClosed)
        self._libpq_url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._connection_options = {
            "autocommit": True,
            "client_encoding": "utf8",  # what the statements' text parameters are written in
            "options": f"-c search_path={schema}",
            "application_name": f"actionqueues {self.owner}"[:63],
        }
        self._connection_options.update(_tcp_defaults(psycopg, url, self.lease))
        # AsyncActionQueue's connections: a small pool per event loop (an
        # async connection belongs to the loop that opened it), made on first use.
        self._apools: dict[asyncio.AbstractEventLoop, _AsyncConnections] = {}
        self._apool_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._keepers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}
        self._apools_guard = threading.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._spare: list[Any] = []  # see _lend()
        self._spare_lock = threading.Lock()
        self._spare_uses = 0
        self._waiting = 0  # threads waiting for the pool
        # Made here, not on first use: threads must share one of each (the names above all).
        self._statements: dict[Any, str] = {}  # the one-statement commits' SQL, by shape
        self._names: dict[str, bytes] = {}  # the prepared statements' names, by SQL
        # the statements prepared on each connection (by its libpq handle)
        self._prepared: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
        self._pool: psycopg_pool.ConnectionPool[Any] = pool_module.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=self._connection_options,
            open=False,
            name="actionqueues-journal",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except pool_module.PoolTimeout as exc:
            self._pool.close()
            raise self._unreachable(self._why_unreachable()) from exc
        try:
            if self.read_only:
                found = self._run_read(self._inspect)
                if found is None:
                    raise JournalError(
                        f"there is no actionqueues journal in {self.where}", self.url
                    )
            else:
                self._run_write(self._create_schema)
                self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def _owner_trigger(self) -> tuple[str, ...]:
        """The trigger giving a run's step rows its owner (PostgreSQL's dialect).

        It fires whenever the owner is written (a claim, a release), even with
        the value it had: a claim always leaves the steps with the run's owner.
        Its names are schema-qualified: it works whatever the search_path of the
        session that writes the owner.
        """
        t, schema = self.prefix, f'"{self.schema}"'
        return (
            f"CREATE FUNCTION {schema}.{t}steps_follow_owner() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN "
            f"UPDATE {schema}.{t}steps SET owner = NEW.owner WHERE run_id = NEW.run_id; "
            f"RETURN NULL; END $$",
            f"CREATE TRIGGER {t}steps_follow_owner AFTER UPDATE OF owner ON {schema}.{t}runs "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.{t}steps_follow_owner()",
        )

    def _create_schema(self, cur: Any) -> None:
        self._lock_schema(cur)  # two processes creating it at once would collide
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def create(
        self, run: dict[str, Any], steps: Sequence[dict[str, Any]], ops: Sequence[Op]
    ) -> None:
        """Insert a run and its steps, then apply ``ops`` (see :meth:`Journal.create`).

        One statement, so one round trip: the step ops are folded into the
        inserted rows, and the steps are sent as one JSON parameter whatever
        their number. If the connection is lost, it is sent again on a new
        one; the run's id then tells whether the first one landed.
        """
        sql, params, run_id = self._create_statement(run, steps, ops)
        self._writable()
        fault("before_commit")

        def send(resent: bool) -> tuple[str | None, bool]:
            return self._value(sql, params), resent

        self._check_created(*self._twice(send, "cannot write to the journal"), run_id)
        fault("after_commit")

    async def acreate(
        self, run: dict[str, Any], steps: Sequence[dict[str, Any]], ops: Sequence[Op]
    ) -> None:
        """:meth:`create` over this event loop's async connections."""
        sql, params, run_id = self._create_statement(run, steps, ops)
        self._writable()
        fault("before_commit")

        async def send(resent: bool) -> tuple[str | None, bool]:
            return await self._avalue(sql, params), resent

        found, resent = await self._atwice(send, "cannot write to the journal")
        self._check_created(found, resent, run_id)  # its rare read blocks: an error path
        fault("after_commit")

    def _create_statement(
        self, run: dict[str, Any], steps: Sequence[dict[str, Any]], ops: Sequence[Op]
    ) -> tuple[str, list[Any], str]:
        """create()'s statement and parameters, and the run's id."""
        now = self.clock()
        row = self._run_row(run, now)
        run_id = row["run_id"]
        # Each step as the columns it has (the others are NULL or their default).
        rows = {s["idx"]: {"idx": s["idx"], "type": s["type"], "state": s["state"]} for s in steps}
        for s in steps:
            if s.get("policies") is not None:
                rows[s["idx"]]["policies"] = s["policies"]
        events: list[tuple[Any, ...]] = []
        for op in ops:
            if op[0] == "step":
                _, index, columns = op
                check_columns(columns, UPDATABLE_STEP, "step")
                if index in rows:  # as the UPDATE of a step that is not there would do
                    rows[index].update(columns)
            else:
                events.append(op[1:])
        params: list[Any] = [row[c] for c in RUN_STORED]
        steps_json = _json_ascii(list(rows.values()))
        if "\\u0000" in steps_json:  # a NUL in a str (or that text itself): jsonb refuses NUL
            values = [{k: _without_nul(v) for k, v in r.items()} for r in rows.values()]
            steps_json = _json_ascii(values)
        params.append(steps_json)
        params += self._event_params(run_id, now, events)
        sql = self._statements.get(("create", len(events))) or self._create_sql(len(events))
        return sql, params, run_id

    def _check_created(self, found: str | None, resent: bool, run_id: str) -> None:
        """Refuse a run the statement did not insert: its id was taken.

        After a resend, the run found is our first send's (it landed before the
        connection was lost) if this journal owns it.
        """
        if found is None and (not resent or self._owner_of(run_id) != self.owner):
            raise JournalError(f"a run {run_id} is already in the journal {self.url}", self.url)

    def _create_sql(self, events: int) -> str:
        t = self.prefix
        # The steps' JSON read as rows of the steps table itself (its columns' types).
        columns = ", ".join(
            f"COALESCE(u.{c}, {_STEP_DEFAULTS[c]})" if c in _STEP_DEFAULTS else f"u.{c}"
            for c in STEP_COLUMNS
        )
        sql = (
            f"WITH r AS (INSERT INTO {t}runs ({', '.join(RUN_STORED)}) "
            f"VALUES ({', '.join(['%s'] * len(RUN_STORED))}) "
            f"ON CONFLICT (run_id) DO NOTHING RETURNING run_id, owner), "
            f"s AS (INSERT INTO {t}steps (run_id, owner, {', '.join(STEP_COLUMNS)}) "
            f"SELECT r.run_id, r.owner, {columns} "
            f"FROM r, jsonb_populate_recordset(NULL::{t}steps, %s::jsonb) AS u)"
            + self._events_sql(events, "EXISTS (SELECT 1 FROM r)")
            + " SELECT (SELECT run_id FROM r)"
        )
        self._statements[("create", events)] = sql
        return sql

    def _events_sql(self, events: int, condition: str) -> str:
        """The CTE inserting ``events`` events, in order, when ``condition`` holds.

        Each carries the commit's id and its position in it: if the commit is
        sent twice, the unique index ``events_once`` keeps one copy.
        """
        if not events:
            return ""
        t = self.prefix
        values = ", ".join(
            ["(%s::integer, %s, %s::double precision, %s::integer, %s, %s, %s)"] * events
        )
        return (
            f", e AS (INSERT INTO {t}events "
            f"(run_id, at, idx, kind, detail, commit_id, commit_seq) "
            f"SELECT v.run_id, v.at, v.idx, v.kind, v.detail, v.commit_id, v.n "
            f"FROM (VALUES {values}) AS v(n, run_id, at, idx, kind, detail, commit_id) "
            f"WHERE {condition} ORDER BY v.n "
            f"ON CONFLICT (run_id, commit_id, commit_seq) DO NOTHING)"
        )

    @staticmethod
    def _event_params(run_id: str, now: float, events: list[tuple[Any, ...]]) -> list[Any]:
        params: list[Any] = []
        commit_id = uuid.uuid4().hex if events else None
        for n, (index, kind, detail) in enumerate(events):
            params += [n, run_id, now, index, kind, detail, commit_id]
        return params

    def commit(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], *, renew: bool = True
    ) -> None:
        """Update run ``run_id`` and apply ``ops``, atomically (see :meth:`Journal.commit`).

        One statement, so one round trip: its writes apply only while this owner
        holds the run (a commit of step columns only checks the owner on each
        step row it updates; any other updates the run's row, or reads it ``FOR
        SHARE``, first). If
        the connection is lost, it is sent again on a new one: the run's and the
        steps' columns are simply written again, and the events the first send
        may have written are not written twice (they carry the commit's id).
        """
        shape, sql, params = self._commit_statement(run_id, run, ops, renew)
        self._writable()
        fault("before_commit")

        def send(resent: bool) -> str | None:
            return self._value(sql, params)

        value = self._twice(send, "cannot write to the journal")
        self._check_committed(value, run_id, shape, ops)
        fault("after_commit")

    async def acommit(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], *, renew: bool = True
    ) -> None:
        """:meth:`commit` over this event loop's async connections."""
        shape, sql, params = self._commit_statement(run_id, run, ops, renew)
        self._writable()
        fault("before_commit")

        async def send(resent: bool) -> str | None:
            return await self._avalue(sql, params)

        value = await self._atwice(send, "cannot write to the journal")
        self._check_committed(value, run_id, shape, ops)  # its rare read blocks: an error path
        fault("after_commit")

    def _commit_statement(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], renew: bool
    ) -> tuple[tuple[Any, ...], str, list[Any]]:
        """commit()'s statement shape (see :meth:`_commit_sql`), SQL and parameters."""
        now = self.clock()
        # One statement cannot update a row twice: merge the ops of each step, in order.
        merged: dict[int, dict[str, Any]] = {}
        events: list[tuple[Any, ...]] = []
        for op in ops:
            if op[0] == "step":
                index = op[1]
                merged[index] = {**merged[index], **op[2]} if index in merged else op[2]
            else:
                events.append(op[1:])
        writes_run = bool(run) or renew
        shape = (
            tuple(run) if writes_run else None,
            tuple(tuple(c) for c in merged.values()),
            len(events),
        )
        params: list[Any]
        if writes_run:
            # A finished run keeps no lease: a retry of its rollback may claim it at once.
            lease = 0.0 if run.get("status") in TERMINAL else now + self.lease
            params = [*run.values(), lease, now, run_id, self.owner]
        elif _fenced_by_steps(shape):
            sql = self._statements.get(shape) or self._commit_sql(shape)
            return shape, sql, self._step_rows_params(run_id, merged, shape[1])
        else:
            params = [run_id]
        for index, columns in merged.items():
            params += [*columns.values(), run_id, index, self.owner]
        if events:
            params += [*self._event_params(run_id, now, events), self.owner]
        return shape, self._statements.get(shape) or self._commit_sql(shape), params

    def _value(self, sql: str, params: Sequence[Any]) -> str | None:
        """The one value (as text) of the one row that ``sql`` returns, from a pooled connection.

        A statement that returns no rows (an UPDATE) gives how many rows it wrote.

        The hot path of every queue: the statement is prepared once per
        connection and run through libpq directly (``Connection.pgconn``),
        its parameters in text format; this skips psycopg's per-query work,
        which is about a fifth of a commit's time. Parameters it cannot write
        as text (see :func:`_texts`) go through psycopg's ``execute``. Errors
        are psycopg's (``psycopg.errors.error_from_result``), so a lost
        connection is an ``OperationalError`` as usual; a connection that
        fails, or is interrupted mid-statement, is closed and the pool
        replaces it.
        """
        texts = _texts(params)
        conn = self._lend()  # not _connection(): a context manager costs a commit 1.5 us
        try:
            if texts is None:
                cursor = conn.execute(sql, [_without_nul(v) for v in params])
                value: str | None
                if cursor.description is None:  # no rows (an UPDATE): how many it wrote
                    value = str(cursor.rowcount)
                else:
                    row = cursor.fetchone()
                    value = None if row is None or row[0] is None else str(row[0])
            else:
                value = self._run_prepared(conn.pgconn, sql, texts)
        except BaseException:
            self._give_back_failed(conn)
            raise
        self._give_back(conn)
        return value

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """Lend a connection: the spare one, or one from the pool (see :meth:`_lend`).

        One that fails, or is left mid-statement or in a transaction, is closed,
        and the pool replaces it.
        """
        conn = self._lend()
        try:
            yield conn
        except BaseException:
            self._give_back_failed(conn)
            raise
        self._give_back(conn)

    def _give_back_failed(self, conn: Any) -> None:
        """Give back a connection whose use raised: closed, unless it is idle and well."""
        if not conn.closed and conn.pgconn.transaction_status == _IDLE:
            self._give_back(conn)  # an error of the statement: the connection is fine
        else:
            conn.close()
            self._pool.putconn(conn)  # which replaces it

    def _lend(self) -> Any:
        """A connection: the spare one, or one from the pool.

        psycopg_pool's ``getconn()`` and ``putconn()`` cost a commit about
        7 us of CPU, so the connection a statement used is kept aside (one at
        most) for the next one to take at once. It is kept only while no one
        waits for the pool, so it never keeps a connection from a thread (nor
        from the heartbeat) that needs one.
        """
        with self._spare_lock:
            if self._spare:
                return self._spare.pop()
            self._waiting += 1
        try:
            return self._pool.getconn()
        finally:
            with self._spare_lock:
                self._waiting -= 1

    def _give_back(self, conn: Any) -> None:
        with self._spare_lock:
            self._spare_uses += 1
            keep = not self._spare and not self._waiting and not self.closed
            keep = keep and bool(self._spare_uses % _BACK_TO_POOL)
            if keep and conn.pgconn.transaction_status == _IDLE:
                self._spare.append(conn)
                return
        # now and then through the pool, which retires connections past their age
        self._pool.putconn(conn)

    def _drop_spare(self) -> None:
        """Give the spare connection back to the pool (which replaces it if it is dead)."""
        with self._spare_lock:
            spare, self._spare = self._spare, []
        for conn in spare:
            self._pool.putconn(conn)

    async def _avalue(self, sql: str, params: Sequence[Any]) -> str | None:
        """:meth:`_value` over this event loop's async connections."""
        texts = _texts(params)
        async with (await self._apool()).connection() as conn:
            if texts is None:
                cursor = await conn.execute(sql, [_without_nul(v) for v in params])
                value: str | None
                if cursor.description is None:  # no rows (an UPDATE): how many it wrote
                    value = str(cursor.rowcount)
                else:
                    row = await cursor.fetchone()
                    value = None if row is None or row[0] is None else str(row[0])
            else:
                value = await self._arun_prepared(conn.pgconn, sql, texts)
        return value

    def _run_prepared(self, pgconn: Any, sql: str, texts: list[bytes | None]) -> str | None:
        """:meth:`_statement`, waiting on the socket with ``poll()`` (blocking)."""
        steps = self._statement(pgconn, sql, texts)
        fd = pgconn.socket
        try:
            wait = next(steps)
            while True:
                _wait_for(fd, wait)
                wait = next(steps)
        except StopIteration as done:
            value: str | None = done.value
            return value

    async def _arun_prepared(self, pgconn: Any, sql: str, texts: list[bytes | None]) -> str | None:
        """:meth:`_statement`, waiting on the socket with the running event loop."""
        loop = asyncio.get_running_loop()
        steps = self._statement(pgconn, sql, texts)
        fd = pgconn.socket
        try:
            wait = next(steps)
            while True:
                await _ready(loop, fd, wait)
                wait = next(steps)
        except StopIteration as done:
            value: str | None = done.value
            return value
        finally:
            steps.close()  # interrupted while waiting: the connection is discarded

    def _statement(
        self, pgconn: Any, sql: str, texts: list[bytes | None], *, again: bool = False
    ) -> Generator[int, None, str | None]:
        """Run ``sql`` on ``pgconn`` as a prepared statement (prepared on its first use there).

        A generator that yields what it waits for on the connection's socket
        (``_READABLE`` or ``_WRITABLE``) and returns the statement's one value,
        so that the blocking and the async drivers share it.
        """
        name = self._names.get(sql)
        if name is None:
            with self._apools_guard:
                name = self._names.setdefault(sql, b"aq_%d" % len(self._names))
        prepared: set[bytes] | None = self._prepared.get(pgconn)
        if prepared is None:
            prepared = self._prepared.setdefault(pgconn, set())
        if name not in prepared:
            pgconn.send_prepare(name, _numbered(sql).encode())
            yield from self._result(pgconn, _COMMAND_OK)
            prepared.add(name)
        pgconn.send_query_prepared(name, texts)
        try:
            result = yield from self._result(pgconn, _TUPLES_OK, _COMMAND_OK)
        except self._psycopg.errors.InvalidSqlStatementName:
            if again:  # gone again at once: something drops them (a pooler in between)
                raise
            prepared.discard(name)  # dropped behind our back (DEALLOCATE): prepare it again
            return (yield from self._statement(pgconn, sql, texts, again=True))
        if result.status == _COMMAND_OK:  # a statement without rows: how many it wrote
            return str(result.command_tuples)
        value = result.get_value(0, 0) if result.ntuples else None
        return None if value is None else bytes(value).decode()

    def _result(self, pgconn: Any, *expected: int) -> Generator[int, None, Any]:
        """Wait for the statement sent on ``pgconn``; return its result, or raise its error.

        ``get_result()`` is called only when ``is_busy()`` says it will not block:
        the statement's result, then None once the server said it is ready again.
        """
        while pgconn.flush():  # what the socket's buffer could not take yet
            yield _WRITABLE
        result = None
        while True:
            while pgconn.is_busy():  # wait for the socket first: the answer takes a commit's time
                yield _READABLE
                pgconn.consume_input()
            answer = pgconn.get_result()
            if answer is None:
                break
            result = result or answer  # a statement has one result
        if result is None or pgconn.status != 0:  # CONNECTION_OK
            message = pgconn.error_message.decode("utf-8", "replace").strip()
            raise self._psycopg.OperationalError(message or "the connection was lost")
        if result.status not in expected:
            raise self._psycopg.errors.error_from_result(result)
        return result

    def _check_committed(
        self, value: str | None, run_id: str, shape: tuple[Any, ...], ops: Sequence[Op]
    ) -> None:
        """Raise if the statement wrote nothing because this owner no longer holds the run.

        A statement fenced by the run's row returns the run's owner: anyone else's,
        or none, wrote nothing. One fenced by its step rows (see :meth:`_commit_sql`)
        returns how many it updated. Fewer than its steps: if a step row it did not
        write is there, another owner held it (LeaseLost); if it is not, it was
        skipped, as the UPDATE of a missing step writes nothing on SQLite either.
        """
        if _fenced_by_steps(shape):
            updated = 0 if value is None else int(value)
            if updated == len(shape[1]):
                return
            indexes = sorted({op[1] for op in ops if op[0] == "step"})
            owner, existing = self._owner_and_steps(run_id, indexes)
            if owner is _MISSING:
                raise JournalError(f"no run {run_id} in the journal {self.url}", self.url)
            if existing > updated or (not updated and owner != self.owner):
                # A step row there but not written: it was another owner's.
                raise LeaseLost(run_id, self.owner, self.url)
            return  # the steps not written are not there (the run was ours)
        if value != self.owner:
            if self._owner_of(run_id) is _MISSING:
                raise JournalError(f"no run {run_id} in the journal {self.url}", self.url)
            raise LeaseLost(run_id, self.owner, self.url)

    def _owner_and_steps(self, run_id: str, indexes: list[int]) -> tuple[object, int]:
        """Run ``run_id``'s owner (``_MISSING`` if none) and how many of ``indexes`` exist."""

        def body(cur: Any) -> tuple[object, int]:
            cur.execute(
                f"SELECT owner, (SELECT count(*) FROM {self.prefix}steps s "
                f"WHERE s.run_id = r.run_id AND s.idx = ANY(%s)) "
                f"FROM {self.prefix}runs r WHERE r.run_id = %s",
                (indexes, run_id),
            )
            row = cur.fetchone()
            return (_MISSING, 0) if row is None else (row[0], int(row[1]))

        return self._run_read(body)

    def _commit_sql(self, key: tuple[Any, ...]) -> str:
        """The one-statement commit of these run and step columns and events.

        Run columns None: the run is only read (to check the owner).
        """
        t = self.prefix
        run_keys, step_keys, events = key
        if _fenced_by_steps(key):
            sql = self._step_rows_sql(step_keys)
            self._statements[key] = sql
            return sql
        if run_keys is None:
            parts = [f"WITH r AS (SELECT owner FROM {t}runs WHERE run_id = %s FOR SHARE)"]
        else:
            check_columns(run_keys, UPDATABLE_RUN, "run")
            sets = "".join(f"{k} = %s, " for k in run_keys)
            parts = [
                f"WITH r AS (UPDATE {t}runs SET {sets}lease_expires_at = %s, updated_at = %s "
                f"WHERE run_id = %s AND owner = %s RETURNING owner)"
            ]
        parts += [", " + u for u in self._step_updates(step_keys, "(SELECT owner FROM r) = %s")]
        parts.append(self._events_sql(events, "(SELECT owner FROM r) = %s"))
        parts.append(" SELECT (SELECT owner FROM r)")
        sql = "".join(parts)
        self._statements[key] = sql
        return sql

    def _step_rows_sql(self, step_keys: tuple[tuple[str, ...], ...]) -> str:
        """The hot path's commit (a step's result and the next one's start): one UPDATE.

        It checks the owner each step row carries, so the run's row is not
        locked: a claim changes that owner (by trigger) in the claim's
        transaction, and an UPDATE that meets the claim's change waits for it,
        then finds the row no longer ours and writes nothing. It returns no
        rows: its result is how many it wrote. Several steps are one UPDATE of
        their rows, each column set by step (``CASE idx WHEN ...``): a single
        statement costs the server about a fifth less than one per row.
        """
        if len(step_keys) == 1:
            check_columns(step_keys[0], UPDATABLE_STEP, "step")
            sets = ", ".join(f"{c} = %s" for c in step_keys[0])
            where = "idx = %s"
        else:
            columns = _columns_by_step(step_keys)
            check_columns(columns, UPDATABLE_STEP, "step")
            sets = ", ".join(
                f"{c} = CASE idx{' WHEN %s THEN %s' * len(steps)} ELSE {c} END"
                for c, steps in columns.items()
            )
            where = f"idx IN ({', '.join(['%s'] * len(step_keys))})"
        return f"UPDATE {self.prefix}steps SET {sets} WHERE run_id = %s AND {where} AND owner = %s"

    def _step_rows_params(
        self, run_id: str, merged: dict[int, dict[str, Any]], step_keys: tuple[tuple[str, ...], ...]
    ) -> list[Any]:
        """The parameters of :meth:`_step_rows_sql`'s statement for these steps' columns."""
        if len(merged) == 1:
            [(index, values)] = merged.items()
            return [*values.values(), run_id, index, self.owner]
        indexes = list(merged)
        rows = list(merged.values())
        params: list[Any] = []
        append = params.append
        for n, column in _case_order(step_keys):  # (index, value) for each WHEN of each CASE
            append(indexes[n])
            append(rows[n][column])
        params += (run_id, *indexes, self.owner)
        return params

    def _step_updates(self, step_keys: tuple[tuple[str, ...], ...], fence: str) -> list[str]:
        """The CTEs ``s0``, ``s1``... updating these steps' columns where ``fence`` holds."""
        updates = []
        for n, keys in enumerate(step_keys):
            check_columns(keys, UPDATABLE_STEP, "step")
            sets = ", ".join(f"{k} = %s" for k in keys)
            updates.append(
                f"s{n} AS (UPDATE {self.prefix}steps SET {sets} "
                f"WHERE run_id = %s AND idx = %s AND {fence} RETURNING 1)"
            )
        return updates

    def _writable(self) -> None:
        self._check_usable()
        if self.read_only:
            raise JournalError(f"the journal {self.url} was opened read-only", self.url)

    def _owner_of(self, run_id: str) -> object:
        """Run ``run_id``'s owner (None if it has none), or ``_MISSING`` if there is no such run."""

        def body(cur: Any) -> object:
            cur.execute(f"SELECT owner FROM {self.prefix}runs WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
            return _MISSING if row is None else row[0]

        return self._run_read(body)

    def _placeholders(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _table_names(self, cur: Any) -> set[str]:
        cur.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name LIKE %s",
            (self.schema, self.prefix.replace("_", r"\_") + "%"),
        )
        return {row[0] for row in cur.fetchall()}

    def _lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"actionqueues:{self.schema}",))

    def _fail(self, what: str, exc: BaseException) -> JournalError:
        return JournalError(f"{what} {self.where}: {str(exc).strip()}", self.url)

    def _run_write(self, body: Callable[[Any], _R]) -> _R:
        """One transaction; retried once on a new connection if the old one was dead."""
        self._writable()
        psycopg = self._psycopg
        for attempt in (1, 2):
            committing = False
            try:
                with self._connection() as conn:
                    try:
                        with conn.transaction(), conn.cursor() as cur:
                            result = body(cur)
                            committing = True
                        return result
                    except psycopg.errors.DeadlockDetected:
                        if attempt == 1:  # with a step commit: rolled back whole, made again
                            continue
                        raise
                    except psycopg.OperationalError:
                        if not committing and attempt == 1:
                            self._drop_spare()
                            self._pool.check()  # drop the pool's other dead connections
                            continue  # lost before COMMIT: nothing was applied; a new connection
                        raise
            except psycopg.OperationalError as exc:
                if committing:
                    raise JournalError(
                        f"the connection to the PostgreSQL journal {self.where} was lost "
                        f"while committing, so whether that commit was applied is unknown: "
                        f"{str(exc).strip()}; it was not sent again (a claim that landed ends "
                        f"with its lease, and recovery takes the run again)",
                        self.url,
                    ) from exc
                raise self._fail("cannot write to the journal", exc) from exc
            except psycopg.Error as exc:
                raise self._fail("cannot write to the journal", exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _write(self) -> Iterator[Any]:  # pragma: no cover - writes go through _run_write
        raise NotImplementedError

    def _twice(self, attempt: Callable[[bool], _R], what: str) -> _R:
        """``attempt(False)``, made again as ``attempt(True)`` if the connection was lost.

        The second attempt gets a new connection. Only for what is safe to repeat:
        a read, or an idempotent write.
        """
        psycopg = self._psycopg
        try:
            return attempt(False)
        except self._pool_errors as exc:  # no connection to be had: no second wait
            raise self._fail(what, exc) from exc
        except psycopg.errors.DeadlockDetected:
            pass  # with a claim changing the run's owner: rolled back whole, sent again
        except psycopg.OperationalError:
            self._drop_spare()
            self._pool.check()  # drop the pool's other dead connections
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc
        try:
            return attempt(True)
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc

    async def _atwice(self, attempt: Callable[[bool], Awaitable[_R]], what: str) -> _R:
        """:meth:`_twice`, awaited, on this event loop's async connections."""
        psycopg = self._psycopg
        try:
            return await attempt(False)
        except psycopg.errors.DeadlockDetected:
            pass  # with a claim changing the run's owner: rolled back whole, sent again
        except psycopg.OperationalError:
            await (await self._apool()).check()  # drop the pool's other dead connections
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc
        try:
            return await attempt(True)
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc

    async def _apool(self) -> _AsyncConnections:
        """The running event loop's async connections, the first opened on first use."""
        loop = asyncio.get_running_loop()
        pool = self._apools.get(loop)
        if pool is not None:
            return pool
        with self._apools_guard:
            lock = self._apool_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            pool = self._apools.get(loop)
            if pool is not None:
                return pool
            self._check_usable()
            pool = _AsyncConnections(self._aconnect, self.pool_size, self.url)
            async with pool.connection():  # fail now if the server cannot be reached
                pass
            with self._apools_guard:
                closed = self.closed  # closed while connecting?
                if not closed:
                    self._register(loop, pool)
            if closed:
                await pool.close()
                raise JournalError(f"the journal {self.url} is closed", self.url)
            keeper = self._keep(loop, pool)
            await keeper.asend(None)  # now the loop finalizes it when it shuts down
            with self._apools_guard:
                self._keepers[loop] = keeper
            return pool

    async def _aconnect(self) -> Any:
        """A new async connection (JournalError if the server cannot be reached)."""
        try:
            return await self._psycopg.AsyncConnection.connect(
                self._libpq_url,
                connect_timeout=max(1, round(self.connect_timeout)),
                **self._connection_options,
            )
        except self._psycopg.OperationalError as exc:
            raise self._unreachable(exc) from exc

    async def _keep(
        self, loop: asyncio.AbstractEventLoop, pool: _AsyncConnections
    ) -> AsyncGenerator[None, None]:
        """Close ``loop``'s connections when the loop shuts down.

        ``asyncio.run`` finalizes the async generators of its loop before
        closing it: this one then closes the connections, in the loop.
        """
        try:
            yield
        finally:
            with self._apools_guard:
                if self._apools.get(loop) is pool:
                    del self._apools[loop]
                self._apool_locks.pop(loop, None)
                self._keepers.pop(loop, None)
            await pool.close()

    def _register(self, loop: asyncio.AbstractEventLoop, pool: _AsyncConnections) -> None:
        """Keep ``loop``'s new pool (under ``_apools_guard``); drop those of ended loops.

        An ended loop's tasks are gone, and its pool's connections close when
        the pool is dropped.
        """
        for ended in [other for other in self._apools if other.is_closed()]:
            del self._apools[ended]
            self._apool_locks.pop(ended, None)
            self._keepers.pop(ended, None)
        self._apools[loop] = pool

    def _why_unreachable(self) -> BaseException | None:
        """The error of one direct connection attempt (the pool only says it timed out)."""
        try:
            self._psycopg.connect(
                self._libpq_url,
                connect_timeout=max(1, round(self.connect_timeout)),
                **self._connection_options,
            ).close()
        except self._psycopg.OperationalError as exc:
            error: BaseException = exc
            return error
        return None  # it answers now: a slow or flapping server

    def _unreachable(self, cause: BaseException | None) -> JournalError:
        shown = redact(self._libpq_url)
        why = " ".join(str(cause).split()) if cause is not None else ""
        return JournalError(
            f"cannot connect to the PostgreSQL journal {shown} within {self.connect_timeout} s: "
            + (why or "is the server running and reachable, and the database there?"),
            self.url,
        )

    async def _aclose_loop(self) -> None:
        loop = asyncio.get_running_loop()
        with self._apools_guard:
            keeper = self._keepers.get(loop)
        if keeper is not None:
            await keeper.aclose()  # closes the pool, and forgets it

    async def aclose(self) -> None:
        """Close the journal from async code, this event loop's connections included."""
        try:
            await self._aclose_loop()
        finally:
            self.close()

    def _close_async_pools(self) -> None:
        """Close the async pools still open (best effort: each belongs to its loop)."""
        with self._apools_guard:
            pools = [(loop, pool, self._keepers.get(loop)) for loop, pool in self._apools.items()]
            self._apools.clear()
            self._apool_locks.clear()
            self._keepers.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, pool, keeper in pools:
            if loop.is_closed():
                continue  # closed without finalizing: its connections close when dropped
            closing = pool.close() if keeper is None else keeper.aclose()
            try:
                if loop is current:  # called from the loop's own code: closed soon after
                    logger.warning(
                        "journal.close() was called from a running event loop: its async "
                        "connections close in the background, if the loop lets them; await "
                        "journal.aclose() (or use async with) instead",
                        extra={"aq_event": "journal_closed_in_loop"},
                    )
                    task = loop.create_task(closing)
                    self._closing.add(task)
                    task.add_done_callback(self._closed_in_background)
                elif loop.is_running() or current is not None:  # its thread runs it, or
                    # this thread runs another loop: that loop closes the pool, soon
                    future = asyncio.run_coroutine_threadsafe(closing, loop)
                    if current is None:  # wait for it, within reason
                        with contextlib.suppress(Exception):
                            future.result(timeout=self.connect_timeout)
                else:
                    loop.run_until_complete(closing)
            except Exception:  # one loop's trouble does not keep the others' pools open
                closing.close()
                logger.exception(
                    "could not close the journal's connections of an event loop",
                    extra={"aq_event": "journal_close_failed"},
                )

    def _closed_in_background(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "closing the journal's connections failed: %r",
                task.exception(),
                extra={"aq_event": "journal_close_failed"},
            )

    def _run_read(self, body: Callable[[Any], _R]) -> _R:
        """Read; made again on a new connection if the connection was lost."""
        self._check_usable()

        def read(resent: bool) -> _R:
            with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
                return body(cur)

        return self._twice(read, "cannot read the journal")

    @contextmanager
    def _read(self) -> Iterator[Any]:  # pragma: no cover - reads go through _run_read
        raise NotImplementedError

    def close(self) -> None:
        """Stop the heartbeat and close the pools; closing twice is harmless.

        From async code, prefer ``await journal.aclose()``, which closes the
        running loop's connections before returning.
        """
        super().close()
        self._drop_spare()
        self._pool.close()
        self._close_async_pools()


def open_postgres(url: str, **options: Any) -> PostgresJournal:
    """A :class:`PostgresJournal` for ``url``, whose query may carry the journal's options."""
    libpq_url, ours = split_url(url)
    for key, value in ours.items():
        if key in options:
            raise ValueError(f"{key} is given both in the URL and as an argument")
        options[key] = value
    for key, kind, expected in (
        ("pool_size", int, "an int"),
        ("connect_timeout", float, "a number"),
    ):
        if key in ours:
            try:
                options[key] = kind(ours[key])
            except ValueError:
                raise ValueError(
                    f"{key} in the URL must be {expected}, got {ours[key]!r}"
                ) from None
    return PostgresJournal(libpq_url, **options)
