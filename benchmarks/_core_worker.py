"""Benchmark body run in a subprocess, once per implementation (ours or 0.8.2).

Uses only the legacy 0.8.2 API so the very same code runs against both:
``from actionqueues import actionqueue, action``, ``ActionQueue()``, ``add``,
``execute``, ``rollback`` and subclasses of ``action.Action``.

Prints one JSON object: min ns/action for the happy and fail paths.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import timeit

from actionqueues import action, actionqueue

ACTIONS_PER_QUEUE = 10


class Boom(Exception):
    pass


class Noop(action.Action):
    def execute(self) -> None:
        pass

    def rollback(self) -> None:
        pass


class Fail(action.Action):
    def execute(self) -> None:
        raise Boom

    def rollback(self) -> None:
        pass


def happy() -> None:
    q = actionqueue.ActionQueue()
    for _ in range(ACTIONS_PER_QUEUE):
        q.add(Noop())
    q.execute()


def fail() -> None:
    q = actionqueue.ActionQueue()
    for _ in range(ACTIONS_PER_QUEUE - 1):
        q.add(Noop())
    q.add(Fail())
    try:
        q.execute()
    except Boom:
        q.rollback()


class _Counting(action.Action):
    """Used only by the sanity check, never in the timed body."""

    def __init__(self, log: list[str], name: str, fails: bool = False) -> None:
        self.log, self.name, self.fails = log, name, fails

    def execute(self) -> None:
        self.log.append("x" + self.name)
        if self.fails:
            raise Boom

    def rollback(self) -> None:
        self.log.append("r" + self.name)


def sanity_check() -> None:
    """Both paths do what the benchmark claims, for this implementation."""
    log: list[str] = []
    q = actionqueue.ActionQueue()
    for i in range(ACTIONS_PER_QUEUE):
        q.add(_Counting(log, str(i)))
    q.execute()
    assert log == [f"x{i}" for i in range(ACTIONS_PER_QUEUE)], log

    log = []
    q = actionqueue.ActionQueue()
    for i in range(ACTIONS_PER_QUEUE):
        q.add(_Counting(log, str(i), fails=i == ACTIONS_PER_QUEUE - 1))
    try:
        q.execute()
    except Boom:
        q.rollback()
    else:
        raise AssertionError("the last action's execute did not raise")
    expected = [f"x{i}" for i in range(ACTIONS_PER_QUEUE)]
    expected += [f"r{i}" for i in reversed(range(ACTIONS_PER_QUEUE))]
    assert log == expected, log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=20000, help="queues per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per path (min is kept)")
    args = parser.parse_args()

    sanity_check()
    per_action = args.number * ACTIONS_PER_QUEUE
    result: dict[str, object] = {
        "file": action.__file__,
        "version": importlib.metadata.version("actionqueues"),
        "python": sys.version.split()[0],
    }
    for name, body in (("happy", happy), ("fail", fail)):
        body()  # warm up
        times = timeit.repeat(body, number=args.number, repeat=args.repeat)
        result[name] = min(times) / per_action * 1e9
    print(json.dumps(result))


if __name__ == "__main__":
    main()
