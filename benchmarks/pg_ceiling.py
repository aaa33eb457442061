"""Where a journaled run's time goes on PostgreSQL: the library, its statements, the limit.

Three loops of 10-step runs, alternating over ``--rounds`` rounds, on one server:

* library: ``ActionQueue(journal=open_journal("postgresql://..."))`` of 10 no-op steps;
* statements: the very statements the journal sends for such a run (its create, the
  nine step commits and the success, built by the journal itself), sent the journal's
  way (prepared, through libpq directly) over one connection: the run's cost without
  the engine, the recorder or the pool;
* raw: one committed INSERT per step through psycopg's ``execute`` (``bench_postgres.py``'s
  limit);
* raw libpq: the same INSERTs sent the journal's way (prepared, through libpq directly):
  what the server allows at one durable commit per step, without psycopg's per-query work.

"statements / raw libpq" is the ceiling of the current commit design (N+1
one-statement commits, each updating rows in place); "library / statements" is the
client's own share. It reads private methods of the journal: a measurement tool, not
an API.

Run from the repo root::

    .venv/bin/python benchmarks/pg_ceiling.py [--url postgresql://...] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_journal import _step_type as step_type

from actionqueues._postgres import _texts

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEPS = 10


def main(argv: list[str] | None = None) -> int:
    from actionqueues import ActionQueue, open_journal

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("ACTIONQUEUES_TEST_POSTGRESQL") or DEFAULT_URL
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=100, help="runs per loop per round")
    args = parser.parse_args(argv)
    action = step_type()
    schema = "aq_ceiling_" + uuid.uuid4().hex[:8]
    journal: Any = open_journal(f"{args.url}?schema={schema}", heartbeat=False)
    con = psycopg.connect(args.url, autocommit=True, options=f"-c search_path={schema}")
    con.execute(
        "CREATE TABLE raw (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "run INTEGER, step INTEGER, state TEXT, at DOUBLE PRECISION)"
    )

    def library(runs: int) -> None:
        for _ in range(runs):
            q = ActionQueue(journal=journal)
            for i in range(STEPS):
                q.add(action(i))
            q.execute()

    def statements(runs: int) -> None:
        for _ in range(runs):
            run_id = str(uuid.uuid4())
            rows = [
                {"idx": i, "type": "bench", "state": f'{{"i": {i}}}', "policies": None}
                for i in range(STEPS)
            ]
            run: dict[str, Any] = {"run_id": run_id, "name": "x", "kind": "sync"}
            run |= {"status": "running"}
            run |= {"resumable": 0, "steps": STEPS, "finished_at": None, "error": None}
            start = {"status": "running", "attempts": 1, "next_retry_at": None}
            sql, params, _ = journal._create_statement(
                run, rows, [("step", 0, {**start, "started_at": time.time()})]
            )
            journal._run_prepared(con.pgconn, sql, _texts(params))
            for k in range(1, STEPS + 1):
                done = {"status": "succeeded", "attempts": 1, "finished_at": time.time()}
                done |= {"state": f'{{"i": {k - 1}}}', "next_retry_at": None}
                ops: list[Any] = [("step", k - 1, done)]
                outcome: dict[str, Any] = {}
                if k < STEPS:
                    ops.append(("step", k, {**start, "started_at": time.time()}))
                else:
                    outcome = {"status": "succeeded", "finished_at": time.time()}
                _, sql, params = journal._commit_statement(run_id, outcome, ops, bool(outcome))
                journal._run_prepared(con.pgconn, sql, _texts(params))

    def raw(runs: int) -> None:
        for run in range(runs):
            for i in range(STEPS):
                con.execute(
                    "INSERT INTO raw (run, step, state, at) VALUES (%s, %s, %s, %s)",
                    (run, i, f'{{"i": {i}}}', time.time()),
                )

    insert = "INSERT INTO raw (run, step, state, at) VALUES (%s, %s, %s, %s) RETURNING id"

    def raw_libpq(runs: int) -> None:
        for run in range(runs):
            for i in range(STEPS):
                params = (run, i, f'{{"i": {i}}}', time.time())
                journal._run_prepared(con.pgconn, insert, _texts(params))

    loops: dict[str, Callable[[int], None]] = {
        "library": library,
        "statements": statements,
        "raw": raw,
        "raw libpq": raw_libpq,
    }
    samples: dict[str, list[float]] = {name: [] for name in loops}
    cpus: dict[str, list[float]] = {}
    try:
        for loop in loops.values():
            loop(10)  # warm-up: connections, prepared statements
        for round_no in range(args.rounds):
            names = list(loops)
            names = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in names:
                began = time.perf_counter()
                cpu = time.process_time()
                loops[name](args.runs)
                samples[name].append(args.runs * STEPS / (time.perf_counter() - began))
                cpus.setdefault(name, []).append((time.process_time() - cpu) / args.runs / STEPS)
    finally:
        journal.close()
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')
        con.close()
    raw_median = statistics.median(samples["raw"])
    print(f"10-step runs on {args.url}, {args.rounds} rounds x {args.runs} runs, steps/s:")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"  {name:10s} median {median:7,.0f} (min {min(values):7,.0f}, max "
            f"{max(values):7,.0f})  {median / raw_median:.2f}x raw, client CPU "
            f"{statistics.median(cpus[name]) * 1e6:4.0f} us/step"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
