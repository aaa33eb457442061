"""Crash soak: SIGKILL journaled queues 2,000 times, recover, and check every run.

The long version of ``tests/test_crash.py``, with the same harness
(``tests/_crashlib.py``): workers run random journaled queues against a
ledger of side effects and are SIGKILLed after a random delay or at the Nth
hit of a fault point; after each kill the journal is recovered and the
invariant checked (every run succeeded or fully rolled back, no run lost,
no effect left behind). Prints the tally; exits 1 if the invariant broke.

Usage::

    .venv/bin/python scripts/crash_soak.py [--kills 2000] [--seed N] [--workers 2]
        [--dir PATH] [--replay PATH/jobs.json]

An episode that broke the invariant is kept with its ``jobs.json``;
``--replay`` runs those jobs again (kills at fault points land at the same
place; timer kills do not).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from _crashlib import replay, soak


def main(argv: list[str] | None = None) -> int:
    """Run the soak (or a replay); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=2000, help="SIGKILLs in all (2000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (random)")
    parser.add_argument("--workers", type=int, default=2, help="workers at once (2)")
    parser.add_argument("--dir", default=None, help="where journals go (a new temp dir)")
    parser.add_argument("--replay", metavar="JOBS_JSON", help="replay a saved failing episode")
    args = parser.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="crash-soak-")
    if args.replay:
        violations = replay(args.replay, directory)
        print("\n".join(violations) or "no violation")
        return 1 if violations else 0
    seed = random.randrange(10**6) if args.seed is None else args.seed
    tally = soak(args.kills, seed=seed, directory=directory, workers=args.workers)
    print(tally.render())
    if tally.violations:
        print(f"kept the failing episodes under {directory}")
        return 1
    if args.dir is None:
        shutil.rmtree(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
