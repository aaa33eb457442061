"""DBOS Transact side of ``bench_journal.py``; runs inside ``benchmarks/.venv-dbos``.

One workflow of ``--steps`` (10) ``@DBOS.step`` steps, run ``--queues`` times
one after the other, on a DBOS system database that is a fresh SQLite file
(``--db``). DBOS is used as shipped: its own engine, its own PRAGMAs, nothing
patched; setup (``DBOS(config=...)``, ``launch()``, migrations) and a short
warm-up are outside the timed part.

Afterwards the worker checks, through a separate stdlib ``sqlite3`` connection
to the same file, that every timed workflow is ``SUCCESS`` and has one
``operation_outputs`` row per step holding that step's output, reads the
``journal_mode`` and ``synchronous`` that DBOS's own engine connections use, and
counts the commits DBOS made during the timed part (a SQLAlchemy ``commit``
event listener: it observes, it changes nothing). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sqlite3
import sys
import time
import uuid
from typing import Any

import sqlalchemy as sa  # type: ignore[import-not-found, unused-ignore]
from dbos import DBOS, DBOSConfig, SetWorkflowID  # type: ignore[import-not-found, unused-ignore]

SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


# DBOS is typed (py.typed), but mypy runs in the project venv, where it is not installed.
@DBOS.step()  # type: ignore[untyped-decorator, unused-ignore]
def bench_step(i: int) -> int:
    return i


@DBOS.workflow()  # type: ignore[untyped-decorator, unused-ignore]
def bench_workflow(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += bench_step(i)
    return total


def pragmas(engine: Any) -> dict[str, object]:
    """journal_mode and synchronous as seen by a connection from DBOS's own pool."""
    with engine.connect() as conn:
        journal_mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
        synchronous = conn.execute(sa.text("PRAGMA synchronous")).scalar()
        busy_timeout = conn.execute(sa.text("PRAGMA busy_timeout")).scalar()
    return {
        "journal_mode": str(journal_mode).upper(),
        "synchronous": SYNCHRONOUS_NAMES.get(int(synchronous), str(synchronous)),
        "busy_timeout_ms": int(busy_timeout),
    }


def verify(db: str, workflow_ids: list[str], steps: int) -> dict[str, int]:
    """Every timed workflow succeeded and its step outputs are in the file."""
    con = sqlite3.connect(db)
    try:
        con.execute("CREATE TEMP TABLE timed (id TEXT PRIMARY KEY)")
        con.executemany("INSERT INTO timed VALUES (?)", [(w,) for w in workflow_ids])
        succeeded = con.execute(
            "SELECT count(*) FROM workflow_status JOIN timed ON workflow_uuid = timed.id "
            "WHERE status = 'SUCCESS'"
        ).fetchone()[0]
        step_rows = con.execute(
            "SELECT count(*) FROM operation_outputs JOIN timed ON workflow_uuid = timed.id "
            "WHERE function_name LIKE '%bench_step' AND output IS NOT NULL AND error IS NULL"
        ).fetchone()[0]
        bad_steps = con.execute(
            "SELECT count(*) FROM ("
            " SELECT workflow_uuid, count(*) AS n FROM operation_outputs"
            " JOIN timed ON workflow_uuid = timed.id"
            " WHERE function_name LIKE '%bench_step' GROUP BY workflow_uuid"
            f") WHERE n != {int(steps)}"
        ).fetchone()[0]
        file_journal_mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    expected = len(workflow_ids)
    if succeeded != expected or step_rows != expected * steps or bad_steps:
        sys.exit(
            f"_dbos_worker: {db}: {succeeded}/{expected} workflows SUCCESS, "
            f"{step_rows}/{expected * steps} step output rows, "
            f"{bad_steps} workflows with a wrong step count"
        )
    return {
        "workflows_verified": succeeded,
        "step_rows_verified": step_rows,
        "file_journal_mode": str(file_journal_mode).upper(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True, help="SQLite file for the system database")
    parser.add_argument("--queues", type=int, default=200, help="timed workflows")
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow")
    parser.add_argument("--warmup", type=int, default=5, help="untimed workflows first")
    parser.add_argument(
        "--wal",
        action="store_true",
        help="set journal_mode=WAL on the file before DBOS opens it (DBOS leaves the default)",
    )
    args = parser.parse_args()

    db = os.path.abspath(args.db)
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    if args.wal:
        # journal_mode=WAL is stored in the file, so DBOS's connections inherit it;
        # synchronous is per connection and stays whatever DBOS uses.
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.close()

    config: DBOSConfig = {
        "name": "bench-journal",
        "system_database_url": f"sqlite:///{db}",
        "log_level": "WARNING",
    }
    dbos = DBOS(config=config)
    DBOS.launch()
    try:
        for _ in range(args.warmup):
            assert bench_workflow(args.steps) == sum(range(args.steps))

        engine = dbos._sys_db.engine  # read-only use: PRAGMAs and a commit counter
        settings = pragmas(engine)
        commits = 0

        def on_commit(conn: Any) -> None:
            # Called before the DBAPI commit: count only those that end a write
            # transaction (pysqlite opens one before the first INSERT/UPDATE/DELETE).
            nonlocal commits
            if conn.connection.dbapi_connection.in_transaction:
                commits += 1

        sa.event.listen(engine, "commit", on_commit)
        workflow_ids: list[str] = []
        expected_total = sum(range(args.steps))
        start = time.perf_counter()
        for _ in range(args.queues):
            workflow_id = str(uuid.uuid4())
            with SetWorkflowID(workflow_id):
                total = bench_workflow(args.steps)
            if total != expected_total:
                sys.exit("_dbos_worker: wrong workflow result")
            workflow_ids.append(workflow_id)
        elapsed = time.perf_counter() - start
        sa.event.remove(engine, "commit", on_commit)
    finally:
        DBOS.destroy()

    result: dict[str, object] = {
        "steps_per_s": args.queues * args.steps / elapsed,
        "elapsed_s": elapsed,
        "queues": args.queues,
        "steps": args.steps,
        "commits": commits,
        "commits_per_step": commits / (args.queues * args.steps),
        "dbos": importlib.metadata.version("dbos"),
        "sqlalchemy": importlib.metadata.version("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
        **settings,
        **verify(db, workflow_ids, args.steps),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
