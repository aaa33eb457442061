"""The ``actionqueues`` command line (also ``python -m actionqueues``).

It needs only the standard library, so it works wherever the package does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from ._demo import run_demo
from ._version import __version__

__all__ = ["main"]


def _use_color(stream: TextIO, choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actionqueues",
        description="Run sequences of side-effecting actions safely.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    demo = commands.add_parser(
        "demo",
        help="run a sign-up across three systems that fails, retries and rolls back",
        description="Sign-up across a user DB, billing and a mailing list (SQLite stand-ins): "
        "a transient failure is retried, a permanent one rolls everything back.",
    )
    demo.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the timeline (default: auto, when the output is a terminal; "
        "NO_COLOR and FORCE_COLOR are honoured)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        # The timeline shows every retry and rollback; keep the library's own
        # WARNING records (one per retry) off the terminal for this command.
        library_logger = logging.getLogger("actionqueues")
        saved = library_logger.propagate
        library_logger.propagate = False
        library_logger.addHandler(quiet := logging.NullHandler())
        try:
            return run_demo(sys.stdout, color=_use_color(sys.stdout, args.color))
        finally:
            library_logger.removeHandler(quiet)
            library_logger.propagate = saved
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover
