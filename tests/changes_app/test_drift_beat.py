"""Scheduled drift checks end to end (docs/semantics.md §10): a real ``celery beat`` on the database scheduler
sends the definition check to a real worker, which opens the finding with nobody calling the
check; and the admin dashboard lists open findings to those who may view them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from changes_app import services
from changes_app.drift import checks as drift
from changes_app.governance.identity import cli_actor
from changes_app.models import Finding, Run
from changes_app.services.schedules import schedules_ensure
from tests.support.workers import REPO, Broker, Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DRIFT_SCHEDULE = "flamingock: definition and operational drift"


def table_change(unique: str, *, extra: str = "") -> dict[str, str]:
    return {
        "0001_table.py": f"""
            from changes_app.definitions import Change

            class Table(Change):
                id = "beat-{unique}"
                author = "tests"
                target = "app-db"

                def apply(self, cursor):
                    cursor.execute("CREATE TABLE d_beat_{unique} (id integer)")

                def rollback(self, cursor):
                    cursor.execute("DROP TABLE d_beat_{unique}")
            {extra}
        """
    }


def drifted_pipeline(make_pipeline, unique: str) -> str:
    """Apply one change, then edit its file: the ledger's checksum no longer matches the code."""
    make_pipeline({"main": table_change(unique)})
    run = services.run_start(actor=cli_actor(), source=Run.Source.CLI)
    assert run.status == Run.Status.SUCCEEDED, run.status_reason
    make_pipeline({"main": table_change(unique, extra="# edited after apply")})
    # The deploy of the edited code records it as current: a worker on it is current, not stale.
    services.pipeline_current_record(recorded_by="deploy")
    return f"beat-{unique}"


def every_second_only_the_drift_check() -> None:
    """The default schedules, with the drift check every second and every other task disabled."""
    schedules_ensure()
    second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.get(name=DRIFT_SCHEDULE)
    task.interval, task.enabled, task.last_run_at = second, True, None
    task.save()
    PeriodicTask.objects.exclude(pk=task.pk).update(enabled=False)


def beat_start(env: dict[str, str], log_path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "flamingock_site",
        "beat",
        "-S",
        "flamingock_site.beat:CheckedDatabaseScheduler",
        "--pidfile=",
        "--loglevel=INFO",
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL)


def beat_stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.postgres
@pytest.mark.slow
def test_beat_sends_the_scheduled_drift_check_to_a_worker_which_opens_the_checksum_finding(make_pipeline, unique, settings, subprocess_env, tmp_path):
    change_id = drifted_pipeline(make_pipeline, unique)
    every_second_only_the_drift_check()
    assert not Finding.objects.exists()
    broker = Broker(unique)
    env = subprocess_env(**broker.env(), FLAMINGOCK_ENVIRONMENT=settings.FLAMINGOCK_ENVIRONMENT)
    logs = tmp_path / "processes"
    worker = Worker(f"drift@{unique}", env=env, log_dir=logs)
    beat = None
    started = time.monotonic()
    try:
        worker.start()
        wait_for(lambda: worker.ready, timeout=30, interval=0.1, what="the worker")
        beat = beat_start(env, logs / "beat.log")

        def found() -> bool:
            assert beat.poll() is None, (logs / "beat.log").read_text()
            return Finding.objects.filter(kind=Finding.Kind.CHECKSUM_MISMATCH, change_id=change_id).exists()

        try:
            wait_for(found, timeout=30, interval=0.25, what="a CHECKSUM_MISMATCH finding")
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- beat\n{(logs / 'beat.log').read_text()[-3000:]}\n--- worker\n{worker.log[-3000:]}") from None
    finally:
        if beat is not None:
            beat_stop(beat)
        worker.stop()
        broker.cleanup(f"pipeline:{settings.FLAMINGOCK_ENVIRONMENT}")

    finding = Finding.objects.get(kind=Finding.Kind.CHECKSUM_MISMATCH, change_id=change_id)
    assert finding.status == Finding.Status.OPEN and finding.environment == settings.FLAMINGOCK_ENVIRONMENT
    assert finding.status_by == drift.DRIFT_CHECKER.name and "Task flamingock.drift_check[" in worker.log
    assert PeriodicTask.objects.get(name=DRIFT_SCHEDULE).total_run_count >= 1
    assert time.monotonic() - started < 40


# -- the dashboard ---------------------------------------------------------------------------------


def staff(username: str, *permissions: str) -> Client:
    user = User.objects.create_user(username=username, password="unused-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="changes_app", codename__in=permissions))
    client = Client()
    client.force_login(user)
    return client


def test_dashboard_lists_open_drift_findings_only_to_users_who_may_view_findings(make_pipeline, unique):
    change_id = drifted_pipeline(make_pipeline, unique)
    drift.drift_check(kind="definition")
    finding = Finding.objects.get(kind=Finding.Kind.CHECKSUM_MISMATCH, change_id=change_id)

    page = staff(f"viewer-{unique}", "view_finding").get(reverse("admin:index")).content.decode()
    hidden = staff(f"other-{unique}", "view_run").get(reverse("admin:index")).content.decode()

    section = page.split('id="flk-drift"')[1].split("</div>")[0]
    assert "Open drift findings (1)" in section
    assert f"Checksum mismatch: {change_id}</a>" in section
    assert reverse("admin:changes_app_finding_change", args=[finding.pk]) in section
    assert f"first seen {finding.first_seen:%Y-%m-%d %H:%M:%S}" in section
    assert 'id="flk-dashboard"' in hidden and 'id="flk-drift"' not in hidden
