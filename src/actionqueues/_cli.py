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

from . import _cli_runs as runs
from . import _worker as workers
from ._demo import crash_child, run_crash_demo, run_demo
from ._journal import JournalError, default_journal_url
from ._version import __version__

__all__ = ["main"]

_EXIT_CODES = (
    "exit status: 0 done; 1 the run was not found, or a run was left needing attention; "
    "2 bad arguments, or the journal cannot be used (the message says why)"
)


def _use_color(stream: TextIO, choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def _color_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help=f"colour {what} (default: auto, when the output is a terminal; "
        f"NO_COLOR and FORCE_COLOR are honoured)",
    )


def _journal_help() -> str:
    return (
        "the journal: sqlite:///relative/path.db, sqlite:////absolute/path.db or a file path "
        "(default: $ACTIONQUEUES_JOURNAL if set, else "
        "$XDG_DATA_HOME/actionqueues/runs.db, i.e. ~/.local/share/actionqueues/runs.db; "
        f"here: {default_journal_url()})"
    )


def _journal_options(color_what: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--journal", metavar="URL", help=_journal_help())
    _color_option(common, color_what)
    return common


def _import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        metavar="MODULE",
        action="append",
        default=[],
        help="import MODULE first (repeatable), e.g. --import myapp.actions: recovery rebuilds "
        "each step from the action type registered under its name with @register_action, so "
        "the modules that register the runs' actions must be imported; the current directory "
        "is on the import path",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the tracebacks of failed rollbacks in the library's log lines",
    )


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
        "a transient failure is retried, a permanent one rolls everything back. With --crash, "
        "a journaled sign-up is killed half-way (SIGKILL) and recovery cleans up after it.",
    )
    _color_option(demo, "the timeline")
    demo.add_argument(
        "--crash",
        action="store_true",
        help="journaled mode: a child process runs the sign-up, kills itself mid-queue, and "
        "recovery rolls back what it left behind",
    )
    demo.add_argument(
        "--journal",
        metavar="URL",
        help="with --crash: record the run in this journal (default: a new temporary "
        "SQLite file, printed); give it a journal of its own, as the demo recovers "
        "every abandoned run in it",
    )
    demo.add_argument("--crash-child", nargs=3, help=argparse.SUPPRESS)

    runs_parser = commands.add_parser(
        "runs",
        help="list, show and retry the runs of a journal",
        description="Inspect the runs that journaled queues recorded, and retry the rollback "
        "of runs that need attention.",
    )
    runs_commands = runs_parser.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    runs_commands.required = True
    listing = runs_commands.add_parser(
        "list",
        parents=[_journal_options("the statuses")],
        help="list runs, newest first",
        description="List the journal's runs, newest first: id, name, status, steps "
        "started/total, age, owner and error.",
        epilog=_EXIT_CODES,
    )
    listing.add_argument(
        "--status",
        metavar="STATUS",
        nargs="+",
        action="extend",
        type=runs.parse_status,
        help=f"only runs in these statuses (repeatable, or comma-separated): "
        f"{', '.join(runs.RUN_STATUSES)}; 'active' stands for running, failed, rolling_back",
    )
    listing.add_argument("--name", metavar="NAME", help="only runs of queues with this name")
    listing.add_argument(
        "--older-than",
        metavar="AGE",
        type=runs.parse_age,
        help="only runs started at least AGE ago: 30s, 5m, 2h, 1d, 1w, 1h30m (plain: seconds)",
    )
    listing.add_argument(
        "--limit", metavar="N", type=runs.positive_int, help="at most N runs (the newest)"
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array of runs with every field (full ids; each *_at timestamp as "
        "Unix seconds, and as ISO 8601 UTC in *_at_iso)",
    )
    show = runs_commands.add_parser(
        "show",
        parents=[_journal_options("the timeline")],
        help="show one run: its steps, attempts, durations, errors, rollbacks and events",
        description="Show the timeline of one run: its header, each step (attempts, "
        "durations, errors, rollback) and its events (retries, failures, recoveries).",
        epilog=_EXIT_CODES,
    )
    show.add_argument("run_id", metavar="RUN_ID", help="the run's id, or its first 8+ characters")
    show.add_argument(
        "--json", action="store_true", help="print the run, its steps and its events as JSON"
    )
    retry = runs_commands.add_parser(
        "retry",
        parents=[_journal_options("the result")],
        help="retry the rollback of a run that needs attention",
        description="Roll back again the steps of a needs_attention run whose rollback failed "
        "(or never ran); steps already rolled back are left alone. Fix the cause first.",
        epilog=_EXIT_CODES,
    )
    retry.add_argument("run_id", metavar="RUN_ID", help="the run's id, or its first 8+ characters")
    _import_option(retry)

    recover = commands.add_parser(
        "recover",
        parents=[_journal_options("the outcomes")],
        help="finish the runs whose process died (roll them back, or resume them)",
        description="Find the active runs whose owner's lease expired (the process died or "
        "stalled), claim each one atomically and finish it: roll back every started step in "
        "reverse, or resume forward a run of a queue declared resumable. Safe to run from "
        "several processes at once. Runs whose rollback fails end as needs_attention.",
        epilog=_EXIT_CODES,
    )
    _import_option(recover)
    recover.add_argument(
        "--no-resume",
        action="store_true",
        help="roll back resumable runs too, instead of resuming them forward",
    )
    recover.add_argument(
        "--limit", metavar="N", type=runs.positive_int, help="recover at most N runs"
    )
    recover.add_argument(
        "--force",
        action="store_true",
        help="recover even when some abandoned runs use action types no imported module "
        "registers (those runs are marked needs_attention; by default nothing is done)",
    )
    recover.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object: the journal, one entry per run, and ok",
    )

    worker = commands.add_parser(
        "worker",
        parents=[_journal_options("the text log lines")],
        help="a long-running process that finishes the runs whose process died",
        description="Claim, one at a time and atomically, each active run whose owner's lease "
        "expired, and finish it as `actionqueues recover` does (roll back, or resume a "
        "resumable run), in --concurrency threads; when nothing is left, look again every "
        "--poll seconds. Any number of workers, on any number of machines, may share a journal: "
        "each run is recovered by one of them at a time, and the runs of a worker that dies are "
        "claimed by another once its lease expires. Logs one line per run, and a progress line "
        "while working through a backlog. SIGTERM or SIGINT stops it cleanly: no new claims, "
        "each thread finishes the run it holds; a second signal releases the runs in hand (so "
        "another worker claims them at once) and exits.",
        epilog="exit status: 0 stopped cleanly by a signal (every run in hand finished); 1 a "
        "worker thread died unexpectedly; 2 bad arguments, action types no --import module "
        "registers (without --force), or the journal cannot be opened (the message says why); "
        f"{workers.EXIT_ABORTED} stopped by a second signal (the runs in hand were released)",
    )
    _import_option(worker)
    worker.add_argument(
        "--concurrency",
        metavar="N",
        type=runs.positive_int,
        default=1,
        help="recover up to N runs at once, in N threads sharing the journal (default: 1)",
    )
    worker.add_argument(
        "--poll",
        metavar="SECONDS",
        type=workers.seconds,
        default=1.0,
        help="when no run is left to claim, look again after this long (default: 1); a "
        "stop signal ends the wait at once",
    )
    worker.add_argument(
        "--lease",
        metavar="SECONDS",
        type=workers.seconds,
        default=30.0,
        help="how long this worker's claim on a run lasts without a sign of life; renewed "
        "every third of it while it works, so another worker takes over a run this long after "
        "this one died (default: 30)",
    )
    worker.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines (default), or one JSON object per line: ts, level, event, message, "
        "run_id, outcome and the other fields of the event",
    )
    worker.add_argument(
        "--no-resume",
        action="store_true",
        help="roll back resumable runs too, instead of resuming them forward",
    )
    worker.add_argument(
        "--batch-progress",
        action="store_true",
        help="write the progress line every 100 recovered runs instead of every 2 seconds",
    )
    worker.add_argument(
        "--force",
        action="store_true",
        help="start even when some abandoned runs use action types no imported module "
        "registers (those runs are passed on up to --pass-on times, then marked "
        "needs_attention; by default the worker refuses to start)",
    )
    worker.add_argument(
        "--pass-on",
        metavar="N",
        type=runs.non_negative_int,
        default=workers.PASS_ON,
        help="a run whose steps this worker cannot rebuild (an action type no --import "
        "module registers, or a state its class refuses: a newer release's, during a rolling "
        "deploy) is left untouched for another worker for one lease, up to N times; the next "
        f"claim marks it needs_attention (default: {workers.PASS_ON}; 0 marks it at once)",
    )
    return parser


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail too."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured output)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _run_demo(args: argparse.Namespace) -> int:
    color = _use_color(sys.stdout, args.color)
    if args.crash_child:  # pragma: no cover - runs in the demo's child process
        journal, systems, start = args.crash_child
        return crash_child(journal, systems, float(start), sys.stdout, color=color)
    if args.crash:
        return run_crash_demo(sys.stdout, color=color, journal_url=args.journal)
    if args.journal:
        raise ValueError("--journal is only used with --crash (the plain demo keeps no journal)")
    return run_demo(sys.stdout, color=color)


def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "demo":
        # The timeline shows every retry and rollback; keep the library's own
        # WARNING records (one per retry) off the terminal for this command.
        library_logger = logging.getLogger("actionqueues")
        saved = library_logger.propagate
        library_logger.propagate = False
        library_logger.addHandler(quiet := logging.NullHandler())
        try:
            return _run_demo(args)
        finally:
            library_logger.removeHandler(quiet)
            library_logger.propagate = saved
    paint = runs.Painter(_use_color(out, args.color))
    if args.command == "recover":
        return runs.recover_command(args, out, err, paint)
    if args.command == "worker":
        return workers.worker_command(args, out, err, paint)
    if args.runs_command == "list":
        return runs.runs_list_command(args, out, paint)
    if args.runs_command == "show":
        return runs.runs_show_command(args, out, err, paint)
    if args.runs_command == "retry":
        return runs.retry_command(args, out, err, paint)
    raise AssertionError(f"unhandled command {args}")  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        code = _dispatch(args, out, err)
        out.flush()  # here, so that a closed pipe is reported below, not at exit
    except BrokenPipeError:  # the reader went away (`actionqueues runs list | head`)
        _silence_stdout()
        return 1
    except KeyboardInterrupt:  # Ctrl-C: recovery released the run it was finishing
        print("actionqueues: interrupted", file=err)
        return 130
    except (JournalError, ValueError, KeyError, ImportError, OSError) as exc:
        print(f"actionqueues: error: {_error_text(exc)}", file=err)
        return 2
    return code
