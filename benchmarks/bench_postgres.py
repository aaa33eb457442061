"""Steps per second of a journaled queue on PostgreSQL, against the commit limit and DBOS.

All contenders use the same PostgreSQL server (``--url``, default
``$ACTIONQUEUES_TEST_POSTGRESQL`` or ``postgresql://postgres@127.0.0.1:5432/test``)
and run ``--queues`` units of ``--steps`` (10) steps per round:

* actionqueues: journaled ``ActionQueue``\\ s of 10 no-op registered actions on
  ``open_journal("postgresql://...?schema=bench_aq")`` (a fresh schema per run);
* raw: one committed ``INSERT`` per step over one psycopg connection in
  autocommit, server defaults (``synchronous_commit=on``): what the server
  allows at one durable commit per step;
* async: the same queues as ``AsyncActionQueue``\\ s on one event loop, 1, 4 and
  16 at once (tasks), their commits over the journal's async connections;
* dbos: DBOS Transact 3.4 in its own venv (``benchmarks/.venv-dbos/``), a
  ``@DBOS.workflow`` of 10 ``@DBOS.step`` steps per unit, its system database a
  fresh database (``dbos_bench``) on the same server. Run by
  ``_dbos_pg_worker.py``, which checks that every step output is stored.

Concurrency: the same total work split over 1, 4 and 16 threads
(``--concurrency``) that pull units from a shared counter, all threads sharing
one ``Journal``; the raw loop likewise with one connection per thread. Level 1
is the single-queue measurement above.

Setup (opening the journal, ``DBOS.launch()``, schema creation) and a short
warm-up are not timed. Each round runs every contender once, in an order that
rotates between rounds; the tables give the median, min and max over rounds.
Schemas and the database it creates are dropped at the end (``--keep`` keeps
them). Always exits 0 when the measurement ran: it is a measurement, not a test.

Run from the repo root::

    .venv/bin/python benchmarks/bench_postgres.py            # 5 rounds x 200 queues
    .venv/bin/python benchmarks/bench_postgres.py --quick    # 3 rounds x 50 queues
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_journal import (
    TARGET_VS_DBOS,
    TARGET_VS_RAW,
    WARMUP_QUEUES,
    Measurement,
    ensure_dbos_venv,
    mount_of,
    ratio_cell,
)
from bench_journal import _step_type as step_type

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_dbos_pg_worker.py"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SETTINGS = (
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "commit_siblings",
    "wal_level",
    "synchronous_standby_names",
    "max_connections",
    "shared_buffers",
)


class Unavailable(Exception):
    """A contender cannot run here (e.g. the PostgreSQL journal does not exist yet)."""


# --- URLs and server ----------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced and its query dropped."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, "", ""))


def without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def with_query(url: str, **options: str) -> str:
    """``url`` with ``options`` (``schema=``, ``pool_size=``) set in its query."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in options]
    query += list(options.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


QueryText = str | sql.SQL | sql.Composed  # what Connection.execute takes


def scalar(con: psycopg.Connection[Any], query: QueryText, params: Any = None) -> Any:
    row = con.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def next_xid(con: psycopg.Connection[Any]) -> int:
    """The server's next transaction id: xids go only to transactions that write."""
    return int(scalar(con, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"))


def other_sessions(con: psycopg.Connection[Any]) -> int:
    """Client sessions on the server besides this one (others' load skews the figures)."""
    return int(
        scalar(
            con,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
    )


def server_info(url: str) -> dict[str, str]:
    with connect(url) as con:
        info = {name: str(scalar(con, f"SHOW {name}")) for name in SETTINGS}
        info["server_version"] = str(scalar(con, "SHOW server_version"))
        try:
            info["data_directory"] = str(scalar(con, "SHOW data_directory"))
        except psycopg.Error:
            info["data_directory"] = "unknown (needs pg_read_all_settings)"
    return info


def drop_schema(url: str, schema: str) -> None:
    with connect(url) as con:
        con.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def drop_database(url: str, database: str) -> None:
    with connect(with_database(url, "postgres")) as con:
        con.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def fresh_database(url: str, database: str) -> None:
    drop_database(url, database)
    with connect(with_database(url, "postgres")) as con:
        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def schema_rows(url: str, schema: str) -> dict[str, int]:
    with connect(url) as con:
        tables = [
            str(row[0])
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY table_name",
                (schema,),
            )
        ]
        return {
            table: int(
                scalar(
                    con,
                    sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    ),
                )
            )
            for table in tables
        }


# --- the threaded harness -----------------------------------------------------------


@dataclass
class Timed:
    elapsed: float
    xids: int


def run_threads(
    observer: psycopg.Connection[Any],
    threads: int,
    queues: int,
    unit_for: Callable[[int], Callable[[int], None]],
) -> Timed:
    """``queues`` units over ``threads`` threads pulling from one counter.

    ``unit_for(thread)`` is called in the thread (so it can open its own
    connection) and returns ``unit(run_number)``. Each thread warms up
    untimed, then all start together; the time runs until the last one ends.
    """
    counter = itertools.count()
    counter_lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def take() -> int | None:
        with counter_lock:
            n = next(counter)
        return n if n < queues else None

    def body(thread: int) -> None:
        try:
            unit = unit_for(thread)
            for w in range(max(1, WARMUP_QUEUES // threads)):
                unit(-1 - w - 1000 * thread)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            while (n := take()) is not None:
                unit(n)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    xid_before = next_xid(observer)
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()  # broken if a thread failed to set up: its error is raised below
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Timed(elapsed, next_xid(observer) - xid_before)


# --- contenders ---------------------------------------------------------------------


def run_raw(url: str, schema: str, threads: int, queues: int, steps: int) -> Measurement:
    """One committed INSERT per step, autocommit, one connection per thread."""
    with connect(url) as observer:
        ident = sql.Identifier(schema)
        observer.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        observer.execute(sql.SQL("DROP TABLE IF EXISTS {}.steps").format(ident))
        observer.execute(
            sql.SQL(
                "CREATE TABLE {}.steps (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "run INTEGER NOT NULL, step INTEGER NOT NULL, state TEXT NOT NULL, "
                "at DOUBLE PRECISION NOT NULL)"
            ).format(ident)
        )
        insert = (
            sql.SQL("INSERT INTO {}.steps (run, step, state, at) VALUES (%s, %s, %s, %s)")
            .format(ident)
            .as_string(observer)
        )
        connections: list[psycopg.Connection[Any]] = []
        connections_lock = threading.Lock()
        synchronous: set[str] = set()

        def unit_for(thread: int) -> Callable[[int], None]:
            con = connect(url)
            with connections_lock:
                connections.append(con)
                synchronous.add(str(scalar(con, "SHOW synchronous_commit")))

            def unit(run: int) -> None:
                for i in range(steps):
                    con.execute(insert, (run, i, f'{{"i": {i}}}', time.time()))

            return unit

        try:
            timed = run_threads(observer, threads, queues, unit_for)
        finally:
            for con in connections:
                con.close()
        rows = int(
            scalar(
                observer,
                sql.SQL("SELECT count(*) FROM {}.steps WHERE run >= 0").format(ident),
            )
        )
        observer.execute(sql.SQL("DROP TABLE {}.steps").format(ident))
    if rows != queues * steps:
        sys.exit(f"bench_postgres: raw loop wrote {rows} rows, expected {queues * steps}")
    info: dict[str, object] = {
        "synchronous_commit": ",".join(sorted(synchronous)),
        "xids_per_step": timed.xids / (queues * steps),
        "connections": threads,
    }
    return Measurement(timed.elapsed, queues * steps, info)


def journal_settings(journal: Any) -> tuple[str, str]:
    """``synchronous_commit`` on one of the journal's own connections, and its pool size.

    A best-effort look inside the journal (its psycopg_pool), never a reason to fail.
    """
    for attr in ("_pool", "pool"):
        pool = getattr(journal, attr, None)
        if pool is not None and hasattr(pool, "connection"):
            size = str(getattr(pool, "max_size", "unknown"))
            try:
                with pool.connection() as con:
                    return str(scalar(con, "SHOW synchronous_commit")), size
            except Exception as exc:
                return f"unknown ({type(exc).__name__})", size
    return "unknown (no pool found on the journal)", "unknown"


def fresh_journal(url: str, schema: str, pool_size: int | None) -> Any:
    """The actionqueues journal on a new schema (``pool_size=`` in its URL if given)."""
    from actionqueues import open_journal

    drop_schema(url, schema)
    journal_url = with_query(url, schema=schema)
    if pool_size is not None:
        journal_url = with_query(journal_url, pool_size=str(pool_size))
    try:
        return open_journal(journal_url)
    except Exception as exc:  # the backend is not there (yet), or cannot open this URL
        raise Unavailable(f"open_journal({journal_url!r}): {type(exc).__name__}: {exc}") from exc


def run_actionqueues(
    url: str, schema: str, pool_size: int | None, threads: int, queues: int, steps: int
) -> Measurement:
    """Journaled queues of no-op actions on ``open_journal("postgresql://...?schema=...")``."""
    from actionqueues import ActionQueue

    action = step_type()
    journal = fresh_journal(url, schema, pool_size)
    try:
        with connect(without_query(url)) as observer:

            def unit_for(thread: int) -> Callable[[int], None]:
                def unit(run: int) -> None:
                    q = ActionQueue(journal=journal, name="bench")
                    for i in range(steps):
                        q.add(action(i))
                    q.execute()

                return unit

            timed = run_threads(observer, threads, queues, unit_for)
        statuses: dict[str, int] = {}
        for run in journal.runs(name="bench"):
            statuses[run.status] = statuses.get(run.status, 0) + 1
        synchronous, pool_max = journal_settings(journal)
    finally:
        journal.close()
    warmups = threads * max(1, WARMUP_QUEUES // threads)
    if statuses != {"succeeded": queues + warmups}:
        sys.exit(
            f"bench_postgres: the journal holds runs {statuses}, "
            f"expected {{'succeeded': {queues + warmups}}}"
        )
    info: dict[str, object] = {
        "synchronous_commit": synchronous,
        "pool_max_size": pool_max,
        "xids_per_step": timed.xids / (queues * steps),
        "runs_verified": queues + warmups,
        "rows": schema_rows(without_query(url), schema),
        "threads": threads,
    }
    drop_schema(without_query(url), schema)
    return Measurement(timed.elapsed, queues * steps, info)


def run_actionqueues_async(
    url: str, schema: str, pool_size: int | None, tasks: int, queues: int, steps: int
) -> Measurement:
    """AsyncActionQueues on one event loop, ``tasks`` at once, over the journal's async pool."""
    import asyncio

    from actionqueues import AsyncActionQueue

    action = step_type()
    journal = fresh_journal(url, schema, pool_size)

    async def one() -> None:
        q = AsyncActionQueue(journal=journal, name="bench")
        for i in range(steps):
            q.add(action(i))
        await q.execute()

    async def measure() -> float:
        for _ in range(WARMUP_QUEUES):
            await one()
        counter = itertools.count()

        async def worker() -> None:
            while next(counter) < queues:
                await one()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        elapsed = time.perf_counter() - start
        for run in journal.runs(name="bench"):
            statuses[run.status] = statuses.get(run.status, 0) + 1
        await journal.aclose()
        return elapsed

    statuses: dict[str, int] = {}
    try:
        with connect(without_query(url)) as observer:
            xid_before = next_xid(observer)
            elapsed = asyncio.run(measure())
            xids = next_xid(observer) - xid_before
    finally:
        journal.close()
    if statuses != {"succeeded": queues + WARMUP_QUEUES}:
        sys.exit(f"bench_postgres: the async journal holds runs {statuses}")
    info: dict[str, object] = {"xids_per_step": xids / (queues * steps), "tasks": tasks}
    drop_schema(without_query(url), schema)
    return Measurement(elapsed, queues * steps, info)


def run_dbos(python: Path, url: str, database: str, queues: int, steps: int) -> Measurement:
    fresh_database(url, database)
    cmd = [str(python), "-I", str(WORKER), "--url", with_database(url, database)]
    cmd += ["--queues", str(queues), "--steps", str(steps), "--warmup", str(WARMUP_QUEUES)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"bench_postgres: DBOS worker failed: {' '.join(cmd)}\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    elapsed = result["elapsed_s"]
    assert isinstance(elapsed, float)
    return Measurement(elapsed, queues * steps, result)


# --- driver -------------------------------------------------------------------------


def levels_arg(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()} | {1})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a list of thread counts like 1,4,16, got {text!r}"
        ) from None
    if levels[0] < 1:
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return levels


def label(contender: str, level: int) -> str:
    return contender if level == 1 else f"{contender} x{level}"


def spread(values: list[float]) -> str:
    if not values:
        return f"{'-':>9s} {'-':>9s} {'-':>9s}"
    return f"{statistics.median(values):9,.0f} {min(values):9,.0f} {max(values):9,.0f}"


def describe(name: str, info: dict[str, object]) -> str:
    if name == "dbos":
        return (
            f"dbos {info['dbos']} (python {info['python']}, sqlalchemy {info['sqlalchemy']}, "
            f"psycopg {info['psycopg']}): synchronous_commit={info['synchronous_commit']}, "
            f"{info['commits_per_step']:.2f} engine commits/step, "
            f"{info['xids_per_step']:.2f} write transactions/step, "
            f"{info['step_rows_verified']} step outputs verified"
        )
    xids = f"{info['xids_per_step']:.2f} write transactions/step"
    if name.startswith("async"):
        return f"AsyncActionQueue, {info['tasks']} task(s) on one event loop, {xids}"
    if name.startswith("raw"):
        return f"synchronous_commit={info['synchronous_commit']}, {xids}"
    return (
        f"synchronous_commit={info['synchronous_commit']} (a journal connection), "
        f"pool max_size={info['pool_max_size']}, {xids}, "
        f"{info['runs_verified']} runs succeeded, rows: {info['rows']}"
    )


@contextlib.contextmanager
def cleanup(url: str, schemas: list[str], database: str | None, keep: bool) -> Iterator[None]:
    try:
        yield
    finally:
        if not keep:
            for schema in schemas:
                drop_schema(url, schema)
            if database is not None:
                drop_database(url, database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--queues",
        type=int,
        help="queues (workflows) per contender and per concurrency level per round (200)",
    )
    size.add_argument(
        "--steps-total", type=int, help="steps per contender per round (instead of --queues)"
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per queue (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--url",
        default=os.environ.get("ACTIONQUEUES_TEST_POSTGRESQL") or DEFAULT_URL,
        help="PostgreSQL server and database for the journal and the raw loop "
        "(default $ACTIONQUEUES_TEST_POSTGRESQL or %(default)s)",
    )
    parser.add_argument(
        "--schema", default="bench_aq", help="schema of the actionqueues journal (bench_aq)"
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        help="pool_size=N in the journal URL (default: the highest --concurrency level, "
        "as the README advises: a connection per thread, as the raw threads have)",
    )
    parser.add_argument("--raw-schema", default="bench_raw", help="schema of the raw loop")
    parser.add_argument(
        "--dbos-database", default="dbos_bench", help="database created for DBOS (dbos_bench)"
    )
    parser.add_argument(
        "--concurrency",
        type=levels_arg,
        default=[1, 4, 16],
        help="thread counts, comma-separated (default 1,4,16; 1 is always included)",
    )
    parser.add_argument("--skip-dbos", action="store_true", help="do not run DBOS")
    parser.add_argument(
        "--skip-raw-concurrency",
        action="store_true",
        help="run the raw loop with one connection only",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the schemas and the DBOS database at the end"
    )
    parser.add_argument("--quick", action="store_true", help="fast run: 3 rounds x 50 queues")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
        if args.queues is None and args.steps_total is None:
            args.queues = 50
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    if args.steps_total is not None:
        args.queues = max(1, args.steps_total // args.steps)
    elif args.queues is None:
        args.queues = 200
    if args.queues < 1:
        parser.error("--queues must be >= 1")
    queues, steps, url = args.queues, args.steps, without_query(args.url)
    levels: list[int] = args.concurrency
    if args.pool_size is None:
        args.pool_size = max(levels)

    try:
        server = server_info(url)
    except psycopg.OperationalError as exc:
        sys.exit(f"bench_postgres: cannot reach PostgreSQL at {url}: {exc}")
    dbos_python = None if args.skip_dbos else ensure_dbos_venv()

    jobs: dict[str, Callable[[], Measurement]] = {}
    for level in levels:
        jobs[label("actionqueues", level)] = functools.partial(
            run_actionqueues, url, args.schema, args.pool_size, level, queues, steps
        )
        jobs[label("async", level)] = functools.partial(
            run_actionqueues_async,
            url,
            args.schema + "_async",
            args.pool_size,
            level,
            queues,
            steps,
        )
        if level == 1 or not args.skip_raw_concurrency:
            jobs[label("raw", level)] = functools.partial(
                run_raw, url, args.raw_schema, level, queues, steps
            )
        if level == 1 and dbos_python is not None:
            jobs["dbos"] = functools.partial(
                run_dbos, dbos_python, url, args.dbos_database, queues, steps
            )
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    seen: dict[str, dict[str, object]] = {}
    unavailable: dict[str, str] = {}
    busiest = 0

    with (
        cleanup(
            url,
            [args.schema, args.schema + "_async", args.raw_schema],
            None if dbos_python is None else args.dbos_database,
            args.keep,
        ),
        connect(url) as watcher,
    ):
        for round_no in range(args.rounds):
            names = list(jobs)
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                contender = name.split()[0]
                if contender in unavailable:
                    continue
                busiest = max(busiest, other_sessions(watcher))
                try:
                    measurement = jobs[name]()
                except Unavailable as exc:
                    unavailable[contender] = str(exc)
                    continue
                except Exception as exc:
                    traceback.print_exc()
                    sys.exit(
                        f"bench_postgres: {name} failed in round {round_no + 1}: "
                        f"{type(exc).__name__}: {exc}\n(other client sessions on the server "
                        f"before it: {other_sessions(watcher)}; one that terminates backends "
                        f"or holds locks stops a run)"
                    )
                samples[name].append(measurement.steps_per_s)
                seen[name] = measurement.info
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

    print(
        f"PostgreSQL journal benchmark: steps/s, {queues} queues x {steps} steps per contender "
        f"(and per concurrency level) per round, {args.rounds} rounds "
        f"(+{WARMUP_QUEUES} warm-up queues each, untimed)"
    )
    print(
        f"  python {sys.version.split()[0]}, psycopg {importlib.metadata.version('psycopg')} "
        f"({sys.executable}), {os.cpu_count()} CPUs"
    )
    print(f"  server PostgreSQL {server['server_version']} at {urlsplit(url).netloc}")
    print("  " + ", ".join(f"{name}={server[name]}" for name in SETTINGS))
    print(f"  data   {server['data_directory']}: {mount_of(Path(server['data_directory']))}")
    if busiest:
        print(
            f"  WARNING: up to {busiest} other client sessions were on the server between runs; "
            f"their load is in these figures"
        )
    for name in jobs:
        contender = name.split()[0]
        if contender in unavailable:
            if name == contender:
                print(f"  {name:18s} not run: {unavailable[contender]}")
        elif name in seen and (name == contender or contender in ("actionqueues", "async")):
            print(f"  {name:18s} {describe(name, seen[name])}")
    print()

    raw, dbos = samples["raw"], samples.get("dbos", [])
    header = f"{'contender':18s} | {'median':>9s} {'min':>9s} {'max':>9s} | {'vs raw':>9s}"
    header += f" {'vs dbos':>9s}" if dbos else ""
    print(header)
    print("-" * len(header))
    for name in ("actionqueues", "raw", "dbos"):
        values = samples.get(name, [])
        if not values:
            continue
        line = f"{name:18s} | {spread(values)} | {ratio_cell(statistics.median(values), raw)}"
        if dbos:
            line += f" {ratio_cell(statistics.median(values), dbos)}"
        print(line)
    print()

    print("concurrency: total steps/s of all threads (one shared Journal; raw: a connection each)")
    header = (
        f"{'threads':>7s} | {'actionqueues':>12s} {'min':>9s} {'max':>9s} {'vs x1':>7s} | "
        f"{'raw':>9s} {'min':>9s} {'max':>9s} {'vs x1':>7s} | {'aq/raw':>7s}"
    )
    print(header)
    print("-" * len(header))
    ours_by_level: dict[int, float] = {}
    for level in levels:
        ours = samples[label("actionqueues", level)]
        theirs = samples.get(label("raw", level), [])
        line = f"{level:7d} | "
        if ours:
            ours_by_level[level] = statistics.median(ours)
            line += f"{statistics.median(ours):12,.0f} {min(ours):9,.0f} {max(ours):9,.0f} "
            line += f"{statistics.median(ours) / statistics.median(samples['actionqueues']):6.2f}x"
        else:
            line += f"{'-':>12s} {'-':>9s} {'-':>9s} {'-':>7s}"
        line += " | "
        if theirs:
            line += f"{spread(theirs)} {statistics.median(theirs) / statistics.median(raw):6.2f}x"
        else:
            line += f"{'-':>9s} {'-':>9s} {'-':>9s} {'-':>7s}"
        line += " | "
        line += ratio_cell(statistics.median(ours), theirs) if ours and theirs else f"{'-':>9s}"
        print(line)
    print()

    print("async: AsyncActionQueues on one event loop, N tasks at once (the journal's async pool)")
    header = f"{'tasks':>7s} | {'async':>12s} {'min':>9s} {'max':>9s} {'vs x1':>7s} | "
    header += f"{'vs threads':>10s}"
    print(header)
    print("-" * len(header))
    async_one = samples.get(label("async", 1), [])
    for level in levels:
        values = samples.get(label("async", level), [])
        if not values or not async_one:
            continue
        threaded = samples[label("actionqueues", level)]
        line = f"{level:7d} | {statistics.median(values):12,.0f} {min(values):9,.0f} "
        line += (
            f"{max(values):9,.0f} {statistics.median(values) / statistics.median(async_one):6.2f}x"
        )
        line += " | " + (ratio_cell(statistics.median(values), threaded) if threaded else "-")
        print(line)
    print()

    ours_one = samples["actionqueues"]
    if not ours_one:
        print("targets: not evaluated, actionqueues was not run")
        return 0
    median = statistics.median(ours_one)
    verdicts = []
    vs_raw = median / statistics.median(raw)
    verdicts.append(
        f">= {TARGET_VS_RAW}x raw: {'MET' if vs_raw >= TARGET_VS_RAW else 'NOT MET'} "
        f"({vs_raw:.2f}x)"
    )
    if dbos:
        vs_dbos = median / statistics.median(dbos)
        met = "MET" if vs_dbos >= TARGET_VS_DBOS else "NOT MET"
        verdicts.append(f">= {TARGET_VS_DBOS:g}x DBOS: {met} ({vs_dbos:.2f}x)")
    else:
        verdicts.append(f">= {TARGET_VS_DBOS:g}x DBOS: not evaluated, DBOS was not run")
    if len(ours_by_level) > 1:
        ordered = [ours_by_level[level] for level in sorted(ours_by_level)]
        grows = all(b > a for a, b in itertools.pairwise(ordered))
        verdicts.append(
            "grows with concurrency: "
            + ("MET" if grows else "NOT MET")
            + " ("
            + " -> ".join(f"x{n} {ours_by_level[n]:,.0f}" for n in sorted(ours_by_level))
            + ")"
        )
    print("targets (medians): " + "; ".join(verdicts))
    # The contenders of a round ran minutes apart at most: the ratio of each round's
    # figures is less moved by the machine's slower and faster spells than the medians.
    paired = []
    for name, theirs in (("raw", raw), ("DBOS", dbos)):
        if theirs and len(theirs) == len(ours_one):
            ratios = [a / b for a, b in zip(ours_one, theirs, strict=True)]
            paired.append(
                f"vs {name} {statistics.median(ratios):.2f}x "
                f"({min(ratios):.2f}x-{max(ratios):.2f}x)"
            )
    if paired:
        print("per-round ratios (median, min-max; for information): " + "; ".join(paired))
    if dbos:
        # What this machine allows: a journaled N-step run makes N + 1 durable commits
        # (the start of each step, then the last result) where raw makes N, so even a
        # journal that cost nothing but its commits would reach N / (N + 1) of raw.
        raw_vs_dbos = statistics.median(raw) / statistics.median(dbos)
        ceiling = steps / (steps + 1)
        print(
            f"context (for information): raw is {raw_vs_dbos:.2f}x DBOS here, so "
            f"{TARGET_VS_DBOS:g}x DBOS needs {TARGET_VS_DBOS / raw_vs_dbos:.2f}x raw; "
            f"{steps + 1} commits per {steps}-step run to raw's {steps} cap a journal at "
            f"{ceiling:.2f}x raw ({ceiling * raw_vs_dbos:.2f}x DBOS)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
