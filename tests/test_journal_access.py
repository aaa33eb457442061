"""Opening a SQLite journal read-only, and using one across a fork."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actionqueues import (
    Action,
    ActionQueue,
    Journal,
    JournalError,
    open_journal,
    register_action,
)
from actionqueues._cli import main


@register_action("tests.access.noop")
@dataclass
class Noop(Action):
    n: int


def _journal_with_a_run(path: Path) -> str:
    with open_journal(path, heartbeat=False) as journal:
        q = ActionQueue(journal=journal, name="signup")
        q.add(Noop(1))
        q.execute()
        assert q.run_id is not None
        return q.run_id


def test_a_read_only_journal_reads_runs_and_refuses_writes(tmp_path: Path) -> None:
    """read_only=True lists and shows runs, and any write is a JournalError."""
    path = tmp_path / "runs.db"
    run_id = _journal_with_a_run(path)
    with open_journal(path, read_only=True) as journal:
        assert [r.run_id for r in journal.runs()] == [run_id]
        assert journal.timeline(run_id).run.status == "succeeded"
        with pytest.raises(JournalError, match="read-only"):
            journal.release(run_id)
        q = ActionQueue(journal=journal)
        q.add(Noop(2))
        with pytest.raises(JournalError, match="read-only"):
            q.execute()
        assert len(journal.runs()) == 1


def test_a_read_only_journal_is_opened_without_write_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_only=True works where SQLite may only read (as without write permission)."""
    import sqlite3

    path = tmp_path / "runs.db"
    run_id = _journal_with_a_run(path)
    real_connect = sqlite3.connect
    targets: list[str] = []

    def only_read(target: str, **kwargs: Any) -> sqlite3.Connection:
        targets.append(target)
        assert kwargs.get("uri") is True
        assert target.endswith("?mode=ro")
        connection: sqlite3.Connection = real_connect(target, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", only_read)
    with open_journal(path, read_only=True) as journal:
        assert journal.timeline(run_id[:8]).run.run_id == run_id
    assert len(targets) == 1


def test_read_only_refuses_a_missing_or_empty_file_and_creates_nothing(tmp_path: Path) -> None:
    """read_only=True on a missing file or an empty database: JournalError, no file made."""
    missing = tmp_path / "nowhere" / "runs.db"
    with pytest.raises(JournalError, match="unable to open"):
        open_journal(missing, read_only=True)
    assert not missing.parent.exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(JournalError, match="not an actionqueues journal"):
        open_journal(empty, read_only=True)


def test_runs_list_and_show_open_the_journal_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runs list` and `runs show` never write: they work on a journal opened read-only."""
    path = tmp_path / "runs.db"
    run_id = _journal_with_a_run(path)
    opened: list[bool] = []
    import actionqueues._cli_runs as cli_runs

    def spy(url: str, **options: Any) -> Journal:
        opened.append(bool(options.get("read_only")))
        return open_journal(url, **options)

    monkeypatch.setattr(cli_runs, "open_journal", spy)
    assert main(["runs", "list", "--journal", str(path)]) == 0
    assert main(["runs", "show", run_id, "--journal", str(path)]) == 0
    assert opened == [True, True]
    assert run_id[:8] in capsys.readouterr().out


def test_a_journal_used_in_a_forked_child_says_to_open_one_after_the_fork(
    tmp_path: Path,
) -> None:
    """A journal opened before fork() refuses to work in the child, with a clear message."""
    journal = open_journal(tmp_path / "runs.db", heartbeat=False)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        try:
            journal.runs()
            message = "no error"
        except JournalError as exc:
            message = str(exc)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "before it forked" in message
    assert "open a journal of its own" in message
    assert journal.runs() == []  # the parent's journal still works
    journal.close()
