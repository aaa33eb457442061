"""Crash soak: SIGKILL journaled queues 2,000 times, recover, and check every run.

The long version of ``tests/test_crash.py``, with the same harness
(``tests/_crashlib.py``): workers run random journaled queues against a
ledger of side effects and are SIGKILLed after a random delay or at the Nth
hit of a fault point; after each kill the journal is recovered and the
invariant checked (every run succeeded or fully rolled back, no run lost,
no effect left behind). Prints the tally; exits 1 if the invariant broke.

Usage::

    .venv/bin/python scripts/crash_soak.py [--kills 2000] [--seed N] [--workers N]
        [--dir PATH] [--journal-url postgresql://...] [--replay PATH/jobs.json]

The journals are SQLite files under ``--dir``, or, with ``--journal-url
postgresql://user@host:port/database``, tables in that database: in a
schema the script creates (``crash_soak_<random>``) and drops at the end,
unless the invariant broke (then it is kept, and named, for inspection).
The ledgers stay SQLite files under ``--dir`` either way.

An episode that broke the invariant is kept with its ``jobs.json``;
``--replay`` runs those jobs again (kills at fault points land at the same
place; timer kills do not), on the backend ``--journal-url`` chooses.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import urllib.parse
import uuid

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from _crashlib import is_postgres, replay, soak, with_table_prefix


def _schema_url(server_url: str) -> tuple[str, str]:
    """Create a fresh schema on the server; return its name and the journal URL on it."""
    import psycopg  # only with --journal-url

    query = urllib.parse.parse_qsl(urllib.parse.urlsplit(server_url).query)
    if any(key in ("schema", "table_prefix") for key, _ in query):
        raise SystemExit("--journal-url names the database; the script chooses the schema")
    schema = f"crash_soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in server_url else "?"
    return schema, f"{server_url}{separator}schema={schema}"


def _drop_schema(server_url: str, schema: str) -> None:
    import psycopg  # only with --journal-url

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    """Run the soak (or a replay); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=2000, help="SIGKILLs in all (2000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (random)")
    parser.add_argument(
        "--workers", type=int, default=None, help="workers at once (2; 4 with --journal-url)"
    )
    parser.add_argument("--dir", default=None, help="where ledgers go (a new temp dir)")
    parser.add_argument(
        "--journal-url",
        metavar="POSTGRESQL_URL",
        help="journal on this PostgreSQL database, in a schema created and dropped by the "
        "script (default: SQLite files under --dir)",
    )
    parser.add_argument("--replay", metavar="JOBS_JSON", help="replay a saved failing episode")
    args = parser.parse_args(argv)
    if args.journal_url is not None and not is_postgres(args.journal_url):
        parser.error("--journal-url must be a postgresql:// URL")
    directory = args.dir or tempfile.mkdtemp(prefix="crash-soak-")
    schema, journal_url = None, None
    if args.journal_url:
        schema, journal_url = _schema_url(args.journal_url)
    failed = True
    try:
        if args.replay:
            url = None if journal_url is None else with_table_prefix(journal_url, "replay_")
            violations = replay(args.replay, directory, url)
            print("\n".join(violations) or "no violation")
            failed = bool(violations)
        else:
            seed = random.randrange(10**6) if args.seed is None else args.seed
            tally = soak(
                args.kills,
                seed=seed,
                directory=directory,
                workers=args.workers or (2 if journal_url is None else 4),
                journal_url=journal_url,
            )
            print(tally.render())
            failed = bool(tally.violations)
    finally:
        if schema is not None:
            if failed:
                print(f"kept the PostgreSQL schema {schema} ({journal_url})")
            else:
                _drop_schema(args.journal_url, schema)
    if failed:
        print(f"kept the failing episodes under {directory}")
        return 1
    if args.dir is None:
        shutil.rmtree(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
