"""A new holder's fencing token waits for the old holder's fenced entry (docs/reliability.md, "The
protocol, model-checked": "Found by the model: the PostgreSQL statement is not one atomic step").

The window, driven step by step instead of by luck: holder A's fenced entry for a change's first
entry is past its fence check (CTE ``f`` of ``writer_postgresql._statement`` holds the fence row) and
not committed, because a third session holds the chain head that CTE ``h`` waits for. A's Redis lease
then vanishes and holder B takes the lock. With a bare ``nextval`` B got its token at once, read the
ledger without A's row and wrote the change's first entry as new; its statement's snapshot missed A's
row (a phantom for the re-read CTE ``st``), and both entries committed: a double apply.
``fence_issue`` now records the token in the fence row, so B's token waits for A's commit; B's plan
then sees A's entry, and an entry written as if the change were new is refused (``StateMoved``).

PostgreSQL only (the window is the writer's statement): the test runs in the PostgreSQL pass of
``bin/test``; Redis is the real server on 127.0.0.1:6379, under a private key.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager

import psycopg
import pytest
import redis
from django.db import connection, connections

from audit_app.models import STATE_EVENTS, AuditEntry, ChainHead, ChangeStateName
from audit_app.services import Actor, ChangeRef, FenceRefused, StateMoved, audit_record, change_states
from changes_app.locks.redis import RedisLeaseLock
from changes_app.models import Fence

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REDIS_URL = "redis://127.0.0.1:6379/0"
STARTED = ChangeStateName.STARTED
#: How long a token issuance must still be waiting to count as waiting (the brief's "not before A commits").
STILL_WAITING = 0.5


@pytest.fixture
def lock_name(unique):
    name = f"fence-waits:{unique}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(f"flamingock:lock:{name}")
    client.close()


@pytest.fixture
def change(unique) -> ChangeRef:
    return ChangeRef(
        id=f"fence_waits_{unique}", stage="fence", order="0001", target="app-db", checksum="c0", transaction_strategy="NON_TRANSACTIONAL"
    )


class Holder(threading.Thread):
    """``body()`` in a thread of its own, with its own database connection, whose backend pid is known
    before ``body`` runs (to see in ``pg_stat_activity`` what it waits for)."""

    def __init__(self, name: str, body: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self.body = body
        self.pid: int | None = None
        self.result: object = None
        self.error: BaseException | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                # A test that goes wrong fails rather than hangs.
                cursor.execute("SET lock_timeout = '30s'")
            self.pid = connection.connection.info.backend_pid
            self.connected.set()
            self.result = self.body()
        except BaseException as error:
            self.error = error
        finally:
            self.connected.set()
            connections.close_all()

    def outcome(self, timeout: float = 30.0) -> object:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} hung"
        if self.error is not None:
            raise self.error
        return self.result


def waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:  # autocommit: pg_stat_activity is read afresh each time
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def raw_connection(**kwargs) -> psycopg.Connection:
    """A session of its own on the test database, outside Django."""
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
        user=settings["USER"] or "postgres",
        password=settings["PASSWORD"] or None,
        dbname=settings["NAME"],
        connect_timeout=5,
        **kwargs,
    )


@contextmanager
def chain_head_held():
    """A third session holds the chain head: a fenced entry sent now stops at CTE ``h``, after its fence
    check (CTE ``f``) and its state re-read (CTE ``st``), with the fence row locked. ``release()``
    commits, and the entry goes on."""
    session = raw_connection()
    try:
        session.execute(f"SELECT seq FROM {ChainHead._meta.db_table} WHERE id = 1 FOR UPDATE")
        yield session
    finally:
        session.rollback()
        session.close()


def fence_row_locked(name: str) -> bool:
    with raw_connection(autocommit=True) as session:
        try:
            session.execute(f"SELECT 1 FROM {Fence._meta.db_table} WHERE name = %s FOR UPDATE NOWAIT", [name])
        except psycopg.errors.LockNotAvailable:
            return True
        return False


def first_entry(change: ChangeRef, lease, actor: str) -> AuditEntry:
    """The change's first state entry, as Executor.state_entry writes it for a change its plan found new."""
    return audit_record(
        event=STATE_EVENTS[STARTED],
        actor=Actor(name=f"tests:{actor}", via="tests"),
        environment="dev",
        change=change,
        state=STARTED,
        run_id=lease.run_id,
        fence=lease,
        expected_entry_id=None,
    )


def started_entries(change: ChangeRef) -> list[int]:
    return list(AuditEntry.objects.filter(change_id=change.id, state=STARTED).order_by("seq").values_list("pk", flat=True))


def holder_a_in_flight(lock_name: str, change: ChangeRef):
    """Holder A takes the lock and sends the change's first entry; returns its lease and its thread,
    stopped inside the statement past the fence check (to be called with the chain head held)."""
    lease_a = RedisLeaseLock(lock_name, lease_seconds=30, url=REDIS_URL).try_acquire(run_id=uuid.uuid4(), actor=Actor(name="tests:a"))
    assert lease_a is not None
    a = Holder("holder-a", lambda: first_entry(change, lease_a, "a"))
    a.start()
    a.connected.wait(10)
    wait_until(lambda: a.error is not None or waits_on_a_lock(a.pid), what="A's entry to wait for the chain head")
    assert a.error is None, a.error
    # The premise: A's statement is past its fence check, which holds the fence row until A commits.
    assert fence_row_locked(lock_name), "A's statement waits for the chain head without the fence row: the plan no longer runs f before h"
    assert started_entries(change) == []
    return lease_a, a


def lease_expires(lock_name: str) -> None:
    """A's lease vanishes while A is paused (its key's PX expiry, or Redis restarting empty)."""
    client = redis.Redis.from_url(REDIS_URL)
    assert client.delete(f"flamingock:lock:{lock_name}") == 1
    client.close()


def test_a_new_holders_token_waits_for_the_old_holders_fenced_entry_then_its_plan_sees_the_entry(lock_name, change):
    audit_record(event="test.setup", actor=Actor(name="tests:setup"), environment="dev")  # a chain head to hold
    with chain_head_held() as head:
        lease_a, a = holder_a_in_flight(lock_name, change)
        lease_expires(lock_name)
        b = Holder(
            "holder-b",
            lambda: RedisLeaseLock(lock_name, lease_seconds=30, url=REDIS_URL).try_acquire(run_id=uuid.uuid4(), actor=Actor(name="tests:b")),
        )
        b.start()
        b.connected.wait(10)
        wait_until(lambda: not b.is_alive() or waits_on_a_lock(b.pid), what="B's token issuance to return or wait on a lock")
        b.join(STILL_WAITING)
        assert b.is_alive(), (
            f"holder B got its fencing token ({b.result!r}, error {b.error!r}) while A's fenced entry, past its fence check, "
            "had not committed: B would plan without A's entry"
        )
        assert waits_on_a_lock(b.pid), "B's token issuance is not waiting on a lock"
        head.commit()  # A's statement goes on and commits; only then does B get its token
        entry_a = a.outcome()
        lease_b = b.outcome()
    assert lease_b is not None and lease_b.token > lease_a.token
    assert started_entries(change) == [entry_a.pk]

    # B's plan, read under the lock, sees A's entry: the change is STARTED, not new.
    seen = change_states().get(change.id)
    assert seen is not None and seen.entry_id == entry_a.pk and seen.state == STARTED

    # Written as if the change were new, B's first entry is refused; A, fenced out, can write nothing more.
    with pytest.raises(StateMoved):
        first_entry(change, lease_b, "b")
    with pytest.raises(FenceRefused):
        first_entry(change, lease_a, "a")
    assert started_entries(change) == [entry_a.pk]


def test_the_takeover_inside_the_old_holders_fenced_statement_never_writes_a_changes_first_entry_twice(lock_name, change):
    """The model's counterexample end to end, whatever the token issuance does: B takes the lock, reads
    the ledger and writes the change's first entry as new while A's entry is in flight. With a bare
    ``nextval`` B's entry waits on the fence row with a snapshot taken before A's commit, and both commit."""
    audit_record(event="test.setup", actor=Actor(name="tests:setup"), environment="dev")
    seen: dict[str, object] = {}

    def takeover() -> str:
        lease_b = RedisLeaseLock(lock_name, lease_seconds=30, url=REDIS_URL).try_acquire(run_id=uuid.uuid4(), actor=Actor(name="tests:b"))
        assert lease_b is not None
        state = change_states().get(change.id)  # the plan's read (Executor.plan)
        seen["entry_id"] = state.entry_id if state is not None else None
        try:
            entry = first_entry(change, lease_b, "b")
        except StateMoved:
            return "StateMoved"
        return f"committed entry {entry.pk}"

    with chain_head_held() as head:
        _, a = holder_a_in_flight(lock_name, change)
        lease_expires(lock_name)
        b = Holder("holder-b", takeover)
        b.start()
        b.connected.wait(10)
        # B stops on A's fence row: in its token issuance (fixed), or in its entry's fence CTE (bare nextval).
        wait_until(lambda: not b.is_alive() or waits_on_a_lock(b.pid), what="B to wait on the fence row")
        head.commit()
        entry_a = a.outcome()
        b_outcome = b.outcome()

    committed = started_entries(change)
    assert committed == [entry_a.pk], (
        f"both holders wrote the change's first entry (B: {b_outcome}; B's plan saw entry {seen.get('entry_id')}): a double apply"
    )
    assert seen["entry_id"] == entry_a.pk
    assert b_outcome == "StateMoved"
