"""The operator commands: ``actionqueues runs list|show|retry`` and ``actionqueues recover``.

They read and finish the runs of a journal (see :mod:`actionqueues._journal`).
Commands that only look (``runs list``, ``runs show``) or act on runs that
must already exist never create a journal file: a missing file is reported
as an empty journal, with its path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, TextIO

from ._journal import (
    ACTIVE_STATUSES,
    Journal,
    RunInfo,
    RunTimeline,
    StepRecord,
    default_journal_url,
    open_journal,
    sqlite_path,
)
from ._recovery import OUTCOMES, RecoveredRun, recover, retry_rollback
from ._registry import _BY_NAME

__all__ = [
    "RUN_STATUSES",
    "Painter",
    "import_modules",
    "parse_age",
    "parse_status",
    "print_timeline",
    "recover_command",
    "retry_command",
    "runs_list_command",
    "runs_show_command",
]

#: Every run status, in the order a run goes through them.
RUN_STATUSES = (
    "running",
    "failed",
    "rolling_back",
    "succeeded",
    "rolled_back",
    "needs_attention",
)
#: ``--status active`` stands for these (the runs recovery finishes once their lease expires).
ACTIVE_ALIAS = "active"

_STATUS_COLOR = {
    "succeeded": "32",
    "rolled_back": "35",
    "resumed": "32",
    "needs_attention": "1;31",
    "unrecoverable": "1;31",
    "failed": "31",
    "rollback_failed": "31",
    "running": "33",
    "rolling_back": "33",
    "lost": "33",
    "passed_on": "33",
    "unrecorded": "1;33",
    "pending": "2",
}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_ID_SHORT = 8


# -- argument types -----------------------------------------------------------------


def parse_age(text: str) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1w``, ``1h30m`` or plain seconds -> seconds."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _AGE.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise argparse.ArgumentTypeError(
                f"invalid age {text!r}: write a number with a unit, e.g. 30s, 5m, 2h, 1d "
                f"or 1h30m (a bare number is seconds)"
            ) from None
        seconds = sum(float(n) * _AGE_UNITS[u] for n, u in parts)
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid age {text!r}: it must be >= 0")
    return seconds


def parse_status(text: str) -> list[str]:
    """One status name, or several separated by commas; ``active`` is an alias."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower().replace("-", "_")
        if name == ACTIVE_ALIAS:
            names.extend(ACTIVE_STATUSES)
        elif name in RUN_STATUSES:
            names.append(name)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown run status {part.strip()!r}; expected one of "
                f"{', '.join(RUN_STATUSES)} (or {ACTIVE_ALIAS}: running, failed, rolling_back)"
            )
    return names


def _whole_number(text: str, low: int, high: int | None = None) -> int:
    """``text`` as an int from ``low`` (to ``high``), or the argparse error saying so."""
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        wanted = f">= {low}" if high is None else f"from {low} to {high}"
        raise argparse.ArgumentTypeError(f"expected a whole number {wanted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1 (for ``--limit``)."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An int from 0 to a million (for ``--pass-on``)."""
    return _whole_number(text, 0, 1_000_000)


# -- formatting ----------------------------------------------------------------------


class Painter:
    """Colours text with ANSI codes, or leaves it alone."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, code: str, text: str) -> str:
        """``text`` in colour ``code`` (an SGR code such as ``"32"``)."""
        return f"\033[{code}m{text}\033[0m" if self.color and code else text

    def status(self, status: str, text: str | None = None) -> str:
        """``text`` (default: the status itself) in the status's colour."""
        return self(_STATUS_COLOR.get(status, ""), status if text is None else text)

    def dim(self, text: str) -> str:
        """``text`` de-emphasised."""
        return self("2", text)

    def bold(self, text: str) -> str:
        """``text`` emphasised."""
        return self("1", text)


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (``2024-05-01T12:00:00.123Z``), or None."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _when(ts: float) -> str:
    """A Unix time for people: ``2024-05-01 12:00:00.123 UTC``."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def age(seconds: float) -> str:
    """A duration in one unit: ``45s``, ``12m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def duration(seconds: float) -> str:
    """A precise duration: ``0.4 ms``, ``12.3 ms``, ``1.25 s``, ``3m 05s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _n(count: int, noun: str, verb: str = "") -> str:
    """``1 run``, ``2 runs``; with a verb: ``1 run needs``, ``2 runs need``."""
    text = f"{count} {noun}{'' if count == 1 else 's'}"
    if verb:
        plural = {"needs": "need", "has": "have"}[verb]
        text += f" {verb if count == 1 else plural}"
    return text


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(headers: Sequence[str], rows: list[list[tuple[str, str]]], paint: Painter) -> list[str]:
    """Left-aligned columns; each cell is (text, status whose colour it takes or "")."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    last = len(headers) - 1
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = []
        for i, (text, status) in enumerate(row):
            padded = text if i == last else text.ljust(widths[i])
            cells.append(paint.status(status, padded) if status else padded)
        lines.append("  ".join(cells).rstrip())
    return lines


def _ts_fields(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with an ISO 8601 ``<name>_iso`` beside every ``<name>_at`` (or ``at``) time."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = value
        if key == "at" or key.endswith("_at"):
            out[f"{key}_iso"] = iso(value if value else None)
    return out


def run_json(run: RunInfo) -> dict[str, Any]:
    """A run as JSON data: every :class:`RunInfo` field, timestamps also in ISO 8601."""
    return _ts_fields(asdict(run))


def _step_json(step: StepRecord) -> dict[str, Any]:
    values = _ts_fields(asdict(step))
    with contextlib.suppress(ValueError):  # else keep the raw text the journal holds
        values["state"] = json.loads(step.state)
    values["execute_seconds"] = _span(step.started_at, step.finished_at)
    values["rollback_seconds"] = _span(step.rollback_started_at, step.rollback_finished_at)
    return values


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _lease_expired(run: RunInfo, now: float) -> bool:
    return run.status in ACTIVE_STATUSES and (
        run.lease_expires_at is None or run.lease_expires_at < now
    )


# -- opening the journal -------------------------------------------------------------


def journal_url(args: argparse.Namespace) -> str:
    """The ``--journal`` given, or the default one."""
    url: str | None = args.journal
    return url if url else default_journal_url()


def _sqlite_file(url: str) -> str | None:
    """The file of a SQLite journal URL (as :func:`open_journal` reads it), else None."""
    try:
        path = sqlite_path(url)
    except ValueError:
        return None  # a bad URL: open_journal explains it
    if path is None or path == ":memory:":
        return None
    return os.path.abspath(os.path.expanduser(path))


def missing_journal(url: str) -> str | None:
    """The path of ``url``'s SQLite file if it does not exist (opening it would create it)."""
    path = _sqlite_file(url)
    return path if path is not None and not os.path.exists(path) else None


@contextmanager
def opened(url: str, **options: Any) -> Iterator[Journal]:
    """Open the journal at ``url`` for one command, and close it afterwards."""
    journal = open_journal(url, **options)
    try:
        yield journal
    finally:
        journal.close()


def import_modules(names: Sequence[str]) -> None:
    """Import the ``--import`` modules (with the current directory on ``sys.path``).

    Raises:
        ImportError: a module cannot be imported (the message names it and why).
    """
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ImportError(
                f"cannot import {name!r} (given with --import): {type(exc).__name__}: {exc}"
            ) from exc


def unregistered_types(timeline: RunTimeline) -> list[str]:
    """The step types of ``timeline`` that no module imported here registered."""
    return sorted({s.type for s in timeline.steps if s.type not in _BY_NAME})


def _journal_hint(args: argparse.Namespace) -> str:
    return f" --journal {args.journal}" if args.journal else ""


# -- runs list -----------------------------------------------------------------------


def runs_list_command(args: argparse.Namespace, out: TextIO, paint: Painter) -> int:
    """``actionqueues runs list``."""
    url = journal_url(args)
    missing = missing_journal(url)
    if missing is not None:
        if args.json:
            print("[]", file=out)
        else:
            print(
                f"No journal at {missing} yet: no runs recorded (a journaled queue creates it).",
                file=out,
            )
        return 0
    wanted = {name for group in args.status or () for name in group}  # --status gives lists
    statuses = sorted(wanted, key=RUN_STATUSES.index) if wanted else None
    with opened(url, heartbeat=False, read_only=True) as journal:
        runs = journal.runs(
            status=statuses, name=args.name, older_than=args.older_than, limit=args.limit
        )
        now = journal.clock()
        shown = journal.url
    if args.json:
        print(json.dumps([run_json(r) for r in runs], indent=2), file=out)
        return 0
    filters = _describe_filters(args, statuses)
    if not runs:
        what = f"No runs match {filters}" if filters else "No runs"
        print(f"{what} in the journal {shown}.", file=out)
        return 0
    count = _n(len(runs), "run")
    print(f"Journal {shown}: {count}{' ' + filters if filters else ''}, newest first", file=out)
    rows: list[list[tuple[str, str]]] = []
    for run in runs:
        owner = run.owner or "-"
        if _lease_expired(run, now):
            owner += " (lease expired)"
        rows.append(
            [
                (run.run_id[:_ID_SHORT], ""),
                (run.name, ""),
                (run.status, run.status),
                (f"{run.started}/{run.steps}", ""),
                (age(now - run.created_at), ""),
                (owner, ""),
                (_clip(run.error or "", 70), ""),
            ]
        )
    headers = ("RUN ID", "NAME", "STATUS", "STEPS", "AGE", "OWNER", "ERROR")
    for line in _table(headers, rows, paint):
        print(line, file=out)
    hint = _journal_hint(args)
    attention = sum(1 for r in runs if r.status == "needs_attention")
    abandoned = sum(1 for r in runs if _lease_expired(r, now))
    if attention:
        print(
            paint.status("needs_attention", f"{_n(attention, 'run', 'needs')} attention")
            + f": see `actionqueues runs show RUN_ID{hint}`, fix the cause, then "
            f"`actionqueues runs retry RUN_ID{hint}`",
            file=out,
        )
    if abandoned:
        one = abandoned == 1
        print(
            f"{_n(abandoned, 'active run', 'has')} lost {'its' if one else 'their'} owner "
            f"(lease expired): `actionqueues recover{hint} --import YOUR_MODULE` "
            f"finishes {'it' if one else 'them'}",
            file=out,
        )
    return 0


def _describe_filters(args: argparse.Namespace, statuses: list[str] | None) -> str:
    parts = []
    if statuses:
        parts.append("status " + "|".join(statuses))
    if args.name is not None:
        parts.append(f"name {args.name!r}")
    if args.older_than is not None:
        parts.append(f"older than {age(args.older_than)}")
    if args.limit is not None:
        parts.append(f"at most {args.limit}")
    return f"({', '.join(parts)})" if parts else ""


# -- runs show -----------------------------------------------------------------------


def runs_show_command(args: argparse.Namespace, out: TextIO, err: TextIO, paint: Painter) -> int:
    """``actionqueues runs show RUN_ID``."""
    url = journal_url(args)
    missing = missing_journal(url)
    if missing is not None:
        print(
            f"actionqueues: error: no run {args.run_id!r}: there is no journal at {missing}",
            file=err,
        )
        return 1
    with opened(url, heartbeat=False, read_only=True) as journal:
        try:
            timeline = journal.timeline(args.run_id)
        except KeyError as exc:
            print(f"actionqueues: error: {_not_found(exc, args.run_id)}", file=err)
            return 1
        now = journal.clock()
        shown = journal.url
    if args.json:
        print(json.dumps(timeline_json(timeline), indent=2), file=out)
    else:
        print_timeline(timeline, out, paint, now=now, journal=shown)
    return 0


def _not_found(exc: KeyError, run_id: str) -> str:
    message = str(exc.args[0]) if exc.args else f"no run {run_id!r}"
    if len(run_id) < _ID_SHORT and "more than one" not in message:
        message += f" (a run id prefix needs at least {_ID_SHORT} characters)"
    return message


def timeline_json(timeline: RunTimeline) -> dict[str, Any]:
    """A run's timeline as JSON data."""
    return {
        "run": run_json(timeline.run),
        "steps": [_step_json(s) for s in timeline.steps],
        "events": [_ts_fields(asdict(e)) for e in timeline.events],
    }


def print_timeline(
    timeline: RunTimeline, out: TextIO, paint: Painter, *, now: float, journal: str = ""
) -> None:
    """Print a run's header, its steps and its events (``actionqueues runs show``)."""
    run = timeline.run

    def field(name: str, value: str) -> None:
        print(f"  {paint.dim(name.ljust(11))}{value}", file=out)

    where = f"  {paint.dim('(journal ' + journal + ')')}" if journal else ""
    print(f"{paint.bold('Run ' + run.run_id)}{where}", file=out)
    field("name", f"{run.name} ({run.kind} queue{', resumable' if run.resumable else ''})")
    field("status", paint.status(run.status))
    field("owner", run.owner or "-")
    field("lease", _lease_text(run, now))
    field("created", f"{_when(run.created_at)} ({age(now - run.created_at)} ago)")
    if run.finished_at is not None:
        took = duration(run.finished_at - run.created_at)
        field("finished", f"{_when(run.finished_at)} (after {took})")
    else:
        field("finished", "not yet")
    field("recoveries", str(run.recoveries))
    if run.error:
        field("error", paint.status("failed", _clip(run.error, 500)))

    started = sum(1 for s in timeline.steps if s.started)
    print(f"\n{paint.bold('Steps')} ({len(timeline.steps)}, {started} started)", file=out)
    rows: list[list[tuple[str, str]]] = []
    details: list[list[str]] = []
    for step in timeline.steps:
        rows.append(
            [
                (str(step.index), ""),
                (step.type, ""),
                (step.status, step.status),
                (str(step.attempts), ""),
                (_execute_text(step), ""),
                (_rollback_text(step), ""),
            ]
        )
        notes = []
        if step.error:
            notes.append(paint.status("failed", "error: " + _clip(step.error, 300)))
        if step.rollback_error:
            text = "rollback error: " + _clip(step.rollback_error, 300)
            notes.append(paint.status("failed", text))
        if step.next_retry_at is not None:
            notes.append(f"next call due {_when(step.next_retry_at)}")
        notes.append(paint.dim("state: " + _clip(step.state, 100)))
        details.append(notes)
    headers = ("#", "TYPE", "STATUS", "ATTEMPTS", "EXECUTE", "ROLLBACK")
    lines = _table(headers, rows, paint)
    print("  " + lines[0], file=out)
    indent = " " * (len(str(len(timeline.steps) - 1)) + 4)
    for line, notes in zip(lines[1:], details, strict=True):
        print("  " + line, file=out)
        for note in notes:
            print(indent + note, file=out)

    print(f"\n{paint.bold('Events')}", file=out)
    if not timeline.events:
        print(paint.dim("  none (no retries, failures or recoveries)"), file=out)
    for event in timeline.events:
        where = "run" if event.index is None else f"step {event.index}"
        kind = {
            "retry": "running",
            "rollback_retry": "rolling_back",
            "claimed": "lost",
            "passed_on": "passed_on",
        }.get(event.kind, "failed" if "fail" in event.kind or event.kind == "unrecoverable" else "")
        print(
            f"  {paint.dim(('+' + duration(event.at - run.created_at)).rjust(10))}  "
            f"{where:<7}  {paint.status(kind, event.kind.ljust(15))}  {_clip(event.detail, 300)}",
            file=out,
        )


def _lease_text(run: RunInfo, now: float) -> str:
    if run.status not in ACTIVE_STATUSES:
        return "none (the run is finished)"
    expires = run.lease_expires_at
    if expires is None or expires < now:
        since = "" if expires is None else f" {age(now - expires)} ago"
        return f"expired{since}: its owner is gone or stalled; `actionqueues recover` finishes it"
    return f"held until {_when(expires)} (for {age(expires - now)} more, renewed while alive)"


def _execute_text(step: StepRecord) -> str:
    if step.started_at is None:
        return "-"
    if step.finished_at is None:
        return "unrecorded" if step.status != "running" else "running"
    return duration(step.finished_at - step.started_at)


def _rollback_text(step: StepRecord) -> str:
    if not step.rollback_attempts:
        return "-"
    tries = _n(step.rollback_attempts, "attempt")
    if step.rollback_started_at is None or step.rollback_finished_at is None:
        return f"{tries}, unfinished"
    return f"{tries}, {duration(step.rollback_finished_at - step.rollback_started_at)}"


# -- recover and retry ---------------------------------------------------------------


@contextmanager
def library_log(err: TextIO, verbose: bool) -> Iterator[None]:
    """Show the library's warnings and errors on ``err`` (tracebacks only if ``verbose``)."""
    library = logging.getLogger("actionqueues")
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LogFormat(verbose))
    saved = library.propagate
    library.addHandler(handler)
    library.propagate = False
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.propagate = saved


class _LogFormat(logging.Formatter):
    def __init__(self, verbose: bool) -> None:
        super().__init__("actionqueues: %(levelname)s: %(message)s")
        self.verbose = verbose

    def formatException(self, ei: Any) -> str:
        return super().formatException(ei) if self.verbose else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if self.verbose else text.rstrip()


def _outcome_line(result: RecoveredRun, paint: Painter) -> str:
    ok = result.outcome in ("rolled_back", "resumed")  # else its error says why it is not
    error = f"  {_clip(result.error, 120)}" if result.error and not ok else ""
    return (
        f"  {paint.status(result.outcome, result.outcome.ljust(15))}  "
        f"{result.run_id[:_ID_SHORT]}  {result.name}{error}"
    )


def _recovered_json(result: RecoveredRun) -> dict[str, Any]:
    return asdict(result)


def recover_command(args: argparse.Namespace, out: TextIO, err: TextIO, paint: Painter) -> int:
    """``actionqueues recover``."""
    import_modules(args.imports)
    url = journal_url(args)
    missing = missing_journal(url)
    if missing is not None:
        if args.json:
            print(json.dumps({"journal": url, "runs": [], "ok": True}), file=out)
        else:
            print(f"Nothing to recover: there is no journal at {missing}.", file=out)
        return 0
    with opened(url) as journal:
        now = journal.clock()
        active = journal.runs(status=ACTIVE_STATUSES)
        abandoned = [r for r in active if _lease_expired(r, now)]
        if not args.force:
            unknown: dict[str, list[str]] = {}
            for run in abandoned:
                for name in unregistered_types(journal.timeline(run.run_id)):
                    unknown.setdefault(name, []).append(run.run_id[:_ID_SHORT])
            if unknown:
                listed = "; ".join(
                    f"{name!r} (run{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
                    for name, ids in sorted(unknown.items())
                )
                print(
                    f"actionqueues: error: recovery rebuilds each step from its registered "
                    f"action type, and these are not registered in this process: {listed}. "
                    f"Pass --import MODULE for each module that defines them (e.g. "
                    f"--import myapp.actions); --force recovers anyway and marks those runs "
                    f"needs_attention. Nothing was changed.",
                    file=err,
                )
                return 2
        with library_log(err, args.verbose):
            report = recover(journal, resume=not args.no_resume, limit=args.limit)
        live = len(active) - len(abandoned)
        shown = journal.url
    failed = sum(report.count(o) for o in ("needs_attention", "unrecoverable", "unrecorded"))
    if args.json:
        print(
            json.dumps(
                {
                    "journal": shown,
                    "runs": [_recovered_json(r) for r in report.runs],
                    "ok": failed == 0,
                },
                indent=2,
            ),
            file=out,
        )
        return 1 if failed else 0
    if not report.runs:
        print(
            f"Nothing to recover in {shown}: no active run has lost its owner.",
            file=out,
        )
    else:
        print(f"Recovered in {shown} (as {journal.owner}):", file=out)
        for result in report.runs:
            print(_outcome_line(result, paint), file=out)
        counts = [f"{report.count(o)} {o.replace('_', ' ')}" for o in OUTCOMES if report.count(o)]
        total = len(report.runs)
        print(f"{_n(total, 'run')}: {', '.join(counts)}", file=out)
    if live:
        print(
            paint.dim(f"{_n(live, 'active run')} still held by a live owner (left alone)"),
            file=out,
        )
    if failed:
        hint = _journal_hint(args)
        print(
            paint.status("needs_attention", f"{_n(failed, 'run', 'needs')} attention")
            + f": `actionqueues runs show RUN_ID{hint}`, "
            f"then `actionqueues runs retry RUN_ID{hint}`",
            file=out,
        )
    return 1 if failed else 0


def retry_command(args: argparse.Namespace, out: TextIO, err: TextIO, paint: Painter) -> int:
    """``actionqueues runs retry RUN_ID``."""
    import_modules(args.imports)
    url = journal_url(args)
    missing = missing_journal(url)
    if missing is not None:
        print(
            f"actionqueues: error: no run {args.run_id!r}: there is no journal at {missing}",
            file=err,
        )
        return 1
    with opened(url) as journal:
        try:
            timeline = journal.timeline(args.run_id)
        except KeyError as exc:
            print(f"actionqueues: error: {_not_found(exc, args.run_id)}", file=err)
            return 1
        run = timeline.run
        if run.status != "needs_attention":
            advice = {
                "succeeded": "it succeeded: there is nothing to roll back",
                "rolled_back": "it is already rolled back",
            }.get(
                run.status,
                "it is still active: its owner finishes it, or `actionqueues recover` does once "
                "its lease expires",
            )
            print(
                f"actionqueues: error: run {run.run_id} is {run.status}, not needs_attention; "
                f"{advice}",
                file=err,
            )
            return 2
        unknown = unregistered_types(timeline)
        if unknown:
            print(
                f"actionqueues: error: run {run.run_id} has steps of action types not "
                f"registered in this process: {', '.join(map(repr, unknown))}; pass "
                f"--import MODULE for the module(s) that define them. Nothing was changed.",
                file=err,
            )
            return 2
        with library_log(err, args.verbose):
            result = retry_rollback(journal, run.run_id)
        shown = journal.url
    print(f"Retried the rollback of run {run.run_id} ({run.name}) in {shown}:", file=out)
    print(_outcome_line(result, paint), file=out)
    if result.outcome == "rolled_back":
        print(paint.status("rolled_back", "every started step is rolled back now"), file=out)
        return 0
    print(
        f"it still needs attention: `actionqueues runs show {run.run_id[:_ID_SHORT]}"
        f"{_journal_hint(args)}` shows which rollback failed and why",
        file=out,
    )
    return 1
