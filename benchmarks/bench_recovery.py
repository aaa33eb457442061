"""Recovery throughput: runs per second that ``recover()`` finishes, sync and async runs.

For each kind, ``--runs`` queues of ``--steps`` no-op steps run to their end in
a fresh schema (or SQLite file), then every run is turned back into an abandoned
one (status ``running``, every step started, lease expired, as if its process
had died after its last step), and one ``recover(journal)`` call rolls them all
back: the figure is runs rolled back per second of that call, and the client
CPU per run. Async runs are rolled back on recovery's event loop (one for the
call, sharing the journal's async connections).

Run from the repo root::

    .venv/bin/python benchmarks/bench_recovery.py [--url postgresql://...|sqlite] [--runs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actionqueues import (
    Action,
    ActionQueue,
    AsyncAction,
    AsyncActionQueue,
    open_journal,
    recover,
    register_action,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


@register_action("bench_recovery.sync")
@dataclass
class SyncStep(Action):
    """A no-op step."""

    i: int

    def execute(self) -> None:
        pass

    def rollback(self) -> None:
        pass


@register_action("bench_recovery.async")
@dataclass
class AsyncStep(AsyncAction):
    """A no-op async step."""

    i: int

    async def execute(self) -> None:
        pass

    async def rollback(self) -> None:
        pass


def abandon_all(url: str, schema: str | None) -> None:
    """Make every run of the journal look abandoned by a dead process."""
    statements = (
        "UPDATE {t}runs SET status = 'running', lease_expires_at = 1, finished_at = NULL",
        "UPDATE {t}steps SET status = 'running', finished_at = NULL",
    )
    if schema is not None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as server:
            for sql in statements:
                server.execute(sql.replace("{t}", f'"{schema}".aq_'))
    else:
        local = sqlite3.connect(url.removeprefix("sqlite:///"))
        with local:
            for sql in statements:
                local.execute(sql.replace("{t}", "aq_"))
        local.close()


def measure(url: str, kind: str, runs: int, steps: int) -> tuple[float, float]:
    """(runs/s, client CPU ms per run) of recovering ``runs`` abandoned runs of ``kind``."""
    schema: str | None = None
    if url.startswith("postgres"):
        schema = "aq_bench_recovery_" + uuid.uuid4().hex[:8]
        journal_url = f"{url}{'&' if '?' in url else '?'}schema={schema}"
    else:
        journal_url = url
    try:
        with open_journal(journal_url, heartbeat=False) as owner:
            for _ in range(runs):
                if kind == "sync":
                    q = ActionQueue(journal=owner)
                    for i in range(steps):
                        q.add(SyncStep(i))
                    q.execute()
                else:

                    async def one() -> None:
                        q = AsyncActionQueue(journal=owner)
                        for i in range(steps):
                            q.add(AsyncStep(i))
                        await q.execute()

                    asyncio.run(one())
        abandon_all(url, schema)
        with open_journal(journal_url, heartbeat=False) as recoverer:
            began, cpu = time.perf_counter(), time.process_time()
            report = recover(recoverer)
            elapsed = time.perf_counter() - began
            cpu = time.process_time() - cpu
        outcomes = {r.outcome for r in report.runs}
        if len(report.runs) != runs or outcomes != {"rolled_back"}:
            raise SystemExit(f"expected {runs} runs rolled back, got {report}")
        return runs / elapsed, cpu / runs * 1e3
    finally:
        if schema is not None:
            import psycopg

            with psycopg.connect(url, autocommit=True) as con:
                con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("ACTIONQUEUES_TEST_POSTGRESQL") or DEFAULT_URL,
        help="a postgresql:// URL, or 'sqlite' for a temporary SQLite file",
    )
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for kind in ("sync", "async") if round_no % 2 == 0 else ("async", "sync"):
                url: Any = args.url
                if url == "sqlite":
                    url = f"sqlite:///{Path(tmp) / f'{kind}-{round_no}.db'}"
                results[kind].append(measure(url, kind, args.runs, args.steps))
    where = "a temporary SQLite file" if args.url == "sqlite" else args.url
    print(
        f"recover() of {args.runs} abandoned {args.steps}-step runs on {where}, "
        f"{args.rounds} rounds (median):"
    )
    for kind, values in results.items():
        rates = sorted(v[0] for v in values)
        cpus = sorted(v[1] for v in values)
        print(
            f"  {kind:5s} runs  {rates[len(rates) // 2]:7,.0f} runs/s (min {rates[0]:,.0f}, "
            f"max {rates[-1]:,.0f}), client CPU {cpus[len(cpus) // 2]:.2f} ms/run"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
