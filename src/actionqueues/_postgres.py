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

import re
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ._journal import JournalError, LeaseLost, Op, fault
from ._sql import UPDATABLE_STEP, SQLJournal

if TYPE_CHECKING:  # pragma: no cover
    import psycopg_pool

__all__ = ["PostgresJournal"]

_R = TypeVar("_R")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_OUR_OPTIONS = ("schema", "table_prefix", "pool_size", "connect_timeout")


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


def redact(url: str) -> str:
    """``url`` without its password (for messages and ``Journal.url``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class PostgresJournal(SQLJournal):
    """A journal in a PostgreSQL database; open it with :func:`~actionqueues.open_journal`.

    Every commit is durable when it returns (with the server's default
    ``synchronous_commit=on``). Connections come from a pool shared by the
    process's queues, threads and heartbeat. A connection lost between two
    commits is replaced transparently; one lost during a commit raises
    :class:`JournalError` saying that the commit's outcome is unknown (the
    run then stops, and recovery finishes it from what the journal holds).

    Args:
        url: ``postgresql://user[:password]@host[:port]/database``; libpq
            options may follow in the query (``?sslmode=require``).
        schema: The schema of the journal's tables (created if missing).
        table_prefix: The prefix of their names.
        pool_size: The most connections the journal opens.
        connect_timeout: Seconds to wait for the server when opening.
        read_only: Only read an existing journal (``runs()``, ``timeline()``):
            nothing is created or migrated, and writing raises
            :class:`JournalError`.
        **options: See :class:`~actionqueues.Journal`.
    """

    real_type = "DOUBLE PRECISION"
    serial_type = "BIGSERIAL PRIMARY KEY"
    claim_lock = "FOR UPDATE SKIP LOCKED"
    fence_lock = "FOR SHARE"

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
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self._psycopg = psycopg
        self.read_only = bool(read_only)
        shown = redact(url)
        query = f"schema={schema}" + (
            f"&table_prefix={table_prefix}" if table_prefix != "aq_" else ""
        )
        self.url = shown + ("&" if "?" in shown else "?") + query
        self.where = f"schema {schema} of {shown}"
        self._pool: psycopg_pool.ConnectionPool[Any] = pool_module.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "options": f"-c search_path={schema}",
                "application_name": f"actionqueues {self.owner}"[:63],
            },
            open=False,
            name="actionqueues-journal",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except pool_module.PoolTimeout as exc:
            self._pool.close()
            raise JournalError(
                f"cannot connect to the PostgreSQL journal {shown} within {connect_timeout} s: "
                f"is the server running and reachable, and the database there?",
                self.url,
            ) from exc
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

    def _create_schema(self, cur: Any) -> None:
        self._lock_schema(cur)  # two processes creating it at once would collide
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def commit(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], *, renew: bool = True
    ) -> None:
        """Update run ``run_id`` and apply ``ops``, atomically (see :meth:`Journal.commit`).

        A step's usual commit (step rows only, no lease renewal) is one statement,
        so one round trip: its updates apply only while this owner holds the run
        (checked under ``FOR SHARE``). Being idempotent, it is retried once on a
        new connection if the connection was lost.
        """
        if run or renew or not ops or any(op[0] != "step" for op in ops):
            super().commit(run_id, run, ops, renew=renew)
            return
        # One statement cannot update a row twice: merge the ops of each step, in order.
        merged: dict[int, dict[str, Any]] = {}
        for _, index, columns in ops:
            merged.setdefault(index, {}).update(columns)
        parts = [f"r AS (SELECT owner FROM {self.prefix}runs WHERE run_id = %s FOR SHARE)"]
        params: list[Any] = [run_id]
        for n, (index, columns) in enumerate(merged.items()):
            keys = tuple(columns)
            for key in keys:
                if key not in UPDATABLE_STEP:
                    raise ValueError(f"not a step column that can be written: {key!r}")
            sets = ", ".join(f"{k} = %s" for k in keys)
            parts.append(
                f"s{n} AS (UPDATE {self.prefix}steps SET {sets} WHERE run_id = %s AND idx = %s "
                f"AND (SELECT owner FROM r) = %s RETURNING 1)"
            )
            params += [*columns.values(), run_id, index, self.owner]
        sql = "WITH " + ", ".join(parts) + " SELECT (SELECT owner FROM r)"
        self._check_usable()
        if self.read_only:
            raise JournalError(f"the journal {self.url} was opened read-only", self.url)
        fault("before_commit")

        def send() -> Any:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchone()

        row = self._twice(send, "cannot write to the journal")
        owner = None if row is None else row[0]
        if owner != self.owner:
            if owner is None and not self._run_exists(run_id):
                raise JournalError(f"no run {run_id} in the journal {self.url}", self.url)
            raise LeaseLost(run_id, self.owner, self.url)
        fault("after_commit")

    def _run_exists(self, run_id: str) -> bool:
        """Whether the journal has run ``run_id``."""

        def body(cur: Any) -> bool:
            cur.execute(f"SELECT 1 FROM {self.prefix}runs WHERE run_id = %s", (run_id,))
            return cur.fetchone() is not None

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
        self._check_usable()
        if self.read_only:
            raise JournalError(f"the journal {self.url} was opened read-only", self.url)
        psycopg = self._psycopg
        for attempt in (1, 2):
            committing = False
            try:
                with self._pool.connection() as conn:
                    try:
                        with conn.transaction(), conn.cursor() as cur:
                            result = body(cur)
                            committing = True
                        return result
                    except psycopg.OperationalError:
                        if not committing and attempt == 1:
                            self._pool.check()  # drop the pool's other dead connections
                            continue  # lost before COMMIT: nothing was applied; a new connection
                        raise
            except psycopg.OperationalError as exc:
                if committing:
                    raise JournalError(
                        f"the connection to the PostgreSQL journal {self.where} was lost "
                        f"while committing, so whether that commit was applied is unknown: "
                        f"{str(exc).strip()}; this process stops writing to the run, and "
                        f"recovery will finish it from what the journal holds",
                        self.url,
                    ) from exc
                raise self._fail("cannot write to the journal", exc) from exc
            except psycopg.Error as exc:
                raise self._fail("cannot write to the journal", exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _write(self) -> Iterator[Any]:  # pragma: no cover - writes go through _run_write
        raise NotImplementedError

    def _twice(self, attempt: Callable[[], _R], what: str) -> _R:
        """``attempt()``, made again on a new connection if the connection was lost.

        Only for what is safe to repeat: a read, or an idempotent write.
        """
        psycopg = self._psycopg
        try:
            return attempt()
        except psycopg.OperationalError:
            self._pool.check()  # drop the pool's other dead connections
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc
        try:
            return attempt()
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc

    def _run_read(self, body: Callable[[Any], _R]) -> _R:
        """Read; made again on a new connection if the connection was lost."""
        self._check_usable()

        def read() -> _R:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                return body(cur)

        return self._twice(read, "cannot read the journal")

    @contextmanager
    def _read(self) -> Iterator[Any]:  # pragma: no cover - reads go through _run_read
        raise NotImplementedError

    def close(self) -> None:
        """Stop the heartbeat and close the pool; closing twice is harmless."""
        super().close()
        self._pool.close()


def open_postgres(url: str, **options: Any) -> PostgresJournal:
    """A :class:`PostgresJournal` for ``url``, whose query may carry the journal's options."""
    libpq_url, ours = split_url(url)
    for key, value in ours.items():
        if key in options:
            raise ValueError(f"{key} is given both in the URL and as an argument")
        options[key] = value
    if "pool_size" in ours:
        try:
            options["pool_size"] = int(ours["pool_size"])
        except ValueError:
            raise ValueError(
                f"pool_size in the URL must be an int, got {ours['pool_size']!r}"
            ) from None
    if "connect_timeout" in ours:
        try:
            options["connect_timeout"] = float(ours["connect_timeout"])
        except ValueError:
            raise ValueError(
                f"connect_timeout in the URL must be a number, got {ours['connect_timeout']!r}"
            ) from None
    return PostgresJournal(libpq_url, **options)
