"""Workers as the admin, the API and the command line show them; the current pipeline and who
records it; the reaper's ``no_current_worker``; the runs list's abort reason (docs/semantics.md, Workers)."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from changes_app import services
from changes_app.governance.identity import cli_actor
from changes_app.models import DeployedPipeline, Run, Worker
from changes_app.services import workers as worker_services

pytestmark = pytest.mark.django_db

CHANGE = """
from changes_app.definitions import Change


class Noted(Change):
    id = "{change_id}"
    author = "tests"
    target = "journal"

    def apply(self, journal, context):
        journal.write(kind="effect", change=context.change_id)
"""


@pytest.fixture
def pipeline(make_pipeline, settings, unique):
    settings.FLAMINGOCK_ENVIRONMENT = f"workers-{unique}"
    return make_pipeline({"main": {"0001_noted.py": CHANGE.format(change_id=f"noted-{unique}")}})


def worker_row(name: str, digest: str, *, environment: str, age: float = 0.0) -> Worker:
    at = timezone.now() - timedelta(seconds=age)
    return Worker.objects.create(name=name, host="h1", pid=42, environment=environment, digest=digest, started_at=at, heartbeat_at=at)


def staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username=username, password="unused-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="changes_app", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_web_records_the_current_pipeline_the_command_line_and_workers_do_not(pipeline, settings):
    environment = settings.FLAMINGOCK_ENVIRONMENT
    services.run_create(actor=cli_actor(), source=Run.Source.CLI)
    assert not DeployedPipeline.objects.filter(environment=environment).exists()
    worker_services.worker_process_mark(name="w@h")
    try:
        assert services.pipeline_current_record(recorded_by="web") is None
        services.run_create(actor=cli_actor(), source=Run.Source.API)
        assert not DeployedPipeline.objects.filter(environment=environment).exists()
    finally:
        worker_services._this_worker.clear()
    services.run_create(actor=cli_actor(), source=Run.Source.API)
    current = DeployedPipeline.objects.get(environment=environment)
    assert (current.digest, current.recorded_by) == (pipeline.digest, "web")


def test_a_stale_worker_refuses_to_run_or_check_and_leaves_the_run_queued(pipeline, settings):
    DeployedPipeline.objects.create(environment=settings.FLAMINGOCK_ENVIRONMENT, digest="0" * 64, recorded_by="migrate", recorded_at=timezone.now())
    run = services.run_create(actor=cli_actor(), source=Run.Source.CLI)
    worker_services.worker_process_mark(name="w@h")
    try:
        with pytest.raises(services.WorkerStale, match="w@h runs pipeline"):
            services.run_execute(run_id=run.id)
        from changes_app.drift.checks import drift_check

        with pytest.raises(services.WorkerStale):
            drift_check(kind="definition")
    finally:
        worker_services._this_worker.clear()
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED and run.started_at is None


@override_settings(FLAMINGOCK_RUN_QUEUED_TIMEOUT=0)
def test_the_reaper_fails_a_run_no_current_worker_would_take_and_requeues_one_a_live_worker_would(pipeline, settings, monkeypatch):
    sent = []
    monkeypatch.setattr("changes_app.services.runs.task_send", lambda *args, **kwargs: sent.append(args))
    environment = settings.FLAMINGOCK_ENVIRONMENT
    run = services.run_create(actor=cli_actor(), source=Run.Source.CLI)
    worker_row("old@h", "f" * 64, environment=environment)  # live, on other code
    worker_row("gone@h", pipeline.digest, environment=environment, age=3600)  # current code, silent
    assert services.runs_reap()["requeued"] == [str(run.id)]  # it waits once
    assert services.runs_reap()["aborted"] == [str(run.id)]
    run.refresh_from_db()
    assert run.status == Run.Status.ABORTED
    assert run.status_reason.startswith(f"no_current_worker: no worker runs pipeline {environment} ({pipeline.digest[:12]})")

    waiting = services.run_create(actor=cli_actor(), source=Run.Source.CLI)
    worker_row("new@h", pipeline.digest, environment=environment)
    assert services.runs_reap() == {"aborted": [], "requeued": [str(waiting.id)]}
    assert services.runs_reap()["requeued"] == [str(waiting.id)]


def test_workers_are_listed_alike_by_the_api_and_the_command_line_and_refused_without_view_worker(pipeline, settings):
    environment = settings.FLAMINGOCK_ENVIRONMENT
    services.pipeline_current_record(recorded_by="migrate")
    worker_row("current@h", pipeline.digest, environment=environment)
    worker_row("stale@h", "e" * 64, environment=environment)

    response = staff("viewer", "view_worker").get("/api/v1/workers/")
    assert response.status_code == 200
    body = response.json()
    assert {worker["name"]: (worker["code"], worker["live"]) for worker in body["workers"]} == {
        "current@h": ("current", True),
        "stale@h": ("stale", True),
    }
    assert body["current"]["digest"] == pipeline.digest and body["current"]["recorded_by"] == "migrate"
    out = io.StringIO()
    call_command("flamingock", "workers", "--json", stdout=out)
    assert json.loads(out.getvalue()) == body
    text = io.StringIO()
    call_command("flamingock", "workers", stdout=text)
    assert "stale@h" in text.getvalue() and "stale" in text.getvalue() and pipeline.digest[:12] in text.getvalue()

    assert staff("nobody", "view_run").get("/api/v1/workers/").status_code == 403
    assert Client().get("/api/v1/workers/").status_code in (401, 403)


def test_the_admin_workers_page_shows_stale_or_current_only_to_those_who_may_view_workers(pipeline, settings):
    environment = settings.FLAMINGOCK_ENVIRONMENT
    services.pipeline_current_record(recorded_by="migrate")
    worker_row("current@h", pipeline.digest, environment=environment)
    worker_row("stale@h", "e" * 64, environment=environment, age=3600)
    page = staff("viewer", "view_worker").get("/admin/changes_app/worker/")
    assert page.status_code == 200
    content = page.content.decode()
    assert "current@h" in content and "stale@h" in content and ">stale<" in content and ">current<" in content and ">silent<" in content
    assert staff("nobody", "view_run").get("/admin/changes_app/worker/").status_code == 403


def test_the_runs_list_shows_an_aborts_reason_and_warns_when_no_live_worker_runs_the_pipeline(pipeline):
    run = services.run_create(actor=cli_actor(), source=Run.Source.API)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.ABORTED, status_reason="no_current_worker: no worker runs pipeline x (abc)")
    user = User.objects.create_superuser(username="root", password="unused-1")
    client = Client()
    client.force_login(user)
    page = client.get("/admin/changes_app/run/")
    content = page.content.decode()
    assert "no_current_worker: no worker runs pipeline x (abc)" in content
    assert "No live worker runs pipeline" in content  # message_user capitalises


def test_run_async_warns_on_stderr_before_queueing_when_no_live_worker_runs_the_pipeline(pipeline, monkeypatch):
    monkeypatch.setattr("changes_app.services.runs.task_send", lambda *args, **kwargs: None)
    out, err = io.StringIO(), io.StringIO()
    call_command("flamingock", "run", "--async", "--json", stdout=out, stderr=err)
    assert "warning: no live worker runs pipeline" in err.getvalue()
    assert json.loads(out.getvalue())["status"] == Run.Status.QUEUED


def test_the_workers_command_refuses_a_token_whose_user_may_not_view_workers(pipeline, monkeypatch):
    from changes_app.governance.identity import token_create
    from tests.support.trails import cli

    nobody = User.objects.create_user(username="nobody", password="unused-1")
    _, key = token_create(user=nobody, name="cli", created_by="tests")
    monkeypatch.setenv("FLAMINGOCK_TOKEN", key)
    refused = cli("workers", "--json")
    assert refused.code == 2 and "may not view the workers" in json.loads(refused.out)["error"]

    nobody.user_permissions.add(Permission.objects.get(content_type__app_label="changes_app", codename="view_worker"))
    nobody = User.objects.get(pk=nobody.pk)  # permissions are cached on the instance
    allowed = cli("workers", "--json")
    assert allowed.code == 0 and json.loads(allowed.out)["workers"] == []


def test_migrate_records_the_current_pipeline_as_the_deploy_step(pipeline, settings):
    DeployedPipeline.objects.filter(environment=settings.FLAMINGOCK_ENVIRONMENT).delete()
    call_command("migrate", verbosity=0)
    current = DeployedPipeline.objects.get(environment=settings.FLAMINGOCK_ENVIRONMENT)
    assert (current.digest, current.recorded_by) == (pipeline.digest, "migrate")


def test_the_operational_check_keeps_a_worker_stale_finding_for_a_live_stale_worker_and_resolves_it_when_it_stops(pipeline, settings):
    from changes_app.drift.checks import drift_check
    from changes_app.models import Finding

    services.pipeline_current_record(recorded_by="migrate")
    stale = worker_row("old@h", "d" * 64, environment=settings.FLAMINGOCK_ENVIRONMENT)
    worker_row("new@h", pipeline.digest, environment=settings.FLAMINGOCK_ENVIRONMENT)
    drift_check(kind="operational")
    finding = Finding.objects.get(kind=Finding.Kind.WORKER_STALE)
    assert finding.status == Finding.Status.OPEN and "old@h" in finding.summary and finding.last_evidence["digest"] == "d" * 64

    Worker.objects.filter(pk=stale.pk).update(stopped_at=timezone.now())
    drift_check(kind="operational")
    finding.refresh_from_db()
    assert finding.status == Finding.Status.AUTO_RESOLVED
