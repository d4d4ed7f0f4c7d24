"""Drift checks (docs/semantics.md §10, docs/drift.md) on the real audit database (SQLite or PostgreSQL): each
condition is created for real, checked many times, and cleared; findings never repeat themselves,
notifications go out once, and probes never take the lock nor report a change a run is moving."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.db import connection, connections
from django.utils import timezone

from audit_app.models import AuditEntry
from audit_app.models import ChangeStateName as S
from audit_app.services import Actor, ChangeRef, audit_record
from changes_app import services
from changes_app.drift import checks as drift
from changes_app.drift.notifications import backoff_seconds, finding_payload, webhook_deliver
from changes_app.errors import ActionRefused
from changes_app.governance.identity import cli_actor
from changes_app.models import Finding, Run, WebhookDelivery
from tests.conftest import manage

pytestmark = pytest.mark.django_db(transaction=True)

PERSON = Actor(name="alice", via="cli")


@pytest.fixture(autouse=True)
def alerts(settings):
    """Drift e-mail goes to ADMINS (and the target's operators): one address to count messages."""
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.FLAMINGOCK_WEBHOOK_URLS = []


def table_change(unique: str, *, order: str = "0001", name: str = "table", extra: str = "") -> dict[str, str]:
    """A change on the audit database that creates a table, and a verify that looks for it."""
    return {
        f"{order}_{name}.py": f"""
            from changes_app.definitions import Change

            class Table(Change):
                id = "{name}-{unique}"
                author = "tests"
                target = "app-db"

                def apply(self, cursor):
                    cursor.execute("CREATE TABLE d_{name}_{unique} (id integer)")

                def rollback(self, cursor):
                    cursor.execute("DROP TABLE d_{name}_{unique}")

                def verify(self, connection):
                    return "d_{name}_{unique}" in connection.introspection.table_names()
            {extra}
        """
    }


def run_pipeline() -> Run:
    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status in (Run.Status.SUCCEEDED, Run.Status.NO_CHANGES), run.status_reason
    return run


def findings(kind: str) -> list[Finding]:
    return list(Finding.objects.filter(kind=kind))


def drift_events(event: str) -> int:
    return AuditEntry.objects.filter(event=event).count()


def check_eleven_times(kind: str) -> list[drift.DriftReport]:
    return [drift.drift_check(kind=kind) for _ in range(11)]


# -- definition drift ------------------------------------------------------------------------------


def test_change_edited_after_apply_is_one_finding_notified_once_and_resolves_when_reverted(make_pipeline, unique):
    make_pipeline({"main": table_change(unique)})
    run_pipeline()
    make_pipeline({"main": table_change(unique, extra="# an edit after apply")})

    reports = check_eleven_times("definition")

    [finding] = findings("CHECKSUM_MISMATCH")
    assert finding.change_id == f"table-{unique}" and finding.status == Finding.Status.OPEN
    assert finding.times_seen == 11 and finding.first_seen < finding.last_seen
    assert finding.last_evidence["recorded_checksum"] != finding.last_evidence["code_checksum"]
    assert [len(r.opened) for r in reports] == [1] + [0] * 10
    assert len(mail.outbox) == 1 and f"table-{unique}" in mail.outbox[0].subject
    assert drift_events("drift.detected") == 1

    make_pipeline({"main": table_change(unique)})
    report = drift.drift_check(kind="definition")

    finding.refresh_from_db()
    assert report.resolved == [finding] and finding.status == Finding.Status.AUTO_RESOLVED
    resolved = AuditEntry.objects.get(event="drift.resolved")
    assert resolved.details["change_id"] == f"table-{unique}" and resolved.details["finding"] == finding.pk
    drift.drift_check(kind="definition")
    assert drift_events("drift.resolved") == 1 and len(mail.outbox) == 1


def test_accept_as_baseline_goes_through_the_accept_checksum_request_and_resolves_the_finding(make_pipeline, unique):
    make_pipeline({"main": table_change(unique)})
    run_pipeline()
    make_pipeline({"main": table_change(unique, extra="# edited")})
    drift.drift_check(kind="definition")
    [finding] = findings("CHECKSUM_MISMATCH")

    submission = drift.finding_accept_baseline(finding_id=finding.pk, actor=cli_actor(), reason="the edit is a comment", source=Run.Source.CLI)

    assert submission.run is not None and submission.run.status == Run.Status.SUCCEEDED, submission
    assert AuditEntry.objects.filter(event="change.checksum_accepted", change_id=f"table-{unique}").count() == 1
    drift.drift_check(kind="definition")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.AUTO_RESOLVED


def test_deleted_change_file_is_a_missing_from_code_finding(make_pipeline, unique):
    make_pipeline({"main": {**table_change(unique, order="0001", name="one"), **table_change(unique, order="0002", name="two")}})
    run_pipeline()
    make_pipeline({"main": table_change(unique, order="0001", name="one")}, replace=True)

    check_eleven_times("definition")

    [finding] = findings("MISSING_FROM_CODE")
    assert finding.change_id == f"two-{unique}" and finding.times_seen == 11
    assert finding.last_evidence["state"] == S.APPLIED
    assert len(mail.outbox) == 1


def test_new_change_ordered_before_an_applied_one_is_an_out_of_order_finding(make_pipeline, unique):
    make_pipeline({"main": table_change(unique, order="0002", name="late")})
    run_pipeline()
    make_pipeline({"main": table_change(unique, order="0001", name="early")})

    check_eleven_times("definition")

    [finding] = findings("OUT_OF_ORDER")
    assert finding.change_id == f"early-{unique}" and finding.times_seen == 11
    assert len(mail.outbox) == 1


# -- operational drift -----------------------------------------------------------------------------


def write_state(change_id: str, state: str, *, stage: str = "main") -> None:
    """Write a change's state through the one writer, as a run that then vanished would have."""
    event = {S.STARTED: "change.started", S.APPLIED: "change.applied", S.ROLLBACK_STARTED: "change.rollback_started"}[state]
    audit_record(
        event=event, actor=Actor(name="worker"), environment="dev", change=ChangeRef(id=change_id, stage=stage, target="journal"), state=state
    )


def test_started_entry_with_no_live_run_is_one_finding_and_resolves_when_settled(unique):
    write_state(f"orphan-{unique}", S.STARTED)

    check_eleven_times("operational")

    [finding] = findings("STALE_STARTED")
    assert finding.change_id == f"orphan-{unique}" and finding.times_seen == 11
    assert len(mail.outbox) == 1 and drift_events("drift.detected") == 1

    write_state(f"orphan-{unique}", S.APPLIED)
    drift.drift_check(kind="operational")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.AUTO_RESOLVED and drift_events("drift.resolved") == 1


def test_killed_run_leaves_started_dead_run_and_lock_past_lease_findings(make_pipeline, unique, subprocess_env, settings, journal):
    make_pipeline(
        {
            "main": {
                "0001_note.py": f"""
                    from changes_app.definitions import Change

                    class Note(Change):
                        id = "note-{unique}"
                        author = "tests"
                        target = "journal"

                        def apply(self, journal):
                            journal.write(change="note-{unique}")
                """
            }
        }
    )
    killed = manage("flamingock", "run", "--json", env=subprocess_env(FLAMINGOCK_LOCK_LEASE=1.5, FLAMINGOCK_CRASH_AT=f"after_started:note-{unique}"))
    assert killed.returncode == -9, killed.stderr
    run = Run.objects.get(status=Run.Status.RUNNING)
    settings.FLAMINGOCK_RUN_HEARTBEAT_TIMEOUT = 1.0
    # While the dead holder's lease runs, its run still counts as live: no drift yet.
    holder = services.lock_status()
    if holder is not None and not holder.expired:
        assert not [c for c in drift.operational_observe().conditions if c.kind == "STALE_STARTED"]
    deadline = time.monotonic() + 10
    while not (services.lock_status() and services.lock_status().expired) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.1)

    check_eleven_times("operational")

    [started] = findings("STALE_STARTED")
    [dead] = findings("DEAD_RUN")
    [lock] = findings("LOCK_PAST_LEASE")
    assert started.change_id == f"note-{unique}" and started.last_evidence["run_id"] == str(run.id)
    assert dead.run_id == run.id and lock.last_evidence["run_id"] == str(run.id)
    assert {f.times_seen for f in (started, dead, lock)} == {11}
    assert len(mail.outbox) == 3

    # The reaper settles the run; an operator fixes the change; the next run takes the lock over.
    services.runs_reap()
    services.change_fix(change_id=f"note-{unique}", resolution="applied", actor=cli_actor(), reason="journal shows it", source=Run.Source.CLI)
    report = drift.drift_check(kind="operational")
    assert {f.kind for f in report.resolved} == {"STALE_STARTED", "DEAD_RUN", "LOCK_PAST_LEASE"}
    assert not drift.findings_open(include_acknowledged=True).exists()


# -- live drift ------------------------------------------------------------------------------------


def test_table_dropped_after_apply_is_a_live_finding_and_resolves_when_restored(make_pipeline, unique):
    make_pipeline({"main": table_change(unique)})
    run_pipeline()
    assert not drift.drift_check(kind="live").seen

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE d_table_{unique}")
    check_eleven_times("live")

    [finding] = findings("VERIFY_FAILED")
    assert finding.change_id == f"table-{unique}" and finding.times_seen == 11 and finding.check_name == "LIVE"
    assert len(mail.outbox) == 1

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE d_table_{unique} (id integer)")
    drift.drift_check(kind="live")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.AUTO_RESOLVED


def probing_change(unique: str, body: str) -> dict[str, str]:
    return {
        "0001_probe.py": f"""
            from changes_app.definitions import Change

            class Probe(Change):
                id = "probe-{unique}"
                author = "tests"
                target = "journal"

                def apply(self, journal):
                    journal.write(change="probe-{unique}")

                def verify(self):
                    import os, pathlib, time
                    {body}
        """
    }


def test_a_probe_that_hangs_is_a_probe_finding_within_its_timeout(make_pipeline, unique, settings, monkeypatch):
    make_pipeline({"main": probing_change(unique, "time.sleep(float(os.environ.get('FLK_PROBE_SLEEP', '0'))); return True")})
    run_pipeline()
    monkeypatch.setenv("FLK_PROBE_SLEEP", "5")
    settings.FLAMINGOCK_DRIFT_PROBE_TIMEOUT = 0.5

    started = time.monotonic()
    drift.drift_check(kind="live")
    drift.drift_check(kind="live")

    assert time.monotonic() - started < 3
    [finding] = findings("PROBE_FAILED")
    assert "did not answer within 0.5 seconds" in finding.summary and finding.times_seen == 2
    assert not findings("VERIFY_FAILED")
    monkeypatch.setenv("FLK_PROBE_SLEEP", "0")
    time.sleep(4.6)  # let the abandoned probes end before the test database goes
    drift.drift_check(kind="live")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.AUTO_RESOLVED


def test_a_probe_that_raises_is_a_probe_finding_not_a_crash_of_the_check(make_pipeline, unique, monkeypatch):
    make_pipeline(
        {
            "main": probing_change(
                unique, "if os.environ.get('FLK_PROBE_RAISE'): raise RuntimeError('target unreachable')\n                    return True"
            )
        }
    )
    run_pipeline()
    monkeypatch.setenv("FLK_PROBE_RAISE", "1")

    report = drift.drift_check(kind="live")

    [finding] = report.seen
    assert finding.kind == "PROBE_FAILED" and "RuntimeError: target unreachable" in finding.summary


def test_a_probe_racing_a_run_does_not_report_the_change_the_run_moved(make_pipeline, unique, tmp_path, monkeypatch):
    race = tmp_path / "race"
    race.mkdir()
    monkeypatch.setenv("FLK_RACE_DIR", str(race))
    make_pipeline(
        {
            "main": probing_change(
                unique,
                """d = pathlib.Path(os.environ["FLK_RACE_DIR"])
                    (d / "probing").touch()
                    deadline = time.monotonic() + 10
                    while not (d / "go").exists() and time.monotonic() < deadline:
                        time.sleep(0.02)
                    return False""",
            )
        }
    )
    run_pipeline()
    lock_taken = []

    def undo_starts_meanwhile():
        # What an undo run writes first, while the probe is looking at the target.
        try:
            deadline = time.monotonic() + 10
            while not (race / "probing").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            lock_taken.append(services.lock_status() is None)
            write_state(f"probe-{unique}", S.ROLLBACK_STARTED)
            (race / "go").touch()
        finally:
            connections.close_all()

    racer = threading.Thread(target=undo_starts_meanwhile)
    racer.start()
    report = drift.drift_check(kind="live")
    racer.join()

    assert lock_taken == [True], "the probe must not hold the pipeline lock"
    assert not report.seen and not Finding.objects.exists()

    # The same probe on a ledger that stays still does report the absent effect.
    write_state(f"probe-{unique}", S.APPLIED)
    report = drift.drift_check(kind="live")
    assert [f.kind for f in report.seen] == ["VERIFY_FAILED"]


# -- people ----------------------------------------------------------------------------------------


def test_acknowledge_and_resolve_need_a_reason_are_audited_and_a_resolved_finding_reopens(unique):
    write_state(f"orphan-{unique}", S.STARTED)
    drift.drift_check(kind="operational")
    [finding] = findings("STALE_STARTED")

    with pytest.raises(ActionRefused):
        drift.finding_acknowledge(finding_id=finding.pk, actor=PERSON, reason=" ")
    drift.finding_acknowledge(finding_id=finding.pk, actor=PERSON, reason="looking at the worker")
    check_eleven_times("operational")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.ACKNOWLEDGED and finding.times_seen == 12 and len(mail.outbox) == 1

    drift.finding_resolve(finding_id=finding.pk, actor=PERSON, reason="fixed the journal by hand")
    entries = list(
        AuditEntry.objects.filter(event__in=["drift.acknowledged", "drift.resolved"]).order_by("id").values_list("event", "actor", "reason")
    )
    assert entries == [
        ("drift.acknowledged", "alice", "looking at the worker"),
        ("drift.resolved", "alice", "fixed the journal by hand"),
    ]
    with pytest.raises(ActionRefused):
        drift.finding_resolve(finding_id=finding.pk, actor=PERSON, reason="again")

    # The condition is still there: the next check reopens the same row and notifies once more.
    report = drift.drift_check(kind="operational")
    finding.refresh_from_db()
    assert report.opened == [finding] and finding.status == Finding.Status.OPEN
    assert Finding.objects.count() == 1 and len(mail.outbox) == 2 and drift_events("drift.detected") == 2


# -- webhooks --------------------------------------------------------------------------------------


class Receiver:
    """A local HTTP server answering each POST with the next status code of ``codes``."""

    def __init__(self, codes: list[int]):
        self.codes = list(codes)
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def eager_celery():
    """Tasks run in this process: the delivery task's own retry logic, not a broker, is under test."""
    from flamingock_site.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def test_webhook_is_signed_with_hmac_and_sent_once_for_eleven_checks(unique, settings, monkeypatch, eager_celery):
    receiver = Receiver([200])
    settings.FLAMINGOCK_WEBHOOK_URLS = [receiver.url]
    monkeypatch.setenv("FLAMINGOCK_WEBHOOK_SECRET", "s3cret")
    try:
        write_state(f"orphan-{unique}", S.STARTED)
        check_eleven_times("operational")
    finally:
        receiver.close()

    [(headers, body)] = receiver.received
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Flamingock-Signature"], expected)
    payload = json.loads(body)
    assert payload["event"] == "drift.detected" and payload["finding"]["kind"] == "STALE_STARTED"
    assert payload["finding"]["change_id"] == f"orphan-{unique}"
    [delivery] = WebhookDelivery.objects.all()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and delivery.attempts == 1
    assert "s3cret" not in json.dumps(delivery.payload)


def test_webhook_answering_500_is_retried_with_exponential_backoff(unique, monkeypatch):
    receiver = Receiver([500, 500, 200])
    monkeypatch.setenv("FLAMINGOCK_WEBHOOK_SECRET", "s3cret")
    write_state(f"orphan-{unique}", S.STARTED)
    drift.drift_check(kind="operational")
    [finding] = findings("STALE_STARTED")
    # The row finding_notify creates, attempted here by hand to watch each backoff.
    delivery = WebhookDelivery.objects.create(finding=finding, url=receiver.url, payload=finding_payload(finding))
    try:
        before = timezone.now()
        first = webhook_deliver(delivery_id=delivery.pk)
        delivery.refresh_from_db()
        assert first == 30 and delivery.status == WebhookDelivery.Status.RETRYING and delivery.last_status_code == 500
        assert before + timedelta(seconds=29) < delivery.next_attempt_at < timezone.now() + timedelta(seconds=31)
        assert webhook_deliver(delivery_id=delivery.pk) == 60
        assert webhook_deliver(delivery_id=delivery.pk) is None
    finally:
        receiver.close()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and delivery.attempts == 3 and delivery.next_attempt_at is None
    assert len(receiver.received) == 3
    assert [backoff_seconds(n) for n in (1, 2, 3, 4, 20)] == [30, 60, 120, 240, 3600]


def test_the_delivery_task_retries_until_delivered(unique, settings, eager_celery):
    from changes_app.tasks import webhook_deliver_task

    receiver = Receiver([500, 503, 200])
    settings.FLAMINGOCK_WEBHOOK_URLS = [receiver.url]
    write_state(f"orphan-{unique}", S.STARTED)
    try:
        drift.drift_check(kind="operational")
    finally:
        receiver.close()
    [delivery] = WebhookDelivery.objects.all()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and delivery.attempts == 3
    assert webhook_deliver_task.name == "flamingock.webhook_deliver"


# -- command line and schedules --------------------------------------------------------------------


def test_cli_drift_and_validate_report_findings_with_exit_6(make_pipeline, unique, subprocess_env):
    make_pipeline({"main": table_change(unique)})
    run_pipeline()
    env = subprocess_env()
    clean = manage("flamingock", "drift", "--live", "--json", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["findings"] == []

    write_state(f"orphan-{unique}", S.STARTED)
    found = manage("flamingock", "drift", "--json", env=env)
    assert found.returncode == 6, found.stdout + found.stderr
    assert [f["kind"] for f in json.loads(found.stdout)["findings"]] == ["STALE_STARTED"]

    validate = manage("flamingock", "validate", "--json", env=env)
    assert validate.returncode == 6, validate.stdout + validate.stderr
    assert [f["kind"] for f in json.loads(validate.stdout)["findings"]] == ["STALE_STARTED"]
    assert Finding.objects.count() == 1


def test_drift_schedules_exist_after_migrate_and_keep_operator_edits():
    from django_celery_beat.models import PeriodicTask

    from changes_app.services.schedules import schedules_ensure

    scheduled = PeriodicTask.objects.get(name="flamingock: definition and operational drift")
    live = PeriodicTask.objects.get(name="flamingock: live drift")
    assert (scheduled.task, scheduled.interval.every) == ("flamingock.drift_check", 300)
    assert (live.task, live.interval.every) == ("flamingock.drift_check_live", 3600)
    PeriodicTask.objects.filter(pk=live.pk).update(enabled=False)
    schedules_ensure()
    assert not PeriodicTask.objects.get(pk=live.pk).enabled
