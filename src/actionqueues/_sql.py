"""The SQL shared by the journal backends: schema, migrations, reads and writes.

Backends (SQLite here, PostgreSQL beside it) differ only in how they connect,
open a write transaction and lock a row to claim; the statements are written
once with ``?`` placeholders and ``{t}`` for the table prefix.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from ._errors import bad_argument
from ._journal import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Journal,
    JournalError,
    LeaseLost,
    Op,
    RunEvent,
    RunInfo,
    RunTimeline,
    StepRecord,
    as_statuses,
    fault,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLJournal"]

_R = TypeVar("_R")

FORMAT = "actionqueues-journal"

#: Numbered migrations; ``{real}`` and ``{serial}`` are the backend's types, ``{updated}``
#: its storage options for tables whose rows are updated in place (runs and steps).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE {t}runs (
            run_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            resumable INTEGER NOT NULL,
            owner TEXT,
            lease_expires_at {real},
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            finished_at {real},
            steps INTEGER NOT NULL,
            error TEXT,
            recoveries INTEGER NOT NULL DEFAULT 0
        ){updated}""",
        "CREATE INDEX {t}runs_by_status ON {t}runs (status, lease_expires_at)",
        "CREATE INDEX {t}runs_by_created ON {t}runs (created_at)",
        """CREATE TABLE {t}steps (
            run_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            type TEXT NOT NULL,
            state TEXT NOT NULL,
            policies TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            rollback_attempts INTEGER NOT NULL DEFAULT 0,
            next_retry_at {real},
            started_at {real},
            finished_at {real},
            rollback_started_at {real},
            rollback_finished_at {real},
            error TEXT,
            rollback_error TEXT,
            PRIMARY KEY (run_id, idx)
        ){updated}""",
        """CREATE TABLE {t}events (
            id {serial},
            run_id TEXT NOT NULL,
            at {real} NOT NULL,
            idx INTEGER,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX {t}events_by_run ON {t}events (run_id, id)",
    ),
    # Events written by a commit that may be sent twice (PostgreSQL's one-statement
    # commits, resent when the connection is lost) carry that commit's id and their
    # position in it: the second copy is refused by this index, even while the first
    # send is still running on the server.
    2: (
        "ALTER TABLE {t}events ADD COLUMN commit_id TEXT",
        "ALTER TABLE {t}events ADD COLUMN commit_seq INTEGER",
        "CREATE UNIQUE INDEX {t}events_once ON {t}events (run_id, commit_id, commit_seq)",
    ),
    # Each step row carries its run's owner, kept equal to the run's by a trigger
    # ("{owner_trigger}": the backend's statements), in the same transaction as any
    # change of owner (a claim, a release). PostgreSQL's step commits check it on the
    # rows they update: a fence that needs no lock on the run's row.
    3: (
        "ALTER TABLE {t}steps ADD COLUMN owner TEXT",
        "UPDATE {t}steps SET owner = "
        "(SELECT r.owner FROM {t}runs r WHERE r.run_id = {t}steps.run_id)",
        "{owner_trigger}",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)
TERMINAL = TERMINAL_STATUSES

RUN_COLUMNS = (
    "run_id",
    "name",
    "kind",
    "status",
    "resumable",
    "owner",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "finished_at",
    "steps",
    "started",
    "error",
    "recoveries",
)
STEP_COLUMNS = (
    "idx",
    "type",
    "state",
    "status",
    "attempts",
    "rollback_attempts",
    "next_retry_at",
    "started_at",
    "finished_at",
    "rollback_started_at",
    "rollback_finished_at",
    "error",
    "rollback_error",
    "policies",
)
UPDATABLE_STEP = frozenset(STEP_COLUMNS[2:-1])
UPDATABLE_RUN = frozenset({"status", "error", "finished_at"})
#: Stored run columns (``started`` is counted from the steps when read).
RUN_STORED = tuple(c for c in RUN_COLUMNS if c != "started")
_RUN_SELECT = ", ".join(
    "(SELECT COUNT(*) FROM {t}steps s WHERE s.run_id = {t}runs.run_id "
    "AND s.status <> 'pending') AS started"
    if c == "started"
    else f"{{t}}runs.{c}"
    for c in RUN_COLUMNS
)


def check_columns(keys: Iterable[str], allowed: frozenset[str], table: str) -> None:
    """Refuse a column a commit may not write (a ValueError naming it)."""
    for key in keys:
        if key not in allowed:
            raise ValueError(f"not a {table} column that can be written: {key!r}")


def _run_info(row: Sequence[Any]) -> RunInfo:
    values = dict(zip(RUN_COLUMNS, row, strict=True))
    values["resumable"] = bool(values["resumable"])
    return RunInfo(**values)


def _step_record(row: Sequence[Any]) -> StepRecord:
    values = dict(zip(STEP_COLUMNS, row, strict=True))
    values["index"] = values.pop("idx")
    return StepRecord(**values)


class SQLJournal(Journal):
    """A journal on a SQL database reached through a DB-API connection."""

    #: Table name prefix.
    prefix = "aq_"
    #: The SQL type of timestamps, and of the events' id column.
    real_type = "REAL"
    serial_type = "INTEGER PRIMARY KEY"
    #: Appended to the CREATE TABLE of runs and steps, whose rows are updated often.
    updated_table_options = ""
    #: Appended to the claim's SELECT (PostgreSQL: FOR UPDATE SKIP LOCKED).
    claim_lock = ""

    _sql_cache: dict[Any, str]

    def _sql(self, key: Any, text: str) -> str:
        """``text`` with the table prefix and the backend's placeholders, cached by ``key``."""
        try:
            return self._sql_cache[key]
        except AttributeError:
            self._sql_cache = {}
        except KeyError:
            pass
        sql = self._placeholders(text.replace("{t}", self.prefix))
        self._sql_cache[key] = sql
        return sql

    def _placeholders(self, sql: str) -> str:
        return sql

    @property
    def _updates(self) -> dict[tuple[str, tuple[str, ...]], str]:
        try:
            return self._update_cache
        except AttributeError:
            self._update_cache: dict[tuple[str, tuple[str, ...]], str] = {}
            return self._update_cache

    def _update_sql(self, table: str, keys: tuple[str, ...]) -> str:
        """The UPDATE of ``keys`` (in that order) of a run or a step; checked, then cached."""
        check_columns(keys, UPDATABLE_RUN if table == "run" else UPDATABLE_STEP, table)
        sets = "".join(f"{k} = ?, " for k in keys)
        if table == "run":
            text = (
                f"UPDATE {self.prefix}runs SET {sets}lease_expires_at = ?, updated_at = ? "
                f"WHERE run_id = ? AND owner = ?"
            )
        else:
            text = f"UPDATE {self.prefix}steps SET {sets[:-2]} WHERE run_id = ? AND idx = ?"
        sql = self._updates[(table, keys)] = self._placeholders(text)
        return sql

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction: yields a cursor; commits at the end, rolls back on error."""

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A cursor for reading."""

    # -- schema -------------------------------------------------------------------

    #: What the journal is, for messages (a file's path, a database's schema).
    where: str

    @abc.abstractmethod
    def _table_names(self, cur: Any) -> set[str]:
        """The names of the tables where the journal's live (those of other programs too)."""

    def _lock_schema(self, cur: Any) -> None:
        """Serialise concurrent migrations (SQLite's write lock already does)."""

    def _inspect(self, cur: Any) -> int | None:
        """The journal's schema version, None where there is none yet; refuse anything else."""
        tables = self._table_names(cur)
        meta, versions = f"{self.prefix}meta", f"{self.prefix}schema_version"
        if meta not in tables:
            if tables:
                raise JournalError(
                    f"{self.where} is not an actionqueues journal (it has tables "
                    f"{', '.join(sorted(tables)[:5])} and no {meta}); give the journal a "
                    f"place of its own; it was left untouched",
                    self.url,
                )
            return None
        cur.execute(self._placeholders(f"SELECT value FROM {meta} WHERE key = 'format'"))
        row = cur.fetchone()
        if row is None or row[0] != FORMAT:
            raise JournalError(
                f"{self.where} has a {meta} table but is not an actionqueues journal "
                f"(format {row[0] if row else None!r}); it was left untouched",
                self.url,
            )
        cur.execute(f"SELECT MAX(version) FROM {versions}")
        found = int(cur.fetchone()[0] or 0)
        if found > SCHEMA_VERSION:
            raise self._newer_schema(found)
        return found

    def _migrate(self) -> None:
        """Create or migrate the schema, in one transaction; check the journal is writable."""

        def migrate(cur: Any) -> None:
            self._lock_schema(cur)
            found = self._inspect(cur)  # again: another process may have created it meanwhile
            meta, versions = f"{self.prefix}meta", f"{self.prefix}schema_version"
            if found is None:
                cur.execute(f"CREATE TABLE {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                cur.execute(
                    self._placeholders(f"INSERT INTO {meta} VALUES ('format', ?)"), (FORMAT,)
                )
                cur.execute(
                    f"CREATE TABLE {versions} "
                    f"(version INTEGER PRIMARY KEY, applied_at {self.real_type} NOT NULL)"
                )
                found = 0
            applied = set()
            for version, statement in self._migrations_sql(found):
                cur.execute(statement)
                applied.add(version)
            for version in sorted(applied):
                cur.execute(
                    self._placeholders(f"INSERT INTO {versions} VALUES (?, ?)"),
                    (version, self.clock()),
                )
            # Fail now, not at a queue's first step, if the journal cannot be written.
            cur.execute(f"UPDATE {meta} SET value = value WHERE key = 'format'")

        self._run_write(migrate)

    def _run_write(self, body: Callable[[Any], _R]) -> _R:
        """Run ``body(cursor)`` in one write transaction; return what it returns."""
        with self._write() as cur:
            return body(cur)

    def _run_read(self, body: Callable[[Any], _R]) -> _R:
        """Run ``body(cursor)`` to read; return what it returns."""
        with self._read() as cur:
            return body(cur)

    def _migrations_sql(self, since: int) -> Iterator[tuple[int, str]]:
        for version in sorted(MIGRATIONS):
            if version > since:
                for statement in MIGRATIONS[version]:
                    if statement == "{owner_trigger}":
                        for part in self._owner_trigger():
                            yield version, part
                        continue
                    yield (
                        version,
                        statement.format(
                            t=self.prefix,
                            real=self.real_type,
                            serial=self.serial_type,
                            updated=self.updated_table_options,
                        ),
                    )

    def _owner_trigger(self) -> tuple[str, ...]:
        """The trigger giving a run's step rows its owner whenever it is written (SQLite).

        It fires even when the value does not change: a claim by the same owner
        also leaves the steps with the run's owner.
        """
        t = self.prefix
        return (
            f"CREATE TRIGGER {t}steps_follow_owner AFTER UPDATE OF owner ON {t}runs "
            f"FOR EACH ROW "
            f"BEGIN UPDATE {t}steps SET owner = NEW.owner WHERE run_id = NEW.run_id; END",
        )

    def _newer_schema(self, found: int) -> JournalError:
        return JournalError(
            f"the journal {self.url} was written by a newer actionqueues (schema version "
            f"{found}; this version reads up to {SCHEMA_VERSION}): upgrade actionqueues to use "
            f"it; it was left untouched",
            self.url,
        )

    # -- writing ------------------------------------------------------------------

    def create(
        self, run: dict[str, Any], steps: Sequence[dict[str, Any]], ops: Sequence[Op]
    ) -> None:
        """Insert a run (owned by this journal's owner) and its steps, then apply ``ops``."""
        now = self.clock()
        row = self._run_row(run, now)
        run_id = row["run_id"]

        def body(cur: Any) -> None:
            cur.execute(
                self._sql(
                    "insert_run",
                    f"INSERT INTO {{t}}runs ({', '.join(RUN_STORED)}) "
                    f"VALUES ({', '.join('?' * len(RUN_STORED))})",
                ),
                [row[c] for c in RUN_STORED],
            )
            cur.executemany(
                self._sql(
                    "insert_step",
                    "INSERT INTO {t}steps (run_id, idx, type, state, policies, status, owner) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                ),
                [
                    (run_id, s["idx"], s["type"], s["state"], s.get("policies"), self.owner)
                    for s in steps
                ],
            )
            self._apply(cur, run_id, ops, now)
            fault("before_commit")

        self._run_write(body)
        fault("after_commit")

    def _run_row(self, run: dict[str, Any], now: float) -> dict[str, Any]:
        """The stored columns of a new run owned by this owner, from ``create()``'s ``run``."""
        row: dict[str, Any] = {"finished_at": None, "error": None, **run}
        row.update(
            owner=self.owner,
            lease_expires_at=0.0 if row["status"] in TERMINAL else now + self.lease,
            created_at=now,
            updated_at=now,
            recoveries=0,
        )
        return row

    def commit(
        self, run_id: str, run: dict[str, Any], ops: Sequence[Op], *, renew: bool = True
    ) -> None:
        """Update run ``run_id`` (renewing its lease) and apply ``ops``, atomically.

        With ``renew`` false and no run column to write, the run's row is only
        read, to check that this owner still holds it (a step's commit then
        writes the step rows alone).
        """
        now = self.clock()

        def body(cur: Any) -> None:
            if run or renew:
                keys = tuple(run)
                sql = self._updates.get(("run", keys)) or self._update_sql("run", keys)
                params = list(run.values())
                # A finished run keeps no lease: a retry of its rollback may claim it at once.
                params += (0.0 if run.get("status") in TERMINAL else now + self.lease, now)
                params += (run_id, self.owner)
                cur.execute(sql, params)
                held = cur.rowcount == 1
            else:
                cur.execute(
                    self._sql("owner", "SELECT owner FROM {t}runs WHERE run_id = ?"),
                    (run_id,),
                )
                row = cur.fetchone()
                held = row is not None and row[0] == self.owner
            if not held:
                cur.execute(
                    self._sql("exists", "SELECT run_id FROM {t}runs WHERE run_id = ?"), (run_id,)
                )
                if cur.fetchone() is None:
                    raise JournalError(f"no run {run_id} in the journal {self.url}", self.url)
                raise LeaseLost(run_id, self.owner, self.url)
            self._apply(cur, run_id, ops, now)
            fault("before_commit")

        self._run_write(body)
        fault("after_commit")

    def _apply(self, cur: Any, run_id: str, ops: Sequence[Op], now: float) -> None:
        for op in ops:
            if op[0] == "step":
                _, index, columns = op
                keys = tuple(columns)
                sql = self._updates.get(("step", keys)) or self._update_sql("step", keys)
                cur.execute(sql, [*columns.values(), run_id, index])
            else:
                _, index, kind, detail = op
                cur.execute(
                    self._sql(
                        "event",
                        "INSERT INTO {t}events (run_id, at, idx, kind, detail) "
                        "VALUES (?, ?, ?, ?, ?)",
                    ),
                    (run_id, now, index, kind, detail),
                )

    # -- recovery -----------------------------------------------------------------

    def claim(
        self, run_id: str | None = None, *, statuses: Iterable[str] = ACTIVE_STATUSES
    ) -> RunTimeline | None:
        """Atomically take over one run whose lease expired (or ``run_id``); return it."""
        wanted = as_statuses(statuses) or ()
        now = self.clock()
        where = f"status IN ({', '.join('?' * len(wanted))}) AND " + (
            # 0 is no lease at all (a finished or released run), whatever the clock says
            "(lease_expires_at IS NULL OR lease_expires_at = 0 OR lease_expires_at < ?)"
        )
        params: list[Any] = [*wanted, now]
        if run_id is not None:
            where += " AND run_id = ?"
            params.append(run_id)
        select = self._placeholders(
            f"SELECT run_id, owner FROM {self.prefix}runs WHERE {where} "
            f"ORDER BY lease_expires_at LIMIT 1 {self.claim_lock}"
        )

        def body(cur: Any) -> RunTimeline | None:
            cur.execute(select, params)
            row = cur.fetchone()
            if row is None:
                return None
            found, previous = row
            cur.execute(
                self._sql(
                    "claim",
                    "UPDATE {t}runs SET owner = ?, lease_expires_at = ?, updated_at = ?, "
                    "recoveries = recoveries + 1 WHERE run_id = ?",
                ),
                (self.owner, now + self.lease, now, found),
            )
            self._apply(
                cur, found, [("event", None, "claimed", f"by {self.owner} (was {previous})")], now
            )
            return self._timeline(cur, found)

        return self._run_write(body)

    def release(self, run_id: str) -> None:
        """Give up this owner's claim on ``run_id`` at once (its next write raises LeaseLost)."""

        def body(cur: Any) -> None:
            cur.execute(
                self._sql(
                    "release",
                    "UPDATE {t}runs SET lease_expires_at = 0, owner = NULL "
                    "WHERE run_id = ? AND owner = ?",
                ),
                (run_id, self.owner),
            )

        self._run_write(body)

    def renew(self, run_ids: Sequence[str]) -> None:
        """Extend this owner's leases on ``run_ids``."""
        until = self.clock() + self.lease

        def body(cur: Any) -> None:
            for start in range(0, len(run_ids), 500):
                chunk = run_ids[start : start + 500]
                cur.execute(
                    self._placeholders(
                        f"UPDATE {self.prefix}runs SET lease_expires_at = ? WHERE owner = ? "
                        f"AND status IN ({', '.join('?' * len(ACTIVE_STATUSES))}) "
                        f"AND run_id IN ({', '.join('?' * len(chunk))})"
                    ),
                    (until, self.owner, *ACTIVE_STATUSES, *chunk),
                )

        self._run_write(body)

    # -- reading ------------------------------------------------------------------

    def runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        older_than: float | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Runs, newest first; filtered by status(es), name, and age in seconds."""
        statuses = as_statuses(status)
        where: list[str] = []
        params: list[Any] = []
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if older_than is not None:
            where.append("created_at <= ?")
            params.append(self.clock() - older_than)
        if limit is not None and (type(limit) is not int or limit < 1):
            raise bad_argument(limit, (int,), f"limit must be an int >= 1 or None, got {limit!r}")
        sql = (
            f"SELECT {_RUN_SELECT.replace('{t}', self.prefix)} FROM {self.prefix}runs"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY created_at DESC, run_id"
            + (f" LIMIT {limit}" if limit is not None else "")
        )

        def body(cur: Any) -> list[RunInfo]:
            cur.execute(self._placeholders(sql), params)
            return [_run_info(row) for row in cur.fetchall()]

        return self._run_read(body)

    def timeline(self, run_id: str) -> RunTimeline:
        """One run with its steps and events (a unique prefix of 8+ characters works too)."""
        return self._run_read(lambda cur: self._timeline(cur, self._resolve(cur, run_id)))

    def _resolve(self, cur: Any, run_id: str) -> str:
        cur.execute(self._sql("exists", "SELECT run_id FROM {t}runs WHERE run_id = ?"), (run_id,))
        if cur.fetchone() is not None:
            return run_id
        # A prefix with LIKE's wildcards in it is no prefix of a run id (a UUID).
        if len(run_id) >= 8 and "%" not in run_id and "_" not in run_id:
            cur.execute(
                self._sql("prefix", "SELECT run_id FROM {t}runs WHERE run_id LIKE ? LIMIT 2"),
                (run_id + "%",),
            )
            found = cur.fetchall()
            if len(found) == 1:
                return str(found[0][0])
            if found:
                raise KeyError(f"{run_id!r} matches more than one run; give more of the id")
        raise KeyError(f"no run {run_id!r} in the journal {self.url}")

    def _timeline(self, cur: Any, run_id: str) -> RunTimeline:
        cur.execute(
            self._sql("get_run", f"SELECT {_RUN_SELECT} FROM {{t}}runs WHERE run_id = ?"),
            (run_id,),
        )
        run = _run_info(cur.fetchone())
        cur.execute(
            self._sql(
                "get_steps",
                f"SELECT {', '.join(STEP_COLUMNS)} FROM {{t}}steps WHERE run_id = ? ORDER BY idx",
            ),
            (run_id,),
        )
        steps = tuple(_step_record(row) for row in cur.fetchall())
        cur.execute(
            self._sql(
                "get_events",
                "SELECT at, idx, kind, detail FROM {t}events WHERE run_id = ? ORDER BY id",
            ),
            (run_id,),
        )
        events = tuple(RunEvent(*row) for row in cur.fetchall())
        return RunTimeline(run, steps, events)
