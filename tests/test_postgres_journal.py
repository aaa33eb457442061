"""What only the PostgreSQL journal does: connections, schemas, migrations, the extra.

The backend-independent behaviour is in ``tests/journal/``, which runs on
PostgreSQL too. These tests need the server of ``tests/_pgtest.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import _pgtest
import psycopg
import psycopg_pool
import pytest

from actionqueues import (
    Action,
    ActionQueue,
    Journal,
    JournalError,
    LeaseLost,
    RetryPolicy,
    open_journal,
    recover,
    register_action,
)
from actionqueues.testing import FakeClock, inject_faults

pytestmark = _pgtest.marks()

LEDGER: list[tuple[str, int]] = []


def no_sleep(seconds: float) -> None:
    """The queues' injected sleep: never sleeps."""


@register_action("tests.pg.step")
@dataclass
class Step(Action):
    n: int

    def execute(self) -> None:
        LEDGER.append(("do", self.n))

    def rollback(self) -> None:
        LEDGER.append(("undo", self.n))


@pytest.fixture
def url(pg_url: str) -> str:
    """A journal URL on a fresh schema (the ``journal`` fixture opens it)."""
    LEDGER.clear()
    return pg_url


def test_a_connection_lost_between_commits_is_replaced_transparently(
    journal: Journal, url: str
) -> None:
    """pg_terminate_backend between two steps: the run goes on, the journal is exact."""

    @register_action("tests.pg.terminating")
    @dataclass
    class Terminating(Action):
        def execute(self) -> None:
            assert _pgtest.terminate_sessions(journal) >= 1

    q = ActionQueue(journal=journal)
    q.add(Step(0))
    q.add(Terminating())
    q.add(Step(2))
    q.execute()
    assert q.run_id is not None
    timeline = journal.timeline(q.run_id)
    assert timeline.run.status == "succeeded"
    assert [s.status for s in timeline.steps] == ["succeeded"] * 3
    assert [s.attempts for s in timeline.steps] == [1, 1, 1]


@pytest.mark.parametrize(
    "nth",
    [
        pytest.param(1, id="create: the run's rows and step 0's start"),
        pytest.param(2, id="a step: step 0's result and step 1's start"),
        pytest.param(4, id="the run's success"),
    ],
)
def test_a_queue_commit_whose_connection_is_lost_is_resent_transparently(
    journal: Journal, nth: int
) -> None:
    """A queue's commit (one statement) lost with its connection is simply sent again."""
    q = ActionQueue(journal=journal, name="cut")
    for n in range(3):
        q.add(Step(n))
    with inject_faults(_pgtest.kill_before_commit(journal, nth)):
        q.execute()
    assert LEDGER == [("do", 0), ("do", 1), ("do", 2)]
    timeline = journal.timeline(str(q.run_id))
    assert timeline.run.status == "succeeded"
    assert timeline.run.lease_expires_at == 0
    assert [(s.status, s.attempts) for s in timeline.steps] == [("succeeded", 1)] * 3


@register_action("tests.pg.flaky")
@dataclass
class Flaky(Action):
    """Fails its first call, then works."""

    n: int
    calls: int = 0

    def execute(self) -> None:
        self.calls += 1
        LEDGER.append(("do", self.n))
        if self.calls == 1:
            raise ConnectionError("flaky")

    def rollback(self) -> None:
        LEDGER.append(("undo", self.n))


class _AnswerLost:
    """Wraps a journal's statements: the nth is applied, then its answer is "lost"."""

    def __init__(self, journal: Journal, nth: int) -> None:
        self.run = journal._run_prepared  # type: ignore[attr-defined]
        self.nth = nth
        self.sent = 0

    def __call__(self, *args: Any) -> Any:
        result = self.run(*args)
        self.sent += 1
        if self.sent == self.nth:
            raise psycopg.OperationalError("server closed the connection")
        return result


def test_a_commit_applied_but_whose_answer_was_lost_is_resent_without_doubling_events(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after the server applied the commit: the resend changes nothing.

    The retry's schedule (a step column and a "retry" event) is written once.
    """
    lost = _AnswerLost(journal, 3)
    monkeypatch.setattr(journal, "_run_prepared", lost)
    q = ActionQueue(journal=journal, name="cut", retry=RetryPolicy(max_attempts=3), sleep=no_sleep)
    q.add(Step(0))
    q.add(Flaky(1))
    q.add(Step(2))
    # commits: 1 create + step 0 start, 2 step 0's result + step 1's start, 3 the retry's schedule
    q.execute()
    assert lost.sent > 3
    assert LEDGER == [("do", 0), ("do", 1), ("do", 1), ("do", 2)]
    timeline = journal.timeline(str(q.run_id))
    assert timeline.run.status == "succeeded"
    assert [(s.status, s.attempts) for s in timeline.steps] == [
        ("succeeded", 1),
        ("succeeded", 2),
        ("succeeded", 1),
    ]
    assert [(e.kind, e.index) for e in timeline.events] == [("retry", 1)]


def test_a_create_applied_but_whose_answer_was_lost_is_not_refused(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's first commit landed, its answer did not: the resend sees the run is ours."""
    lost = _AnswerLost(journal, 1)
    monkeypatch.setattr(journal, "_run_prepared", lost)
    q = ActionQueue(journal=journal, name="cut")
    q.add(Step(0))
    q.add(Step(1))
    q.execute()
    timeline = journal.timeline(str(q.run_id))
    assert timeline.run.status == "succeeded"
    assert [(s.status, s.attempts) for s in timeline.steps] == [("succeeded", 1)] * 2


def test_a_run_id_already_in_the_journal_is_refused(journal: Journal) -> None:
    """create() of a run whose id is taken: a clear error, the journal unchanged."""
    run = {
        "run_id": "r-1",
        "name": "a",
        "kind": "sync",
        "status": "running",
        "resumable": 0,
        "steps": 0,
    }
    journal.create(run, [], [])
    with pytest.raises(JournalError, match="a run r-1 is already in the journal"):
        journal.create({**run, "name": "b"}, [], [])
    assert [r.name for r in journal.runs()] == ["a"]


def test_a_connection_lost_during_a_transaction_commit_reports_an_unknown_outcome(
    journal: Journal, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim (a transaction) whose COMMIT is lost: JournalError saying the outcome is unknown.

    Nothing is resent; the run stays recoverable once its lease runs out.
    """
    q = ActionQueue(journal=journal, name="cut")
    q.add(Step(0))
    q.execute()
    journal.commit(str(q.run_id), {"status": "running"}, [])  # as if its process had died
    del q
    clock = FakeClock(time.time() + 3600)
    with open_journal(url, heartbeat=False, clock=clock) as other:
        timeline = other._timeline  # type: ignore[attr-defined]

        def read_then_lose_the_connection(*args: Any) -> Any:
            found = timeline(*args)  # the claim's last statement, before its COMMIT
            _pgtest.terminate_sessions(other)
            return found

        monkeypatch.setattr(other, "_timeline", read_then_lose_the_connection)
        with pytest.raises(JournalError, match="whether that commit was applied is unknown"):
            other.claim()
        monkeypatch.undo()
        clock.advance(3600)
        report = recover(other)
    assert [r.outcome for r in report.runs] == ["rolled_back"]
    assert LEDGER == [("do", 0), ("undo", 0)]


def test_schemas_and_table_prefixes_keep_journals_apart(url: str) -> None:
    """Two prefixes in one schema are two journals; the tables carry the chosen prefix."""
    with (
        open_journal(url, heartbeat=False) as first,
        open_journal(url + "&table_prefix=other_", heartbeat=False) as second,
    ):
        q = ActionQueue(journal=first)
        q.add(Step(1))
        q.execute()
        assert len(first.runs()) == 1
        assert second.runs() == []
        assert "table_prefix=other_" in second.url
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        tables = {
            row[0]
            for row in admin.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        }
    assert {"aq_runs", "aq_steps", "aq_events", "other_runs", "other_steps"} <= tables


def test_processes_opening_a_new_schema_at_once_migrate_it_once(url: str) -> None:
    """Journals opened concurrently on an empty schema all work (the migration is locked)."""
    errors: list[BaseException] = []
    opened: list[Journal] = []

    def open_one() -> None:
        try:
            opened.append(open_journal(url, heartbeat=False))
        except BaseException as exc:  # pragma: no cover - reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for journal in opened:
        journal.close()
    assert errors == []
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        versions = admin.execute(
            f'SELECT version FROM "{schema}".aq_schema_version ORDER BY version'
        ).fetchall()
    assert versions == [(1,), (2,), (3,)]


def _back_to_version_2(admin: psycopg.Connection[Any], schema: str) -> None:
    """Undo migration 3 (the step rows' owner and its trigger)."""
    admin.execute(f'DROP TRIGGER aq_steps_follow_owner ON "{schema}".aq_runs')
    admin.execute(f'DROP FUNCTION "{schema}".aq_steps_follow_owner()')
    admin.execute(f'ALTER TABLE "{schema}".aq_steps DROP COLUMN owner')
    admin.execute(f'DELETE FROM "{schema}".aq_schema_version WHERE version = 3')


def _step_owners(schema: str, run_id: str) -> list[str | None]:
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        rows = admin.execute(
            f'SELECT owner FROM "{schema}".aq_steps WHERE run_id = %s ORDER BY idx', (run_id,)
        ).fetchall()
    return [row[0] for row in rows]


def test_a_version_2_journal_is_migrated_and_its_runs_stay_fenced(url: str) -> None:
    """Schema 2 (no owner on step rows): migration 3 copies each run's owner to its steps,
    and from then on a claim moves them, so the old owner's step commits are refused."""
    schema = url.rsplit("schema=", 1)[1]
    first = open_journal(url, heartbeat=False, owner="first", lease=30)
    q = ActionQueue(journal=first)
    q.add(Step(0))
    q.add(Step(1))
    q.execute()
    run = {"run_id": "r-1", "name": "a", "kind": "sync", "status": "running", "resumable": 0}
    first.create({**run, "steps": 2}, [{"idx": i, "type": "t", "state": "{}"} for i in (0, 1)], [])
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        _back_to_version_2(admin, schema)
    clock = FakeClock(time.time() + 60)  # after first's lease
    with open_journal(url, heartbeat=False, owner="second", clock=clock) as second:
        assert _step_owners(schema, "r-1") == ["first", "first"]  # copied by the migration
        assert _step_owners(schema, str(q.run_id)) == ["first", "first"]
        claimed = second.claim("r-1")
        assert claimed is not None
        assert _step_owners(schema, "r-1") == ["second", "second"]  # moved by the claim
        with pytest.raises(LeaseLost):
            first.commit("r-1", {}, [("step", 0, {"attempts": 7})], renew=False)
        assert second.timeline("r-1").steps[0].attempts == 0
        second.release("r-1")
        assert _step_owners(schema, "r-1") == [None, None]
    first.close()


def test_a_version_1_journal_is_migrated_when_opened(url: str) -> None:
    """Schema 1 (no commit ids on events) is migrated by the next process to open it."""
    with open_journal(url, heartbeat=False) as journal:
        q = ActionQueue(journal=journal)
        q.add(Step(0))
        q.execute()
    schema = url.rsplit("schema=", 1)[1]
    assert q.journal is not None
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        _back_to_version_2(admin, schema)
        admin.execute(f'DROP INDEX "{schema}".aq_events_once')
        admin.execute(
            f'ALTER TABLE "{schema}".aq_events DROP COLUMN commit_id, DROP COLUMN commit_seq'
        )
        admin.execute(f'DELETE FROM "{schema}".aq_schema_version WHERE version = 2')
    with open_journal(url, heartbeat=False) as journal:
        assert [r.run_id for r in journal.runs()] == [q.run_id]
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        versions = admin.execute(
            f'SELECT version FROM "{schema}".aq_schema_version ORDER BY version'
        ).fetchall()
        columns = admin.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'aq_events'",
            (schema,),
        ).fetchall()
    assert versions == [(1,), (2,), (3,)]
    assert {("commit_id",), ("commit_seq",)} <= set(columns)
    assert _step_owners(schema, str(q.run_id)) == [q.journal.owner]  # copied from the run


def test_a_journal_written_by_a_newer_version_is_refused_and_left_alone(url: str) -> None:
    """A schema_version above this library's: JournalError naming it; nothing changed."""
    open_journal(url, heartbeat=False).close()
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        admin.execute(f'INSERT INTO "{schema}".aq_schema_version VALUES (99, 0)')
    with pytest.raises(JournalError, match=r"newer actionqueues .*schema version 99"):
        open_journal(url, heartbeat=False)


def test_tables_of_another_program_with_the_prefix_are_refused(url: str) -> None:
    """A schema holding aq_* tables that are not a journal: JournalError, left untouched."""
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        admin.execute(f'CREATE TABLE "{schema}".aq_things (id int)')
    with pytest.raises(JournalError, match="not an actionqueues journal"):
        open_journal(url, heartbeat=False)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """No psycopg installed: ImportError naming actionqueues[postgres]."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"actionqueues\[postgres\]"):
        open_journal("postgresql://postgres@127.0.0.1/test")


def test_read_only_reads_an_existing_journal_and_never_writes(url: str) -> None:
    """read_only=True lists runs, refuses writes, and refuses a schema with no journal."""
    with pytest.raises(JournalError, match="there is no actionqueues journal"):
        open_journal(url, read_only=True)
    with open_journal(url, heartbeat=False) as writer:
        q = ActionQueue(journal=writer)
        q.add(Step(1))
        q.execute()
    with open_journal(url, read_only=True) as reader:
        assert [r.status for r in reader.runs()] == ["succeeded"]
        with pytest.raises(JournalError, match="read-only"):
            reader.release(str(q.run_id))


def test_the_cli_lists_and_shows_a_postgresql_journal(
    journal: Journal, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runs list` and `runs show` work on a postgresql:// journal."""
    from actionqueues._cli import main

    q = ActionQueue(journal=journal, name="signup")
    q.add(Step(1))
    q.execute()
    assert main(["runs", "list", "--journal", url]) == 0
    assert main(["runs", "show", str(q.run_id)[:8], "--journal", url]) == 0
    out = capsys.readouterr().out
    assert "signup" in out
    assert "succeeded" in out


def test_a_connection_lost_before_a_read_is_replaced_transparently(
    journal: Journal, url: str
) -> None:
    """pg_terminate_backend, then runs(): the read reconnects and answers."""
    q = ActionQueue(journal=journal)
    q.add(Step(1))
    q.execute()
    assert _pgtest.terminate_sessions(journal) >= 1
    assert [r.run_id for r in journal.runs()] == [q.run_id]
    assert _pgtest.terminate_sessions(journal) >= 1
    assert journal.timeline(str(q.run_id)).run.status == "succeeded"


def test_the_url_carries_the_pool_size_and_refuses_an_option_given_twice(url: str) -> None:
    """?pool_size= and ?connect_timeout= are the journal's; given twice is a ValueError."""
    with open_journal(url + "&pool_size=2&connect_timeout=5", heartbeat=False) as small:
        assert small.runs() == []
    with pytest.raises(ValueError, match="schema is given both in the URL and as an argument"):
        open_journal(url, schema="other")


def test_a_pool_without_a_free_connection_is_not_waited_for_twice(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection within the blocking pool's timeout: a JournalError at once, no resend."""
    checks: list[int] = []

    class Exhausted:
        def getconn(self) -> Any:
            raise psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec")

        def check(self) -> None:
            checks.append(1)

    journal._drop_spare()  # type: ignore[attr-defined]  # only the pool, then
    monkeypatch.setattr(journal, "_pool", Exhausted())
    with pytest.raises(JournalError, match="couldn't get a connection"):
        journal.commit("r-1", {}, [("step", 0, {"attempts": 1})], renew=False)
    assert checks == []
    monkeypatch.undo()


# -- the queue's statements: prepared, run through libpq, parameters as text ----------


def test_parameters_are_written_as_text_or_left_to_psycopg() -> None:
    """str, int, float and None are written as libpq text; anything else goes to psycopg."""
    from actionqueues._postgres import _numbered, _texts

    assert _texts([None, "é", 3, -1.5, float("inf"), float("nan"), 10**20]) == [
        None,
        "é".encode(),
        b"3",
        b"-1.5",
        b"inf",
        b"nan",
        b"100000000000000000000",
    ]
    assert _texts([0.1 + 0.2]) == [repr(0.1 + 0.2).encode()]  # every digit kept
    assert _texts(["a\x00b"]) == [b"a\\x00b"]  # libpq would cut it at the NUL
    assert _texts(["\ud800"]) is None  # not UTF-8: psycopg reports it
    assert _texts([True]) is None  # a bool is no int to PostgreSQL
    assert _numbered("SELECT %s, %s") == "SELECT $1, $2"
    with pytest.raises(ValueError, match="a % that is not a placeholder"):
        _numbered("SELECT %s LIKE 'a%'")


def test_a_value_psycopg_must_adapt_is_written_through_psycopg(journal: Journal) -> None:
    """A parameter libpq's text format is not used for (a Decimal) is still written exactly."""
    from decimal import Decimal

    q = ActionQueue(journal=journal)
    q.add(Step(0))
    q.execute()
    run_id = str(q.run_id)
    columns = {"next_retry_at": Decimal("12.5"), "error": "a\x00b"}
    journal.commit(run_id, {}, [("step", 0, columns)], renew=False)  # an UPDATE: its count
    step = journal.timeline(run_id).steps[0]
    assert (step.next_retry_at, step.error) == (12.5, "a\\x00b")  # its NUL escaped too
    journal.commit(run_id, {"error": "e"}, [("step", 0, {"next_retry_at": Decimal("13.5")})])
    timeline = journal.timeline(run_id)  # a commit fenced by the run's row: it returns the owner
    assert (timeline.run.error, timeline.steps[0].next_retry_at) == ("e", 13.5)
    other = open_journal(journal.url, heartbeat=False)
    try:  # another owner's commits, through psycopg too, write nothing
        with pytest.raises(LeaseLost):
            other.commit(run_id, {}, [("step", 0, columns)], renew=False)
        with pytest.raises(LeaseLost):
            other.commit(run_id, {"error": "x"}, [("step", 0, columns)])
    finally:
        other.close()
    assert journal.timeline(run_id).run.error == "e"


@register_action("tests.pg.nul")
@dataclass
class Nul(Action):
    def execute(self) -> None:
        raise ValueError("bad\x00byte")

    def rollback(self) -> None:
        LEDGER.append(("undo", -1))


def test_a_nul_in_a_name_or_an_error_is_recorded_as_backslash_x00(journal: Journal) -> None:
    """PostgreSQL text cannot hold NUL: it is written as the four characters \\x00."""
    q = ActionQueue(journal=journal, name="sign\x00up")
    q.add(Step(0))
    q.add(Nul())
    with pytest.raises(ValueError, match="bad"):
        q.execute()
    q.rollback()
    timeline = journal.timeline(str(q.run_id))
    assert timeline.run.name == "sign\\x00up"
    assert timeline.run.status == "rolled_back"
    assert timeline.run.error == timeline.steps[1].error == "ValueError: bad\\x00byte"
    assert [e.detail for e in timeline.events if e.kind == "failed"] == ["ValueError: bad\\x00byte"]


def test_a_big_state_is_sent_whole(journal: Journal) -> None:
    """A create larger than the socket's buffer is flushed to the end, then read back whole."""
    q = ActionQueue(journal=journal)
    q.add(Big("x" * 16_000_000))
    q.execute()
    [step] = journal.timeline(str(q.run_id)).steps
    assert json.loads(step.state) == {"payload": "x" * 16_000_000}


def test_a_nul_in_a_state_survives_as_json(journal: Journal) -> None:
    """A state's NUL is escaped by its JSON (\\u0000), which PostgreSQL stores as text."""
    q = ActionQueue(journal=journal)
    q.add(Big("a\x00b"))
    q.execute()
    [step] = journal.timeline(str(q.run_id)).steps
    assert json.loads(step.state) == {"payload": "a\x00b"}


@register_action("tests.pg.big")
@dataclass
class Big(Action):
    payload: str

    def execute(self) -> None:
        pass

    def rollback(self) -> None:  # pragma: no cover - never rolled back
        pass


def _prepared_on(conn: Any) -> list[str]:
    rows = conn.execute("SELECT name FROM pg_prepared_statements ORDER BY name").fetchall()
    return [row[0] for row in rows]


def test_statements_dropped_by_the_server_are_prepared_again(journal: Journal) -> None:
    """DEALLOCATE ALL on the journal's connection: the next commit prepares them again."""
    q = ActionQueue(journal=journal)
    q.add(Step(0))
    q.execute()
    [conn] = journal._spare  # type: ignore[attr-defined]  # the one the statements used
    assert len(_prepared_on(conn)) == 2  # the create's and the success's
    conn.execute("DEALLOCATE ALL")
    assert _prepared_on(conn) == []
    again = ActionQueue(journal=journal)
    again.add(Step(1))
    again.execute()
    assert journal.timeline(str(again.run_id)).run.status == "succeeded"
    assert journal._spare == [conn]  # type: ignore[attr-defined]
    assert len(_prepared_on(conn)) == 2


def test_statements_dropped_again_at_once_are_an_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something between us and the server dropping every statement: a clear JournalError."""
    result = journal._result  # type: ignore[attr-defined]

    def dropping(pgconn: Any, *expected: int) -> Generator[int, None, Any]:
        answer = yield from result(pgconn, *expected)
        if expected == (1,):  # the PREPARE's answer: drop what it prepared
            pgconn.exec_(b"DEALLOCATE ALL")
        return answer

    monkeypatch.setattr(journal, "_result", dropping)
    q = ActionQueue(journal=journal)
    q.add(Step(0))
    with pytest.raises(JournalError, match=r"cannot write to the journal .* does not exist"):
        q.execute()
    assert LEDGER == []  # never journaled, never called


def test_an_interrupted_statement_closes_its_connection(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while waiting for the server: the connection, mid-statement, is not reused."""
    import select

    q = ActionQueue(journal=journal)
    q.add(Step(0))
    q.execute()
    [conn] = journal._spare  # type: ignore[attr-defined]  # the next statement's

    class Interrupted:
        def register(self, *args: Any) -> None:
            pass

        def poll(self, *args: Any) -> Any:
            raise KeyboardInterrupt

    monkeypatch.setattr(select, "poll", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        journal.commit(str(q.run_id), {}, [("step", 0, {"attempts": 5})], renew=False)
    monkeypatch.undo()
    assert conn.closed
    assert journal._spare == []  # type: ignore[attr-defined]
    journal.commit(str(q.run_id), {}, [("step", 0, {"attempts": 6})], renew=False)
    assert journal.timeline(str(q.run_id)).steps[0].attempts == 6


# -- the step commits' fence: the owner on the step rows -------------------------------


def test_a_step_commit_meeting_a_claim_in_flight_waits_then_writes_nothing(url: str) -> None:
    """A claim moves the step rows' owner (by trigger) in its transaction; the old owner's
    step commit, which no longer locks the run's row, waits for those rows, then finds
    them another owner's: LeaseLost, and the claim's view of the steps is what stays."""
    schema = url.rsplit("schema=", 1)[1]
    first = open_journal(url, heartbeat=False, owner="first")
    run = {"run_id": "r-1", "name": "a", "kind": "sync", "status": "running", "resumable": 0}
    steps = [{"idx": i, "type": "t", "state": "{}"} for i in (0, 1)]
    first.create({**run, "steps": 2}, steps, [("step", 0, {"status": "running", "attempts": 1})])
    claim = psycopg.connect(_pgtest.URL)  # a claim's transaction, not committed yet
    claim.execute(f'UPDATE "{schema}".aq_runs SET owner = %s WHERE run_id = %s', ("b", "r-1"))
    outcome: list[BaseException | None] = []

    def step_commit() -> None:
        ops: list[Any] = [
            ("step", 0, {"status": "succeeded", "attempts": 1}),
            ("step", 1, {"status": "running", "attempts": 1}),
        ]
        try:
            first.commit("r-1", {}, ops, renew=False)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    committer = threading.Thread(target=step_commit)
    committer.start()
    with psycopg.connect(_pgtest.URL, autocommit=True) as watcher:
        for _ in range(10_000):  # each look is a query: about a second in all
            if _pgtest.waits_on_a_lock(watcher, first):
                break
        else:
            raise AssertionError("the step commit never waited for the claim")
    assert outcome == []  # still waiting
    claim.commit()
    claim.close()
    committer.join(timeout=30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], LeaseLost)
    timeline = first.timeline("r-1")
    assert timeline.run.owner == "b"
    assert [(s.status, s.attempts) for s in timeline.steps] == [("running", 1), ("pending", 0)]
    assert _step_owners(schema, "r-1") == ["b", "b"]
    first.close()


def test_a_step_commit_for_a_step_that_is_not_there_is_not_a_lost_lease(journal: Journal) -> None:
    """Fewer rows updated than sent, the run still ours: the missing step is skipped."""
    run = {"run_id": "r-1", "name": "a", "kind": "sync", "status": "running", "resumable": 0}
    journal.create({**run, "steps": 1}, [{"idx": 0, "type": "t", "state": "{}"}], [])
    ops: list[Any] = [("step", 0, {"attempts": 2}), ("step", 5, {"attempts": 1})]
    journal.commit("r-1", {}, ops, renew=False)
    assert [s.attempts for s in journal.timeline("r-1").steps] == [2]
    with pytest.raises(JournalError, match="no run r-2 in the journal"):
        journal.commit("r-2", {}, ops, renew=False)


def test_a_step_commit_of_several_steps_writes_each_its_own_columns(journal: Journal) -> None:
    """Several steps' columns are one UPDATE: each row gets its step's columns and
    keeps the others, whichever steps set a column, and the UPDATE's count fences it."""
    run = {"run_id": "r-1", "name": "a", "kind": "sync", "status": "running", "resumable": 0}
    steps = [{"idx": i, "type": "t", "state": f'{{"i": {i}}}'} for i in range(4)]
    journal.create({**run, "steps": 4}, steps, [("step", 2, {"attempts": 7, "error": "kept"})])
    done = {"status": "succeeded", "attempts": 1, "finished_at": 5.0, "state": '{"i": 10}'}
    ops: list[Any] = [
        ("step", 2, {"status": "running", "started_at": 6.0, "next_retry_at": None}),
        ("step", 0, done),
        ("step", 2, {"attempts": 8}),  # merged with the first op of step 2
        ("step", 1, {"error": None, "rollback_attempts": 3}),
    ]
    journal.commit("r-1", {}, ops, renew=False)
    rows = [
        (s.status, s.attempts, s.rollback_attempts, s.state, s.error, s.started_at, s.finished_at)
        for s in journal.timeline("r-1").steps
    ]
    assert rows == [
        ("succeeded", 1, 0, '{"i": 10}', None, None, 5.0),
        ("pending", 0, 3, '{"i": 1}', None, None, None),
        ("running", 8, 0, '{"i": 2}', "kept", 6.0, None),
        ("pending", 0, 0, '{"i": 3}', None, None, None),
    ]
    other = open_journal(journal.url, heartbeat=False)
    try:  # not its run: nothing written
        with pytest.raises(LeaseLost):
            other.commit("r-1", {}, [("step", 3, {"attempts": 9}), ("step", 0, done)], renew=False)
    finally:
        other.close()
    assert journal.timeline("r-1").steps[3].attempts == 0


def test_a_deadlock_with_a_claim_is_resolved_by_sending_again(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step commit and a claim may lock the same step rows in opposite orders: the
    server aborts one of them whole, and that one is simply sent again."""
    sent: list[str] = []
    run = journal._run_prepared  # type: ignore[attr-defined]

    def deadlocking_once(*args: Any) -> Any:
        sent.append("statement")
        if len(sent) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return run(*args)

    monkeypatch.setattr(journal, "_run_prepared", deadlocking_once)
    q = ActionQueue(journal=journal)
    q.add(Step(0))
    q.execute()
    assert journal.timeline(str(q.run_id)).run.status == "succeeded"
    assert len(sent) == 3  # the create twice, then the success
    claims: list[str] = []

    def claim_body(cur: Any) -> str:
        claims.append("claim")
        if len(claims) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return "claimed"

    assert journal._run_write(claim_body) == "claimed"  # type: ignore[attr-defined]
    assert claims == ["claim", "claim"]


def test_the_spare_connection_goes_back_to_the_pool_now_and_then(journal: Journal) -> None:
    """One connection is kept aside between statements; every so often it goes back to the
    pool (which retires connections past their age), and close() returns it."""
    pg: Any = journal
    q = ActionQueue(journal=journal)
    q.add(Step(0))
    q.execute()
    assert len(pg._spare) == 1
    spare = pg._spare[0]
    asked = pg._pool.get_stats().get("requests_num", 0)
    pg._spare_uses = 999  # the next statement is the 1000th
    again = ActionQueue(journal=journal)
    again.add(Step(1))
    again.execute()  # its create returns the spare to the pool; its success asks for one
    assert len(pg._spare) == 1
    assert pg._pool.get_stats()["requests_num"] == asked + 1
    journal.close()
    assert pg._spare == []
    assert spare.closed


def test_waiting_on_a_socket_takes_any_descriptor() -> None:
    """poll(), not select(): a process with many open files has sockets past 1023."""
    import resource
    import select
    import socket

    from actionqueues._postgres import _READABLE, _WRITABLE, _wait_for

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    left, right = socket.socketpair()
    high = os.dup2(left.fileno(), 2000)
    try:
        with pytest.raises(ValueError, match="filedescriptor out of range"):
            select.select([high], [], [], 0)
        _wait_for(high, _WRITABLE)
        right.send(b"x")
        _wait_for(high, _READABLE)
        assert os.read(high, 1) == b"x"
    finally:
        os.close(high)
        left.close()
        right.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_spare_connection_never_keeps_one_from_another_user(url: str) -> None:
    """pool_size=1: the one connection, kept aside after a commit, still serves reads
    (and the heartbeat); given back while a thread waits for the pool, it goes to it."""
    with open_journal(url + "&pool_size=1", heartbeat=False) as journal:
        pg: Any = journal
        q = ActionQueue(journal=journal)
        q.add(Step(0))
        q.execute()
        assert len(pg._spare) == 1
        assert [r.run_id for r in journal.runs()] == [q.run_id]  # took the spare
        got: list[Any] = []
        asking = threading.Event()
        getconn = pg._pool.getconn

        def ask() -> Any:
            asking.set()
            return getconn()

        pg._pool.getconn = ask
        with pg._connection() as held:  # the only connection, lent
            waiter = threading.Thread(target=lambda: got.append(pg._lend()))
            waiter.start()
            assert asking.wait(timeout=10)  # the waiter waits for the pool
            assert pg._waiting == 1
        waiter.join(timeout=10)  # the pool's own timeout is 30 s
        assert got == [held]
        assert pg._spare == []
        pg._give_back(got[0])


def test_a_claim_by_the_same_owner_gives_the_steps_that_owner(url: str) -> None:
    """The trigger fires whenever the owner is written, even unchanged: a run whose step
    rows lack the owner (made by an older actionqueues) gets it when claimed."""
    schema = url.rsplit("schema=", 1)[1]
    clock = FakeClock(time.time())
    with open_journal(url, heartbeat=False, owner="me", clock=clock) as journal:
        run = {"run_id": "r-1", "name": "a", "kind": "sync", "status": "running", "resumable": 0}
        journal.create({**run, "steps": 1}, [{"idx": 0, "type": "t", "state": "{}"}], [])
        with psycopg.connect(_pgtest.URL, autocommit=True) as admin:
            admin.execute(f'ALTER TABLE "{schema}".aq_steps DISABLE TRIGGER USER')
            admin.execute(f'UPDATE "{schema}".aq_steps SET owner = NULL')
            admin.execute(f'ALTER TABLE "{schema}".aq_steps ENABLE TRIGGER USER')
        with pytest.raises(LeaseLost):  # a step row there, not ours: never written blindly
            journal.commit("r-1", {}, [("step", 0, {"attempts": 3})], renew=False)
        clock.advance(60)
        assert journal.claim("r-1") is not None
        assert _step_owners(schema, "r-1") == ["me"]
        journal.commit("r-1", {}, [("step", 0, {"attempts": 3})], renew=False)
        assert journal.timeline("r-1").steps[0].attempts == 3


def test_the_connections_speak_utf8(journal: Journal) -> None:
    """The statements' text parameters are UTF-8: so is every connection's client encoding."""
    with journal._connection() as conn:  # type: ignore[attr-defined]
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
    q = ActionQueue(journal=journal, name="naïve ✓")
    q.add(Step(0))
    q.execute()
    assert journal.timeline(str(q.run_id)).run.name == "naïve ✓"


def test_a_ten_step_run_is_eleven_statements_none_locking_the_run(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost model the benchmarks rest on: one statement (one round trip) per commit,
    N + 1 for N steps, each prepared once per connection, and no step commit locking the
    run's row (the step rows' owner fences them)."""
    sent: list[str] = []
    run = journal._run_prepared  # type: ignore[attr-defined]

    def counting(pgconn: Any, sql: str, texts: Any) -> Any:
        sent.append(sql)
        return run(pgconn, sql, texts)

    monkeypatch.setattr(journal, "_run_prepared", counting)
    for _ in range(2):
        q = ActionQueue(journal=journal)
        for n in range(10):
            q.add(Step(n))
        q.execute()
    assert len(sent) == 22
    creates, steps, last = sent[0], sent[1:10], sent[10]
    assert creates.startswith("WITH r AS (INSERT INTO aq_runs")
    assert all(s == steps[0] and "FOR SHARE" not in s and "aq_runs" not in s for s in steps)
    assert steps[0].startswith("UPDATE aq_steps SET")  # one UPDATE of both step rows
    assert "WITH" not in steps[0]
    assert "UPDATE aq_runs" in last  # the outcome: the run's row, fenced by its owner
    assert sent[11:] == sent[:11]  # the same statements: prepared once, run again
    [conn] = journal._spare  # type: ignore[attr-defined]
    assert len(_prepared_on(conn)) == 3


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", True])
def test_connect_timeout_is_checked(url: str, timeout: object) -> None:
    """connect_timeout is a finite number of seconds > 0."""
    error = (
        TypeError
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        else ValueError
    )
    with pytest.raises(error, match="connect_timeout must be a number of seconds > 0"):
        open_journal(url, heartbeat=False, connect_timeout=timeout)


def test_a_server_that_refuses_the_connection_says_why(url: str) -> None:
    """Not only "cannot connect": the server's own reason (here, no such database)."""
    parts = urllib.parse.urlsplit(url)
    bad = urllib.parse.urlunsplit(parts._replace(path="/no_such_database_aq"))
    with pytest.raises(JournalError, match='database "no_such_database_aq" does not exist'):
        open_journal(bad, heartbeat=False, connect_timeout=2)


def _tcp_settings(conn: Any) -> dict[str, str]:
    return {
        k: v
        for k, v in conn.info.get_parameters().items()
        if k.startswith("keepalives") or k == "tcp_user_timeout"
    }


def test_connections_notice_a_vanished_server_within_a_third_of_the_lease(url: str) -> None:
    """TCP keepalives and a user timeout on every connection, sync and async, from the lease;
    the URL's own libpq settings win."""
    expected = {
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "3",
        "keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }
    overridden = {**expected, "keepalives_idle": "5", "tcp_user_timeout": "1500"}
    for query, want in (("", expected), ("&keepalives_idle=5&tcp_user_timeout=1500", overridden)):
        with open_journal(url + query, heartbeat=False, lease=30) as journal:
            pg: Any = journal
            with pg._pool.connection() as conn:
                assert _tcp_settings(conn) == want
            assert asyncio.run(_async_tcp_settings(pg)) == want


async def _async_tcp_settings(pg: Any) -> dict[str, str]:
    async with (await pg._apool()).connection() as conn:
        return _tcp_settings(conn)


def test_tcp_settings_follow_the_lease_and_leave_service_files_and_old_libpq_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from actionqueues._postgres import _tcp_defaults

    assert _tcp_defaults(psycopg, "postgresql://u@h/db", 120) == {
        "keepalives": "1",
        "keepalives_idle": "40",
        "keepalives_interval": "12",
        "keepalives_count": "3",
        "tcp_user_timeout": "40000",
    }
    assert _tcp_defaults(psycopg, "postgresql://u@h/db", 1)["keepalives_idle"] == "1"
    assert _tcp_defaults(psycopg, "postgresql://u@h/db?service=prod", 30) == {}
    assert "keepalives" in _tcp_defaults(psycopg, "not a = valid 'conninfo", 30)  # told later
    monkeypatch.setenv("PGSERVICE", "prod")
    assert _tcp_defaults(psycopg, "postgresql://u@h/db", 30) == {}
    monkeypatch.delenv("PGSERVICE")
    monkeypatch.setattr(psycopg.pq, "version", lambda: 110005)
    assert _tcp_defaults(psycopg, "postgresql://u@h/db?keepalives=0", 30) == {
        "keepalives_idle": "10",
        "keepalives_interval": "3",
        "keepalives_count": "3",
    }
