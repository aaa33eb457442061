"""What only the SQLite backend does: file locations, bad files, schema versions, pragmas."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actionqueues import ActionQueue, Journal, JournalError, open_journal
from actionqueues.testing import FakeClock

from .conftest import START
from .helpers import Put


@contextlib.contextmanager
def opened(url: str | os.PathLike[str], **options: object) -> Iterator[Journal]:
    journal = open_journal(url, heartbeat=False, **options)
    try:
        yield journal
    finally:
        journal.close()


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to look at (or tamper with) a journal file."""
    return sqlite3.connect(path, isolation_level=None)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = raw(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def one_run(journal: Journal) -> str:
    q = ActionQueue(journal=journal)
    q.add(Put("a"))
    q.execute()
    assert q.run_id is not None
    return q.run_id


# -- where the file is ------------------------------------------------------------


def test_url_forms_name_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///relative, sqlite:////absolute, a plain path and a Path open one file."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "data" / "runs.db"
    with opened("sqlite:///data/runs.db") as journal:
        run_id = one_run(journal)
        assert journal.url == f"sqlite:///{target}"
    for url in (f"sqlite:///{target}", str(target), "data/runs.db", target):
        with opened(url) as journal:
            assert [r.run_id for r in journal.runs()] == [run_id]
    assert str(target).startswith("/")  # sqlite:///{absolute} has four slashes
    assert f"sqlite:///{target}".startswith("sqlite:////")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", ":memory:"])
def test_in_memory_journals_are_private_and_not_kept(url: str) -> None:
    """sqlite:// is an in-memory journal: each one empty, gone when closed."""
    with opened(url) as first:
        assert first.url == "sqlite://"
        one_run(first)
        with opened(url) as second:
            assert second.runs() == []
        assert len(first.runs()) == 1


def test_the_directory_is_created(tmp_path: Path) -> None:
    """Missing parent directories of the file are created."""
    target = tmp_path / "a" / "b" / "c" / "runs.db"
    with opened(target):
        pass
    assert target.is_file()


def test_a_directory_is_not_a_journal_file(tmp_path: Path) -> None:
    """A directory path: JournalError suggesting a file inside it."""
    with pytest.raises(JournalError, match=r"it is a directory; give a file path such as") as e:
        open_journal(tmp_path)
    assert str(tmp_path / "runs.db") in str(e.value)
    assert e.value.url == f"sqlite:///{tmp_path}"


def test_a_file_in_the_way_of_the_directory_is_reported(tmp_path: Path) -> None:
    """A parent that is a file: JournalError naming the directory that cannot be created."""
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(JournalError, match=r"cannot create the journal's directory .*blocker"):
        open_journal(tmp_path / "blocker" / "sub" / "runs.db")


def test_a_file_that_cannot_be_opened_is_reported(tmp_path: Path) -> None:
    """A file SQLite cannot open (a link into a missing directory): JournalError with a hint."""
    link = tmp_path / "runs.db"
    link.symlink_to(tmp_path / "missing" / "runs.db")
    with pytest.raises(JournalError, match=r"unable to open .*check that the directory exists"):
        open_journal(link)


def test_a_read_only_journal_file_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal SQLite may only read (as on a read-only mount): JournalError naming it."""
    target = tmp_path / "runs.db"
    open_journal(target, heartbeat=False).close()
    real_connect = sqlite3.connect

    def read_only(path: str, **kwargs: Any) -> sqlite3.Connection:
        # What SQLite does on a read-only file system, even for root: open, but never write.
        if not path.startswith("file:"):
            path = f"file:{path}?mode=ro"
        kwargs["uri"] = True
        connection: sqlite3.Connection = real_connect(path, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(JournalError, match=rf"{target}.*read-only") as caught:
        open_journal(target, heartbeat=False)
    assert caught.value.url == f"sqlite:///{target}"


def test_data_is_kept_across_reopening(tmp_path: Path) -> None:
    """A file journal keeps its runs, steps and events after close and reopen."""
    target = tmp_path / "runs.db"
    with opened(target, clock=FakeClock(START)) as journal:
        run_id = one_run(journal)
        before = journal.timeline(run_id)
    with opened(target) as journal:
        assert journal.timeline(run_id) == before


# -- files that are not (usable) journals --------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Garbage in the file: JournalError "not an SQLite database, or it is corrupt"."""
    target = tmp_path / "runs.db"
    garbage = b"this is not a database at all\n" * 200
    target.write_bytes(garbage)
    with pytest.raises(JournalError, match="not an SQLite database, or it is corrupt") as e:
        open_journal(target)
    assert str(target) in str(e.value)
    assert target.read_bytes() == garbage


def test_an_sqlite_file_of_another_program_is_refused_and_left_alone(tmp_path: Path) -> None:
    """An SQLite database without the journal's tables: JournalError naming its tables."""
    target = tmp_path / "app.db"
    conn = raw(target)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('alice')")
    conn.close()
    with pytest.raises(JournalError, match=r"not an actionqueues journal .*users") as e:
        open_journal(target)
    assert str(target) in str(e.value)
    assert rows(target, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("users",)]
    # refused before it was switched to WAL: the other program's file keeps its mode
    assert rows(target, "PRAGMA journal_mode") == [("delete",)]
    assert not Path(f"{target}-wal").exists()


def test_a_meta_table_of_another_format_is_refused(tmp_path: Path) -> None:
    """An aq_meta table whose format is not the journal's: JournalError."""
    target = tmp_path / "runs.db"
    conn = raw(target)
    conn.execute("CREATE TABLE aq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO aq_meta VALUES ('format', 'something-else')")
    conn.close()
    with pytest.raises(JournalError, match="format 'something-else'"):
        open_journal(target)
    assert rows(target, "PRAGMA journal_mode") == [("delete",)]


def test_an_empty_file_becomes_a_journal(tmp_path: Path) -> None:
    """A zero-byte file is an empty SQLite database: it is made a journal."""
    target = tmp_path / "runs.db"
    target.touch()
    with opened(target) as journal:
        assert journal.runs() == []


def test_a_journal_of_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A schema version above this one's: JournalError asking to upgrade; nothing changed."""
    target = tmp_path / "runs.db"
    with opened(target) as journal:
        run_id = one_run(journal)
    conn = raw(target)
    conn.execute("INSERT INTO aq_schema_version VALUES (99, 0)")
    conn.close()
    with pytest.raises(JournalError, match=r"newer actionqueues \(schema version 99") as e:
        open_journal(target)
    assert "upgrade actionqueues" in str(e.value)
    assert "left untouched" in str(e.value)
    assert rows(target, "SELECT version FROM aq_schema_version ORDER BY version") == [
        (1,),
        (2,),
        (3,),
        (99,),
    ]
    assert rows(target, "SELECT run_id FROM aq_runs") == [(run_id,)]


# -- the schema ----------------------------------------------------------------------


def test_a_new_journal_records_its_format_and_schema_version(tmp_path: Path) -> None:
    """A new file gets aq_meta(format), aq_schema_version (1 to 3, applied_at), the tables."""
    target = tmp_path / "runs.db"
    with opened(target, clock=FakeClock(START)):
        pass
    assert rows(target, "SELECT key, value FROM aq_meta") == [("format", "actionqueues-journal")]
    assert rows(target, "SELECT version, applied_at FROM aq_schema_version") == [
        (1, START),
        (2, START),
        (3, START),
    ]
    tables = {r[0] for r in rows(target, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"aq_meta", "aq_schema_version", "aq_runs", "aq_steps", "aq_events"} <= tables
    with opened(target, clock=FakeClock(START + 100)):  # reopening applies nothing again
        pass
    assert rows(target, "SELECT version, applied_at FROM aq_schema_version") == [
        (1, START),
        (2, START),
        (3, START),
    ]


def test_a_version_1_journal_is_migrated_when_opened_for_writing(tmp_path: Path) -> None:
    """Schema 1 (no commit ids on events): read-only refuses it; opening it migrates it."""
    target = tmp_path / "runs.db"
    with opened(target, clock=FakeClock(START)) as journal:
        run_id = one_run(journal)
    conn = raw(target)  # back to what version 1 created
    conn.execute("DROP TRIGGER aq_steps_follow_owner")
    conn.execute("ALTER TABLE aq_steps DROP COLUMN owner")
    conn.execute("DELETE FROM aq_schema_version WHERE version = 3")
    conn.execute("DROP INDEX aq_events_once")
    conn.execute("ALTER TABLE aq_events DROP COLUMN commit_seq")
    conn.execute("ALTER TABLE aq_events DROP COLUMN commit_id")
    conn.execute("DELETE FROM aq_schema_version WHERE version = 2")
    conn.close()
    with pytest.raises(JournalError, match=r"schema version 1; .* open it once for writing"):
        open_journal(target, read_only=True)
    with opened(target, clock=FakeClock(START + 100)) as journal:
        assert [r.run_id for r in journal.runs()] == [run_id]
        assert one_run(journal) != run_id  # and it is written as before
    assert rows(target, "SELECT version, applied_at FROM aq_schema_version") == [
        (1, START),
        (2, START + 100),
        (3, START + 100),
    ]
    columns = {r[1] for r in rows(target, "PRAGMA table_info(aq_events)")}
    assert {"commit_id", "commit_seq"} <= columns
    assert "owner" in {r[1] for r in rows(target, "PRAGMA table_info(aq_steps)")}


def test_the_journal_uses_wal_and_synchronous_full(tmp_path: Path) -> None:
    """Every commit is durable: WAL journal mode and synchronous=FULL."""
    target = tmp_path / "runs.db"
    with opened(target) as journal:
        assert rows(target, "PRAGMA journal_mode") == [("wal",)]
        connection = journal._conn  # type: ignore[attr-defined]  # no public way to see it
        assert connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


# -- options and contention ----------------------------------------------------------


@pytest.mark.parametrize("busy_timeout", [-1, True, "5", None])
def test_busy_timeout_is_checked(tmp_path: Path, busy_timeout: object) -> None:
    """busy_timeout is a number of seconds >= 0."""
    error = (
        TypeError
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
        else ValueError
    )  # the README's rule
    with pytest.raises(error, match="busy_timeout must be a number of seconds"):
        open_journal(tmp_path / "runs.db", busy_timeout=busy_timeout)


def test_a_write_lock_held_too_long_is_reported(tmp_path: Path) -> None:
    """Another process holding the write lock past busy_timeout: JournalError saying so."""
    target = tmp_path / "runs.db"
    with opened(target, busy_timeout=0) as journal:
        other = raw(target)
        other.execute("BEGIN IMMEDIATE")
        try:
            q = ActionQueue(journal=journal)
            q.add(Put("a"))
            with pytest.raises(JournalError, match="held the journal's write lock"):
                q.execute()
            assert journal.runs() == []  # reading still works
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert q.journal is journal


def test_a_journal_damaged_while_open_reports_read_and_write_errors(tmp_path: Path) -> None:
    """Tables dropped by another program: reads and writes fail with a JournalError."""
    target = tmp_path / "runs.db"
    with opened(target) as journal:
        conn = raw(target)
        conn.execute("DROP TABLE aq_runs")
        conn.close()
        with pytest.raises(JournalError, match=r"cannot read the journal .*no such table"):
            journal.runs()
        with pytest.raises(JournalError, match=r"cannot write to the journal .*no such table"):
            journal.release("whatever")


def test_step_rows_carry_their_runs_owner(tmp_path: Path) -> None:
    """Schema 3 on SQLite too: a run's steps are created with its owner, and every claim
    or release writes it to them (a claim by the same owner as well)."""
    target = tmp_path / "runs.db"
    clock = FakeClock(START)
    run = {"run_id": "r-1", "name": "a", "kind": "sync", "status": "running", "resumable": 0}
    steps = [{"idx": i, "type": "t", "state": "{}"} for i in (0, 1)]
    owners = "SELECT owner FROM aq_steps WHERE run_id = 'r-1' ORDER BY idx"
    with opened(target, owner="first", clock=clock) as first:
        first.create({**run, "steps": 2}, steps, [])
        assert rows(target, owners) == [("first",), ("first",)]
        conn = raw(target)
        conn.execute("UPDATE aq_steps SET owner = NULL")  # as an older actionqueues left them
        conn.close()
        clock.advance(60)
        assert first.claim("r-1") is not None  # the same owner
        assert rows(target, owners) == [("first",), ("first",)]
        clock.advance(60)
        with opened(target, owner="second", clock=clock) as second:
            assert second.claim("r-1") is not None
            assert rows(target, owners) == [("second",), ("second",)]
            second.release("r-1")
            assert rows(target, owners) == [(None,), (None,)]
