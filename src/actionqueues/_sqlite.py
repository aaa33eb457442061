"""The embedded journal: one SQLite file (stdlib :mod:`sqlite3`), WAL, ``synchronous=FULL``."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._errors import bad_argument
from ._journal import JournalError
from ._sql import SCHEMA_VERSION, SQLJournal

__all__ = ["SQLiteJournal"]


class SQLiteJournal(SQLJournal):
    """A journal in one SQLite file; open it with :func:`~actionqueues.open_journal`.

    Every commit is durable when it returns (WAL with ``synchronous=FULL``).
    Several processes on one machine may share the file; SQLite serialises
    their writes (each waits up to ``busy_timeout`` seconds for the others).
    Do not put it on a network file system.

    Args:
        path: The file (created, with its directory, if missing), or ``":memory:"``.
        busy_timeout: Seconds to wait for another process's write to finish.
        read_only: Open an existing journal only to read it (``runs()``,
            ``timeline()``): nothing is created, migrated or written, so it
            works without write access. Writing raises :class:`JournalError`.
        **options: See :class:`~actionqueues.Journal`.
    """

    def __init__(
        self, path: str, *, busy_timeout: float = 30.0, read_only: bool = False, **options: Any
    ) -> None:
        super().__init__(**options)
        self.read_only = bool(read_only)
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, (int, float))
            or (busy_timeout < 0)
        ):
            raise bad_argument(
                busy_timeout,
                (int, float),
                f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}",
            )
        self.path = path if path == ":memory:" else os.path.abspath(os.path.expanduser(path))
        self.url = "sqlite://" if path == ":memory:" else f"sqlite:///{self.path}"
        self.where = self.path
        self._lock = threading.RLock()
        self._conn = self._connect(busy_timeout)
        try:
            with self._read() as cur:  # refuse a foreign or newer file before changing it
                found = self._inspect(cur)
            if self.read_only:
                self._check_readable(found)
            else:
                self._use_wal()
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _fail(self, what: str, exc: BaseException) -> JournalError:
        text = str(exc)
        hint = ""
        lowered = text.lower()
        if "readonly" in lowered or "read-only" in lowered:
            hint = " (the file or its directory is read-only: the journal needs to write both)"
        elif "unable to open" in lowered:
            hint = " (check that the directory exists and is writable)"
        elif "locked" in lowered or "busy" in lowered:
            hint = " (another process held the journal's write lock longer than busy_timeout)"
        elif "not a database" in lowered or "malformed" in lowered:
            hint = " (the file is not an SQLite database, or it is corrupt)"
        elif "disk" in lowered or "full" in lowered:
            hint = " (the disk is failing or full)"
        return JournalError(f"{what} {self.path}: {text}{hint}", self.url)

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        if self.path != ":memory:":
            if os.path.isdir(self.path):
                raise JournalError(
                    f"cannot open the journal {self.path}: it is a directory; give a file "
                    f"path such as {os.path.join(self.path, 'runs.db')}",
                    self.url,
                )
            directory = os.path.dirname(self.path)
            try:
                if not self.read_only:
                    os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise JournalError(
                    f"cannot create the journal's directory {directory}: {exc}", self.url
                ) from exc
        try:
            if self.read_only and self.path != ":memory:":
                target = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
            else:
                target = self.path
            conn = sqlite3.connect(
                target,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=target.startswith("file:"),
            )
        except sqlite3.Error as exc:
            raise self._fail("cannot open the journal", exc) from exc
        try:
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:  # pragma: no cover - a pragma without a file read
            conn.close()
            raise self._fail("cannot open the journal", exc) from exc
        return conn

    def _check_readable(self, found: int | None) -> None:
        if found is None:
            raise JournalError(
                f"{self.path} is not an actionqueues journal (an empty database)", self.url
            )
        if found < SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} has schema version {found}; this actionqueues "
                f"reads {SCHEMA_VERSION}: open it once for writing to migrate it",
                self.url,
            )

    def _use_wal(self) -> None:
        with self._lock:
            try:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.Error as exc:
                raise self._fail("cannot open the journal", exc) from exc
        if self.path != ":memory:" and str(mode).lower() != "wal":  # pragma: no cover - odd fs
            raise JournalError(
                f"cannot open the journal {self.path}: SQLite refused WAL mode ({mode!r}); "
                f"is it on a network file system?",
                self.url,
            )

    def _table_names(self, cur: Any) -> set[str]:
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in cur.fetchall()} - {"sqlite_sequence"}

    @contextmanager
    def _write(self) -> Iterator[Any]:
        self._check_usable()
        if self.read_only:
            raise JournalError(f"the journal {self.url} was opened read-only", self.url)
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail("cannot write to the journal", exc) from exc
            cur = conn.cursor()
            try:
                yield cur
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # the transaction may be gone
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._fail("cannot write to the journal", exc) from exc
                raise
            finally:
                cur.close()

    @contextmanager
    def _read(self) -> Iterator[Any]:
        self._check_usable()
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
            except sqlite3.Error as exc:
                raise self._fail("cannot read the journal", exc) from exc
            finally:
                cur.close()

    def close(self) -> None:
        """Stop the heartbeat and close the connection; closing twice is harmless."""
        super().close()
        with self._lock:
            self._conn.close()
