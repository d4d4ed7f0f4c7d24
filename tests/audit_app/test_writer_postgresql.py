"""The writer's one statement on PostgreSQL leaves the session as any statement would."""

import contextlib
import tempfile
import time
import uuid

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

from audit_app.integrity import audit_verify
from audit_app.models import AuditEntry
from audit_app.services import Actor, ChangeRef, StateMoved, audit_record

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def own_table():
    """A table for a change's own row: whether the row is there says whether its transaction committed."""
    table = f"w_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id integer)")
    return table


def _count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return cursor.fetchone()[0]


def test_a_transaction_left_idle_after_an_entry_is_ended_by_the_server_and_the_entry_is_not_kept():
    """A paused lock holder is cut off by idle_in_transaction_session_timeout (docs/semantics.md §6); the
    writer must not leave its session in a state the server does not time out (pipeline mode did)."""
    with connection.cursor() as cursor:
        cursor.execute("SET idle_in_transaction_session_timeout = 300")
    before = AuditEntry.objects.count()
    try:
        with pytest.raises(DatabaseError):
            with transaction.atomic():
                audit_record(event="test.idle", actor=Actor(name="tester"), environment="dev")
                time.sleep(1.2)  # idle in transaction, four times the timeout
    finally:
        connection.close()
    assert AuditEntry.objects.count() == before


def test_the_prepared_statement_is_logged_with_its_values_in_debug_mode(settings):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        audit_record(event="test.logged", actor=Actor(name="tester"), environment="dev")
    written = [query["sql"] for query in queries.captured_queries if "audit_app_auditentry" in (query["sql"] or "")]
    assert written and "'test.logged'" in written[0]


@contextlib.contextmanager
def wire():
    """What the session sends and receives, from libpq's own trace of the connection."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile() as file:
        pgconn.trace(file.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
        messages: list[str] = []
        try:
            yield messages
        finally:
            pgconn.untrace()
            file.seek(0)
            messages += file.read().decode().splitlines()


def round_trips(messages: list[str]) -> int:
    return sum(1 for message in messages if "\tReadyForQuery\t" in message)


def test_an_entry_of_its_own_is_one_round_trip_with_no_begin_or_commit():
    """Outside a transaction the writer's one statement is its own transaction (autocommit)."""
    audit_record(event="test.warm", actor=Actor(name="tester"), environment="dev")  # prepares the statement
    with wire() as messages:
        entry = audit_record(event="test.alone", actor=Actor(name="tester"), environment="dev")
    assert round_trips(messages) == 1, messages
    assert not [message for message in messages if '"BEGIN"' in message or '"COMMIT"' in message]
    assert messages[-1].endswith("ReadyForQuery\t I")  # idle: committed, no transaction left open
    assert AuditEntry.objects.get(pk=entry.pk).entry_hash == entry.entry_hash
    assert audit_verify(workers=1).ok


def test_a_refused_entry_of_its_own_writes_nothing():
    change = ChangeRef(id=f"c-{uuid.uuid4().hex[:8]}")
    audit_record(event="change.started", actor=Actor(name="tester"), environment="dev", change=change, state="STARTED", expected_entry_id=None)
    before = AuditEntry.objects.count()
    with pytest.raises(StateMoved):
        audit_record(event="change.applied", actor=Actor(name="tester"), environment="dev", change=change, state="APPLIED", expected_entry_id=None)
    assert AuditEntry.objects.count() == before
    assert audit_verify(workers=1).ok


def test_inside_a_transaction_the_entry_commits_with_it():
    with wire() as messages, transaction.atomic():
        audit_record(event="test.inside", actor=Actor(name="tester"), environment="dev")
    assert [message for message in messages if '"COMMIT"' in message]


def test_a_hash_the_server_formatted_differently_stops_the_write_and_says_what_was_kept(monkeypatch):
    """The Python re-check of the database's hash: inside a transaction nothing is kept; an entry of
    its own has committed with its statement, and the error says so (audit verify reports it)."""
    import audit_app.writer_postgresql as writer

    monkeypatch.setattr(writer, "timestamp_text", lambda value: "not the server's format")
    before = AuditEntry.objects.count()
    with pytest.raises(AssertionError, match="nothing was written"):
        with transaction.atomic():
            audit_record(event="test.inside", actor=Actor(name="tester"), environment="dev")
    assert AuditEntry.objects.count() == before

    with pytest.raises(AssertionError, match="it was written and audit verify will report it"):
        audit_record(event="test.alone", actor=Actor(name="tester"), environment="dev")
    assert AuditEntry.objects.count() == before + 1

    # An entry sent with its transaction's COMMIT has committed with it: the same message, and the
    # type the engine stops the run on (it must not record the change as failed).
    with pytest.raises(writer.HashMismatch, match="it was written and audit verify will report it"):
        with transaction.atomic():
            audit_record(event="test.ends", actor=Actor(name="tester"), environment="dev", before_commit=lambda: None)
    assert AuditEntry.objects.count() == before + 2


# -- an entry that ends its transaction (a shared-transaction change's APPLIED) ----------------------


def test_an_entry_that_ends_its_transaction_goes_with_the_commit_in_one_round_trip():
    audit_record(event="test.warm", actor=Actor(name="tester"), environment="dev")  # the head exists, statements warm
    calls: list[str] = []
    atomic = transaction.atomic()
    atomic.__enter__()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # the change's own statement: BEGIN has gone before it
        with wire() as sent:
            entry = audit_record(event="test.ends", actor=Actor(name="tester"), environment="dev", before_commit=lambda: calls.append("hook"))
    finally:
        with wire() as at_exit:
            atomic.__exit__(None, None, None)
    assert calls == ["hook"]
    assert round_trips(sent) == 1, sent
    assert [message for message in sent if '"COMMIT"' in message]
    assert sent[-1].endswith("ReadyForQuery\t I")  # committed: the session is idle
    assert round_trips(at_exit) == 0, at_exit  # the atomic block found nothing left to commit
    assert AuditEntry.objects.get(pk=entry.pk).entry_hash == entry.entry_hash
    assert audit_verify(workers=1).ok


def test_a_refused_entry_sent_with_the_commit_commits_nothing_and_says_why(own_table):
    change = ChangeRef(id=f"c-{uuid.uuid4().hex[:8]}")
    started = audit_record(
        event="change.started", actor=Actor(name="tester"), environment="dev", change=change, state="STARTED", expected_entry_id=None
    )
    before = AuditEntry.objects.count()
    with pytest.raises(StateMoved, match=f"latest entry {started.pk}, expected None"):
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"INSERT INTO {own_table} VALUES (1)")
            audit_record(
                event="change.applied", actor=Actor(name="tester"), environment="dev", change=change, state="APPLIED",
                expected_entry_id=None, before_commit=lambda: None,
            )  # fmt: skip
    assert AuditEntry.objects.count() == before
    assert _count(own_table) == 0  # the session is usable, and the change's row is gone
    assert audit_verify(workers=1).ok


def test_inside_a_larger_transaction_the_entry_leaves_the_commit_to_it():
    calls: list[str] = []
    before = AuditEntry.objects.count()
    with pytest.raises(RuntimeError, match="the larger transaction fails"):
        with transaction.atomic():
            with wire() as sent, transaction.atomic():  # a savepoint: committing here would end the outer transaction
                audit_record(event="test.nested", actor=Actor(name="tester"), environment="dev", before_commit=lambda: calls.append("hook"))
            raise RuntimeError("the larger transaction fails")
    assert [message for message in sent if "SAVEPOINT" in message]  # the trace saw the block
    assert not [message for message in sent if '"COMMIT"' in message]
    assert calls == ["hook"]
    assert AuditEntry.objects.count() == before  # rolled back with the larger transaction


def test_an_entry_sent_with_the_commit_without_a_chain_head_commits_nothing(own_table):
    """The one refusal that is neither the fence nor the state: the chain head is gone (it is never
    deleted; this is the tripwire). The statement raises, so the COMMIT sent with it is skipped."""
    audit_record(event="test.warm", actor=Actor(name="tester"), environment="dev")
    before = AuditEntry.objects.count()
    with pytest.raises(RuntimeError, match=r"refused the entry \(no chain head\); the transaction it ended was rolled back"):
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"INSERT INTO {own_table} VALUES (1)")
                cursor.execute("DELETE FROM audit_app_chainhead")
            audit_record(event="test.headless", actor=Actor(name="tester"), environment="dev", before_commit=lambda: None)
    assert _count(own_table) == 0
    assert _count("audit_app_chainhead") == 1  # the delete went with the rest
    assert AuditEntry.objects.count() == before
    assert audit_verify(workers=1).ok
