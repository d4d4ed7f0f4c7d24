"""Creating the marker table is idempotent under concurrency, and only a failed connection is
"unreachable" (docs/target-systems.md, "Marker table"; issue 20, finding 2).

PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` reads the catalogue before it inserts: a session that
creates the table while another one is creating it waits on ``pg_type``'s unique index, then fails
with "duplicate key value violates unique constraint pg_type_typname_nsp_index" once the other
commits. Reconciliation used to report that as "target unreachable" and block the stage.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid

import psycopg
import pytest

from changes_app.targets.base import MARKER_DDL, PostgresTarget, TargetUnavailable
from tests.conftest import PG_SERVER

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_target_db():
    """A target database of this test alone, with no marker table yet."""
    name = f"flk_bounds_race_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER}/{name}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_waiting(dsn: str) -> bool:
    """A session of the target database waits on a lock (the catalogue's unique index)."""
    with psycopg.connect(dsn, autocommit=True) as probe:
        return bool(
            probe.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()").fetchone()[0]
        )


@pytest.mark.parametrize("path", ["reconcile", "apply"])
def test_a_target_creating_the_marker_table_while_another_session_creates_it_is_not_unreachable(path, fresh_target_db):
    # Another runner's session creates the table and has not committed yet.
    other = psycopg.connect(fresh_target_db)
    other.execute(MARKER_DDL)
    target = PostgresTarget("bounds-race", {"dsn": fresh_target_db})
    outcome: dict = {}

    def ours():
        try:
            if path == "reconcile":
                outcome["marker"] = target.marker_lookup(change_id="c-1", generation=0)
            else:
                with target.session(atomic=True) as session:
                    target.marker_insert(session, change_id="c-1", generation=0, run_id=str(uuid.uuid4()), token=1)
                outcome["marker"] = target.marker_lookup(change_id="c-1", generation=0)
        except Exception as error:  # the outcome under test: reported, not raised in the thread
            outcome["error"] = error

    worker = threading.Thread(target=ours)
    try:
        worker.start()
        deadline = time.monotonic() + 10
        while not backend_waiting(fresh_target_db):
            assert time.monotonic() < deadline and worker.is_alive(), f"our session never waited on the other's CREATE TABLE: {outcome}"
            time.sleep(0.02)
        other.commit()  # the other creator wins: ours now meets the duplicate in pg_type
        worker.join(timeout=10)
    finally:
        other.close()
        target.close()
    assert "error" not in outcome, f"{type(outcome['error']).__name__}: {outcome['error']}"
    assert outcome["marker"] == (None if path == "reconcile" else {"run_id": outcome["marker"]["run_id"], "fencing_token": 1})


def _creator(dsn: str, barrier, rounds: int, errors) -> None:
    """One creator: in each round, look the marker up at the same instant as the other one."""
    target = PostgresTarget("bounds-race", {"dsn": dsn})
    for round_number in range(rounds):
        barrier.wait(timeout=30)
        try:
            target.marker_lookup(change_id=f"c-{round_number}", generation=0)
        except Exception:  # reported to the test, which fails on any
            errors.put(traceback.format_exc(limit=3))
        barrier.wait(timeout=30)
        target.close()


def test_two_sessions_creating_the_marker_table_of_a_fresh_database_at_once_never_fail(fresh_target_db):
    """Two targets, each with its own session, in two threads: the race is the server's, between two
    sessions (threads, not forked processes: a fork of the test process, with the suite's other
    threads, could inherit a held lock and hang)."""
    rounds = 25
    barrier, errors = threading.Barrier(3), queue.Queue()
    creators = [threading.Thread(target=_creator, args=(fresh_target_db, barrier, rounds, errors), daemon=True) for _ in range(2)]
    for creator in creators:
        creator.start()
    try:
        with psycopg.connect(fresh_target_db, autocommit=True) as admin:
            for _ in range(rounds):
                admin.execute("DROP TABLE IF EXISTS flamingock_marker")  # a fresh database again
                barrier.wait(timeout=60)  # both creators go
                barrier.wait(timeout=60)  # both are done
    finally:
        for creator in creators:
            creator.join(timeout=30)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, f"{len(found)} of {2 * rounds} concurrent creations failed:\n" + "\n".join(found[:3])
    assert not any(creator.is_alive() for creator in creators)


def test_only_a_failed_connection_is_unreachable(fresh_target_db):
    closed_port = PostgresTarget("bounds-nowhere", {"dsn": "postgresql://postgres@127.0.0.1:1/none"})
    with pytest.raises(TargetUnavailable, match="cannot be reached"):
        closed_port.marker_lookup(change_id="c-1", generation=0)
    # A connection the server drops mid-session is unreachable too.
    target = PostgresTarget("bounds-dropped", {"dsn": fresh_target_db})
    pid = target._connect().info.backend_pid
    with psycopg.connect(fresh_target_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(TargetUnavailable):
        target.marker_lookup(change_id="c-1", generation=0)
    target.close()
