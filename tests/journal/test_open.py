"""Choosing and configuring a journal, and what a queue accepts as one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from actionqueues import (
    ActionQueue,
    AsyncActionQueue,
    Journal,
    JournalError,
    default_journal_url,
    open_journal,
)

from .helpers import Put


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://user@host/db", "unsupported journal URL"),
        ("postgresql+psycopg://u:secret@host/db", r"unsupported journal URL 'postgresql\+psy"),
        ("mysql://u:secret@host:99999/db", "unsupported journal URL 'mysql://\\*\\*\\*'"),
        ("http://example.com/runs.db", "unsupported journal URL"),
        ("sqlite:/runs.db", "sqlite:///relative/path.db"),
        ("sqlite:runs.db", "sqlite:///relative/path.db"),
        ("sqlite://runs.db", "three or four slashes"),
        ("postgresql://user:secret@localhost/runs?schema=Bad-Name", "lowercase SQL identifier"),
        ("postgres://localhost/runs?table_prefix=1x", "lowercase SQL identifier"),
        ("postgresql://localhost/runs?pool_size=many", "pool_size in the URL must be an int"),
        ("postgresql://localhost/runs?pool_size=0", "pool_size must be an int >= 1"),
        ("postgresql://localhost/runs?connect_timeout=soon", "connect_timeout in the URL"),
    ],
)
def test_open_journal_refuses_urls_it_cannot_serve(
    url: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unsupported or malformed URL is a ValueError that shows the accepted forms."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message) as caught:
        open_journal(url)
    assert "secret" not in str(caught.value)  # never echo a password
    assert os.listdir(tmp_path) == []  # and nothing was created


def test_an_unreachable_postgresql_server_is_a_journal_error_without_the_password() -> None:
    """A PostgreSQL URL nobody answers: JournalError naming the server, never its password."""
    with pytest.raises(JournalError, match="cannot connect to the PostgreSQL journal") as caught:
        open_journal("postgresql://me:secret@127.0.0.1:1/runs?connect_timeout=0.5")
    assert "secret" not in str(caught.value)
    assert "me:***@127.0.0.1:1/runs" in str(caught.value)


def test_open_journal_refuses_a_non_string(journal_url: str) -> None:
    """A URL must be a string (or a path)."""
    with pytest.raises(TypeError, match="a journal URL is a string"):
        open_journal(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"lease": 0}, ValueError, "lease must be a number of seconds > 0"),
        ({"lease": -1.0}, ValueError, "lease"),
        ({"lease": True}, TypeError, "lease"),
        ({"lease": "30"}, TypeError, "lease"),
        ({"lease": float("inf")}, ValueError, "lease"),
        ({"clock": 12.0}, TypeError, "clock must be a callable"),
        ({"owner": ""}, ValueError, "owner must be a non-empty string"),
        ({"owner": 7}, TypeError, "owner"),
    ],
)
def test_journal_options_are_checked(
    journal_url: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Bad lease, clock or owner options raise a clear error before anything is opened."""
    with pytest.raises(error, match=message):
        open_journal(journal_url, **options)


def test_an_unknown_option_is_a_type_error(journal_url: str) -> None:
    """A misspelt option is not silently ignored."""
    with pytest.raises(TypeError):
        open_journal(journal_url, leese=5)


def test_a_journal_has_a_default_owner_and_closes_as_a_context_manager(journal_url: str) -> None:
    """The default owner is host:pid:nonce; a with block closes the journal."""
    with open_journal(journal_url, heartbeat=False) as journal:
        assert isinstance(journal, Journal)
        host, pid, nonce = journal.owner.rsplit(":", 2)
        assert host
        assert pid == str(os.getpid())
        assert len(nonce) == 8
        assert journal.lease == 30.0
        assert "://" in journal.url
        assert journal.owner in repr(journal)
        assert journal.runs() == []
    assert journal.closed
    with pytest.raises(JournalError, match="closed"):
        journal.runs()


def test_two_journals_get_different_owners(journal_url: str) -> None:
    """Each opened journal is its own owner, even in one process."""
    with (
        open_journal(journal_url, heartbeat=False) as first,
        open_journal(journal_url, heartbeat=False) as second,
    ):
        assert first.owner != second.owner


@pytest.mark.parametrize("queue_class", [ActionQueue, AsyncActionQueue])
def test_a_queue_refuses_a_journal_url_string(queue_class: type[ActionQueue]) -> None:
    """journal= takes an opened Journal, not a URL: TypeError saying how to open one."""
    with pytest.raises(TypeError, match=r"journal must be a Journal.*open_journal"):
        queue_class(journal="sqlite:///runs.db")  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"name": "signup"}, {"resumable": True}])
@pytest.mark.parametrize("queue_class", [ActionQueue, AsyncActionQueue])
def test_name_and_resumable_need_a_journal(
    queue_class: type[ActionQueue], options: dict[str, Any]
) -> None:
    """name= or resumable= without journal= is a TypeError."""
    with pytest.raises(TypeError, match="describe a journaled run: pass journal="):
        queue_class(**options)
    with pytest.raises(TypeError, match="pass journal="):
        queue_class(retry=None, max_retries=3, **options)


@pytest.mark.parametrize("name", ["", 5, "x" * 201, "bad\udc80name"])
def test_a_run_name_must_be_a_short_string(journal: Journal, name: Any) -> None:
    """The run's name is a non-empty string of at most 200 characters that UTF-8 encodes."""
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ActionQueue(journal=journal, name=name)


def test_a_queue_without_a_journal_has_no_run(journal: Journal) -> None:
    """Without journal=, run_id and journal are None and nothing is recorded."""
    q = ActionQueue()
    q.add(Put("a"))
    q.execute()
    assert (q.run_id, q.journal) == (None, None)
    assert journal.runs() == []


def test_the_default_journal_url_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """$ACTIONQUEUES_JOURNAL wins; else $XDG_DATA_HOME, else ~/.local/share."""
    monkeypatch.setenv("ACTIONQUEUES_JOURNAL", "sqlite:///elsewhere.db")
    assert default_journal_url() == "sqlite:///elsewhere.db"
    monkeypatch.delenv("ACTIONQUEUES_JOURNAL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_journal_url() == f"sqlite:///{tmp_path / 'data' / 'actionqueues' / 'runs.db'}"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "actionqueues" / "runs.db"
    assert default_journal_url() == f"sqlite:///{expected}"
