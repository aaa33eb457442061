"""The crash test's child process: a fork server (see ``_crashlib``).

The parent starts it once with ``sys.executable``; it imports actionqueues
once (and psycopg, at its first PostgreSQL job), then forks a fresh worker
per job (one JSON line on stdin; the worker opens its own journal) and
answers how the worker ended (one JSON line on stdout).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _crashlib import serve

if __name__ == "__main__":
    serve()
