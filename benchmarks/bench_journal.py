"""Steps per second of a journaled queue, against the SQLite commit limit and DBOS.

Three contenders, each a fresh SQLite file in the same directory (same disk),
each running ``--queues`` units of ``--steps`` (10) steps one after the other:

* actionqueues: a journaled ``ActionQueue`` of 10 no-op registered actions per
  unit, journal opened with ``open_journal("sqlite:///...")`` (WAL and
  ``synchronous=FULL`` by default);
* raw: stdlib ``sqlite3`` in WAL with ``synchronous=FULL``, one committed
  ``INSERT`` per step (autocommit): what the disk allows at one commit per step;
* dbos / dbos-wal: DBOS Transact 3.4 (``dbos`` from PyPI, in its own venv,
  ``benchmarks/.venv-dbos/``, created on first use), a ``@DBOS.workflow`` of 10
  ``@DBOS.step`` steps per unit, system database on a SQLite file. ``dbos`` is
  DBOS as shipped (it sets no ``journal_mode``, so SQLite's rollback journal);
  ``dbos-wal`` is the same with the file put in WAL before DBOS opens it, for
  like-for-like durability settings. Run by ``_dbos_worker.py``, which checks
  that every step output is in the file afterwards.

Setup (opening the journal, ``DBOS.launch()``, schema creation) and a short
warm-up are not timed. Each round runs every contender once, in an order that
rotates between rounds; the table gives the median, min and max over rounds.
Always exits 0 when the measurement ran: it is a measurement, not a test.

Run from the repo root::

    .venv/bin/python benchmarks/bench_journal.py            # 5 rounds x 100 queues
    .venv/bin/python benchmarks/bench_journal.py --quick    # 3 rounds x 30 queues
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_dbos_worker.py"
VENV_DBOS = HERE / ".venv-dbos"
DBOS_SPEC = "dbos~=3.4.0"
DBOS_SERIES = "3.4."
TARGET_VS_DBOS = 10.0
TARGET_VS_RAW = 0.67
WARMUP_QUEUES = 5
SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass
class Measurement:
    """One timed run of one contender."""

    elapsed: float
    steps: int
    info: dict[str, object] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed


# --- DBOS venv, as bench_core.py does for 0.8.2 ------------------------------------


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def installed_version(python: Path, dist: str) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    proc = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_dbos_venv() -> Path:
    """Create ``benchmarks/.venv-dbos`` with dbos 3.4.x, if not there yet."""
    python = venv_python(VENV_DBOS)
    version = installed_version(python, "dbos") if python.exists() else None
    if version is not None and version.startswith(DBOS_SERIES):
        return python
    print(f"creating {VENV_DBOS} with {DBOS_SPEC} ...", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DBOS)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", DBOS_SPEC],
        check=True,
    )
    version = installed_version(python, "dbos")
    if version is None or not version.startswith(DBOS_SERIES):
        sys.exit(f"bench_journal: {VENV_DBOS} has dbos {version!r}, expected {DBOS_SERIES}x")
    return python


# --- files and disks ----------------------------------------------------------------


def remove_db(path: Path) -> None:
    """Remove a SQLite file and its WAL, shared-memory and rollback-journal files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def mount_of(directory: Path) -> str:
    """The /proc/mounts line (device, mount point, fs type, options) for a directory."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown (no /proc/mounts)"
    target = str(directory.resolve())
    best: list[str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].encode().decode("unicode_escape")  # /proc/mounts escapes as \040
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[1])):
            best = [fields[0], point, fields[2], fields[3]]
    if best is None:
        return "unknown (no mount point matched)"
    device, point, fstype, options = best
    note = ""
    if fstype in ("tmpfs", "ramfs"):
        note = "  WARNING: a RAM file system, fsync costs nothing: not a durability measurement"
    return f"{device} mounted at {point} ({fstype}, {options}){note}"


def file_settings(path: Path) -> dict[str, object]:
    """journal_mode stored in a SQLite file, and the rows of all its tables."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        journal_mode = str(con.execute("PRAGMA journal_mode").fetchone()[0]).upper()
        tables = [
            row[0]
            for row in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        rows = {
            table: int(con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
            for table in tables
        }
    finally:
        con.close()
    return {"file_journal_mode": journal_mode, "rows": rows}


# --- contenders ---------------------------------------------------------------------


def run_raw(directory: Path, queues: int, steps: int) -> Measurement:
    """One committed INSERT per step: WAL, synchronous=FULL, autocommit."""
    path = directory / "raw.sqlite"
    remove_db(path)
    con = sqlite3.connect(path, isolation_level=None)  # autocommit: one commit per INSERT
    try:
        journal_mode = str(con.execute("PRAGMA journal_mode=WAL").fetchone()[0]).upper()
        con.execute("PRAGMA synchronous=FULL")
        synchronous = SYNCHRONOUS_NAMES[int(con.execute("PRAGMA synchronous").fetchone()[0])]
        if (journal_mode, synchronous) != ("WAL", "FULL"):
            sys.exit(f"bench_journal: raw loop got journal_mode={journal_mode} {synchronous=}")
        con.execute(
            "CREATE TABLE steps (id INTEGER PRIMARY KEY, run INTEGER NOT NULL, "
            "step INTEGER NOT NULL, state TEXT NOT NULL, at REAL NOT NULL)"
        )
        insert = "INSERT INTO steps (run, step, state, at) VALUES (?, ?, ?, ?)"

        def unit(run: int) -> None:
            for i in range(steps):
                con.execute(insert, (run, i, f'{{"i": {i}}}', time.time()))

        for run in range(WARMUP_QUEUES):
            unit(-1 - run)
        start = time.perf_counter()
        for run in range(queues):
            unit(run)
        elapsed = time.perf_counter() - start
        timed_rows = con.execute("SELECT count(*) FROM steps WHERE run >= 0").fetchone()[0]
    finally:
        con.close()
    if timed_rows != queues * steps:
        sys.exit(f"bench_journal: raw loop wrote {timed_rows} rows, expected {queues * steps}")
    info: dict[str, object] = {"journal_mode": journal_mode, "synchronous": synchronous}
    remove_db(path)
    return Measurement(elapsed, queues * steps, info)


@functools.cache
def _step_type() -> type[Any]:
    """The registered no-op action, defined once per process (registration is global)."""
    from actionqueues import Action, register_action

    @register_action("bench.step")
    @dataclass
    class Step(Action):
        i: int

        def execute(self) -> None:
            pass

        def rollback(self) -> None:
            pass

    return Step


def run_actionqueues(directory: Path, queues: int, steps: int) -> Measurement:
    """Journaled queues of ``steps`` no-op actions on ``open_journal("sqlite:///...")``."""
    from actionqueues import ActionQueue, open_journal

    step_type = _step_type()
    path = directory / "actionqueues.sqlite"
    remove_db(path)
    journal = open_journal(f"sqlite:///{path}")  # WAL + synchronous=FULL by default
    try:

        def unit() -> None:
            q = ActionQueue(journal=journal, name="bench")
            for i in range(steps):
                q.add(step_type(i))
            q.execute()

        for _ in range(WARMUP_QUEUES):
            unit()
        start = time.perf_counter()
        for _ in range(queues):
            unit()
        elapsed = time.perf_counter() - start
    finally:
        journal.close()
    info = file_settings(path)
    rows = info["rows"]
    assert isinstance(rows, dict)
    if not sum(rows.values()):
        sys.exit(f"bench_journal: the journal file {path} holds no rows after the run")
    info["synchronous"] = "FULL (documented default; not visible from outside the journal)"
    remove_db(path)
    return Measurement(elapsed, queues * steps, info)


def run_dbos(python: Path, directory: Path, queues: int, steps: int, wal: bool) -> Measurement:
    path = directory / ("dbos-wal.sqlite" if wal else "dbos.sqlite")
    cmd = [str(python), "-I", str(WORKER), "--db", str(path)]
    cmd += ["--queues", str(queues), "--steps", str(steps), "--warmup", str(WARMUP_QUEUES)]
    if wal:
        cmd.append("--wal")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"bench_journal: DBOS worker failed: {' '.join(cmd)}\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    remove_db(path)
    elapsed = result["elapsed_s"]
    assert isinstance(elapsed, float)
    return Measurement(elapsed, queues * steps, result)


# --- driver -------------------------------------------------------------------------


def ratio_cell(value: float, base: list[float]) -> str:
    return f"{value / statistics.median(base):8.2f}x" if base else f"{'-':>9s}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--queues", type=int, help="queues (workflows) per contender per round (default 100)"
    )
    size.add_argument(
        "--steps-total", type=int, help="steps per contender per round (instead of --queues)"
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per queue (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--dir",
        type=Path,
        help="directory for the SQLite files (default: a new temporary directory, removed after)",
    )
    parser.add_argument("--skip-dbos", action="store_true", help="do not run DBOS")
    parser.add_argument(
        "--dbos-shipped-only",
        action="store_true",
        help="run DBOS as shipped only, not also with its file preset to WAL",
    )
    parser.add_argument("--quick", action="store_true", help="fast run: 3 rounds x 30 queues")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
        if args.queues is None and args.steps_total is None:
            args.queues = 30
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    if args.steps_total is not None:
        args.queues = max(1, args.steps_total // args.steps)
    elif args.queues is None:
        args.queues = 100
    if args.queues < 1:
        parser.error("--queues must be >= 1")
    queues, steps = args.queues, args.steps

    dbos_python = None if args.skip_dbos else ensure_dbos_venv()
    own_dir = args.dir is None
    directory: Path = Path(tempfile.mkdtemp(prefix="bench-journal-")) if own_dir else args.dir
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()

    contenders: dict[str, Callable[[], Measurement]] = {
        "actionqueues": lambda: run_actionqueues(directory, queues, steps),
        "raw": lambda: run_raw(directory, queues, steps),
    }
    if dbos_python is not None:
        contenders["dbos"] = lambda: run_dbos(dbos_python, directory, queues, steps, False)
        if not args.dbos_shipped_only:
            contenders["dbos-wal"] = lambda: run_dbos(dbos_python, directory, queues, steps, True)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    seen: dict[str, dict[str, object]] = {}
    unavailable: dict[str, str] = {}

    try:
        for round_no in range(args.rounds):
            names = list(contenders)
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                if name in unavailable:
                    continue
                try:
                    measurement = contenders[name]()
                except NotImplementedError as exc:
                    unavailable[name] = str(exc)
                    continue
                samples[name].append(measurement.steps_per_s)
                seen[name] = measurement.info
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)

    print(
        f"journal benchmark: steps/s, {queues} queues x {steps} steps per contender per round, "
        f"{args.rounds} rounds (+{WARMUP_QUEUES} warm-up queues each, untimed)"
    )
    print(f"  python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version} ({sys.executable})")
    print(f"  dir    {directory}{' (temporary, removed)' if own_dir else ''}")
    print(f"  disk   {mount_of(directory)}")
    for name in contenders:
        if name in unavailable:
            print(f"  {name:12s} not run: {unavailable[name]}")
        elif name in seen:
            info = seen[name]
            if name.startswith("dbos"):
                detail = (
                    f"dbos {info['dbos']} (python {info['python']}, sqlite {info['sqlite']}, "
                    f"sqlalchemy {info['sqlalchemy']}): journal_mode={info['journal_mode']} "
                    f"synchronous={info['synchronous']}, {info['commits_per_step']:.2f} "
                    f"write commits/step, {info['step_rows_verified']} step outputs verified"
                )
            elif name == "raw":
                detail = f"journal_mode={info['journal_mode']} synchronous={info['synchronous']}"
            else:
                detail = (
                    f"journal_mode={info['file_journal_mode']} synchronous={info['synchronous']}, "
                    f"rows in the file: {info['rows']}"
                )
            print(f"  {name:12s} {detail}")
    print()

    raw, dbos_runs = samples["raw"], {n: s for n, s in samples.items() if n.startswith("dbos")}
    header = f"{'contender':12s} | {'median':>9s} {'min':>9s} {'max':>9s} | {'vs raw':>9s}"
    header += "".join(f" {'vs ' + n:>12s}" for n in dbos_runs)
    print(header)
    print("-" * len(header))
    for name, values in samples.items():
        if not values:
            continue
        median = statistics.median(values)
        line = f"{name:12s} | {median:9,.0f} {min(values):9,.0f} {max(values):9,.0f} | "
        line += ratio_cell(median, raw)
        line += "".join(f" {ratio_cell(median, base):>12s}" for base in dbos_runs.values())
        print(line)
    print()

    ours = samples["actionqueues"]
    if not ours:
        print("targets: not evaluated, actionqueues was not run")
        return 0
    ours_med = statistics.median(ours)
    verdicts = []
    vs_raw = ours_med / statistics.median(raw)
    verdicts.append(
        f">= {TARGET_VS_RAW}x raw: {'MET' if vs_raw >= TARGET_VS_RAW else 'NOT MET'} "
        f"({vs_raw:.2f}x)"
    )
    for name, values in dbos_runs.items():
        if values:
            ratio = ours_med / statistics.median(values)
            met = "MET" if ratio >= TARGET_VS_DBOS else "NOT MET"
            verdicts.append(f">= {TARGET_VS_DBOS:g}x {name}: {met} ({ratio:.2f}x)")
    if not any(dbos_runs.values()):
        verdicts.append(f">= {TARGET_VS_DBOS:g}x DBOS: not evaluated, DBOS was not run")
    print("targets (medians): " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
