"""What a run start costs and what it still guarantees: the catalogue mirrored without re-reading an
unchanged one, the claim and ``run.started`` in one commit, the run's task id in its INSERT, one
lock store client per process, and workers that keep a clean database connection between tasks
(and drop any other) — proven in-process and with a real worker whose session the server kills.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit_app.models import AuditEntry
from changes_app import services, tasks
from changes_app.engine import executor as engine
from changes_app.governance.identity import cli_actor
from changes_app.locks.backends import lock_backend_shared
from changes_app.models import ChangeRecord, Run, TargetSystem
from changes_app.services import catalogue
from changes_app.services import runs as run_service
from changes_app.tasks import worker_prepare
from flamingock_site import celery as worker_celery
from tests.support.trails import journal_change, ledger, local_operator, run_events
from tests.support.workers import Broker, wait_for, workers_start, workers_stop

pytestmark = pytest.mark.django_db(transaction=True)


def sql_of(queries) -> list[str]:
    # The audit writer may send a prepared statement whose text Django does not see.
    return [query["sql"] or "" for query in queries]


def statements(queries) -> list[str]:
    return [sql.split(None, 1)[0].upper() for sql in sql_of(queries) if sql]


# -- the catalogue ---------------------------------------------------------------------------------


def test_catalogue_sync_of_an_unchanged_pipeline_only_reads_targets_and_one_stamp(make_pipeline, unique):
    pipeline = make_pipeline({"main": {"0001_a.py": journal_change(f"a-{unique}"), "0002_b.py": journal_change(f"b-{unique}")}})
    services.catalogue_sync(pipeline=pipeline)

    with CaptureQueriesContext(connection) as queries:
        services.catalogue_sync(pipeline=pipeline)

    assert statements(queries.captured_queries) == ["SELECT", "SELECT"]
    assert set(ChangeRecord.objects.filter(removed_at__isnull=True).values_list("change_id", flat=True)) == {f"a-{unique}", f"b-{unique}"}


def test_catalogue_sync_repairs_records_touched_by_anyone_else(make_pipeline, unique):
    first, second = f"a-{unique}", f"b-{unique}"
    pipeline = make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.py": journal_change(second)}})
    services.catalogue_sync(pipeline=pipeline)

    # Another process marked one removed and lost the other (a restored database, another version).
    ChangeRecord.objects.filter(change_id=first).update(removed_at=timezone.now())
    ChangeRecord.objects.filter(change_id=second).delete()
    services.catalogue_sync(pipeline=pipeline)

    rows = {row.change_id: row for row in ChangeRecord.objects.filter(change_id__in=[first, second])}
    assert set(rows) == {first, second}
    assert rows[first].removed_at is None and rows[second].removed_at is None


def test_catalogue_sync_follows_an_edited_and_a_shrunk_pipeline(make_pipeline, unique):
    first, second = f"a-{unique}", f"b-{unique}"
    services.catalogue_sync(pipeline=make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.py": journal_change(second)}}))

    edited = make_pipeline({"main": {"0001_a.py": journal_change(first, rollback="ok")}}, replace=True)
    services.catalogue_sync(pipeline=edited)

    rows = {row.change_id: row for row in ChangeRecord.objects.filter(change_id__in=[first, second])}
    assert rows[first].has_rollback and rows[first].checksum == edited.by_id[first].checksum and rows[first].removed_at is None
    assert rows[second].removed_at is not None, "a change gone from code keeps its row, marked removed"


def test_new_change_records_are_written_field_for_field_as_their_definitions_say(make_pipeline, unique):
    """New records are written field for field (``bulk_create``, on every database)."""
    first, second = f"a-{unique}", f"b-{unique}"
    scoped = journal_change(second, rollback="ok", verify=True, recovery="ALWAYS_RETRY").replace(
        '    target = "journal"', '    target = "journal"\n    environments = ["dev", "prod"]\n    description = "It\'s \\\\ \\"quoted\\"\\ttabbed"'
    )
    pipeline = make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.py": scoped}})
    assert not pipeline.problems, pipeline.problems

    services.catalogue_sync(pipeline=pipeline)

    for change_id in (first, second):
        change, row = pipeline.by_id[change_id], ChangeRecord.objects.get(change_id=change_id)
        written = {name: getattr(row, name) for name in ("stage", "order", "author", "target", "kind", "template", "description")}
        written |= {name: getattr(row, name) for name in ("path", "line", "source", "checksum", "transactional", "environments")}
        expected = {name: getattr(change, name) for name in written}
        assert written == expected
        assert (row.recovery, row.has_rollback, row.has_verify) == (change.recovery.value, change.has_rollback, change.has_verify)
        assert row.removed_at is None and abs(row.synced_at - row.first_seen_at) < timedelta(seconds=5)
    assert ChangeRecord.objects.get(change_id=second).environments == ["dev", "prod"]
    assert ChangeRecord.objects.filter(change_id=first, environments__isnull=True).exists()  # SQL NULL, not JSON null


def test_new_change_records_another_process_mirrored_meanwhile_are_kept_and_the_rest_written(make_pipeline, unique):
    first, second = f"a-{unique}", f"b-{unique}"
    pipeline = make_pipeline({"main": {"0001_a.py": journal_change(first), "0002_b.py": journal_change(second)}})
    theirs = pipeline.by_id[first]
    ChangeRecord.objects.create(
        change_id=first, stage=theirs.stage, order=theirs.order, author="another process", target=theirs.target, kind=theirs.kind,
        path=theirs.path, source=theirs.source, checksum=theirs.checksum, transactional=True, recovery=theirs.recovery.value,
    )  # fmt: skip
    rows = [
        {"change_id": change.id, "stage": change.stage, "order": change.order, "author": change.author, "target": change.target,
         "kind": change.kind, "path": change.path, "source": change.source, "checksum": change.checksum,
         "transactional": change.transactional, "recovery": change.recovery.value}
        for change in (pipeline.by_id[first], pipeline.by_id[second])
    ]  # fmt: skip

    with transaction.atomic():
        catalogue._catalogue_insert(rows)
        still_usable = ChangeRecord.objects.filter(change_id__in=[first, second]).count()

    assert still_usable == 2  # the conflicting row was skipped, the transaction goes on
    assert ChangeRecord.objects.get(change_id=first).author == "another process"
    assert ChangeRecord.objects.get(change_id=second).author == "tests"


def test_target_system_gone_from_settings_is_retired_and_a_steady_sync_writes_nothing(make_pipeline, settings, unique):
    pipeline = make_pipeline({"main": {"0001_a.py": journal_change(f"a-{unique}")}})
    services.catalogue_sync(pipeline=pipeline)
    settings.FLAMINGOCK_TARGET_SYSTEMS = {name: config for name, config in settings.FLAMINGOCK_TARGET_SYSTEMS.items() if name != "ext-pg"}

    services.target_systems_sync()
    with CaptureQueriesContext(connection) as queries:
        services.target_systems_sync()

    assert TargetSystem.objects.get(name="ext-pg").retired_at is not None
    assert TargetSystem.objects.get(name="journal").retired_at is None
    assert statements(queries.captured_queries) == ["SELECT"]


# -- queue and claim -------------------------------------------------------------------------------


def test_run_queue_records_the_task_id_in_the_runs_insert_and_publishes_after_commit(make_pipeline, unique, monkeypatch):
    from changes_app.tasks import run_execute_task

    make_pipeline({"main": {"0001_a.py": journal_change(f"a-{unique}")}})
    published = []

    def publish(*, args, task_id):
        published.append((args, task_id, connection.in_atomic_block))

    monkeypatch.setattr(run_execute_task, "apply_async", publish)
    with CaptureQueriesContext(connection) as queries:
        run = services.run_queue(actor=local_operator(), source=Run.Source.API)

    assert Run.objects.get(pk=run.id).task_id == str(run.id)
    assert published == [([str(run.id)], str(run.id), False)], "published once, after the commit"
    sent = sql_of(queries.captured_queries)
    assert not [sql for sql in sent if sql.startswith("UPDATE") and Run._meta.db_table in sql]
    assert not [sql for sql in sent if "SAVEPOINT" in sql]
    assert run_events(run) == ["run.queued"]


def test_a_failure_between_claim_and_run_started_leaves_the_run_queued_for_the_next_delivery(make_pipeline, unique, journal, monkeypatch):
    change = f"a-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change)}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)

    def broken(**kwargs):
        raise RuntimeError("database went away during the catalogue sync")

    with monkeypatch.context() as patched:
        patched.setattr(run_service, "catalogue_sync", broken)
        with pytest.raises(RuntimeError):
            services.run_execute(run_id=queued.id)

    assert Run.objects.get(pk=queued.id).status == Run.Status.QUEUED
    assert run_events(queued) == ["run.queued"]
    run = services.run_execute(run_id=queued.id)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert run_events(run).count("run.started") == 1
    assert ledger(change) == [(change, "STARTED"), (change, "APPLIED")]


def test_the_claim_returns_the_claimed_run_in_one_statement_on_postgresql(make_pipeline, unique):
    make_pipeline({"main": {"0001_a.py": journal_change(f"a-{unique}")}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API, reason="claim me")

    with CaptureQueriesContext(connection) as first:
        claimed = services.run_claim(run_id=queued.id)
    with CaptureQueriesContext(connection) as second:
        again = services.run_claim(run_id=queued.id)

    if connection.vendor == "postgresql":  # one round trip: the claim returns the row it claimed
        assert len(first.captured_queries) == 1 and sql_of(first.captured_queries)[0].startswith("UPDATE")
        assert "RETURNING" in sql_of(first.captured_queries)[0]
    else:  # the ORM's update, then the row (not every store returns rows from an UPDATE)
        assert statements(first.captured_queries) == ["UPDATE", "SELECT"]
    stored = Run.objects.get(pk=queued.id)
    assert claimed.status == stored.status == Run.Status.RUNNING
    assert claimed.started_at == stored.started_at and claimed.started_at is not None
    assert (claimed.reason, claimed.parameters, claimed.task_id) == (stored.reason, stored.parameters, stored.task_id)  # every field read back
    assert again is None and len(second.captured_queries) == 1


@pytest.mark.postgres
def test_run_started_and_lock_acquired_each_go_with_their_commit(make_pipeline, unique, journal, monkeypatch):
    """On PostgreSQL the claim's block and the lock's block end with their entry: the entry and
    COMMIT go in one round trip (audit_record's before_commit), and both are in the trail after."""
    import audit_app.writer_postgresql as writer

    make_pipeline({"main": {"0001_a.py": journal_change(f"a-{unique}")}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)
    with_commit: list[str] = []
    send = writer._send_with_commit

    def recording(connection, sql, params, *, entry, **kwargs):
        with_commit.append(entry.event)
        return send(connection, sql, params, entry=entry, **kwargs)

    monkeypatch.setattr(writer, "_send_with_commit", recording)
    run = services.run_execute(run_id=queued.id)

    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    assert with_commit[:2] == ["run.started", "lock.acquired"], with_commit
    assert {"run.started", "lock.acquired"} <= set(run_events(run))


@pytest.mark.parametrize("failing", ["lock.acquired", "idle transaction limit"])
def test_a_lock_whose_acquired_entry_does_not_commit_is_released_at_once(make_pipeline, unique, journal, monkeypatch, failing):
    """The lock is held only once ``lock.acquired`` has committed with the run's token. If that
    commit fails, or the session setting before it, the lease is released and its heartbeat stopped:
    a worker that lives on must not keep every later run locked out."""
    change = f"a-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change)}})
    first = services.run_create(actor=local_operator(), source=Run.Source.API)
    audit = engine.Executor.audit

    def failing_audit(self, event, **kwargs):
        if event == "lock.acquired":
            raise DatabaseError("the audit store went away")
        return audit(self, event, **kwargs)

    def failing_limit(self):
        raise DatabaseError("the audit store went away")

    with monkeypatch.context() as patched:
        if failing == "lock.acquired":
            patched.setattr(engine.Executor, "audit", failing_audit)
        else:
            patched.setattr(engine.Executor, "_limit_idle_transactions", failing_limit)
        with pytest.raises(DatabaseError, match="the audit store went away"):
            services.run_execute(run_id=first.id)

    assert lock_backend_shared().holder() is None
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("flamingock-heartbeat") and thread.is_alive()]
    assert Run.objects.get(pk=first.id).fencing_token is None  # the token's update went with the entry
    assert "lock.acquired" not in run_events(first)
    started = time.monotonic()
    second = services.run_execute(run_id=services.run_create(actor=local_operator(), source=Run.Source.API).id)
    assert second.status == Run.Status.SUCCEEDED, second.status_reason
    assert time.monotonic() - started < 5  # the lock was free: no wait for a lease to run out
    assert ledger(change) == [(change, "STARTED"), (change, "APPLIED")]


def test_a_second_delivery_of_a_finished_run_writes_nothing(make_pipeline, unique, journal):
    change = f"a-{unique}"
    make_pipeline({"main": {"0001_a.py": journal_change(change)}})
    queued = services.run_create(actor=local_operator(), source=Run.Source.API)
    assert services.run_execute(run_id=queued.id).status == Run.Status.SUCCEEDED
    before = AuditEntry.objects.count()

    again = services.run_execute(run_id=queued.id)

    assert again.status == Run.Status.SUCCEEDED
    assert AuditEntry.objects.count() == before
    assert journal.count(change=change) == 1


def test_the_lock_backend_is_kept_per_process_and_configuration(settings):
    first = lock_backend_shared()
    assert lock_backend_shared() is first
    settings.FLAMINGOCK_LOCK = {**settings.FLAMINGOCK_LOCK, "lease_seconds": 7.0}
    other = lock_backend_shared()
    assert other is not first and other.lease_seconds == 7.0


def test_worker_prepare_never_stops_a_worker_and_says_why(monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("a change module does not import")

    monkeypatch.setattr(tasks, "pipeline_load", broken)
    monkeypatch.setattr(logging.getLogger("flamingock"), "propagate", True)
    worker_prepare(connect=True)
    assert "warming up the run path failed" in caplog.text and "a change module does not import" in caplog.text


# -- worker connections ----------------------------------------------------------------------------


@pytest.fixture
def kept_connection():
    """The test's connection with a worker's settings: kept without an age limit, health-checked."""
    saved = {key: connection.settings_dict[key] for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}
    connection.close()
    connection.settings_dict.update(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    connection.ensure_connection()
    yield connection
    connection.settings_dict.update(saved)
    connection.close()


def test_a_clean_connection_is_kept_for_the_next_task(kept_connection):
    raw = kept_connection.connection
    worker_celery._connections_tidy()
    assert kept_connection.connection is raw
    with kept_connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert kept_connection.connection is raw


@pytest.mark.parametrize("leftover", ["failed task", "errors occurred"])
def test_a_connection_with_anything_left_of_the_last_task_is_closed(kept_connection, leftover):
    if leftover == "errors occurred":
        kept_connection.errors_occurred = True
    worker_celery._connections_tidy(failed=leftover == "failed task")
    assert kept_connection.connection is None


@pytest.mark.postgres
def test_a_postgresql_session_left_inside_a_transaction_is_closed(kept_connection):
    # Django believes it is in autocommit; the server says a transaction is open (a task cut short).
    kept_connection.connection.execute("BEGIN")
    kept_connection.connection.execute("SELECT 1")
    assert kept_connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    worker_celery._connections_tidy()
    assert kept_connection.connection is None


def test_worker_connection_age_follows_the_setting(monkeypatch):
    databases = {"default": {"CONN_MAX_AGE": 60}, "other": {"CONN_MAX_AGE": 0}}
    monkeypatch.delenv("FLAMINGOCK_WORKER_DB_CONN_MAX_AGE", raising=False)
    # Runs come minutes apart: a worker keeps a connection as long as it stays healthy...
    assert worker_celery._worker_conn_max_ages(databases) == {"default": None, "other": 0}
    monkeypatch.setenv("FLAMINGOCK_WORKER_DB_CONN_MAX_AGE", "120")
    assert worker_celery._worker_conn_max_ages(databases) == {"default": 120.0, "other": 0}
    # ...and never where the operator asked for a new connection every time.
    monkeypatch.setenv("FLAMINGOCK_WORKER_DB_CONN_MAX_AGE", "0")
    assert worker_celery._worker_conn_max_ages(databases) == {"default": 0, "other": 0}
    monkeypatch.setenv("FLAMINGOCK_WORKER_DB_CONN_MAX_AGE", "soon")
    with pytest.raises(ImproperlyConfigured, match="FLAMINGOCK_WORKER_DB_CONN_MAX_AGE"):
        worker_celery._worker_conn_max_ages(databases)


# -- a real worker ---------------------------------------------------------------------------------


SESSION_CHANGE = """\
from changes_app.definitions import Change


class Session(Change):
    id = {change_id!r}
    author = "tests"
    target = "app-db"

    def apply(self, cursor, context):
        cursor.execute("INSERT INTO {table} (run_id, backend) SELECT %s, pg_backend_pid()", [str(context.run_id)])

    def rollback(self, cursor, context):
        pass
"""


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_keeps_its_database_session_across_run_starts_and_replaces_one_the_server_dropped(
    make_pipeline, settings, subprocess_env, tmp_path, unique
):
    table, change = f"session_fx_{unique}", f"session-{unique}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (run_id varchar(64) NOT NULL, backend integer NOT NULL)")
    make_pipeline({f"session_{unique}": {"0001_session.py": SESSION_CHANGE.format(change_id=change, table=table)}})
    broker = Broker(unique)
    settings.REDIS_URL = broker.url
    settings.FLAMINGOCK_LOCK = {"backend": "", "lease_seconds": 5.0, "wait_seconds": 10.0}
    settings.FLAMINGOCK_ENVIRONMENT = f"t-{unique}"
    env = subprocess_env(
        **broker.env(),
        FLAMINGOCK_ENVIRONMENT=settings.FLAMINGOCK_ENVIRONMENT,
        FLAMINGOCK_STAGES=",".join(settings.FLAMINGOCK_STAGES),
        FLAMINGOCK_DISCOVER_APPS="0",
        FLAMINGOCK_LOCK_LEASE="5",
        FLAMINGOCK_DB_CONN_MAX_AGE="60",
    )
    workers = workers_start([f"w1-{unique}@host-{unique}"], env_for=lambda name: env, log_dir=tmp_path / "workers")

    done = [0]  # tasks the worker has finished

    def queued(kind: str = Run.Kind.PIPELINE) -> Run:
        with broker.publishing():
            run = services.run_queue(
                actor=cli_actor(), source=Run.Source.CLI, kind=kind, change_id="" if kind == Run.Kind.PIPELINE else change, reason="t"
            )
        wait_for(lambda: Run.objects.get(pk=run.id).finished, timeout=30, interval=0.02, what=f"{kind} run {run.id}")
        run = Run.objects.get(pk=run.id)
        assert run.status == Run.Status.SUCCEEDED, (run.status, run.status_reason, workers[0].log[-3000:])
        # The run is finished before its task is: the receivers of run_finished (the sources stored,
        # requests settled) still use the session. Dropping it is tested between tasks, not inside one.
        done[0] += 1
        wait_for(lambda: workers[0].log.count(" succeeded in ") >= done[0], timeout=30, interval=0.02, what=f"the task of run {run.id}")
        return run

    def backend_of(run: Run) -> int:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT backend FROM {table} WHERE run_id = %s", [str(run.id)])
            return cursor.fetchone()[0]

    def again() -> Run:
        queued(Run.Kind.UNDO)
        queued(Run.Kind.REAPPLY)
        return queued()

    try:
        first = queued()
        second = again()
        assert backend_of(second) == backend_of(first), "the worker opened a new database session for a run start"
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend_of(first)])
        time.sleep(0.2)
        third = again()
        assert backend_of(third) != backend_of(first)
    finally:
        workers_stop(workers)
        broker.cleanup(f"pipeline:{settings.FLAMINGOCK_ENVIRONMENT}")
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
    for run in (first, second, third):
        assert run_events(run).count("run.started") == 1
    assert ledger(change).count((change, "APPLIED")) == 3
    assert "Traceback" not in workers[0].log, workers[0].log[-3000:]
