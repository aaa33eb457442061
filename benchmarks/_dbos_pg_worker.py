"""DBOS Transact side of ``bench_postgres.py``; runs inside ``benchmarks/.venv-dbos``.

One workflow of ``--steps`` (10) ``@DBOS.step`` steps, run ``--queues`` times
one after the other, on a DBOS system database on a PostgreSQL server
(``--url``, a database of its own that the driver creates empty). DBOS is used
as shipped: its own engine (SQLAlchemy over psycopg 3), its own session
settings, nothing patched; setup (``DBOS(config=...)``, ``launch()``,
migrations) and a short warm-up are outside the timed part.

Afterwards the worker checks, through a separate psycopg connection, that every
timed workflow is ``SUCCESS`` and has one ``operation_outputs`` row per step
holding that step's output. It reads ``synchronous_commit`` on a connection
from DBOS's own engine, counts the commits DBOS's engine made during the timed
part (a SQLAlchemy ``commit`` event listener: it observes, it changes nothing)
and the transaction ids the server assigned meanwhile (write transactions,
server-wide: the next-xid horizon before and after). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
import uuid
from typing import Any

import psycopg
import sqlalchemy as sa  # type: ignore[import-not-found, unused-ignore]
from dbos import DBOS, DBOSConfig, SetWorkflowID  # type: ignore[import-not-found, unused-ignore]

SCHEMA = "dbos"  # DBOS's default system schema


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


def next_xid(con: psycopg.Connection[Any]) -> int:
    """The server's next transaction id (assigned only to transactions that write)."""
    row = con.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def session_settings(engine: Any) -> dict[str, object]:
    """Settings as seen by a connection from DBOS's own pool."""
    with engine.connect() as conn:
        return {
            "synchronous_commit": conn.execute(sa.text("SHOW synchronous_commit")).scalar(),
            "server_version": conn.execute(sa.text("SHOW server_version")).scalar(),
        }


def verify(con: psycopg.Connection[Any], workflow_ids: list[str], steps: int) -> dict[str, int]:
    """Every timed workflow succeeded and its step outputs are in the database."""
    row = con.execute(
        f"SELECT count(*) FROM {SCHEMA}.workflow_status "
        "WHERE workflow_uuid = ANY(%s) AND status = 'SUCCESS'",
        (workflow_ids,),
    ).fetchone()
    assert row is not None
    succeeded = int(row[0])
    row = con.execute(
        f"SELECT count(*) FROM {SCHEMA}.operation_outputs WHERE workflow_uuid = ANY(%s) "
        "AND function_name LIKE '%%bench_step' AND output IS NOT NULL AND error IS NULL",
        (workflow_ids,),
    ).fetchone()
    assert row is not None
    step_rows = int(row[0])
    row = con.execute(
        "SELECT count(*) FROM ("
        f" SELECT workflow_uuid, count(*) AS n FROM {SCHEMA}.operation_outputs"
        " WHERE workflow_uuid = ANY(%s) AND function_name LIKE '%%bench_step'"
        " GROUP BY workflow_uuid"
        ") AS per_workflow WHERE n != %s",
        (workflow_ids, steps),
    ).fetchone()
    assert row is not None
    bad_steps = int(row[0])
    expected = len(workflow_ids)
    if succeeded != expected or step_rows != expected * steps or bad_steps:
        sys.exit(
            f"_dbos_pg_worker: {succeeded}/{expected} workflows SUCCESS, "
            f"{step_rows}/{expected * steps} step output rows, "
            f"{bad_steps} workflows with a wrong step count"
        )
    return {"workflows_verified": succeeded, "step_rows_verified": step_rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="postgresql:// URL of the system database")
    parser.add_argument("--queues", type=int, default=200, help="timed workflows")
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow")
    parser.add_argument("--warmup", type=int, default=5, help="untimed workflows first")
    args = parser.parse_args()

    config: DBOSConfig = {
        "name": "bench-postgres",
        "system_database_url": args.url,
        "log_level": "WARNING",
    }
    dbos = DBOS(config=config)
    DBOS.launch()
    observer = psycopg.connect(args.url, autocommit=True)
    try:
        for _ in range(args.warmup):
            assert bench_workflow(args.steps) == sum(range(args.steps))

        engine = dbos._sys_db.engine  # read-only use: SHOW and a commit counter
        settings = session_settings(engine)
        commits = 0

        def on_commit(conn: Any) -> None:
            nonlocal commits
            commits += 1

        sa.event.listen(engine, "commit", on_commit)
        workflow_ids: list[str] = []
        expected_total = sum(range(args.steps))
        xid_before = next_xid(observer)
        start = time.perf_counter()
        for _ in range(args.queues):
            workflow_id = str(uuid.uuid4())
            with SetWorkflowID(workflow_id):
                total = bench_workflow(args.steps)
            if total != expected_total:
                sys.exit("_dbos_pg_worker: wrong workflow result")
            workflow_ids.append(workflow_id)
        elapsed = time.perf_counter() - start
        xid_after = next_xid(observer)
        sa.event.remove(engine, "commit", on_commit)
    finally:
        DBOS.destroy()
    try:
        verified = verify(observer, workflow_ids, args.steps)
    finally:
        observer.close()

    timed_steps = args.queues * args.steps
    result: dict[str, object] = {
        "steps_per_s": timed_steps / elapsed,
        "elapsed_s": elapsed,
        "queues": args.queues,
        "steps": args.steps,
        "commits": commits,
        "commits_per_step": commits / timed_steps,
        "xids_per_step": (xid_after - xid_before) / timed_steps,
        "dbos": importlib.metadata.version("dbos"),
        "sqlalchemy": importlib.metadata.version("sqlalchemy"),
        "psycopg": importlib.metadata.version("psycopg"),
        "python": sys.version.split()[0],
        **settings,
        **verified,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
