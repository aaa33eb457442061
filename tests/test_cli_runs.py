"""The operator commands (runs list/show/retry, recover) and the demo's crash mode."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cli_actions
import pytest
from cli_actions import FAILING_UNDO, LEDGER, Put

from actionqueues import ActionQueue, Journal, RetryPolicy, open_journal, recover
from actionqueues import _cli as cli_module
from actionqueues import _registry as registry
from actionqueues._cli import main
from actionqueues._cli_runs import age, duration, iso, parse_age, parse_status
from actionqueues._demo import crash_child
from actionqueues.testing import FakeClock, inject_faults


class Crash(BaseException):
    """The simulated death of the process that ran a queue."""


@dataclass
class Populated:
    """A journal file with one run of each kind, and their ids."""

    url: str
    path: Path
    succeeded: str
    rolled_back: str
    needs_attention: str
    recovered: str


@pytest.fixture(autouse=True)
def _fresh_ledger() -> Iterator[None]:
    LEDGER.clear()
    FAILING_UNDO.clear()
    yield
    LEDGER.clear()
    FAILING_UNDO.clear()


def _journal(url: str, clock: FakeClock | None = None, owner: str | None = None) -> Journal:
    return open_journal(url, heartbeat=False, clock=clock, owner=owner)


def abandon(
    url: str,
    *keys: str,
    name: str = "import",
    crash_after: int = 1,
    ago: float = 3600.0,
    resumable: bool = False,
    point: str = "after_execute",
) -> str:
    """Leave a run as a dead process would: active, its lease long expired.

    The process dies at the ``crash_after``-th time it reaches ``point``; with
    a ``fail=True`` step the run fails and rolls back first.
    """
    journal = _journal(url, clock=FakeClock(time.time() - ago), owner="dead-host:1:0")
    queue = ActionQueue(journal=journal, name=name, resumable=resumable)
    for key in keys:
        queue.add(Put(key.rstrip("!"), fail=key.endswith("!")))
    reached = 0

    def die(where: str) -> None:
        nonlocal reached
        if where == point:
            reached += 1
            if reached == crash_after:
                journal.close()  # nothing more reaches the journal, as after a SIGKILL
                raise Crash

    def run() -> None:
        try:
            queue.execute()
        except ValueError:
            queue.rollback()

    with pytest.raises(Crash), inject_faults(die):
        run()
    assert queue.run_id is not None
    return queue.run_id


@pytest.fixture
def populated(tmp_path: Path) -> Populated:
    """A journal with a succeeded, a rolled back, a needs-attention and a recovered run."""
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    recovered = abandon(url, "g", "h", crash_after=2, ago=7200.0)
    with _journal(url, clock=FakeClock(time.time()), owner="recoverer") as other:
        assert [r.outcome for r in recover(other).runs] == ["rolled_back"]
    with _journal(url) as journal:
        ok = ActionQueue(journal=journal, name="signup")
        ok.add(Put("a"))
        ok.add(Put("b"))
        ok.execute()
        undone = ActionQueue(journal=journal, name="signup")
        undone.add(Put("c"))
        undone.add(Put("d", fail=True))
        with pytest.raises(ValueError, match="cannot put d"):
            undone.execute()
        undone.rollback()
        FAILING_UNDO.add("e")
        stuck = ActionQueue(journal=journal, name="billing")
        stuck.add(Put("e"))
        stuck.add(Put("f", fail=True))
        with pytest.raises(ValueError, match="cannot put f"):
            stuck.execute()
        stuck.rollback()
    ids = (ok.run_id, undone.run_id, stuck.run_id)
    assert all(isinstance(i, str) for i in ids)
    return Populated(url, path, str(ids[0]), str(ids[1]), str(ids[2]), recovered)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def status_of(url: str, run_id: str) -> str:
    with _journal(url) as journal:
        return journal.timeline(run_id).run.status


# -- runs list -----------------------------------------------------------------------


def test_list_shows_every_run_newest_first_under_the_journal_path(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table names the journal, shows short ids newest first, and points at the stuck run."""
    code, out, err = cli(capsys, "runs", "list", "--journal", populated.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Journal {populated.url}: 4 runs, newest first"
    assert lines[1].split() == ["RUN", "ID", "NAME", "STATUS", "STEPS", "AGE", "OWNER", "ERROR"]
    rows = [line.split() for line in lines[2:6]]
    assert [r[0] for r in rows] == [
        populated.needs_attention[:8],
        populated.rolled_back[:8],
        populated.succeeded[:8],
        populated.recovered[:8],
    ]
    assert [r[2] for r in rows] == ["needs_attention", "rolled_back", "succeeded", "rolled_back"]
    assert [r[3] for r in rows] == ["2/2", "2/2", "2/2", "2/2"]
    assert rows[3][4] == "2h"
    assert rows[3][5] == "recoverer"
    assert "the rollback of step(s) 0 failed" in lines[2]
    assert "ValueError: cannot put d" in lines[3]
    assert lines[6].startswith(
        "1 run needs attention: see `actionqueues runs show RUN_ID --journal"
    )
    assert "\033[" not in out


def test_list_json_has_every_field_full_ids_and_iso_timestamps(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints an array of every field; *_at are Unix seconds with *_at_iso beside them."""
    code, out, _ = cli(capsys, "runs", "list", "--journal", populated.url, "--json")
    assert code == 0
    runs = json.loads(out)
    assert [r["run_id"] for r in runs][:3] == [
        populated.needs_attention,
        populated.rolled_back,
        populated.succeeded,
    ]
    first = runs[0]
    assert set(first) >= {
        "run_id",
        "name",
        "kind",
        "status",
        "resumable",
        "owner",
        "lease_expires_at",
        "created_at",
        "updated_at",
        "finished_at",
        "steps",
        "started",
        "error",
        "recoveries",
        "created_at_iso",
        "finished_at_iso",
    }
    assert first["status"] == "needs_attention"
    assert isinstance(first["created_at"], float)
    assert first["created_at_iso"] == iso(first["created_at"])
    assert first["created_at_iso"].endswith("Z")
    assert first["lease_expires_at_iso"] is None  # a finished run holds no lease
    assert runs[-1]["recoveries"] == 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--status", "rolled_back"], ["rolled_back", "recovered"]),
        (["--status", "succeeded", "needs_attention"], ["needs_attention", "succeeded"]),
        (["--status", "succeeded,needs-attention"], ["needs_attention", "succeeded"]),
        (
            ["--status", "succeeded", "--status", "rolled_back"],
            ["rolled_back", "succeeded", "recovered"],
        ),
        (["--name", "billing"], ["needs_attention"]),
        (["--older-than", "1h"], ["recovered"]),
        (["--older-than", "3h"], []),
        (["--limit", "2"], ["needs_attention", "rolled_back"]),
        (["--status", "active"], []),
    ],
)
def test_list_filters_by_status_name_age_and_limit(
    populated: Populated,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    expected: list[str],
) -> None:
    """Each filter narrows the JSON listing to the expected runs, newest first."""
    code, out, _ = cli(capsys, "runs", "list", "--journal", populated.url, "--json", *options)
    assert code == 0
    ids = {
        getattr(populated, name): name
        for name in ("succeeded", "rolled_back", "needs_attention", "recovered")
    }
    assert [ids[r["run_id"]] for r in json.loads(out)] == expected


def test_list_says_when_no_run_matches(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty result names the filters and the journal."""
    code, out, _ = cli(
        capsys,
        "runs",
        "list",
        "--journal",
        populated.url,
        "--status",
        "active",
        "--name",
        "x",
        "--older-than",
        "90m",
        "--limit",
        "5",
    )
    assert code == 0
    assert out == (
        f"No runs match (status running|failed|rolling_back, name 'x', older than 1h, "
        f"at most 5) in the journal {populated.url}.\n"
    )


def test_list_marks_an_abandoned_run_and_suggests_recover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose owner's lease expired is flagged, with the command that finishes it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a", "b")
    code, out, _ = cli(capsys, "runs", "list", "--journal", url, "--color", "always")
    assert code == 0
    assert run_id[:8] in out
    assert "dead-host:1:0 (lease expired)" in out
    assert "\033[33mrunning" in out
    assert "1 active run has lost its owner (lease expired): `actionqueues recover --journal" in out


def test_list_of_a_missing_journal_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listing a journal that does not exist prints its path (or []) and leaves no file."""
    path = tmp_path / "nowhere" / "runs.db"
    code, out, _ = cli(capsys, "runs", "list", "--journal", str(path))
    assert code == 0
    assert out == f"No journal at {path} yet: no runs recorded (a journaled queue creates it).\n"
    code, out, _ = cli(capsys, "runs", "list", "--journal", f"sqlite:///{path}", "--json")
    assert (code, out) == (0, "[]\n")
    assert not (tmp_path / "nowhere").exists()


def test_list_uses_the_ACTIONQUEUES_JOURNAL_variable_by_default(
    populated: Populated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --journal the listing reads $ACTIONQUEUES_JOURNAL and names it."""
    monkeypatch.setenv("ACTIONQUEUES_JOURNAL", populated.url)
    code, out, _ = cli(capsys, "runs", "list")
    assert code == 0
    assert out.startswith(f"Journal {populated.url}: 4 runs")
    assert "`actionqueues runs show RUN_ID`" in out  # no --journal to repeat


def test_list_refuses_an_unknown_status_with_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A misspelt status is a usage error (exit 2) that lists the valid names."""
    with pytest.raises(SystemExit) as info:
        main(["runs", "list", "--status", "done"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown run status 'done'; expected one of running, failed, rolling_back" in err


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-3s", "1x", "inf", "nan", ""])
def test_list_refuses_an_unreadable_age(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--older-than takes 30s/5m/2h/1d style ages only."""
    with pytest.raises(SystemExit) as info:
        main(["runs", "list", f"--older-than={bad}"])
    assert info.value.code == 2
    assert "invalid age" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_list_refuses_a_limit_below_one(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit takes a whole number >= 1."""
    with pytest.raises(SystemExit) as info:
        main(["runs", "list", f"--limit={bad}"])
    assert info.value.code == 2
    assert "expected a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("90", 90),
        ("1.5h", 5400),
        (" 2H ", 7200),
    ],
)
def test_ages_read_with_units(text: str, seconds: float) -> None:
    """Ages take s/m/h/d/w units, combinations, decimals, or plain seconds."""
    assert parse_age(text) == seconds


def test_status_names_are_normalised_and_active_expands() -> None:
    """Statuses accept dashes and commas; 'active' means the recoverable ones."""
    assert parse_status("Needs-Attention,succeeded") == ["needs_attention", "succeeded"]
    assert parse_status("active") == ["running", "failed", "rolling_back"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_status("finished")


def test_durations_and_ages_read_naturally() -> None:
    """Durations pick a unit by size; ages use one unit, never negative."""
    assert [duration(s) for s in (0.0004, 0.0123, 1.25, 185, 7500)] == [
        "0.4 ms",
        "12.3 ms",
        "1.25 s",
        "3m 05s",
        "2h 05m",
    ]
    assert [age(s) for s in (-5, 45, 720, 3 * 3600, 2 * 86400)] == ["0s", "45s", "12m", "3h", "2d"]
    assert iso(None) is None
    assert iso(0.5) == "1970-01-01T00:00:00.500Z"


# -- runs show -----------------------------------------------------------------------


def test_show_prints_the_header_each_step_and_the_events(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """A needs-attention run shows its failed rollback, durations, errors and events in order."""
    code, out, err = cli(
        capsys, "runs", "show", populated.needs_attention, "--journal", populated.url
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Run {populated.needs_attention}  (journal {populated.url})"
    header = dict(line.split(None, 1) for line in lines[1:9])
    assert header["name"] == "billing (sync queue)"
    assert header["status"] == "needs_attention"
    assert header["lease"] == "none (the run is finished)"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \(\d+s ago\)", header["created"]
    )
    assert "(after " in header["finished"]
    assert header["recoveries"] == "0"
    assert header["error"] == "the rollback of step(s) 0 failed"
    steps = lines.index("Steps (2, 2 started)")
    assert lines[steps + 1].split() == ["#", "TYPE", "STATUS", "ATTEMPTS", "EXECUTE", "ROLLBACK"]
    first = lines[steps + 2].split()
    assert first[:4] == ["0", "cli_tests.put", "rollback_failed", "1"]
    assert (first[5], first[6], first[7], first[9]) == ("ms", "1", "attempt,", "ms")
    assert lines[steps + 3].strip() == "rollback error: RuntimeError: cannot remove e"
    assert lines[steps + 4].strip() == 'state: {"key":"e","fail":false}'
    assert lines[steps + 5].split()[:3] == ["1", "cli_tests.put", "rolled_back"]
    assert lines[steps + 6].strip() == "error: ValueError: cannot put f"
    events = lines[lines.index("Events") + 1 :]
    assert len(events) == 2
    assert events[0].endswith("  run      failed           ValueError: cannot put f")
    assert events[1].endswith("  step 0   rollback_failed  RuntimeError: cannot remove e")
    assert events[0].split()[0].startswith("+")


def test_show_accepts_a_unique_prefix_of_the_id(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 8 characters the table shows are enough to show a run."""
    code, out, _ = cli(capsys, "runs", "show", populated.recovered[:8], "--journal", populated.url)
    assert code == 0
    assert out.startswith(f"Run {populated.recovered}")
    assert "  recoveries 1\n" in out
    assert "claimed" in out
    assert "by recoverer (was dead-host:1:0)" in out
    assert " unrecorded " not in out.split("Steps")[0]


def test_show_of_an_unknown_run_fails_with_exit_1(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown id or too short a prefix is one line on stderr and exit code 1."""
    code, out, err = cli(capsys, "runs", "show", "00000000-nope", "--journal", populated.url)
    assert (code, out) == (1, "")
    assert err == f"actionqueues: error: no run '00000000-nope' in the journal {populated.url}\n"
    code, _, err = cli(capsys, "runs", "show", populated.succeeded[:4], "--journal", populated.url)
    assert code == 1
    assert err.endswith("(a run id prefix needs at least 8 characters)\n")


def test_show_of_a_missing_journal_fails_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Showing a run of a journal that does not exist says where it looked."""
    path = tmp_path / "runs.db"
    code, _, err = cli(capsys, "runs", "show", "abcdef12", "--journal", str(path))
    assert code == 1
    assert err == f"actionqueues: error: no run 'abcdef12': there is no journal at {path}\n"
    assert not path.exists()


def test_show_json_has_the_run_its_steps_and_events(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json gives parsed step state, durations, and ISO timestamps beside Unix ones."""
    code, out, _ = cli(
        capsys, "runs", "show", populated.rolled_back, "--journal", populated.url, "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["run"]["run_id"] == populated.rolled_back
    assert data["run"]["status"] == "rolled_back"
    first, second = data["steps"]
    assert first["state"] == {"key": "c", "fail": False}
    assert first["status"] == "rolled_back"
    assert first["execute_seconds"] >= 0
    assert first["rollback_seconds"] >= 0
    assert first["started_at_iso"] == iso(first["started_at"])
    assert second["error"] == "ValueError: cannot put d"
    assert [e["kind"] for e in data["events"]] == ["failed"]
    assert data["events"][0]["at_iso"].endswith("Z")


def test_show_of_a_run_abandoned_while_waiting_to_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash during a retry's wait shows the retry event, the due time and an in-flight step."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    journal = _journal(url, clock=FakeClock(time.time() - 60), owner="dead-host:2:0")

    def die(seconds: float) -> None:
        journal.close()
        raise Crash

    queue = ActionQueue(
        journal=journal, name="flaky", retry=RetryPolicy(max_attempts=3), sleep=die, resumable=True
    )
    queue.add(Put("x", fail=True))
    with pytest.raises(Crash):
        queue.execute()
    code, out, _ = cli(capsys, "runs", "show", str(queue.run_id), "--journal", url)
    assert code == 0
    assert "flaky (sync queue, resumable)" in out
    assert re.search(r"lease      expired \d+s ago: its owner is gone or stalled", out)
    assert "next call due " in out
    assert " running " in out
    assert "retry            attempt 1: ValueError: cannot put x; next in" in out


# -- recover -------------------------------------------------------------------------


def test_recover_rolls_back_an_abandoned_run_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """recover --import finishes the dead owner's run; a second call finds nothing to do."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a", "b", crash_after=2)
    assert LEDGER == {"a": "put", "b": "put"}
    code, out, err = cli(capsys, "recover", "--journal", url, "--import", "cli_actions")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        out.splitlines()[0],
        f"  rolled_back      {run_id[:8]}  import",
        "1 run: 1 rolled back",
    ]
    assert out.startswith(f"Recovered in {url} (as ")
    assert LEDGER == {}
    assert status_of(url, run_id) == "rolled_back"
    code, out, _ = cli(capsys, "recover", "--journal", url)
    assert (code, out) == (0, f"Nothing to recover in {url}: no active run has lost its owner.\n")


def test_recover_leaves_runs_of_live_owners_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An active run whose lease is still held is counted, not claimed; show says who holds it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a", "b", ago=0)  # its 30 s lease has not expired
    code, out, _ = cli(capsys, "recover", "--journal", url)
    assert code == 0
    assert out.splitlines()[-1] == "1 active run still held by a live owner (left alone)"
    assert status_of(url, run_id) == "running"
    code, out, _ = cli(capsys, "runs", "show", run_id, "--journal", url)
    assert re.search(r"lease      held until .* UTC \(for \d+s more, renewed while alive\)", out)
    assert "finished   not yet" in out
    assert re.search(r"  1  cli_tests\.put  pending +0 +- +-\n", out)
    assert "Events\n  none (no retries, failures or recoveries)\n" in out


def test_recover_continues_a_rollback_the_crash_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that died mid-rollback shows the unfinished rollback; recover finishes it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a", "b", "c!", point="after_rollback_record", crash_after=2)
    assert LEDGER == {"a": "put", "b": "put"}
    code, out, _ = cli(capsys, "runs", "show", run_id, "--journal", url)
    assert code == 0
    assert "status     rolling_back" in out
    assert re.search(r"  1  cli_tests\.put  rolling_back  1 +[\d.]+ ms +1 attempt, unfinished", out)
    code, out, _ = cli(capsys, "recover", "--journal", url, "--import", "cli_actions")
    assert code == 0
    assert f"  rolled_back      {run_id[:8]}  import" in out
    assert LEDGER == {}


def test_recover_resumes_a_resumable_run_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resumable runs are finished forward; --no-resume rolls them back instead."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    forward = abandon(url, "a", "b", resumable=True)
    code, out, _ = cli(capsys, "recover", "--journal", url, "--limit", "1")
    assert code == 0
    assert f"  resumed          {forward[:8]}  import" in out
    assert status_of(url, forward) == "succeeded"
    assert LEDGER == {"a": "put", "b": "put"}
    LEDGER.clear()
    backward = abandon(url, "c", "d", resumable=True)
    code, out, _ = cli(capsys, "recover", "--journal", url, "--no-resume")
    assert code == 0
    assert f"  rolled_back      {backward[:8]}  import" in out
    assert LEDGER == {}


def test_recover_exits_1_when_a_rollback_still_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rollback that fails leaves the run needs_attention, says so, and exits 1."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a", "b", crash_after=2)
    FAILING_UNDO.add("a")
    code, out, err = cli(capsys, "recover", "--journal", url)
    assert code == 1
    assert f"  needs_attention  {run_id[:8]}  import  the rollback of step(s) 0 failed" in out
    assert "1 run needs attention: `actionqueues runs show RUN_ID --journal" in out
    assert err.startswith(
        "actionqueues: ERROR: rollback of step 0 (Put(key='a', fail=False)) failed"
    )
    assert "Traceback" not in err
    assert status_of(url, run_id) == "needs_attention"


def test_recover_verbose_shows_the_rollback_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v adds the traceback of a failed rollback to the log line."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    abandon(url, "a")
    FAILING_UNDO.add("a")
    code, _, err = cli(capsys, "recover", "--journal", url, "-v")
    assert code == 1
    assert "Traceback" in err
    assert "RuntimeError: cannot remove a" in err


def test_recover_json_reports_each_run_and_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the journal, each run's outcome, and whether all ended cleanly."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a")
    code, out, _ = cli(capsys, "recover", "--journal", url, "--json")
    assert code == 0
    assert json.loads(out) == {
        "journal": url,
        "runs": [
            {
                "run_id": run_id,
                "name": "import",
                "outcome": "rolled_back",
                "status": "rolled_back",
                "error": None,
            }
        ],
        "ok": True,
    }


def test_recover_of_a_missing_journal_has_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """recover does not create a journal to find it empty."""
    path = tmp_path / "runs.db"
    code, out, _ = cli(capsys, "recover", "--journal", str(path))
    assert (code, out) == (0, f"Nothing to recover: there is no journal at {path}.\n")
    code, out, _ = cli(capsys, "recover", "--journal", str(path), "--json")
    assert json.loads(out) == {"journal": str(path), "runs": [], "ok": True}
    assert not path.exists()


LATE_MODULE = """
from dataclasses import dataclass
from actionqueues import Action, register_action

UNDONE: list[str] = []


@register_action("cli_tests.late")
@dataclass
class Late(Action):
    key: str

    def execute(self) -> None:
        pass

    def rollback(self) -> None:
        UNDONE.append(self.key)
"""


def test_recover_refuses_unregistered_types_until_their_module_is_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unregistered types stop recover (exit 2); --import MODULE, found in the cwd, fixes that."""
    source = tmp_path / "late_actions.py"
    source.write_text(LATE_MODULE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("late_actions", source)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers cli_tests.late, as the application would
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    journal = _journal(url, clock=FakeClock(time.time() - 3600))
    queue = ActionQueue(journal=journal, name="late")
    queue.add(module.Late("k"))

    def die(point: str) -> None:
        if point == "after_execute":
            journal.close()
            raise Crash

    with pytest.raises(Crash), inject_faults(die):
        queue.execute()
    monkeypatch.delitem(registry._BY_NAME, "cli_tests.late")  # a fresh process: not imported
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.chdir(tmp_path)

    code, out, err = cli(capsys, "recover", "--journal", url)
    assert (code, out) == (2, "")
    assert "these are not registered in this process: 'cli_tests.late' (run " in err
    assert "Pass --import MODULE" in err
    assert status_of(url, str(queue.run_id)) == "running"

    try:
        code, out, _ = cli(capsys, "recover", "--journal", url, "--import", "late_actions")
        assert code == 0
        assert sys.modules["late_actions"].UNDONE == ["k"]
    finally:
        sys.modules.pop("late_actions", None)
    assert status_of(url, str(queue.run_id)) == "rolled_back"


def test_recover_force_marks_unrebuildable_runs_needs_attention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force marks a run of unknown types unrecoverable (exit 1); retry --import then fixes it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a")
    with monkeypatch.context() as patched:
        patched.delitem(registry._BY_NAME, "cli_tests.put")
        code, out, _ = cli(capsys, "recover", "--journal", url, "--force")
        assert code == 1
        assert f"  unrecoverable    {run_id[:8]}  import  cannot rebuild the run's steps: " in out
        code, _, err = cli(capsys, "runs", "retry", run_id, "--journal", url)
        assert code == 2
        assert "not registered in this process: 'cli_tests.put'; pass --import MODULE" in err
    assert status_of(url, run_id) == "needs_attention"
    code, out, _ = cli(
        capsys, "runs", "retry", run_id[:8], "--journal", url, "--import", "cli_actions"
    )
    assert code == 0
    assert LEDGER == {}


def test_an_import_that_fails_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module that cannot be imported is named, with why, before anything is done."""
    code, _, err = cli(
        capsys, "recover", "--journal", str(tmp_path / "r.db"), "--import", "no_such_module_x"
    )
    assert code == 2
    assert err == (
        "actionqueues: error: cannot import 'no_such_module_x' (given with --import): "
        "ModuleNotFoundError: No module named 'no_such_module_x'\n"
    )


# -- runs retry ----------------------------------------------------------------------


def test_retry_rolls_back_a_needs_attention_run_once_the_cause_is_fixed(
    populated: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retrying after the cause is fixed rolls the stuck step back and exits 0."""
    LEDGER["e"] = "put"  # what the failed rollback left behind
    code, out, err = cli(
        capsys, "runs", "retry", populated.needs_attention, "--journal", populated.url
    )
    assert code == 1  # the cause is not fixed yet
    assert "it still needs attention: `actionqueues runs show" in out
    assert "RuntimeError" not in out
    assert "rollback of step 0" in err
    FAILING_UNDO.clear()
    code, out, err = cli(
        capsys, "runs", "retry", populated.needs_attention[:8], "--journal", populated.url
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[1:] == [
        f"  rolled_back      {populated.needs_attention[:8]}  billing",
        "every started step is rolled back now",
    ]
    assert "e" not in LEDGER
    assert status_of(populated.url, populated.needs_attention) == "rolled_back"


@pytest.mark.parametrize(
    ("which", "advice"),
    [
        ("succeeded", "it succeeded: there is nothing to roll back"),
        ("rolled_back", "it is already rolled back"),
    ],
)
def test_retry_refuses_a_run_that_does_not_need_attention(
    populated: Populated, capsys: pytest.CaptureFixture[str], which: str, advice: str
) -> None:
    """Only a needs_attention run can be retried; the message says what the run is."""
    run_id = getattr(populated, which)
    code, out, err = cli(capsys, "runs", "retry", run_id, "--journal", populated.url)
    assert (code, out) == (2, "")
    assert err == (f"actionqueues: error: run {run_id} is {which}, not needs_attention; {advice}\n")


def test_retry_refuses_an_active_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An active run is left to its owner or to recover."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a")
    code, _, err = cli(capsys, "runs", "retry", run_id, "--journal", url)
    assert code == 2
    assert "is running, not needs_attention; it is still active" in err


def test_retry_of_an_unknown_run_or_journal_exits_1(
    populated: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown id, or no journal at all, is exit code 1 with one line on stderr."""
    code, _, err = cli(capsys, "runs", "retry", "ffffffff", "--journal", populated.url)
    assert code == 1
    assert err == f"actionqueues: error: no run 'ffffffff' in the journal {populated.url}\n"
    missing = tmp_path / "none.db"
    code, _, err = cli(capsys, "runs", "retry", "ffffffff", "--journal", str(missing))
    assert code == 1
    assert "there is no journal at" in err
    assert not missing.exists()


# -- journal errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, not a database" * 100, "not an SQLite database, or it is corrupt"),
        (None, "is not an actionqueues journal (it has tables invoices"),
    ],
)
def test_a_file_that_is_not_a_journal_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
) -> None:
    """Corrupt or foreign files are reported without a traceback, and left untouched."""
    path = tmp_path / "other.db"
    if content is None:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE invoices (id INTEGER)")
            db.commit()
    else:
        path.write_bytes(content)
    before = path.read_bytes() if content is not None else b""
    for argv in (["runs", "list"], ["runs", "show", "abcdefgh"], ["recover"]):
        code, out, err = cli(capsys, *argv, "--journal", str(path))
        assert (code, out) == (2, "")
        assert err.startswith("actionqueues: error: ")
        assert message in err
        assert err.count("\n") == 1
    if content is not None:
        assert path.read_bytes() == before
    else:  # (opening it switched it to WAL mode: see the report) but its data is untouched
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
        assert tables == ["invoices"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://user:pw@127.0.0.1:1/runs?connect_timeout=0.5",
            "cannot connect to the PostgreSQL journal postgresql://user:***@127.0.0.1:1/runs",
        ),
        ("sqlite://relative.db", "three or four slashes"),
        ("mysql://db/runs", "unsupported journal URL"),
    ],
)
def test_an_unusable_journal_url_is_one_line_and_exit_2(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """URL mistakes are explained in one line."""
    code, _, err = cli(capsys, "runs", "list", "--journal", url)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_help_documents_the_default_journal_and_import(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--help names the default journal location and why --import is needed."""
    monkeypatch.delenv("ACTIONQUEUES_JOURNAL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        main(["recover", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default: $ACTIONQUEUES_JOURNAL if set, else" in text
    assert "~/.local/share/actionqueues/runs.db" in text
    assert "the modules that register the runs' actions must be imported" in text
    assert "exit status: 0 done; 1" in text


# -- the demo's crash mode ---------------------------------------------------------


def test_crash_demo_kills_a_child_and_recovery_cleans_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo --crash: the child dies by SIGKILL mid-queue; recovery removes all it left behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, out, err = cli(capsys, "demo", "--crash", "--color", "never")
    assert (code, err) == (0, "")
    assert out.count("carol@example.com  users: 1, billing_customers: 1, mailing_list: 1") == 1
    assert out.count("carol@example.com  users: 0, billing_customers: 0, mailing_list: 0") == 1
    assert "kills itself (SIGKILL): the mailing list call returned" in out
    assert "is dead (killed by SIGKILL)" in out
    assert "(step 0 succeeded, step 1 succeeded, step 2 running)" in out
    undo = [line.split("↩")[1].split()[0] for line in out.splitlines() if "↩" in line]
    assert undo == ["mailing", "billing", "user"]
    assert "found by the step's idempotency key" in out
    assert "no rows left behind for carol; the run is rolled back" in out
    assert "  recoveries 1" in out
    assert "\033[" not in out
    (workdir,) = tmp_path.iterdir()
    assert (workdir / "runs.db").exists()
    assert f"runs list --journal sqlite:///{workdir / 'runs.db'}" in out


def test_crash_child_reports_a_crash_that_did_not_happen(tmp_path: Path) -> None:
    """In process, with a kill that returns, the child runs the queue and says it survived."""
    out = io.StringIO()
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    systems = tmp_path / "systems.db"
    from actionqueues._demo import _create_systems

    _create_systems(str(systems))
    kills: list[bool] = []
    assert crash_child(url, str(systems), time.time(), out, kill=lambda: kills.append(True)) == 1
    assert kills == [True]
    text = out.getvalue()
    assert "created mailing_list row 1" in text
    assert "kills itself (SIGKILL)" in text
    assert "still alive: the crash did not happen" in text
    with _journal(url) as journal:
        (run,) = journal.runs()
    assert (run.name, run.status) == ("demo-signup", "succeeded")


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for python")
def test_crash_demo_reports_a_child_that_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that exits instead of being killed fails the demo with its stderr."""
    from actionqueues._demo import run_crash_demo

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no python here' >&2\nexit 3\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.StringIO()
    assert run_crash_demo(out, python=str(fake)) == 1
    assert "the child exited with status 3" in out.getvalue()
    assert "no python here" in out.getvalue()


def test_crash_demo_refuses_a_journal_with_active_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo recovers every abandoned run, so it will not share a busy journal."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id = abandon(url, "a")
    code, _, err = cli(capsys, "demo", "--crash", "--journal", url)
    assert code == 2
    assert f"has active runs (e.g. {run_id}); the crash demo recovers every abandoned run" in err
    assert status_of(url, run_id) == "running"


def test_plain_demo_refuses_a_journal(capsys: pytest.CaptureFixture[str]) -> None:
    """--journal without --crash is a mistake, said in one line."""
    code, out, err = cli(capsys, "demo", "--journal", "sqlite:///x.db")
    assert (code, out) == (2, "")
    assert err == (
        "actionqueues: error: --journal is only used with --crash (the plain demo keeps no "
        "journal)\n"
    )


def test_cli_actions_module_is_importable_by_name() -> None:
    """The tests' action module is what --import cli_actions loads."""
    assert registry.load_step("cli_tests.put", '{"key": "z"}') == cli_actions.Put("z")


def test_demo_actions_undo_by_idempotency_key_and_say_when_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A demo step whose row is already gone says there was nothing to undo."""
    from actionqueues import _demo

    systems = str(tmp_path / "systems.db")
    _demo._create_systems(systems)
    out = io.StringIO()
    monkeypatch.setattr(_demo._display, "timeline", _demo._Timeline(out, False, time.time))
    with _journal("sqlite://") as journal:
        queue = ActionQueue(journal=journal, name="t")
        queue.add(_demo._JournaledCreateUser(systems, "dave@example.com"))
        queue.add(_demo._JournaledCreateBillingCustomer(systems, "dave@example.com"))
        queue.add(Put("x", fail=True))
        with pytest.raises(ValueError, match="cannot put x"):
            queue.execute()
        with contextlib.closing(sqlite3.connect(systems)) as db:
            db.execute("DELETE FROM users")  # someone removed it by hand meanwhile
            db.commit()
        queue.rollback()
    text = out.getvalue()
    assert "deleted billing_customers row 1" in text
    assert "nothing to undo (the call never got through)" in text


def test_cli_error_text_is_the_message_without_quotes() -> None:
    """KeyError messages lose repr quotes; an empty error is named by its type."""
    from actionqueues._cli import _error_text

    assert _error_text(KeyError("no run 'x'")) == "no run 'x'"
    assert _error_text(OSError()) == "OSError"


def test_a_closed_pipe_on_stdout_ends_quietly_with_exit_1(
    populated: Populated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`actionqueues runs list | head` does not print an error when head exits."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", encoding="utf-8") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["runs", "list", "--journal", populated.url, "--json"]) == 1
        print("after", file=stdout, flush=True)  # stdout now goes to /dev/null
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_a_closed_captured_stdout_also_ends_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stdout that is not a file (no descriptor to silence) is left as it is."""

    class ClosedPipe(io.StringIO):
        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["runs", "list", "--journal", str(tmp_path / "none.db")]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in `recover` (or any command): no traceback, one line, exit status 130."""

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_dispatch", interrupted)
    code, out, err = cli(capsys, "recover", "--journal", "sqlite://")
    assert (code, out, err) == (130, "", "actionqueues: interrupted\n")
