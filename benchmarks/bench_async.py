"""Many concurrent AsyncActionQueue runs in one event loop: throughput and memory.

Each run gathers ``--queues`` tasks (10,000 by default) in one event loop; each
task builds an ``AsyncActionQueue`` of ``--actions`` actions (10) whose
``async def execute`` does ``await asyncio.sleep(0)`` and returns, then
``await q.execute()``. Two paths:

* happy: every action succeeds;
* fail: every queue's last action raises after its ``sleep(0)``; the task
  catches the error and ``await q.rollback()`` (each ``rollback`` also does
  ``await asyncio.sleep(0)``), so every action is rolled back.

The table gives the median and min wall time over ``--rounds`` (3), with
queues/s and actions/s from the median (actions = executes; on the fail path
each action is rolled back too). Memory is measured on the happy path: the
process's peak RSS (``resource.getrusage``) after the timed runs, and, in a
separate pass because it slows everything down, the ``tracemalloc`` peak of one
run. Standard library only. Run from the repo root::

    .venv/bin/python benchmarks/bench_async.py
    .venv/bin/python benchmarks/bench_async.py --queues 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from typing import Any

from actionqueues import AsyncActionQueue

PATHS = ("happy", "fail")


class Boom(Exception):
    pass


class Noop:
    async def execute(self) -> None:
        await asyncio.sleep(0)

    async def rollback(self) -> None:
        await asyncio.sleep(0)


class Fail(Noop):
    async def execute(self) -> None:
        await asyncio.sleep(0)
        raise Boom


async def happy_queue(actions: int) -> None:
    q = AsyncActionQueue()
    for _ in range(actions):
        q.add(Noop())
    await q.execute()


async def fail_queue(actions: int) -> None:
    q = AsyncActionQueue()
    for _ in range(actions - 1):
        q.add(Noop())
    q.add(Fail())
    try:
        await q.execute()
    except Boom:
        report = await q.rollback()
        if not report.ok:
            raise AssertionError(report) from None
    else:
        raise AssertionError("the last action did not fail")


BODIES: dict[str, Callable[[int], Coroutine[Any, Any, None]]] = {
    "happy": happy_queue,
    "fail": fail_queue,
}


async def gather_all(path: str, queues: int, actions: int) -> float:
    """Run ``queues`` concurrent queues of ``path``; return the wall time in seconds."""
    body = BODIES[path]
    start = time.perf_counter()
    await asyncio.gather(*(asyncio.create_task(body(actions)) for _ in range(queues)))
    return time.perf_counter() - start


def timed_run(path: str, queues: int, actions: int) -> float:
    gc.collect()
    return asyncio.run(gather_all(path, queues, actions))


class _Counting(Noop):
    """Only for the sanity check: counts its calls."""

    calls: dict[str, int] = {"execute": 0, "rollback": 0}  # noqa: RUF012

    def __init__(self, fails: bool) -> None:
        self.fails = fails

    async def execute(self) -> None:
        await asyncio.sleep(0)
        _Counting.calls["execute"] += 1
        if self.fails:
            raise Boom

    async def rollback(self) -> None:
        await asyncio.sleep(0)
        _Counting.calls["rollback"] += 1


def sanity_check(actions: int) -> None:
    """Both paths call what the benchmark claims, concurrently."""

    async def one(fails: bool) -> None:
        q = AsyncActionQueue()
        for i in range(actions):
            q.add(_Counting(fails and i == actions - 1))
        try:
            await q.execute()
        except Boom:
            await q.rollback()

    async def main() -> None:
        await asyncio.gather(*(one(fails) for fails in (False, True) * 50))

    asyncio.run(main())
    assert _Counting.calls == {"execute": 100 * actions, "rollback": 50 * actions}, _Counting.calls


def rss_mib() -> float:
    """The process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def traced_peak_mib(path: str, queues: int, actions: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        asyncio.run(gather_all(path, queues, actions))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1024 * 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=10000, help="concurrent queues (10000)")
    parser.add_argument("--actions", type=int, default=10, help="actions per queue (10)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per path (3, median)")
    args = parser.parse_args(argv)
    if args.queues < 1 or args.actions < 1 or args.rounds < 1:
        parser.error("--queues, --actions and --rounds must be >= 1")
    queues, actions = args.queues, args.actions

    sanity_check(actions)
    rss_before = rss_mib()
    walls: dict[str, list[float]] = {}
    rss_after: dict[str, float] = {}
    for path in PATHS:  # happy first, so that the RSS peak after it is its own
        walls[path] = [timed_run(path, queues, actions) for _ in range(args.rounds)]
        rss_after[path] = rss_mib()
        print(f"{path}: {args.rounds} round(s) done", file=sys.stderr)
    traced = {path: traced_peak_mib(path, queues, actions) for path in PATHS}

    version = importlib.metadata.version("actionqueues")
    print(
        f"AsyncActionQueue: {queues} concurrent queues x {actions} actions in one event loop, "
        f"{args.rounds} round(s), median (python {sys.version.split()[0]}, "
        f"actionqueues {version})"
    )
    print()
    header = (
        f"{'path':5s} | {'wall med s':>10s} {'wall min s':>10s} | {'queues/s':>10s} "
        f"{'actions/s':>11s} {'us/action':>9s}"
    )
    print(header)
    print("-" * len(header))
    for path in PATHS:
        median = statistics.median(walls[path])
        print(
            f"{path:5s} | {median:10.3f} {min(walls[path]):10.3f} | {queues / median:10,.0f} "
            f"{queues * actions / median:11,.0f} {median / (queues * actions) * 1e6:9.2f}"
        )
    print()
    print(
        f"memory: peak RSS {rss_after['happy']:.1f} MiB after the happy runs "
        f"({rss_before:.1f} MiB before any run; {rss_after['fail']:.1f} MiB after the fail runs)"
    )
    print(
        f"        tracemalloc peak of one run (separate pass): "
        f"happy {traced['happy']:.1f} MiB, fail {traced['fail']:.1f} MiB "
        f"({traced['happy'] * 1024 * 1024 / queues:,.0f} B per happy queue)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
