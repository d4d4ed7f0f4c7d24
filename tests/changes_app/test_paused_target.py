"""A holder paused inside a marker change's target transaction never blocks the takeover
(docs/target-systems.md, "Transaction bounds: a paused holder"; issue 20, finding 1).

Runner A stops itself (SIGSTOP) inside a marker-strategy change, its transaction open on a separate
PostgreSQL or MariaDB database, its effect and marker row written but not committed. The target's
server ends that transaction once it has sat idle for half the lease (``idle_in_transaction_session_timeout``,
``idle_transaction_timeout``), so runner B, which takes the lock when A's lease lapses, never waits on
A's row locks: it finishes within two leases of A's pause, with both lock kinds. A, resumed, is
fenced out and never writes APPLIED, and each target holds exactly one effect. A journal "gate"
change holds A (no transaction open) until B is up and asking for the lock, so the time measured is
the protocol's, not a Python process's start on a loaded machine.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import psycopg
import pymysql
import pytest

from audit_app.models import AuditEntry
from audit_app.models import ChangeStateName as S
from changes_app.models import Run
from changes_app.targets.base import TransactionBound, target_kinds, target_systems
from tests.changes_app.targets.conftest import MARIADB_SERVER, REDIS_URL, mariadb_connect
from tests.support.crash import Child, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

#: Short enough for a quick test, long enough that a loaded machine still starts B inside it.
LEASE = 4.0


@pytest.fixture(scope="module")
def mariadb_bounds():
    name = f"flk_bounds_{uuid.uuid4().hex[:10]}"
    try:
        admin = mariadb_connect(MARIADB_SERVER)
    except pymysql.err.MySQLError as error:
        pytest.fail(f"MariaDB is required at {MARIADB_SERVER} (root, no password): {error}")
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    yield f"{MARIADB_SERVER}/{name}"
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


@pytest.fixture
def targets(targets, settings, monkeypatch, mariadb_bounds):
    """The root fixture's targets, and a MariaDB one."""
    monkeypatch.setenv("FLAMINGOCK_TEST_MARIADB_URL", mariadb_bounds)
    configured = {**targets, "billing": {"kind": "mysql", "url_env": "FLAMINGOCK_TEST_MARIADB_URL"}}
    settings.FLAMINGOCK_TARGET_SYSTEMS = configured
    monkeypatch.setenv("FLAMINGOCK_TARGETS_JSON", json.dumps(configured))
    return configured


class Effects:
    """A table of counted effects in one target database (PostgreSQL or MariaDB)."""

    def __init__(self, kind: str, url: str, table: str):
        self.kind, self.url, self.table = kind, url, table

    def execute(self, sql: str) -> list[tuple]:
        if self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as connection:
                cursor = connection.execute(sql)
                return cursor.fetchall() if cursor.description else []
        connection = mariadb_connect(self.url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def counts(self) -> dict[str, int]:
        return dict(self.execute(f"SELECT change_id, count(*) FROM {self.table} GROUP BY change_id"))

    def markers(self, change_id: str) -> list[tuple]:
        return self.execute(f"SELECT generation, run_id FROM flamingock_marker WHERE change_id = '{change_id}'")


CHANGE = """
from changes_app.definitions import Change


class Counted(Change):
    id = "{id}"
    author = "bounds-tests"
    target = "{target}"

    def apply(self, cursor, context):
        cursor.execute("INSERT INTO {table} (change_id, run_id) VALUES (%s, %s)", [context.change_id, str(context.run_id)])
"""


GATE = """
import os
import time

from changes_app.definitions import Change


class Gate(Change):
    id = "{id}"
    author = "bounds-tests"
    target = "journal"

    def apply(self, journal, context):
        # Holds the first runner here (no transaction open) until the test has B waiting for the lock.
        deadline = time.monotonic() + 60
        while not os.path.exists({go!r}) and time.monotonic() < deadline:
            time.sleep(0.02)
        journal.write(kind="effect", change=context.change_id)
"""


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat: 'T' for a stopped process."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def running(child: Child, predicate):
    """``predicate``, failing at once with the child's output if the child ended instead."""

    def check() -> bool:
        if child.returncode is not None:
            raise AssertionError(f"the child exited with {child.returncode}:\n{child.stdout}\n{child.stderr[-3000:]}")
        return predicate()

    return check


@pytest.mark.parametrize("backend", ["database", "redis"])
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_holder_paused_inside_a_marker_transaction_is_taken_over_within_two_leases(
    kind, backend, settings, unique, make_pipeline, subprocess_env, external_pg, mariadb_bounds, journal, tmp_path
):
    target = {"postgres": "ext-pg", "mysql": "billing"}[kind]
    effects = Effects(kind, external_pg if kind == "postgres" else mariadb_bounds, f"bounds_fx_{unique}")
    effects.execute(f"CREATE TABLE {effects.table} (change_id varchar(200) NOT NULL, run_id varchar(64) NOT NULL)")
    gate, paused, after = f"bounds-gate-{unique}", f"bounds-paused-{unique}", f"bounds-after-{unique}"
    go = tmp_path / "go"
    make_pipeline(
        {
            "main": {
                "0001_gate.py": GATE.format(id=gate, go=str(go)),
                "0002_paused.py": CHANGE.format(id=paused, target=target, table=effects.table),
                "0003_after.py": CHANGE.format(id=after, target=target, table=effects.table),
            }
        }
    )
    environment = f"t-bounds-{unique}"
    settings.FLAMINGOCK_ENVIRONMENT = environment
    lock = {
        "FLAMINGOCK_ENVIRONMENT": environment,
        "FLAMINGOCK_LOCK_BACKEND": backend,
        "FLAMINGOCK_LOCK_LEASE": str(LEASE),
        "FLAMINGOCK_LOCK_WAIT": "30",
    }
    if backend == "redis":
        lock["REDIS_URL"] = REDIS_URL

    def env(**extra):
        built = subprocess_env(**lock, **extra)
        if backend != "redis":
            built.pop("REDIS_URL", None)
        return built

    # A stops itself inside the target transaction: effect and marker row written, COMMIT not sent.
    holder = Child(
        "flamingock", "run", "--json", env=env(FLAMINGOCK_PAUSE_AT=f"after_apply:{paused}", FLAMINGOCK_HOSTNAME="host-a"), directory=tmp_path
    )
    taker = None
    try:
        # A holds the lock at the gate; B starts and asks for the lock (a Python process starting on
        # a loaded machine is not what is measured); then A goes on and pauses.
        wait_for(
            running(holder, lambda: AuditEntry.objects.filter(event="lock.acquired", pid=holder.pid).exists()), timeout=60, what="A to hold the lock"
        )
        taker = Child("flamingock", "run", "--json", env=env(FLAMINGOCK_HOSTNAME="host-b"), directory=tmp_path)
        wait_for(running(taker, lambda: Run.objects.filter(pid=taker.pid).exists()), timeout=60, what="B to ask for the lock")
        go.touch()
        wait_for(running(holder, lambda: process_state(holder.pid) == "T"), timeout=60, what="A to stop itself")
        paused_at = time.monotonic()
        # Without the bound, B would wait on A's uncommitted marker row until A resumed: forever here.
        wait_for(lambda: taker.returncode is not None, timeout=2 * LEASE + 30, what="B to finish while A is paused")
        took = time.monotonic() - paused_at
        assert process_state(holder.pid) == "T", "A stayed paused while B finished"
        assert taker.returncode == 0, f"B ended {taker.returncode}:\n{taker.stdout}\n{taker.stderr[-3000:]}"
        assert taker.json()["status"] == "SUCCEEDED", taker.stdout
        print(f"{kind}/{backend}: B finished {took:.2f}s after A's pause (lease {LEASE}s)")
        assert took <= 2 * LEASE, f"B took {took:.2f}s, more than two leases ({2 * LEASE}s)"

        holder.signal(signal.SIGCONT)
        holder.wait(timeout=60)
        woken, finished = holder.json(), taker.json()
    finally:
        holder.close()
        if taker is not None:
            taker.close()

    # A's transaction was ended by the server; the FAILED it then tried to write was fenced out.
    assert woken["status"] == "ABORTED", woken
    assert "stale" in woken["reason"], woken["reason"]
    assert not AuditEntry.objects.filter(run_id=woken["run_id"], change_id=paused, state=S.APPLIED).exists()
    history = list(AuditEntry.objects.filter(change_id=paused).exclude(state="").order_by("id").values_list("state", "host"))
    assert history == [(S.STARTED, "host-a"), (S.ROLLED_BACK, "host-b"), (S.STARTED, "host-b"), (S.APPLIED, "host-b")]
    # One effect each, and one marker row: B's.
    assert effects.counts() == {paused: 1, after: 1}
    assert journal.count(change=gate, kind="effect") == 1
    assert effects.markers(paused) == [(0, finished["run_id"])]
    effects.execute(f"DROP TABLE {effects.table}")


def test_the_registry_says_which_kinds_bound_an_open_transaction(settings):
    """Every built-in kind declares what ends a transaction a paused holder left open."""
    declared = {kind: cls.transaction_bound for kind, cls in target_kinds().items()}
    assert {kind: declared[kind] for kind in ("django", "postgres", "mysql", "redis", "rabbitmq", "http", "generic")} == {
        "django": TransactionBound.PER_DATABASE,
        "postgres": TransactionBound.SERVER,
        "mysql": TransactionBound.SERVER,
        "redis": TransactionBound.NO_TRANSACTION,
        "rabbitmq": TransactionBound.NO_TRANSACTION,
        "http": TransactionBound.NO_TRANSACTION,
        "generic": TransactionBound.NONE,
    }
    # The django kind answers for its database: SQLite has no bound, PostgreSQL has one.
    from django.db import connection

    settings.FLAMINGOCK_TARGET_SYSTEMS = {"app-db": {"kind": "django", "alias": "default"}}
    assert target_systems()["app-db"].bound() == (TransactionBound.SERVER if connection.vendor == "postgresql" else TransactionBound.NONE)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_the_target_session_carries_the_idle_limit_of_half_the_lease(kind, settings, targets):
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "lease_seconds": 7.0}
    system = target_systems()[{"postgres": "ext-pg", "mysql": "billing"}[kind]]
    with system.session(atomic=True) as session:
        if kind == "postgres":
            session["cursor"].execute("SHOW idle_in_transaction_session_timeout")
            assert session["cursor"].fetchone()[0] == "3500ms"
        else:
            session["cursor"].execute("SELECT @@SESSION.idle_transaction_timeout")
            assert session["cursor"].fetchone()[0] == 3  # whole seconds, rounded down
